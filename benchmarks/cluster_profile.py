"""Profile ``tl.cluster(n_clusters=8)``: kNN graph, graph construction, each Leiden run.

Usage (from the repository root; ``nice`` because the machine is shared)::

    nice -n 10 .venv/bin/python benchmarks/cluster_profile.py --cells 10000
    nice -n 10 .venv/bin/python benchmarks/cluster_profile.py --cells 100000

What it does
------------
1. Simulates ``--cells`` cells of the study preset in ``--lots`` lots (bone-marrow arm, 24 lots,
   3,000 genes by default: the shape of issue 19's 10^5-cell reference), runs ``pp.qc`` and
   ``pp.preprocess`` with their defaults, and caches ``obsm['X_pca']`` with the truth columns
   (``true_subpopulation``, ``true_potency_cell``) under ``--data-dir``, so the profile itself
   starts from the embedding.
2. Times, in this process, each piece of the clustering step: the kNN search (exact, and the
   approximate search with its recall against the exact neighbours), the connectivities, the
   igraph graph, and every Leiden run of the resolution search (resolution, clusters, seconds),
   then ``tl.cluster(n_clusters=8)`` end to end with ARI vs the true subpopulations.
3. Prints one Markdown report (append it to ``benchmarks/results/cluster_profile.md``).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np


def _prepare(args) -> Path:
    path = Path(args.data_dir) / f"pca_{args.cells}_{args.lots}_{args.genes}_{args.seed}.npz"
    if path.exists():
        return path
    from dataclasses import replace

    import mscpotency as mp
    from mscpotency.datasets import SetSpec, simulate_lots, study_config

    config = replace(
        study_config(n_genes=args.genes),
        sets=(SetSpec("BM-train", args.lots, "BM", "BM"),),
        n_cells_per_lot=args.cells // args.lots,
    )
    start = time.perf_counter()
    adata = simulate_lots(config, random_state=args.seed)
    print(f"simulated {adata.n_obs} cells in {time.perf_counter() - start:.1f} s", flush=True)
    del adata.layers["counts"]
    mp.pp.qc(adata)
    start = time.perf_counter()
    mp.pp.preprocess(adata)
    print(f"preprocessed in {time.perf_counter() - start:.1f} s", flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_embedding(adata, path)
    return path


def save_embedding(adata, path: Path) -> None:
    """``obsm['X_pca']`` and the truth columns: the cache this profile starts from."""
    np.savez(
        path,
        X_pca=adata.obsm["X_pca"],
        truth=adata.obs["true_subpopulation"].astype(str).to_numpy(),
        potency=adata.obs["true_potency_cell"].to_numpy(dtype=bool),
    )


def _adata(path: Path):
    from anndata import AnnData

    data = np.load(path, allow_pickle=True)
    adata = AnnData(obsm={"X_pca": data["X_pca"]}, shape=(data["X_pca"].shape[0], 0))
    adata.obs["truth"] = data["truth"]
    adata.obs["potency"] = data["potency"]
    return adata


def _timed(label: str, call, rows: list):
    start = time.perf_counter()
    out = call()
    rows.append((label, time.perf_counter() - start))
    return out


def _knn_profile(adata, rows: list, k: int = 15) -> None:
    """Exact and approximate kNN (recall of the approximate against the exact)."""
    from pynndescent import NNDescent
    from sklearn.neighbors import NearestNeighbors

    X = adata.obsm["X_pca"]
    exact = _timed(
        "kNN exact (sklearn, brute/auto)",
        lambda: NearestNeighbors(n_neighbors=k).fit(X).kneighbors(X, return_distance=False),
        rows,
    )
    approx = _timed(
        "kNN approximate (pynndescent, scanpy's settings)",
        lambda: NNDescent(X, n_neighbors=k, random_state=0, n_jobs=1).neighbor_graph[0],
        rows,
    )
    hits = sum(len(np.intersect1d(a, b)) for a, b in zip(approx, exact, strict=True))
    rows.append(("recall of approximate kNN vs exact", hits / exact.size))


def _search_profile(adata, rows: list, leiden_rows: list) -> None:
    """Each Leiden run of the resolution search, through tl.cluster's debug log."""
    import mscpotency as mp

    class Collect(logging.Handler):
        def emit(self, record):
            leiden_rows.append((record.created, record.getMessage()))

    handler = Collect(level=logging.DEBUG)
    logger = logging.getLogger("mscpotency")
    old = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        start = time.perf_counter()
        mp.tl.cluster(adata, n_clusters=8)
        rows.append(("tl.cluster(n_clusters=8), end to end", time.perf_counter() - start))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)


