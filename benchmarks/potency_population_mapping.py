"""Do mapped held-out lots recover the potency population the search found? (issue 12)

For each seed of the hard preset: the reference analysis and ``tl.potency_population`` on
the 11 training lots, ``tl.freeze_reference`` on the search's labels, then
``tl.map_to_reference`` (anchors, defaults) of the 4 held-out bone-marrow lots. F1 of the
cells mapped to ``'potency'`` against the true potency cells, and the recall among the
transitional potency cells (commitment > 0, and > 0.5). Each seed is mapped twice: with
the population's boundary rule, which the frozen reference carries and the mapping applies
to cells labelled the population or its neighbour (``*_rule`` columns, the default), and
without it (the rule removed from the search's result before freezing: label transfer
alone), so the rule's effect is measured on the same reference and query. Where F1 is
lost: ``*_rule_qc``, the query QC'd by ``pp.qc`` first (as ``mscpotency map`` does; the
reference is QC'd too), scored on the cells kept; ``n_low_quality_potency(_mapped)``, the
potency cells the simulator made low quality (a tenth of the counts, mitochondrial reads
up); ``*_reference``, the search's population on the training lots against the truth (the
labels the mapping transfers: a ceiling for the mapped cells); ``*_quality``, the same with
the cells of labels ``tl.cluster_quality`` flags as damaged removed (the QC'd query's
transferred labels, the reference's population labels), as its warning asks. With ``--qc-thresholds
fixed|mad`` both QC calls (the reference's and the query's) pass that rule
(``pp.qc(thresholds=...)``) and the results files' names gain ``_qc<rule>``; without it,
the package's default.

    .venv/bin/python benchmarks/potency_population_mapping.py --seeds 0-4
    .venv/bin/python benchmarks/potency_population_mapping.py --seeds 0-4 --cache /tmp/ref
    .venv/bin/python benchmarks/potency_population_mapping.py --seeds 0-9 --qc-thresholds mad
    .venv/bin/python benchmarks/potency_population_mapping.py --seeds 0-19 --local-representation off
"""

from __future__ import annotations

import argparse
import copy
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from _results import write_results
from potency_population import LOCAL, _seeds  # the same --seeds and --local-representation

import mscpotency as mp

mp.settings.progress = False

RESULTS = Path(__file__).parent / "results"


def _qc_kwargs(qc: str | None) -> dict:
    """``pp.qc``'s keyword for the QC rule (none: the package default)."""
    return {} if qc is None else {"thresholds": qc}


def _reference(adata, seed: int, cache: Path | None, qc: str | None = None, sets=("BM-train",)):
    """The reference analysis of the lots of ``sets`` (read from ``cache`` when saved there).

    ``pp.qc``, ``pp.preprocess``, ``tl.cluster`` (8 clusters), ``tl.lot_fractions`` and
    ``tl.potency_association`` with the package's defaults; by default the training lots.
    """
    lots = "" if tuple(sets) == ("BM-train",) else "_" + "+".join(sets)
    name = f"hard{seed}{lots}{'' if qc is None else '_qc' + qc}.h5ad"
    cached = cache / name if cache else None
    if cached is not None and cached.exists():
        return ad.read_h5ad(cached)
    ref = adata[adata.obs["set"].isin(sets).to_numpy()].copy()
    mp.pp.qc(ref, **_qc_kwargs(qc))
    mp.pp.preprocess(ref)
    mp.tl.cluster(ref, n_clusters=8)
    mp.tl.lot_fractions(ref)
    mp.tl.potency_association(ref, "vegf")
    if cached is not None:
        ref.write_h5ad(cached)
    return ref


