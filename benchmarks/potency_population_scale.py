"""Seconds of ``tl.potency_population`` at 10^5 cells (issue 12: the search's cost).

The hard preset's biology on 11 bone-marrow lots of 9,100 cells (100,100 cells, 2,000
genes), seed 0: the reference analysis with defaults (approximate kNN above 50,000 cells),
then the search with ``local_representation=False`` and, with ``--local-representation``,
with ``True`` (the default on this graph) on the same analysis. Prints the seconds of each
and what each search found.

    .venv/bin/python benchmarks/potency_population_scale.py [--seed 0] [--local-representation]
"""

from __future__ import annotations

import argparse
import time
import warnings

import mscpotency as mp
from mscpotency.datasets import SetSpec, hard_config, simulate_lots


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--local-representation", action="store_true")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    start = time.perf_counter()
    config = hard_config(sets=(SetSpec("BM-train", 11, "BM", "BM"),), n_cells_per_lot=9100)
    adata = simulate_lots(config, random_state=args.seed)
    print("simulated", adata.shape, f"{time.perf_counter() - start:.0f} s", flush=True)
    start = time.perf_counter()
    mp.pp.qc(adata)
    mp.pp.preprocess(adata)
    mp.tl.cluster(adata, n_clusters=8)
    mp.tl.lot_fractions(adata)
    mp.tl.potency_association(adata)
    print(f"reference analysis {time.perf_counter() - start:.0f} s", flush=True)
    _search(adata, local_representation=False)
    if args.local_representation:
        _search(adata, local_representation=True)


def _search(adata, *, local_representation: bool) -> None:
    """Run the search, print its seconds, what it found and its F1 against the truth."""
    start = time.perf_counter()
    mp.tl.potency_population(adata, local_representation=local_representation)
    summary = adata.uns["potency_population"]["summary"]
    splits = int(adata.uns["potency_population"]["candidates"]["lot_split"].sum())
    truth = adata.obs["true_potency_cell"].to_numpy()
    found = (adata.obs["potency_population"] == "potency").to_numpy()
    f1 = 2 * (found & truth).sum() / (found.sum() + truth.sum())
    print(
        f"search (local_representation={local_representation}) "
        f"{time.perf_counter() - start:.1f} s: found={summary['found']}, "
        f"{summary['n_candidates']} candidates ({splits} lot splits set aside), "
        f"p={summary['pvalue']:.3g}, F1={f1:.3f}",
        flush=True,
    )


if __name__ == "__main__":
    main()
