"""Where the mapped potency F1 of the hard preset's held-out lots is lost (issue 12, item 4).

The same pipeline as ``potency_population_mapping.py`` (reference analysis and
``tl.potency_population`` on the 11 training lots, frozen with the boundary rule, the 4
held-out lots mapped by ``tl.map_to_reference``, anchors, defaults, query not QC'd). The
mapping's labels before the rule, its probabilities and the query's projection are kept
(``boundary_labels`` is wrapped for that), then every wrongly called cell (potency vs not,
against ``true_potency_cell``) gets one cause, in this order:

- ``low_quality``: a cell the simulator made low quality (a tenth of the counts);
- ``unassigned``: novel or an empty prediction set (``'Unassigned'``);
- ``rule``: the boundary rule moved it, wrongly;
- ``set_label``: its label is not its most probable one (the most probable label in its
  prediction set), and the most probable one would have been right;
- ``transfer``: the majority of its 30 nearest reference cells (reference PCA) carries
  the right label, the transfer gave another;
- ``reference``: the reference cells around it are mislabelled (the majority of the 30
  nearest reference cells' *truth* would be right, their labels are not);
- ``overlap``: even the truth of its 30 nearest reference cells is wrong for it
  (transitional cells among the neighbour's cells, or the reverse).

Beside it: the rule with the threshold that is best on the query's own truth (an oracle:
how much any threshold on the rule's axis could give), and variants of the rule (labels
by the most probable label, the rule's score averaged over query neighbours, the
threshold placed between the query's own population and neighbour medians as it is
between the reference's).

    python benchmarks/maptrans_decomposition.py --seeds 0-9 --cache /tmp/maptrans/cache
"""

from __future__ import annotations

import argparse
import pickle
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from _truth import population_f1
from potency_population import _seeds
from potency_population_mapping import _reference
from sklearn.neighbors import NearestNeighbors

import mscpotency as mp
import mscpotency.tl._mapping._api as mapping_api

mp.settings.progress = False

RESULTS = Path(__file__).parent / "results"
CAUSES = ["low_quality", "unassigned", "rule", "set_label", "transfer", "reference", "overlap"]
K = 30


def _build(seed: int) -> dict:
    """Reference, search, frozen rule and mapping of one seed, with the mapping's internals."""
    captured: dict = {}
    original = mapping_api.boundary_labels

    def spy(model, transfer, codes, in_set):
        captured.update(model=model, transfer=transfer, codes=codes.copy())
        return original(model, transfer, codes, in_set)

    adata = mp.datasets.hard(random_state=seed)
    query = adata[adata.obs["set"] == "BM-test"].copy()
    mapping_api.boundary_labels = spy
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = _reference(adata, seed, None)
            mp.tl.potency_population(ref, "vegf")
            frozen = mp.tl.freeze_reference(ref, cluster_key="potency_population")
            mp.tl.map_to_reference(query, frozen, cluster_key="potency_population")
    finally:
        mapping_api.boundary_labels = original
    transfer = captured["transfer"]
    return {
        "seed": seed,
        "ref": ref,
        "query": query,
        "codes_pre": captured["codes"],
        "categories": list(captured["model"].categories),
        "boundary": captured["model"].boundary,
        "q_emb": np.asarray(transfer.query_embedding),
        "r_emb": np.asarray(transfer.reference_embedding),
        "probabilities": transfer.probabilities,
    }


def _load(seed: int, cache: Path | None) -> dict:
    path = cache / f"seed{seed}.pkl" if cache else None
    if path is not None and path.exists():
        with path.open("rb") as handle:
            return pickle.load(handle)  # our own cache, written below
    record = _build(seed)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as handle:
            pickle.dump(record, handle)
    return record


def _rule(record: dict, codes: np.ndarray, score: np.ndarray, threshold: float) -> np.ndarray:
    """Cells called the population: the rule re-decides population and neighbour labels."""
    categories, rule = record["categories"], record["boundary"]
    population, neighbour = categories.index("potency"), categories.index(rule["neighbour"])
    pair = np.isin(codes, [population, neighbour])
    return np.where(pair, score > threshold, codes == population)