def _scores(adata, suffix: str, key: str = "predicted") -> dict:
    """F1 of the cells labelled ``'potency'`` in ``obs[key]`` and recall by commitment."""
    truth = adata.obs["true_potency_cell"].to_numpy()
    mapped = (adata.obs[key].astype(str) == "potency").to_numpy()
    commitment = adata.obs["true_commitment"].to_numpy()
    return {
        f"f1{suffix}": round(float(2 * (mapped & truth).sum() / (mapped.sum() + truth.sum())), 3),
        f"precision{suffix}": round(float(truth[mapped].mean()), 3),
        f"recall_core{suffix}": round(float(mapped[truth & (commitment == 0)].mean()), 3),
        f"recall_transitional{suffix}": round(float(mapped[commitment > 0].mean()), 3),
        f"recall_committed_gt_0.5{suffix}": round(float(mapped[commitment > 0.5].mean()), 3),
    }


def _low_quality(query) -> dict:
    """Potency cells simulated as low quality (few counts, many mitochondrial): how many, how many mapped."""
    low = query.obs["true_low_quality"].to_numpy() & query.obs["true_potency_cell"].to_numpy()
    mapped = (query.obs["predicted"].astype(str) == "potency").to_numpy()
    return {
        "n_low_quality_potency": int(low.sum()),
        "n_low_quality_potency_mapped": int(mapped[low].sum()),
    }


def one(
    seed: int, cache: Path | None = None, qc: str | None = None, local: str = "default"
) -> dict:
    adata = mp.datasets.hard(random_state=seed)
    query = adata[adata.obs["set"] == "BM-test"].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = _reference(adata, seed, cache, qc)
        mp.tl.potency_population(ref, "vegf", local_representation=LOCAL[local])
        found = bool(ref.uns["potency_population"]["summary"]["found"])
        frozen = mp.tl.freeze_reference(ref, cluster_key="potency_population")
        bare = ref.copy()
        bare.uns["potency_population"] = copy.copy(dict(bare.uns["potency_population"]))
        bare.uns["potency_population"].pop("boundary", None)
        frozen_bare = mp.tl.freeze_reference(bare, cluster_key="potency_population")
        mp.tl.map_to_reference(query, frozen_bare, cluster_key="potency_population")
        row = {"seed": seed, "found": found, **_scores(query, "")}
        screened = query.copy()
        mp.pp.qc(screened, **_qc_kwargs(qc))  # as `mscpotency map` does (the reference's QC)
        mp.tl.map_to_reference(screened, frozen, cluster_key="potency_population")
        mp.tl.map_to_reference(query, frozen, cluster_key="potency_population")
    row |= _scores(query, "_rule")
    boundary = query.uns["predicted"]["boundary"]
    row["rule_applied"] = bool(boundary["applied"])
    row["n_to_population"] = boundary.get("n_to_population", 0)
    row["n_to_neighbour"] = boundary.get("n_to_neighbour", 0)
    row["share_unassigned"] = round(float((query.obs["predicted"] == "Unassigned").mean()), 3)
    row |= _low_quality(query)
    row |= {k: v for k, v in _scores(screened, "_rule_qc").items() if "committed" not in k}
    row["n_removed_by_qc"] = int(query.n_obs - screened.n_obs)
    row |= _damaged_removed(screened, "_rule_qc_quality", "predicted")
    row |= _scores(ref, "_reference", key="potency_population")
    row |= _damaged_removed(ref, "_reference_quality", "potency_population")
    return row


