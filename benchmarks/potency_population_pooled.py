"""What would the search itself call on the held-out lots? The bar for the mapped lots (issue 12)

Issue 12 asks the held-out lots mapped onto the search's population to reach F1 >= 0.9.
The mapping transfers the labels the search gave the 11 training lots; it cannot be
expected to call the held-out lots better than the search would have, had those lots been
in the study. This script runs the whole analysis (``pp.qc``, ``pp.preprocess``,
``tl.cluster`` with 8 clusters, ``tl.lot_fractions``, ``tl.potency_association``,
``tl.potency_population``, all defaults) on the training and held-out bone-marrow lots
pooled, and scores the population found on the held-out lots' cells:

- ``f1_pooled_test_lots``: F1 against the true potency cells among the held-out lots'
  cells (QC'd as part of the pool); ``_quality``: the cells of labels
  ``tl.cluster_quality`` flags as damaged removed, as ``f1_mapped_quality`` is read;
- ``f1_pooled_train_lots``: the same on the training lots' cells (against the search on the
  training lots alone, ``f1_search`` of ``potency_population_ceiling.md``);
- ``f1_mapped_quality``, ``ceiling_mapped_quality``: the mapped lots' F1 of the package and
  of a classifier trained on the truth, read from ``potency_population_ceiling.csv``
  (run it first for the same seeds) and put beside the pooled figure.

    .venv/bin/python benchmarks/potency_population_pooled.py --seeds 0-29
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import pandas as pd
from _results import write_table
from _truth import population_f1
from potency_population import _seeds
from potency_population_mapping import _reference

import mscpotency as mp

mp.settings.progress = False

RESULTS = Path(__file__).parent / "results"
NAME = "potency_population_pooled"
CEILING = RESULTS / "potency_population_ceiling.csv"


def _pooled_analysis(seed: int):
    adata = mp.datasets.hard(random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pooled = _reference(adata, seed, None, sets=("BM-train", "BM-test"))
        mp.tl.potency_population(pooled, "vegf")
        damaged = mp.tl.cluster_quality(pooled, cluster_key="potency_population", copy=True)
    return pooled, damaged.obs["cluster_quality"].to_numpy()


def one(seed: int) -> dict:
    start = time.perf_counter()
    pooled, damaged = _pooled_analysis(seed)
    truth = pooled.obs["true_potency_cell"].to_numpy()
    called = (pooled.obs["potency_population"].astype(str) == "potency").to_numpy()
    test = (pooled.obs["set"] == "BM-test").to_numpy()
    kept = test & ~damaged
    return {
        "seed": seed,
        "found": bool(pooled.uns["potency_population"]["summary"]["found"]),
        "f1_pooled_test_lots": population_f1(called[test], truth[test], digits=3),
        "f1_pooled_test_lots_quality": population_f1(called[kept], truth[kept], digits=3),
        "f1_pooled_train_lots": population_f1(called[~test], truth[~test], digits=3),
        "seconds": round(time.perf_counter() - start, 1),
    }


def _beside_the_mapping(table: pd.DataFrame) -> pd.DataFrame:
    columns = ["seed", "f1_mapped_quality", "ceiling_mapped_quality"]
    if not CEILING.exists():
        return table
    return table.merge(pd.read_csv(CEILING)[columns], on="seed", how="left")


def _summary(table: pd.DataFrame) -> str:
    pooled = table["f1_pooled_test_lots_quality"]
    lines = [
        f"- the search on the pooled lots, F1 >= 0.9 on the held-out lots: "
        f"{int((pooled >= 0.9).sum())}/{len(table)}"
    ]
    if "f1_mapped_quality" in table:
        gap = table["f1_mapped_quality"] - pooled
        lines.append(
            f"- mapped minus pooled: median {gap.median():+.3f}, range {gap.min():+.3f} to "
            f"{gap.max():+.3f}; mapped >= 0.9 on {int((table['f1_mapped_quality'] >= 0.9).sum())}"
            f"/{len(table)}"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0-4")
    args = parser.parse_args()
    rows = []
    for seed in _seeds(args.seeds):  # the files are rewritten after every seed
        rows.append(one(seed))
        print(rows[-1], flush=True)
        table = _beside_the_mapping(pd.DataFrame(rows).sort_values("seed"))
        write_table(
            RESULTS / NAME,
            table,
            title="The search on the training and held-out lots pooled: the bar for the mapping",
            command=f"python benchmarks/{NAME}.py --seeds {args.seeds}",
            summary=_summary(table),
        )


if __name__ == "__main__":
    main()