def _causes(record: dict) -> tuple[np.ndarray, np.ndarray]:
    """One cause per wrongly called query cell (``'ok'`` for the others), and the calls."""
    query, ref = record["query"], record["ref"]
    population = record["categories"].index("potency")
    truth = query.obs["true_potency_cell"].to_numpy()
    called = (query.obs["predicted"].astype(str) == "potency").to_numpy()
    before = record["codes_pre"] == population
    top = record["probabilities"].argmax(axis=1)
    labelled = (ref.obs["potency_population"].astype(str) == "potency").to_numpy()
    nearest = NearestNeighbors(n_neighbors=K).fit(record["r_emb"])
    nearest = nearest.kneighbors(record["q_emb"], return_distance=False)
    by_labels = labelled[nearest].mean(axis=1) > 0.5
    by_truth = ref.obs["true_potency_cell"].to_numpy()[nearest].mean(axis=1) > 0.5
    tests = [
        query.obs["true_low_quality"].to_numpy(),
        record["codes_pre"] < 0,
        before != called,
        (record["codes_pre"] != top) & ((top == population) == truth),
        by_labels == truth,
        by_truth == truth,
        np.ones_like(truth),
    ]
    cause = np.full(truth.size, "ok", dtype=object)
    left = called != truth
    for name, test in zip(CAUSES, tests, strict=True):
        cause[left & test] = name
        left &= ~test
    return cause, called


def _variants(record: dict) -> dict:
    """F1 of the rule's variants on the same mapping (see the module's docstring)."""
    rule, truth = record["boundary"], record["query"].obs["true_potency_cell"].to_numpy()
    axis = np.asarray(rule["axis"], dtype=np.float64)
    score, codes = record["q_emb"] @ axis, record["codes_pre"]
    top = np.where(codes < 0, -1, record["probabilities"].argmax(axis=1))
    population = record["categories"].index("potency")
    neighbour = record["categories"].index(rule["neighbour"])
    threshold = float(rule["threshold"])
    grid = np.linspace(score.min(), score.max(), 400)
    best = max(grid, key=lambda t: population_f1(_rule(record, codes, score, t), truth))
    nearest = NearestNeighbors(n_neighbors=11).fit(record["q_emb"])
    smooth = score[nearest.kneighbors(record["q_emb"], return_distance=False)].mean(axis=1)
    own = record["r_emb"] @ axis
    labels = record["ref"].obs["potency_population"].astype(str).to_numpy()
    place = (threshold - rule["centre"]) / (np.median(own[labels == "potency"]) - rule["centre"])
    low, high = np.median(score[codes == neighbour]), np.median(score[codes == population])
    return {
        "f1_no_rule": population_f1(codes == population, truth),
        "f1_rule": population_f1(_rule(record, codes, score, threshold), truth),
        "f1_oracle_threshold": population_f1(_rule(record, codes, score, best), truth),
        "f1_most_probable_label": population_f1(_rule(record, top, score, threshold), truth),
        "f1_smoothed_10": population_f1(_rule(record, codes, smooth, threshold), truth),
        "f1_two_medians": population_f1(
            _rule(record, codes, score, low + place * (high - low)), truth
        ),
    }


def one(seed: int, cache: Path | None) -> dict:
    record = _load(seed, cache)
    cause, called = _causes(record)
    query, ref = record["query"], record["ref"]
    truth = query.obs["true_potency_cell"].to_numpy()
    committed = query.obs["true_commitment"].to_numpy() > 0.5
    labelled = (ref.obs["potency_population"].astype(str) == "potency").to_numpy()
    row = {
        "seed": seed,
        "f1_reference": population_f1(labelled, ref.obs["true_potency_cell"].to_numpy()),
    }
    row |= _variants(record)
    row["n_potency"] = int(truth.sum())
    for name in CAUSES:
        row[f"FN_{name}"] = int(((cause == name) & truth).sum())
        row[f"FP_{name}"] = int(((cause == name) & ~truth).sum())
    row["FN_overlap_committed_gt_0.5"] = int(((cause == "overlap") & truth & committed).sum())
    assert row["f1_rule"] == population_f1(called, truth)  # the offline rule is the package's
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0-9")
    parser.add_argument("--cache", type=Path, default=None, help="pickled mappings per seed")
    args = parser.parse_args()
    table = pd.DataFrame([one(seed, args.cache) for seed in _seeds(args.seeds)])
    print(table.to_string(index=False))
    f1 = [c for c in table.columns if c.startswith("f1")]
    errors = ["seed", "n_potency"] + [c for c in table.columns if c.startswith(("FN", "FP"))]
    errors = [c for c in errors if c == "seed" or (table[c] != 0).any()]
    text = "# Where the mapped potency F1 of the hard preset is lost\n\n"
    text += table[["seed", *f1]].to_markdown(index=False) + "\n\n"
    text += table[errors].to_markdown(index=False) + "\n"
    (RESULTS / "maptrans_decomposition.md").write_text(text)


if __name__ == "__main__":
    main()
