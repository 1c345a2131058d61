"""Do mapped held-out lots recover the potency population the search found? (issue 12)

For each seed of the hard preset: the reference analysis and ``tl.potency_population`` on
the 11 training lots, ``tl.freeze_reference`` on the search's labels, then
``tl.map_to_reference`` (anchors, defaults) of the 4 held-out bone-marrow lots. F1 of the
cells mapped to ``'potency'`` against the true potency cells, and the recall among the
transitional potency cells (commitment > 0, and > 0.5).

    .venv/bin/python benchmarks/potency_population_mapping.py --seeds 0-2
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import pandas as pd

import mscpotency as mp

RESULTS = Path(__file__).parent / "results"


def one(seed: int) -> dict:
    adata = mp.datasets.hard(random_state=seed)
    ref = adata[adata.obs["set"] == "BM-train"].copy()
    query = adata[adata.obs["set"] == "BM-test"].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mp.pp.qc(ref)
        mp.pp.preprocess(ref)
        mp.tl.cluster(ref, n_clusters=8)
        mp.tl.lot_fractions(ref)
        mp.tl.potency_association(ref, "vegf")
        mp.tl.potency_population(ref, "vegf")
        found = bool(ref.uns["potency_population"]["summary"]["found"])
        frozen = mp.tl.freeze_reference(ref, cluster_key="potency_population")
        mp.tl.map_to_reference(query, frozen, cluster_key="potency_population")
    truth = query.obs["true_potency_cell"].to_numpy()
    mapped = (query.obs["predicted"].astype(str) == "potency").to_numpy()
    commitment = query.obs["true_commitment"].to_numpy()
    return {
        "seed": seed,
        "found": found,
        "f1_mapped": round(float(2 * (mapped & truth).sum() / (mapped.sum() + truth.sum())), 3),
        "recall_core": round(float(mapped[truth & (commitment == 0)].mean()), 3),
        "recall_transitional": round(float(mapped[commitment > 0].mean()), 3),
        "recall_committed_gt_0.5": round(float(mapped[commitment > 0.5].mean()), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0-2")
    args = parser.parse_args()
    low, high = (int(v) for v in args.seeds.split("-"))
    rows = []
    for seed in range(low, high + 1):
        rows.append(one(seed))
        print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    RESULTS.mkdir(exist_ok=True)
    table.to_csv(RESULTS / "potency_population_mapping_hard.csv", index=False)
    text = "# Held-out lots of the hard preset mapped onto the search's labels\n\n"
    text += table.to_markdown(index=False) + "\n"
    (RESULTS / "potency_population_mapping_hard.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