def _compare_methods(adata, methods: list[str]) -> list[tuple]:
    """``tl.cluster(n_clusters=8)`` once per ``knn_method``, back to back in this process.

    Wall and CPU seconds (CPU time is the fairer figure on a shared machine: it does not
    count the time other processes hold the cores), the load average, and the quality of
    the labels against the simulated truth.
    """
    import os

    import mscpotency as mp

    rows = []
    for method in methods:
        work = adata.copy()
        wall, cpu, load = time.perf_counter(), time.process_time(), os.getloadavg()[0]
        mp.tl.cluster(work, n_clusters=8, knn_method=method)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        ari, f1 = _quality(work)
        rows.append((method, wall, cpu, load, ari, f1, work.uns["cluster"]["resolution"]))
    return rows


def _quality(adata) -> tuple[float, float]:
    """ARI vs the true subpopulations, F1 of the most potency-rich cluster vs the potency cells."""
    from sklearn.metrics import adjusted_rand_score, f1_score

    labels = adata.obs["cluster"].astype(str)
    share = adata.obs.groupby("cluster", observed=True)["potency"].mean()
    return (
        adjusted_rand_score(adata.obs["truth"], labels),
        f1_score(adata.obs["potency"], labels == share.idxmax()),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=10_000)
    parser.add_argument("--lots", type=int, default=24)
    parser.add_argument("--genes", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-knn", action="store_true", help="skip the separate kNN timings")
    parser.add_argument(
        "--methods",
        default="",
        help="comma-separated knn_method values: time tl.cluster end to end with each, then stop",
    )
    parser.add_argument("--data-dir", default=str(Path(tempfile.gettempdir()) / "mscpotency-bench"))
    args = parser.parse_args()
    import mscpotency as mp

    mp.settings.progress = False  # a report, not a terminal session
    adata = _adata(_prepare(args))
    from sklearn.metrics import adjusted_rand_score, f1_score

    if args.methods:
        print(f"\n### {adata.n_obs} cells: tl.cluster(n_clusters=8) per knn_method\n")
        print(
            "| knn_method | wall s | CPU s | load average | ARI vs truth | potency F1 | resolution |"
        )
        print("|---|---|---|---|---|---|---|")
        for method, wall, cpu, load, ari, f1, res in _compare_methods(
            adata, args.methods.split(",")
        ):
            print(
                f"| {method} | {wall:.1f} | {cpu:.1f} | {load:.1f} | {ari:.3f} | {f1:.3f} | {res:.4f} |"
            )
        return
    rows: list = []
    leiden_rows: list = []
    if not args.no_knn:
        _knn_profile(adata, rows)
    _search_profile(adata, rows, leiden_rows)
    labels = adata.obs["cluster"].astype(str)
    ari = adjusted_rand_score(adata.obs["truth"], labels)
    share = adata.obs.groupby("cluster", observed=True)["potency"].mean()
    f1 = f1_score(adata.obs["potency"], labels == share.idxmax())
    print(f"\n### {adata.n_obs} cells, {args.lots} lots, {args.genes} genes (seed {args.seed})\n")
    print("| piece | value |\n|---|---|")
    for label, value in rows:
        print(f"| {label} | {value:.3f} |")
    print(f"| ARI vs true subpopulations | {ari:.3f} |")
    print(f"| F1 of the most potency-rich cluster vs true potency cells | {f1:.3f} |")
    print(f"| resolution | {adata.uns['cluster']['resolution']:.4f} |")
    print("\nLog of tl.cluster (debug):\n")
    first = leiden_rows[0][0] if leiden_rows else 0.0
    for created, message in leiden_rows:
        print(f"- +{created - first:6.2f} s  {message}")


if __name__ == "__main__":
    main()