def _damaged_removed(adata, suffix: str, key: str) -> dict:
    """F1 once the cells of labels ``tl.cluster_quality`` flags as damaged are removed.

    What its warning asks a user to do; the flagged cells are counted, and how many of
    them the simulator made low quality.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        flagged = mp.tl.cluster_quality(adata, cluster_key=key, copy=True).obs["cluster_quality"]
    flagged = flagged.to_numpy()
    scores = {
        k: v for k, v in _scores(adata[~flagged], suffix, key).items() if "committed" not in k
    }
    return scores | {
        f"n_flagged{suffix}": int(flagged.sum()),
        f"n_flagged_simulated_low_quality{suffix}": int(
            adata.obs["true_low_quality"][flagged].sum()
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0-4")
    parser.add_argument("--cache", type=Path, default=None, help="saved reference analyses")
    parser.add_argument("--append", action="store_true", help="keep the rows already there")
    parser.add_argument(
        "--qc-thresholds",
        choices=["fixed", "mad"],
        default=None,
        help="pp.qc(thresholds=...) on both sides (default: the package's; files gain _qc<rule>)",
    )
    parser.add_argument(
        "--local-representation",
        choices=sorted(LOCAL),
        default="default",
        help="tl.potency_population(local_representation=...): on, off or the package's "
        "default (files gain _local<choice> unless default)",
    )
    args = parser.parse_args()
    rows = []
    qc = args.qc_thresholds
    local = args.local_representation
    name = "potency_population_mapping_hard" + ("" if qc is None else f"_qc{qc}")
    name += "" if local == "default" else f"_local{local}"
    csv = RESULTS / f"{name}.csv"
    if args.append and csv.exists():
        rows = pd.read_csv(csv).to_dict("records")
    for seed in _seeds(args.seeds):  # the files are rewritten after every seed
        rows.append(one(seed, args.cache, qc, local))
        print(rows[-1], flush=True)
        table = pd.DataFrame(rows).sort_values("seed")
        RESULTS.mkdir(exist_ok=True)
        table.to_csv(csv, index=False)
        _write(table, name, qc, keep_notes=args.append)


_CEILING = [
    "seed",
    "f1_rule",
    "precision_rule",
    "f1_rule_qc",
    "precision_rule_qc",
    "recall_core_rule_qc",
    "recall_transitional_rule_qc",
    "n_removed_by_qc",
    "f1_rule_qc_quality",
    "precision_rule_qc_quality",
    "recall_core_rule_qc_quality",
    "recall_transitional_rule_qc_quality",
    "n_flagged_rule_qc_quality",
    "n_flagged_simulated_low_quality_rule_qc_quality",
    "n_low_quality_potency",
    "n_low_quality_potency_mapped",
    "f1_reference",
    "precision_reference",
    "recall_core_reference",
    "recall_transitional_reference",
    "recall_committed_gt_0.5_reference",
    "f1_reference_quality",
    "precision_reference_quality",
    "recall_core_reference_quality",
    "recall_transitional_reference_quality",
    "n_flagged_reference_quality",
    "n_flagged_simulated_low_quality_reference_quality",
]


def _count(table: pd.DataFrame, column: str) -> str:
    values = table[column]
    return f"{int((values >= 0.9).sum())}/{len(table)} (lowest {values.min():.3f})"


def _write(table: pd.DataFrame, name: str, qc: str | None, *, keep_notes: bool) -> None:
    text = "# Held-out lots of the hard preset mapped onto the search's labels"
    text += "\n\n" if qc is None else f", pp.qc(thresholds={qc!r}) on both sides\n\n"
    text += (
        f"- F1 >= 0.9: with the boundary rule {_count(table, 'f1_rule')}, label transfer alone "
        f"{_count(table, 'f1')}; the query QC'd first (as `mscpotency map` does) "
        f"{_count(table, 'f1_rule_qc')}; the query QC'd and the cells of labels "
        "`tl.cluster_quality` flags as damaged removed (what its warning asks) "
        f"{_count(table, 'f1_rule_qc_quality')}\n"
        f"- the reference population itself (training lots): {_count(table, 'f1_reference')}"
        f" (damaged cells removed: {_count(table, 'f1_reference_quality')}); "
        f"mapped minus reference F1: median "
        f"{np.median(table['f1_rule'] - table['f1_reference']):+.3f}\n"
        f"- median recall of transitional potency cells: {np.median(table['recall_transitional_rule']):.3f}"
        f" with the rule, {np.median(table['recall_transitional']):.3f} without\n\n"
    )
    main = [c for c in table.columns if c not in _CEILING or c in ("seed", "f1_rule")]
    text += table[main].to_markdown(index=False) + "\n\n"
    text += (
        "Where it is lost: the query QC'd, low-quality potency cells, the reference population\n\n"
    )
    text += table[[c for c in _CEILING if c in table]].to_markdown(index=False) + "\n"
    write_results(RESULTS / f"{name}.md", text, keep_notes=keep_notes)


if __name__ == "__main__":
    main()
