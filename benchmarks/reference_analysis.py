"""Benchmark: the mscpotency reference analysis beside the same steps in bare scanpy.

Usage (from the repository root)::

    .venv/bin/python benchmarks/reference_analysis.py --cells 10000
    .venv/bin/python benchmarks/reference_analysis.py --cells 100000
    .venv/bin/python benchmarks/reference_analysis.py --cells 1000000 --dask   # out-of-core path
    # ... on two worker processes, as on a real cluster (the measured configuration)
    .venv/bin/python benchmarks/reference_analysis.py --cells 1000000 --dask --processes \
        --workers 2 --threads 1 --memory-limit 2GiB
    # ... the same script against a running scheduler (a real cluster's, or one started with
    # `dask scheduler` and `dask worker tcp://HOST:8786` on machines that see the files)
    .venv/bin/python benchmarks/reference_analysis.py --cells 1000000 --dask \
        --scheduler tcp://HOST:8786 --data-dir /shared/mscpotency-bench

What it does
------------
1. Simulates ``--cells`` cells (``mscpotency.datasets.simulate_lots`` with one bone-marrow
   arm of ``cells / 1500`` lots of 1,500 cells, 2,000 genes, fixed seed) and caches the raw
   counts (CSR in ``X``, no other layer, as a reader would return them) as one ``.h5ad``
   under ``--data-dir``. Above 200,000 cells the data are written as per-lot ``.h5ad``
   files instead (see ``--dask``), generated chunk by chunk so memory stays bounded.
2. Runs every pipeline in its own fresh Python process (so imports, numba compilation and
   peak memory are per pipeline), ``--repeat`` times in alternating order; each process
   reads the cached file, runs the steps and reports wall time per step (``perf_counter``)
   and memory: ``ru_maxrss`` of the process and, per step, the largest RSS seen by a
   sampling thread (every 5 ms, ``psutil``).
3. Writes ``benchmarks/results/reference_<cells>.csv`` (one row per pipeline x step x run)
   and ``reference_<cells>.md`` (the summary table: best-of-runs wall time per step, total,
   ratio ours / bare, peak RSS, the size of the count matrix and peak / counts).

Pipelines
---------
``ours``
    ``pp.qc`` -> ``pp.preprocess`` -> ``tl.cluster(n_clusters=8)`` -> ``tl.lot_fractions``
    -> ``tl.composition_deviation`` -> ``tl.potency_association("vegf")`` ->
    ``tl.potency_markers``, each with its default options and provenance record.
``bare``
    The same steps written directly in scanpy/pandas/scipy, as a scanpy user would:
    ``calculate_qc_metrics`` + the same cell/gene filters; ``layers['counts'] = X.copy()``
    (ours keeps the counts too), ``normalize_total``, ``log1p``, ``highly_variable_genes``
    (same flavour and number), ``pca`` (same components, seed, HVG mask); ``neighbors``
    (same k, the same exact/approximate choice) and ONE ``leiden`` (igraph, 2 iterations)
    at the resolution that our search found (read from the ``ours`` run), i.e. bare scanpy
    is given the answer of our resolution search for free: the strictest comparison;
    ``pd.crosstab`` fractions; log2 ratio to the pooled composition; ``scipy.stats.spearmanr``
    per cluster + BH; ``rank_genes_groups`` (wilcoxon, potency cluster vs rest, pts).
``bare_search``
    As ``bare`` but finds the 8-cluster resolution with the same bisection a scanpy user
    would write (``sc.tl.leiden`` at each step, which rebuilds the igraph graph each time).

Ours does more than bare scanpy in the lot-level steps (exact / permutation p-values,
bootstrap CI, leave-one-lot-out, simulated null of the composition deviation, per-lot
marker consistency); those are lot-level computations whose cost does not grow with cells.

Memory: at 10^6 cells the count matrix alone is ~8.6 GB (2,000 genes, ~54% non-zero), so
the in-memory pipelines are not run there; ``--dask`` runs the out-of-core path
(``docs/scale.md``) with a ``LocalCluster`` whose worker memory limit keeps the whole run
below ~10 GiB (``--memory-limit``): this machine is shared. By default the one worker is
in the benchmark process (threads); ``--processes`` starts ``--workers`` worker processes
instead and the memory reported is the benchmark process plus its workers. The package's
own timing lines (each pass of the preprocessing, the kNN graph, each Leiden run) go to
stderr; ``--save-pca`` keeps the embedding for ``benchmarks/cluster_profile.py``.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CELLS_PER_LOT = 1500
N_CLUSTERS = 8
POTENCY = "vegf"
STEPS = (
    "load",
    "qc",
    "preprocess",
    "cluster",
    "lot_fractions",
    "composition_deviation",
    "potency_association",
    "potency_markers",
)
#: above this many cells the data are written as per-lot files, generated in chunks
CHUNKED_ABOVE = 200_000


# --------------------------------------------------------------------------------------
# memory measurement
# --------------------------------------------------------------------------------------
class RssSampler:
    """Largest resident set size seen since the last ``reset`` (sampled every ``interval`` s)."""

    def __init__(self, interval: float = 0.005, *, children: bool = False) -> None:
        import psutil

        self._process = psutil.Process()
        self._interval = interval
        self._children = children
        self._peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def rss(self) -> int:
        """This process's RSS, plus its descendants' (Dask worker processes) with ``children=True``."""
        total = self._process.memory_info().rss
        if not self._children:
            return total
        for child in self._process.children(recursive=True):
            try:
                total += child.memory_info().rss
            except Exception:  # a worker process that just exited
                continue
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, self.rss())
            time.sleep(self._interval)

    def reset(self) -> None:
        self._peak = self.rss()

    def peak(self) -> int:
        return max(self._peak, self.rss())

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def ru_maxrss_bytes() -> int:
    value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return value if sys.platform == "darwin" else value * 1024


# --------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------
def _config(n_lots: int, n_genes: int):
    from dataclasses import replace

    from mscpotency.datasets import SetSpec, study_config

    return replace(
        study_config(n_genes=n_genes),
        sets=(SetSpec("BM-train", n_lots, "BM", "BM"),),
        preset="benchmark",
    )


def _strip(adata):
    """Keep what a reader returns: raw counts in X, per-cell and lot-level obs, var names."""
    from anndata import AnnData

    out = AnnData(X=adata.X, obs=adata.obs.copy(), var=adata.var[[]].copy())
    return out


def simulate_in_memory(n_cells: int, n_genes: int, seed: int, path: Path) -> None:
    from mscpotency.datasets import simulate_lots

    n_lots = max(3, round(n_cells / CELLS_PER_LOT))
    adata = simulate_lots(_config(n_lots, n_genes), random_state=seed)
    del adata.layers["counts"]
    _strip(adata).write_h5ad(path)


def simulate_lot_files(n_cells: int, n_genes: int, seed: int, folder: Path) -> None:
    """Per-lot ``.h5ad`` files for ``n_cells`` cells, one lot in memory at a time.

    ``mscpotency.datasets.iter_lots``: the population of ``simulate_lots`` (same seed), each
    lot drawn from its own random stream, so any number of distinct lots of one population
    is written lot by lot. Raw counts only (CSR in ``X``), as a per-lot reader expects.
    """
    from mscpotency.datasets import iter_lots

    folder.mkdir(parents=True, exist_ok=True)
    n_lots = max(3, round(n_cells / CELLS_PER_LOT))
    for lot in iter_lots(_config(n_lots, n_genes), random_state=seed):
        name = str(lot.obs["lot"].iloc[0])
        _strip(lot).write_h5ad(folder / f"{name}.h5ad")


def _simulator_version() -> str:
    """A short hash of the simulator's and the data writer's source: a change never reuses a stale cache."""
    import hashlib
    import inspect

    from mscpotency.datasets import _simulate

    source = inspect.getsource(_simulate) + inspect.getsource(simulate_lot_files)
    return hashlib.blake2b(source.encode(), digest_size=4).hexdigest()


def ensure_data(args) -> Path:
    folder = Path(args.data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    version = _simulator_version()
    if args.cells > CHUNKED_ABOVE or args.dask:
        path = folder / f"lots_{args.cells}_{args.genes}_{args.seed}_{version}"
        if not (path / "_done").exists():
            print(f"simulating {args.cells} cells as per-lot files in {path} ...", flush=True)
            start = time.perf_counter()
            simulate_lot_files(args.cells, args.genes, args.seed, path)
            (path / "_done").write_text(f"{time.perf_counter() - start:.1f} s\n")
        return path
    path = folder / f"cells_{args.cells}_{args.genes}_{args.seed}_{version}.h5ad"
    if not path.exists():
        print(f"simulating {args.cells} cells into {path} ...", flush=True)
        start = time.perf_counter()
        simulate_in_memory(args.cells, args.genes, args.seed, path)
        print(f"  done in {time.perf_counter() - start:.1f} s", flush=True)
    return path


# --------------------------------------------------------------------------------------
# the pipelines (run inside a worker process)
# --------------------------------------------------------------------------------------
def _steps_ours(adata, ctx):
    import mscpotency as mp

    yield "qc", lambda: mp.pp.qc(adata)
    yield "preprocess", lambda: mp.pp.preprocess(adata)
    yield "cluster", lambda: mp.tl.cluster(adata, n_clusters=N_CLUSTERS)
    yield "lot_fractions", lambda: mp.tl.lot_fractions(adata)
    yield "composition_deviation", lambda: mp.tl.composition_deviation(adata)
    yield "potency_association", lambda: mp.tl.potency_association(adata, POTENCY)
    yield "potency_markers", lambda: mp.tl.potency_markers(adata)
    ctx["resolution"] = adata.uns["cluster"]["resolution"]
    ctx["labels"] = adata.obs["cluster"].astype(str)
    ctx["potency_cluster"] = adata.uns["potency_association"]["potency_cluster"]
    ctx["top_markers"] = adata.uns["potency_markers"]["table"]["gene"].head(5).tolist()


def _bare_qc(adata):
    import numpy as np
    import scanpy as sc

    adata.var["mt"] = adata.var_names.str.upper().str.startswith("MT-")
    sc.pp.calculate_qc_metrics(adata, qc_vars=["mt"], percent_top=None, log1p=False, inplace=True)
    keep = (adata.obs["n_genes_by_counts"].to_numpy() >= 200) & (
        adata.obs["pct_counts_mt"].to_numpy() <= 20
    )
    adata._inplace_subset_obs(keep)
    detected = np.asarray((adata.X > 0).sum(axis=0)).ravel()
    if (detected < 3).any():
        adata._inplace_subset_var(detected >= 3)


def _bare_preprocess(adata):
    import scanpy as sc

    adata.layers["counts"] = adata.X.copy()
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    sc.pp.highly_variable_genes(adata, n_top_genes=min(2000, adata.n_vars), flavor="seurat")
    n_comps = min(30, int(adata.var["highly_variable"].sum()) - 1, adata.n_obs - 1)
    sc.tl.pca(adata, n_comps=n_comps, mask_var="highly_variable", random_state=0)


def _bare_neighbors(adata):
    import scanpy as sc

    from mscpotency.tl._population._cluster import _EXACT_KNN_MAX_CELLS

    exact = adata.n_obs <= _EXACT_KNN_MAX_CELLS  # the same choice as tl.cluster(knn_method="auto")
    sc.pp.neighbors(
        adata,
        n_neighbors=15,
        use_rep="X_pca",
        random_state=0,
        transformer="sklearn" if exact else None,
    )


def _bare_leiden(adata, resolution):
    import scanpy as sc

    sc.tl.leiden(
        adata,
        resolution=resolution,
        flavor="igraph",
        n_iterations=2,
        directed=False,
        random_state=0,
    )


def _bare_cluster_search(adata):
    """The bisection a scanpy user would write to get N_CLUSTERS clusters."""
    import numpy as np

    low, high = np.log(0.01), np.log(5.0)
    _bare_neighbors(adata)
    for _ in range(30):
        middle = (low + high) / 2
        _bare_leiden(adata, float(np.exp(middle)))
        found = adata.obs["leiden"].nunique()
        if found == N_CLUSTERS:
            return
        low, high = (middle, high) if found < N_CLUSTERS else (low, middle)


def _bare_association(adata, ctx):
    import pandas as pd
    from scipy import stats

    fractions = ctx["fractions"]
    potency = adata.obs.groupby("lot", observed=True)[POTENCY].first().reindex(fractions.index)
    rows = {c: stats.spearmanr(fractions[c], potency) for c in fractions.columns}
    table = pd.DataFrame(
        {
            "rho": {c: r.statistic for c, r in rows.items()},
            "pvalue": {c: r.pvalue for c, r in rows.items()},
        }
    )
    table["fdr"] = stats.false_discovery_control(table["pvalue"].fillna(1.0).to_numpy())
    ctx["potency_cluster"] = str(table["rho"].idxmax())
    ctx["association"] = table


def _steps_bare(adata, ctx, *, search: bool):
    import numpy as np
    import pandas as pd
    import scanpy as sc

    yield "qc", lambda: _bare_qc(adata)
    yield "preprocess", lambda: _bare_preprocess(adata)
    if search:
        yield "cluster", lambda: _bare_cluster_search(adata)
    else:
        yield "cluster", lambda: (_bare_neighbors(adata), _bare_leiden(adata, ctx["resolution"]))

    def fractions():
        ctx["fractions"] = pd.crosstab(adata.obs["lot"], adata.obs["leiden"], normalize="index")

    def deviation():
        pooled = adata.obs["leiden"].value_counts(normalize=True).reindex(ctx["fractions"].columns)
        ctx["deviation"] = np.log2(ctx["fractions"].clip(lower=1e-12) / pooled)

    yield "lot_fractions", fractions
    yield "composition_deviation", deviation
    yield "potency_association", lambda: _bare_association(adata, ctx)
    yield (
        "potency_markers",
        lambda: sc.tl.rank_genes_groups(
            adata,
            "leiden",
            groups=[ctx["potency_cluster"]],
            reference="rest",
            method="wilcoxon",
            n_genes=20,
            pts=True,
            use_raw=False,
        ),
    )
    ctx["labels"] = adata.obs["leiden"].astype(str)


def warm_up(args) -> None:
    """Run the pipeline once, untimed, on 3 lots of the data (4,500 cells).

    First calls compile numba kernels (umap's fuzzy simplicial set, pynndescent, scanpy's
    sparse mean/variance) and import lazily loaded modules: 10-30 s that both pipelines pay
    once per process and that says nothing about how either scales. The approximate kNN
    path (pynndescent, used above 150,000 cells) is compiled too when the data are that large.
    """
    import anndata as ad
    import scanpy as sc

    from mscpotency.tl._population._cluster import _EXACT_KNN_MAX_CELLS

    backed = ad.read_h5ad(args.data, backed="r")
    n_cells = backed.n_obs
    lots = backed.obs["lot"].cat.categories[:3]
    small = backed[backed.obs["lot"].isin(lots).to_numpy()].to_memory()
    backed.file.close()
    ctx = {"resolution": 0.2}
    steps = (
        _steps_ours(small, ctx) if args.worker == "ours" else _steps_bare(small, ctx, search=False)
    )
    for _, call in steps:
        call()
    if n_cells > _EXACT_KNN_MAX_CELLS:
        sc.pp.neighbors(
            small, n_neighbors=15, use_rep="X_pca", transformer="pynndescent", key_added="warm"
        )


def _count_bytes_on_disk(folder: Path) -> int:
    """Data + indices + indptr bytes of the CSR counts of every lot file (read from h5 metadata)."""
    import h5py

    total = 0
    for path in sorted(folder.glob("*.h5ad")):
        with h5py.File(path, "r") as f:
            total += sum(
                f["X"][k].size * f["X"][k].dtype.itemsize for k in ("data", "indices", "indptr")
            )
    return total


def _potency_summary(adata, potency_cluster: str) -> dict:
    """How well the run found the simulated potency population, and its top markers."""
    import mscpotency as mp

    inside = (adata.obs["cluster"].astype(str) == potency_cluster).to_numpy()
    truth = adata.obs["true_potency_cell"].to_numpy(dtype=bool)
    association = mp.get.potency_association(adata).loc[potency_cluster]
    summary = {
        "f1_vs_true_potency_cells": float(
            2 * (inside & truth).sum() / (inside.sum() + truth.sum())
        ),
        "rho": float(association["rho"]),
        "pvalue": float(association["pvalue"]),
        "pvalue_method": str(association.get("pvalue_method", "")),
    }
    if "potency_markers" in adata.uns:
        summary["top_markers"] = ", ".join(mp.get.potency_markers(adata)["gene"].head(5))
    return summary


def _cluster_options(args) -> dict:
    """The ``LocalCluster`` keywords of a ``--dask`` run."""
    return {
        "n_workers": args.workers if args.processes else 1,
        "threads_per_worker": args.threads,
        "processes": bool(args.processes),
        "memory_limit": args.memory_limit,
    }


def _cluster_line(args) -> str:
    """How the Dask workers ran, for the report."""
    if args.scheduler:
        return (
            f"- `dask.distributed.Client({args.scheduler!r})`: workers started outside the "
            f"benchmark; RSS = the benchmark process only; {os.cpu_count()} cores on this machine"
        )
    options = ", ".join(f"{k}={v!r}" for k, v in _cluster_options(args).items())
    where = (
        "RSS = the benchmark process + its worker processes"
        if args.processes
        else "every byte in the benchmark process"
    )
    return f"- `dask.distributed.LocalCluster({options})`; {os.cpu_count()} cores; {where}"


def worker_dask(args) -> None:
    """The out-of-core path on a LocalCluster inside this process, and (--compare-lots) the
    in-memory path on the first lots beside it.
    """
    # with worker processes, the sampler adds their RSS (every 50 ms: walking the process tree
    # costs more than reading one RSS)
    sampler = RssSampler(0.05, children=True) if args.processes else RssSampler()
    rss_start = sampler.rss()
    # imported before the baseline RSS is read
    import anndata  # noqa: F401
    import dask
    import numpy  # noqa: F401
    import pandas  # noqa: F401
    from dask.distributed import Client, LocalCluster
    from sklearn.metrics import adjusted_rand_score

    import mscpotency as mp

    # the package's per-step timings (normalise, HVG, PCA passes, kNN, each Leiden run, ...)
    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s", level=logging.WARNING)
    logging.getLogger("mscpotency").setLevel(logging.DEBUG)
    rss_imports = sampler.rss()
    folder = Path(args.data)
    # in-process (one worker, its threads share this process's memory) or, with --processes,
    # worker processes as a user with a real cluster runs them; each worker's memory limit
    # makes Dask spill to disk before the machine's memory runs out
    # --scheduler: the same script against a running scheduler (workers started elsewhere)
    cluster = (
        None if args.scheduler else LocalCluster(**_cluster_options(args), dashboard_address=None)
    )
    client = Client(args.scheduler or cluster)
    dask.config.set({"array.slicing.split_large_chunks": False})
    records: list[dict] = []
    state: dict = {}

    failures: dict[str, str] = {}

    def timed(name, call):
        """Time one step; a failing step is recorded (and the run goes on) instead of losing the run."""
        sampler.reset()
        start = time.perf_counter()
        try:
            call()
        except Exception as error:
            failures[name] = f"{type(error).__name__}: {str(error)[:160]}"
            print(f"    {name} FAILED: {failures[name]}", flush=True)
            return
        records.append(
            {"step": name, "seconds": time.perf_counter() - start, "peak_rss": sampler.peak()}
        )
        print(
            f"    {name}: {records[-1]['seconds']:.1f} s, peak {records[-1]['peak_rss'] / 2**20:.0f} MiB",
            flush=True,
        )

    def load():
        state["adata"] = mp.io.read_lots_lazy(folder, chunk_cells=args.chunk_cells)

    timed("load", load)
    adata = state["adata"]
    timed("qc", lambda: mp.pp.qc(adata))
    timed("preprocess", lambda: mp.pp.preprocess(adata))
    if args.save_pca:
        from cluster_profile import save_embedding  # its cache format, written once

        save_embedding(adata, Path(args.save_pca))
    timed("cluster", lambda: mp.tl.cluster(adata, n_clusters=N_CLUSTERS))
    timed("lot_fractions", lambda: mp.tl.lot_fractions(adata))
    timed("composition_deviation", lambda: mp.tl.composition_deviation(adata))
    timed("potency_association", lambda: mp.tl.potency_association(adata, POTENCY))
    timed("potency_markers", lambda: mp.tl.potency_markers(adata))
    labels = adata.obs["cluster"].astype(str)
    potency_cluster = adata.uns.get("potency_association", {}).get("potency_cluster")
    summary = {
        "pipeline": "dask",
        "n_cells_after_qc": int(adata.n_obs),
        "n_genes_after_qc": int(adata.n_vars),
        "count_matrix_bytes": _count_bytes_on_disk(folder),
        "rss_start": rss_start,
        "rss_after_imports": rss_imports,
        "rss_after_warmup": rss_imports,
        "ru_maxrss": ru_maxrss_bytes(),
        "resolution": adata.uns["cluster"]["resolution"],
        "n_clusters": int(labels.nunique()),
        "ari_vs_truth": float(
            adjusted_rand_score(adata.obs["true_subpopulation"].astype(str), labels)
        ),
        "potency_cluster": potency_cluster,
        "failures": failures,
        "n_lots": int(adata.obs["lot"].nunique()),
        "steps": records,
    }
    if potency_cluster is not None:
        summary["potency"] = _potency_summary(adata, potency_cluster)
    # the whole run's results are on disk before the comparison starts
    labels.to_frame("label").to_csv(Path(args.json).with_suffix(".labels.csv"))
    Path(args.json).write_text(json.dumps(summary, default=str))
    if args.compare_lots:
        lots = list(adata.obs["lot"].cat.categories[: args.compare_lots])
        # the full run's AnnData is not needed any more: its memory would count against the
        # in-process worker's limit (a paused worker takes no tasks)
        del adata, state["adata"]
        gc.collect()
        try:
            summary["compare"] = _compare_with_in_memory(folder, lots, args.chunk_cells)
        except Exception as error:
            summary["compare_failed"] = f"{type(error).__name__}: {str(error)[:300]}"
            print(f"    compare FAILED: {summary['compare_failed']}", flush=True)
        summary["ru_maxrss"] = ru_maxrss_bytes()
        Path(args.json).write_text(json.dumps(summary, default=str))
    sampler.stop()
    client.close()
    if cluster is not None:
        cluster.close()


def _compare_with_in_memory(folder: Path, lots: list[str], chunk_cells: int) -> dict:
    """The Dask path and the in-memory path on the same lots; what agrees between them."""
    import numpy as np
    from sklearn.metrics import adjusted_rand_score

    import mscpotency as mp

    paths = {lot: folder / f"{lot}.h5ad" for lot in lots}
    lazy = mp.io.read_lots_lazy(paths, chunk_cells=chunk_cells)
    memory = lazy.copy()
    # read here, not through one worker (its memory limit is sized for blocks, not the data)
    memory.X = memory.X.compute(scheduler="threads")
    for part in (lazy, memory):
        mp.pp.qc(part)
        mp.pp.preprocess(part)
        mp.tl.cluster(part, n_clusters=N_CLUSTERS)
    ari = float(adjusted_rand_score(lazy.obs["cluster"], memory.obs["cluster"]))
    same_hvg = bool(lazy.var["highly_variable"].equals(memory.var["highly_variable"]))
    same_cells_and_genes = bool(
        lazy.obs_names.equals(memory.obs_names) and lazy.var_names.equals(memory.var_names)
    )
    max_pca = float(np.abs(lazy.obsm["X_pca"] - memory.obsm["X_pca"]).max())
    # the lot-level statistics and markers on identical labels (no copy of the in-memory data)
    memory.obs["cluster"] = lazy.obs["cluster"].to_numpy()
    for part in (lazy, memory):
        mp.tl.lot_fractions(part)
        mp.tl.potency_association(part, POTENCY)
        mp.tl.potency_markers(part)
    same_fractions = lazy.uns["lot_fractions"]["fractions"].equals(
        memory.uns["lot_fractions"]["fractions"]
    )
    markers_lazy, markers_memory = mp.get.potency_markers(lazy), mp.get.potency_markers(memory)
    association_lazy, association_memory = (
        mp.get.potency_association(lazy),
        mp.get.potency_association(memory),
    )
    return {
        "lots": len(lots),
        "cells": int(lazy.n_obs),
        "same_cells_and_genes": same_cells_and_genes,
        "same_hvg": same_hvg,
        "max_abs_pca_difference": max_pca,
        "ari_dask_vs_memory": ari,
        "identical_fractions_for_identical_labels": bool(same_fractions),
        "identical_association_for_identical_labels": bool(
            association_lazy[["rho", "pvalue"]].equals(association_memory[["rho", "pvalue"]])
        ),
        "same_potency_cluster": lazy.uns["potency_association"]["potency_cluster"]
        == memory.uns["potency_association"]["potency_cluster"],
        "same_top_20_markers_in_order": list(markers_lazy["gene"]) == list(markers_memory["gene"]),
        "max_relative_marker_score_difference": float(
            (
                np.abs(markers_lazy["score"].to_numpy() - markers_memory["score"].to_numpy())
                / np.abs(markers_memory["score"].to_numpy())
            ).max()
        ),
        "top_markers": ", ".join(markers_lazy["gene"].head(5)),
    }


def main_dask(args, folder: Path) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="mscpotency-bench-"))
    json_path = scratch / "dask_0.json"
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        "dask",
        "--data",
        str(folder),
        "--json",
        str(json_path),
        "--memory-limit",
        args.memory_limit,
        "--threads",
        str(args.threads),
        "--chunk-cells",
        str(args.chunk_cells),
        "--compare-lots",
        str(args.compare_lots),
        "--workers",
        str(args.workers),
        *(["--processes"] if args.processes else []),
        *(["--save-pca", args.save_pca] if args.save_pca else []),
        *(["--scheduler", args.scheduler] if args.scheduler else []),
    ]
    print("  running the Dask path ...", flush=True)
    done = subprocess.run(cmd, check=False, env=dict(os.environ, PYTHONHASHSEED="0"))
    if not json_path.exists():  # the worker writes its results before the comparison
        raise subprocess.CalledProcessError(done.returncode, cmd)
    run = json.loads(json_path.read_text())
    if done.returncode != 0:
        run.setdefault(
            "compare_failed",
            f"the worker exited with status {done.returncode} during the comparison",
        )
    import pandas as pd

    steps = pd.DataFrame(run["steps"])
    steps["peak_rss_mb"] = steps["peak_rss"] / 2**20
    steps = steps.drop(columns="peak_rss").set_index("step")
    peak = steps["peak_rss_mb"].max()
    counts_mb = run["count_matrix_bytes"] / 2**20
    stem = out / f"reference_dask_{args.cells}"
    steps.assign(cells=args.cells).to_csv(stem.with_suffix(".csv"))
    analysis = steps.drop(index="load")["seconds"].sum()
    lines = [
        f"# Out-of-core (Dask) reference analysis at {args.cells:,} cells",
        "",
        f"- {run['n_lots']} lots from per-lot .h5ad files (`io.read_lots_lazy`, {args.chunk_cells:,} cells per "
        f"block); cells after QC {run['n_cells_after_qc']:,}, genes {run['n_genes_after_qc']:,}",
        _cluster_line(args),
        f"- count matrix (CSR data+indices+indptr, on disk): {counts_mb:,.0f} MiB; peak RSS of the whole run "
        f"{peak:,.0f} MiB = {peak / counts_mb:.2f}x the counts (interpreter and imports included)",
        f"- clusters: {run['n_clusters']} at resolution {run['resolution']:.4f}, ARI vs truth "
        f"{run['ari_vs_truth']:.3f}; potency cluster {run['potency_cluster']}",
        f"- total wall time of the steps that ran (qc → ...): {analysis:,.1f} s",
        *(
            [
                f"- potency cluster vs the simulated potency cells: F1 {run['potency']['f1_vs_true_potency_cells']:.3f}; "
                f"Spearman rho {run['potency']['rho']:.3f} (p = {run['potency']['pvalue']:.2g}, "
                f"{run['potency']['pvalue_method']}); top markers {run['potency'].get('top_markers', '-')}"
            ]
            if "potency" in run
            else []
        ),
        "",
        "| step | seconds | peak RSS (MiB) |",
        "|---|---|---|",
    ]
    lines += [
        f"| {name} | {row.seconds:,.1f} | {row.peak_rss_mb:,.0f} |"
        for name, row in steps.iterrows()
    ]
    lines += [f"| {name} | failed: {reason} | |" for name, reason in run["failures"].items()]
    if "compare_failed" in run:
        lines += ["", f"## Dask path vs in-memory path: failed ({run['compare_failed']})"]
    if "compare" in run:
        c = run["compare"]
        lines += [
            "",
            f"## Dask path vs in-memory path on the first {c['lots']} lots ({c['cells']:,} cells)",
            "",
        ]
        lines += [
            f"- {k.replace('_', ' ')}: {v}" for k, v in c.items() if k not in ("lots", "cells")
        ]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(stem.with_suffix(".md").read_text())


def worker(args) -> None:
    """Run one pipeline in this (fresh) process and write its measurements as JSON."""
    if args.worker == "dask":
        worker_dask(args)
        return
    sampler = RssSampler()
    rss_start = sampler.rss()
    import anndata as ad
    import scanpy as sc  # noqa: F401

    import mscpotency  # noqa: F401

    rss_imports = sampler.rss()
    ctx: dict = {"resolution": args.resolution}
    if not args.no_warmup:
        warm_up(args)
    rss_warm = sampler.rss()
    records = []
    sampler.reset()
    start = time.perf_counter()
    adata = ad.read_h5ad(args.data)
    X = adata.X
    count_bytes = int(X.data.nbytes + X.indices.nbytes + X.indptr.nbytes)
    records.append(
        {"step": "load", "seconds": time.perf_counter() - start, "peak_rss": sampler.peak()}
    )
    rss_loaded = sampler.rss()
    del X
    if args.worker == "ours":
        steps = _steps_ours(adata, ctx)
    else:
        steps = _steps_bare(adata, ctx, search=args.worker == "bare_search")
    for name, call in steps:
        sampler.reset()
        start = time.perf_counter()
        call()
        records.append(
            {"step": name, "seconds": time.perf_counter() - start, "peak_rss": sampler.peak()}
        )
    sampler.stop()
    labels = ctx["labels"]
    truth = adata.obs["true_subpopulation"].astype(str)
    from sklearn.metrics import adjusted_rand_score

    summary = {
        "pipeline": args.worker,
        "n_cells_after_qc": int(adata.n_obs),
        "n_genes_after_qc": int(adata.n_vars),
        "count_matrix_bytes": count_bytes,
        "rss_start": rss_start,
        "rss_after_imports": rss_imports,
        "rss_after_warmup": rss_warm,
        "rss_after_load": rss_loaded,
        "ru_maxrss": ru_maxrss_bytes(),
        "resolution": ctx.get("resolution"),
        "n_clusters": int(labels.nunique()),
        "ari_vs_truth": float(adjusted_rand_score(truth, labels)),
        "potency_cluster": ctx.get("potency_cluster"),
        "potency_f1": _potency_f1(adata, labels, ctx.get("potency_cluster")),
        "top_markers": ctx.get("top_markers"),
        "load_average": os.getloadavg()[0],
        "steps": records,
    }
    labels.to_frame("label").to_csv(Path(args.json).with_suffix(".labels.csv"))
    Path(args.json).write_text(json.dumps(summary, default=str))


def _potency_f1(adata, labels, potency_cluster) -> float | None:
    """F1 of the potency cluster (the one the association names) vs the simulated potency cells."""
    if potency_cluster is None or "true_potency_cell" not in adata.obs:
        return None
    inside = (labels.astype(str) == str(potency_cluster)).to_numpy()
    truth = adata.obs["true_potency_cell"].to_numpy(dtype=bool)
    return float(2 * (inside & truth).sum() / (inside.sum() + truth.sum()))


# --------------------------------------------------------------------------------------
# driver
# --------------------------------------------------------------------------------------
#: GNU time, for the whole process's wall time and peak RSS (imports and warm-up included)
GNU_TIME = Path("/usr/bin/time")


def _parse_gnu_time(path: Path) -> dict:
    """Whole-process wall and CPU (user + system) seconds and peak RSS (bytes) from ``/usr/bin/time -v -o path``."""
    out: dict = {}
    for line in path.read_text().splitlines():
        key, _, value = line.strip().rpartition(": ")
        if key.startswith("Elapsed (wall clock) time"):
            parts = [float(x) for x in value.split(":")]
            out["process_wall_s"] = sum(x * 60**i for i, x in enumerate(reversed(parts)))
        elif key in ("User time (seconds)", "System time (seconds)"):
            out["process_cpu_s"] = out.get("process_cpu_s", 0.0) + float(value)
        elif key == "Maximum resident set size (kbytes)":
            out["process_max_rss"] = int(value) * 1024
    return out


def run_worker(
    pipeline: str,
    data: Path,
    out: Path,
    resolution: float | None,
    env: dict,
    no_warmup: bool = False,
) -> dict:
    cmd = [sys.executable, __file__, "--worker", pipeline, "--data", str(data), "--json", str(out)]
    if no_warmup:
        cmd.append("--no-warmup")
    if resolution is not None:
        cmd += ["--resolution", repr(resolution)]
    timed = out.with_suffix(".time.txt")
    if GNU_TIME.exists():
        cmd = [str(GNU_TIME), "-v", "-o", str(timed), *cmd]
    print("  running", pipeline, "...", flush=True)
    load = os.getloadavg()[0]
    subprocess.run(cmd, check=True, env=env)
    run = json.loads(out.read_text())
    run["load_average_start"] = load
    if timed.exists():
        run.update(_parse_gnu_time(timed))
    return run


def run_seurat_pipeline(data: Path, json_path: Path, timeout: int) -> dict:
    """The same steps in Seurat 4.3 (``_seurat_reference.py``); RuntimeError without R/Seurat.

    Stopped after ``timeout`` seconds: the step under way is then reported with the seconds it
    had run, marked unfinished (a lower bound).
    """
    from _seurat_reference import run_seurat

    print("  running seurat ...", flush=True)
    return run_seurat(data, json_path, n_clusters=N_CLUSTERS, potency=POTENCY, timeout=timeout)


def summarise(runs: list[dict], n_cells: int):
    import pandas as pd
    from sklearn.metrics import adjusted_rand_score

    rows = []
    for run in runs:
        for rec in run["steps"]:
            rows.append(
                {
                    "cells": n_cells,
                    "pipeline": run["pipeline"],
                    "run": run["run"],
                    "step": rec["step"],
                    "seconds": rec["seconds"],
                    "step_peak_rss_mb": rec["peak_rss"] / 2**20,
                    "ru_maxrss_mb": run["ru_maxrss"] / 2**20,
                    "rss_after_imports_mb": run["rss_after_imports"] / 2**20,
                    "count_matrix_mb": run["count_matrix_bytes"] / 2**20,
                    "unfinished": bool(rec.get("unfinished", False)),
                }
            )
    long = pd.DataFrame(rows)
    best = long.groupby(["pipeline", "step"], sort=False)["seconds"].min().unstack("pipeline")
    best = best.reindex([s for s in STEPS if s in best.index])
    analysis = best.drop(index="load")
    table = analysis.copy()
    table.loc["total (qc → markers)"] = analysis.sum()
    pipelines = list(best.columns)
    by_pipeline = {p: [r for r in runs if r["pipeline"] == p] for p in pipelines}
    memory = {}
    for p, rs in by_pipeline.items():
        counts = rs[0]["count_matrix_bytes"]
        peak = min(max(rec["peak_rss"] for rec in r["steps"]) for r in rs)
        base = min(r["rss_after_warmup"] for r in rs)
        memory[p] = {
            "peak_rss_mb": peak / 2**20,
            "baseline_rss_mb": base / 2**20,
            "peak_minus_baseline_mb": (peak - base) / 2**20,
            "count_matrix_mb": counts / 2**20,
            "peak_over_counts": peak / counts,
            "peak_minus_baseline_over_counts": (peak - base) / counts,
            "ru_maxrss_mb": min(r["ru_maxrss"] for r in rs) / 2**20,
            "ari_vs_truth": rs[0]["ari_vs_truth"],
            "n_clusters": rs[0]["n_clusters"],
            "potency_cluster": rs[0]["potency_cluster"],
            "resolution": rs[0]["resolution"],
            "potency_f1": rs[0].get("potency_f1"),
            **_process_figures(rs),
        }
    ari = {}
    labels = {
        p: pd.read_csv(rs[0]["labels_path"], index_col=0)["label"].astype(str)
        for p, rs in by_pipeline.items()
    }
    if "ours" in labels:
        for p in pipelines:
            if p != "ours":
                ari[p] = float(adjusted_rand_score(labels["ours"], labels[p]))
    return long, table, memory, ari


def _process_figures(runs: list[dict]) -> dict:
    """Whole-process wall and peak RSS (GNU time; best run) and the load average around them."""
    timed = [r for r in runs if "process_wall_s" in r]
    if not timed:
        return {}
    best = min(timed, key=lambda r: r["process_wall_s"])
    return {
        "process_wall_s": best["process_wall_s"],
        "process_cpu_s": min(r.get("process_cpu_s", float("nan")) for r in timed),
        "process_max_rss_mb": best["process_max_rss"] / 2**20,
        "load_average": best.get("load_average_start"),
    }


def write_process_table(path: Path, n_cells: int, memory: dict) -> None:
    """One row per pipeline: the figures of ``benchmarks/performance_figure.py``."""
    import pandas as pd

    rows = [
        {
            "cells": n_cells,
            "pipeline": p,
            "process_wall_s": m.get("process_wall_s"),
            "process_cpu_s": m.get("process_cpu_s"),
            "process_max_rss_mb": m.get("process_max_rss_mb"),
            "analysis_s": m.get("analysis_s"),
            "peak_rss_mb": m["peak_rss_mb"],
            "count_matrix_mb": m["count_matrix_mb"],
            "ari_vs_truth": m["ari_vs_truth"],
            "potency_f1": m.get("potency_f1"),
            "load_average": m.get("load_average"),
        }
        for p, m in memory.items()
    ]
    pd.DataFrame(rows).to_csv(path, index=False)


def to_markdown(frame, floatfmt: str = ".2f") -> str:
    """A pipe table (no dependency on ``tabulate``)."""

    def cell(value) -> str:
        if isinstance(value, float):
            return format(value, floatfmt)
        return str(value)

    header = ["", *map(str, frame.columns)]
    rows = [
        [str(i), *map(cell, row)]
        for i, row in zip(frame.index, frame.itertuples(index=False), strict=True)
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def write_markdown(path: Path, args, table, memory, ari, runs) -> None:
    import pandas as pd

    lines = [f"# Reference analysis at {args.cells:,} cells", ""]
    first = runs[0]
    lines += [
        f"- cells after QC: {first['n_cells_after_qc']:,}, genes after QC: {first['n_genes_after_qc']:,}; "
        f"{max(3, round(args.cells / CELLS_PER_LOT))} lots of {CELLS_PER_LOT:,} cells, seed {args.seed}",
        f"- machine: {os.cpu_count()} cores; python {sys.version.split()[0]}; best of {args.repeat} run(s) "
        "per pipeline, each in a fresh process, pipelines alternating",
        "",
        "## Wall time (seconds)",
        "",
    ]
    shown = table.copy()
    for p in shown.columns:
        if p != "ours" and "ours" in shown.columns:
            shown[f"ours / {p}"] = shown["ours"] / shown[p]
    lines.append(to_markdown(shown))
    lines += ["", "## Memory", ""]
    mem = pd.DataFrame(memory).T[
        [
            "peak_rss_mb",
            "baseline_rss_mb",
            "peak_minus_baseline_mb",
            "count_matrix_mb",
            "peak_over_counts",
            "peak_minus_baseline_over_counts",
            "ru_maxrss_mb",
        ]
    ]
    lines.append(to_markdown(mem.astype(float)))
    lines += [
        "",
        "peak_rss = the largest RSS sampled (every 5 ms) from loading the data to the last step "
        "(best run); baseline = RSS before loading (interpreter, imports, after the untimed warm-up); "
        "peak_minus_baseline = what the data and the analysis cost; count matrix = data + indices + "
        "indptr of the raw CSR counts as loaded; ru_maxrss = the process's high-water mark, warm-up "
        "included.",
        "",
    ]
    process = pd.DataFrame(memory).T.reindex(
        columns=["process_wall_s", "process_cpu_s", "process_max_rss_mb", "load_average"]
    )
    if process["process_wall_s"].notna().any():
        lines += ["## Whole process (`/usr/bin/time -v`: imports, warm-up, load and steps)", ""]
        lines.append(to_markdown(process.astype(float)))
        lines += [""]
    lines += ["## Results agree", ""]
    res = pd.DataFrame(memory).T.reindex(
        columns=["n_clusters", "resolution", "ari_vs_truth", "potency_f1", "potency_cluster"]
    )
    lines.append(to_markdown(res, ".3f"))
    for p, value in ari.items():
        lines.append(f"\nARI(ours, {p}) = {value:.4f}")
    seurat = [r for r in runs if r["pipeline"] == "seurat"]
    if seurat and "ours" in table.columns:
        run = seurat[0]
        total = table.loc["total (qc → markers)"]
        unfinished = run.get("unfinished_step")
        at_least = "at least " if unfinished else ""
        lines += [
            "",
            "## Seurat",
            "",
            f"- Seurat {run['seurat_version']} (R, one run): ours is {at_least}{total['seurat'] / total['ours']:.1f}x "
            "faster over qc → markers",
            *(
                [
                    f"- **Seurat was stopped after {run['timeout']:,} s, {table.loc[unfinished, 'seurat']:,.0f} s into "
                    f"`{unfinished}`, unfinished**: its seconds for that step and its total are lower bounds"
                ]
                if unfinished
                else []
            ),
            f"- cluster: FindNeighbors once, then {run['cluster_calls']} FindClusters call(s) (Louvain) to reach "
            f"{N_CLUSTERS} clusters; the last call alone took {run['cluster_single_seconds']:.1f} s",
            f"- potency_markers: FindMarkers on every gene (logfc.threshold = 0, min.pct = 0); limma's rank-sum "
            f"test used: {run['findmarkers_limma']} (Seurat 4.3 falls back to one wilcox.test per gene above "
            "46,340 cells); top markers: "
            + (", ".join(run.get("top_markers") or []) or "none (unfinished)"),
        ]
    path.write_text("\n".join(lines) + "\n")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--cells",
        type=int,
        default=100_000,
        help="number of simulated cells (10000/100000/1000000)",
    )
    parser.add_argument("--genes", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--repeat", type=int, default=2, help="runs per pipeline (best is reported)"
    )
    parser.add_argument(
        "--pipelines",
        default="ours,bare,bare_search,seurat",
        help="any of ours, bare, bare_search, seurat (Seurat runs once, if R and Seurat are installed)",
    )
    parser.add_argument(
        "--seurat-timeout",
        type=int,
        default=4 * 3600,
        help="seconds after which Seurat is stopped (its unfinished step then counts as a lower bound)",
    )
    parser.add_argument("--data-dir", default=str(Path(tempfile.gettempdir()) / "mscpotency-bench"))
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument(
        "--no-warmup", action="store_true", help="time first calls (numba compilation) too"
    )
    parser.add_argument(
        "--dask", action="store_true", help="run the out-of-core Dask path on per-lot files"
    )
    parser.add_argument(
        "--memory-limit", default="6GiB", help="each Dask worker's memory limit (with --dask)"
    )
    parser.add_argument(
        "--threads", type=int, default=2, help="threads per Dask worker (with --dask)"
    )
    parser.add_argument(
        "--processes",
        action="store_true",
        help="with --dask: worker processes (--workers of them) instead of one in-process worker",
    )
    parser.add_argument(
        "--workers", type=int, default=2, help="worker processes (with --dask --processes)"
    )
    parser.add_argument(
        "--scheduler",
        help="with --dask: connect to this running Dask scheduler (e.g. tcp://host:8786) "
        "instead of starting a LocalCluster; the files must be readable by its workers",
    )
    parser.add_argument(
        "--save-pca",
        help="with --dask: save X_pca and the truth to this .npz after preprocessing "
        "(the cache benchmarks/cluster_profile.py reads)",
    )
    parser.add_argument(
        "--chunk-cells", type=int, default=10_000, help="cells per Dask block (with --dask)"
    )
    parser.add_argument(
        "--compare-lots",
        type=int,
        default=0,
        help="with --dask: also run the in-memory path on the first N lots and compare",
    )
    # internal: run one pipeline in this process
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--json", help=argparse.SUPPRESS)
    parser.add_argument("--resolution", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return
    if args.dask:
        main_dask(args, ensure_data(args))
        return
    if args.cells > CHUNKED_ABOVE:
        parser.error(
            f"above {CHUNKED_ABOVE:,} cells the in-memory pipelines do not fit this machine; use --dask"
        )
    data = ensure_data(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="mscpotency-bench-"))
    env = dict(os.environ, PYTHONHASHSEED="0")
    pipelines = [p.strip() for p in args.pipelines.split(",") if p.strip()]
    if "ours" in pipelines:  # bare needs the resolution our search finds
        pipelines = ["ours", *[p for p in pipelines if p != "ours"]]
    runs = []
    resolution = None
    for r in range(args.repeat):
        # ours first in the first round (bare needs its resolution), last in the next
        order = pipelines if r % 2 == 0 else list(reversed(pipelines))
        for p in order:
            json_path = scratch / f"{p}_{r}.json"
            if p == "seurat":
                if r > 0:  # one run: it takes many minutes, and its ratio to ours is not close
                    continue
                try:
                    run = run_seurat_pipeline(data, json_path, args.seurat_timeout)
                except RuntimeError as error:
                    print(f"  skipping Seurat: {error}", flush=True)
                    continue
            else:
                run = run_worker(p, data, json_path, resolution, env, args.no_warmup)
            run["run"] = r
            run["labels_path"] = str(json_path.with_suffix(".labels.csv"))
            if p == "ours":
                resolution = run["resolution"]
            runs.append(run)
            total = sum(s["seconds"] for s in run["steps"] if s["step"] != "load")
            print(
                f"    {p} run {r}: {total:.1f} s, peak {run['ru_maxrss'] / 2**20:.0f} MiB",
                flush=True,
            )
    long, table, memory, ari = summarise(runs, args.cells)
    stem = out / f"reference_{args.cells}"
    long.to_csv(stem.with_suffix(".csv"), index=False)
    for p in memory:
        if p in table.columns:
            memory[p]["analysis_s"] = float(table.loc["total (qc → markers)", p])
    write_process_table(out / f"reference_{args.cells}_process.csv", args.cells, memory)
    write_markdown(stem.with_suffix(".md"), args, table, memory, ari, runs)
    print(stem.with_suffix(".md").read_text())


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    main()
