"""Benchmark: mapping N query cells onto an N-cell reference, beside scanpy's ingest and Seurat.

Usage (from the repository root)::

    .venv/bin/python benchmarks/mapping_scale.py --cells 10000        # ~4 min on 2 cores, Seurat included
    .venv/bin/python benchmarks/mapping_scale.py --cells 100000       # Seurat skipped (--seurat-max-cells)
    .venv/bin/python benchmarks/mapping_scale.py --cells 100000 --methods fast --repeat 3
    .venv/bin/python benchmarks/mapping_scale.py --cells 100000 --methods anchors --prepared DIR
        # DIR: the scratch a run with --keep-scratch kept: the same reference and query again

What it does
------------
1. Simulates one population (``mscpotency.datasets.simulate_lots``, the study preset's
   biology, 2,000 genes, seed 0) with two bone-marrow arms of ``cells / 1500`` lots of
   1,500 cells each: ``BM-train`` is the reference, ``BM-test`` the query (the same batch,
   new donors: the case the ``fast`` backend is meant for). The raw counts (CSR in ``X``)
   are cached as one ``.h5ad`` under ``--data-dir`` (default ``$TMPDIR/mscpotency-bench``).
2. Prepares the reference once per benchmark run, in its own process and untimed as
   mapping: ``pp.qc`` -> ``pp.preprocess`` -> ``tl.cluster(n_clusters=8)`` ->
   ``tl.lot_fractions`` -> ``tl.potency_association("vegf")`` -> ``tl.freeze_reference``;
   for ingest, ``sc.pp.neighbors`` on the reference (15 neighbours on its 30 PCs: ingest
   needs the reference's neighbour graph, so this is reference preparation for ingest and
   is reported apart). The query gets ``pp.qc``. The frozen reference is written as
   ``.h5ad`` and read back with ``io.read_reference`` (the shipping use case), so every
   backend maps onto the same bytes and no worker pays for the reference analysis.
3. Times the mapping step of every backend in a fresh process per run (best of
   ``--repeat``, backends alternating), after an untimed warm-up that maps one query lot
   onto a 3-lot reference (numba compilation of umap/pynndescent/scanpy kernels, lazy
   imports; the approximate neighbour search used at scale is compiled too):

   ``fast``, ``anchors``
       ``tl.map_to_reference(query, frozen, method=...)`` with defaults, every in-process
       mapping cache cleared first (``tl._mapping._cache.clear_caches``: the calibrations,
       the reference's neighbours and mean counts, its verified expression), so the time
       includes the query's normalisation and gene harmonisation, the reference's check
       against its hash, the mapping score, the transfer and the calibrations on held-out
       reference lots. CPU seconds (all threads) are kept beside the wall time: on a shared
       machine, CPU seconds / cores bounds what an idle machine would take.
   ``ingest``
       bare scanpy, as its tutorial maps onto a reference: ``normalize_total`` (the
       reference's ``target_sum``) + ``log1p`` of the query, its genes aligned to the
       reference's (zero-padded where QC removed one), then
       ``sc.tl.ingest(query, reference, obs="cluster", embedding_method="pca")``.

   Memory: a thread samples the process RSS every 5 ms (``RssSampler`` of
   ``reference_analysis.py``); the figure is the peak during the mapping step minus the RSS
   just before it (reference and query loaded, warm-up done): what the mapping costs.
4. Seurat 4.x (``benchmarks/seurat_transfer.R``: ``NormalizeData`` + ``FindTransferAnchors``
   (pcaproject, k.filter NA: no anchor filtering, its fast setting; ``--seurat-k-filter 200``
   for Seurat 4.3's default, which took ~300 s for 6k query cells on a 16k reference on 2
   cores) + ``TransferData`` on a reference prepared with LogNormalize, vst, ScaleData,
   30 PCs) runs on the same reference labels and query counts when ``Rscript`` and Seurat
   are available and ``cells <= --seurat-max-cells``. Its map time is ``Sys.time`` around
   those three calls.
5. Scores every backend against the simulator's truth (``score`` of
   ``mapping_vs_seurat.py``; ours by the most probable label, as Seurat's and ingest's, with
   the share ``obs['predicted']`` leaves ``Unassigned`` beside): F1 of the potency-like
   cells (the reference's potency cluster), accuracy of all labels, ECE of the prediction
   score (ingest has none) and
   Spearman's rho of each query lot's potency-like share with its true share.
6. Writes ``benchmarks/results/mapping_scale_<cells>.csv`` (one row per backend x run) and
   ``.md`` (best time, cells/s, speed-ups vs ingest and Seurat, peak RSS above baseline,
   scores; machine, cores, versions).

Why: the project claims mapping 10^5 query cells onto a 10^5-cell reference with the fast
backend in well under a minute on 2 cores; this measures it beside what a scanpy user
(ingest) and a Seurat user would run on the same data and machine.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from reference_analysis import (  # noqa: E402
    CELLS_PER_LOT,
    N_CLUSTERS,
    POTENCY,
    RssSampler,
    _config,
    _simulator_version,
    _strip,
    ru_maxrss_bytes,
    to_markdown,
)

REFERENCE_SET, QUERY_SET = "BM-train", "BM-test"
OURS = ("fast", "anchors")
METHODS = (*OURS, "ingest")
#: lots of the reference (and one of the query) used by the untimed warm-up
WARMUP_LOTS = 3


# --------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------
def _two_arm_config(n_lots: int, n_genes: int):
    """``reference_analysis._config`` with a second bone-marrow arm (the query), same population."""
    from dataclasses import replace

    from mscpotency.datasets import SetSpec

    sets = (
        SetSpec(REFERENCE_SET, n_lots, "BM", "BM", first_lot=1),
        SetSpec(QUERY_SET, n_lots, "BM", "BM", first_lot=n_lots + 1),
    )
    return replace(_config(n_lots, n_genes), sets=sets)


def ensure_data(args) -> Path:
    """The cached raw counts of both arms (simulated on first use)."""
    folder = Path(args.data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"mapping_{args.cells}_{args.genes}_{args.seed}_{_simulator_version()}.h5ad"
    if not path.exists():
        from mscpotency.datasets import simulate_lots

        n_lots = max(WARMUP_LOTS, round(args.cells / CELLS_PER_LOT))
        print(f"simulating 2 x {n_lots} lots x {CELLS_PER_LOT} cells into {path} ...", flush=True)
        start = time.perf_counter()
        adata = simulate_lots(_two_arm_config(n_lots, args.genes), random_state=args.seed)
        del adata.layers["counts"]
        _strip(adata).write_h5ad(path)
        del adata
        print(f"  done in {time.perf_counter() - start:.1f} s", flush=True)
    return path


# --------------------------------------------------------------------------------------
# reference preparation (one process per benchmark run)
# --------------------------------------------------------------------------------------
def _ingest_neighbors(reference) -> None:
    """The neighbour graph ingest needs on the reference (scanpy's defaults, the 30 PCs)."""
    import scanpy as sc

    sc.pp.neighbors(
        reference, n_neighbors=15, n_pcs=reference.obsm["X_pca"].shape[1], random_state=0
    )


def prepare(args) -> None:
    """Reference analysis, frozen reference and ingest's neighbour graph, written to ``--scratch``."""
    import anndata as ad
    import scanpy as sc

    import mscpotency as mp

    scratch = Path(args.scratch)
    adata = ad.read_h5ad(args.data)
    reference = adata[(adata.obs["set"] == REFERENCE_SET).to_numpy()].copy()
    query = adata[(adata.obs["set"] == QUERY_SET).to_numpy()].copy()
    del adata
    info: dict = {}
    start = time.perf_counter()
    mp.pp.qc(reference)
    mp.pp.preprocess(reference)
    mp.tl.cluster(reference, n_clusters=N_CLUSTERS)
    mp.tl.lot_fractions(reference)
    mp.tl.potency_association(reference, POTENCY)
    info["reference_seconds"] = time.perf_counter() - start
    start = time.perf_counter()
    frozen = mp.tl.freeze_reference(reference)
    info["freeze_seconds"] = time.perf_counter() - start
    # uncompressed (io.write_reference gzips: slow at 10^5 cells, and nothing here is shipped);
    # the workers read it back with io.read_reference, which checks the content hash
    frozen.write_h5ad(scratch / "frozen.h5ad")
    lots = list(reference.obs["lot"].cat.categories[:WARMUP_LOTS])
    small = reference[reference.obs["lot"].isin(lots).to_numpy()].copy()
    mp.tl.freeze_reference(small).write_h5ad(scratch / "frozen_small.h5ad")
    _ingest_neighbors(small)
    small.write_h5ad(scratch / "reference_small.h5ad")
    # below 8,192 cells scanpy's neighbours are exact (scikit-learn), above it pynndescent: compile
    # pynndescent here so that the reference's neighbour time does not include numba compilation
    sc.pp.neighbors(
        small, n_neighbors=15, use_rep="X_pca", transformer="pynndescent", key_added="warm"
    )
    del small
    start = time.perf_counter()
    _ingest_neighbors(reference)
    info["ingest_neighbors_seconds"] = time.perf_counter() - start
    reference.write_h5ad(scratch / "reference.h5ad")
    mp.pp.qc(query)
    query.write_h5ad(scratch / "query.h5ad")
    first = query.obs["lot"].cat.categories[0]
    query[(query.obs["lot"] == first).to_numpy()].copy().write_h5ad(scratch / "query_small.h5ad")
    info.update(
        {
            "n_reference": int(reference.n_obs),
            "n_query": int(query.n_obs),
            "n_genes": int(reference.n_vars),
            "n_reference_lots": int(reference.obs["lot"].nunique()),
            "n_query_lots": int(query.obs["lot"].nunique()),
            "potency_cluster": str(reference.uns["potency_association"]["potency_cluster"]),
            "resolution": float(reference.uns["cluster"]["resolution"]),
            "n_clusters": int(reference.obs["cluster"].nunique()),
        }
    )
    (scratch / "prepare.json").write_text(json.dumps(info))


# --------------------------------------------------------------------------------------
# the mapping step of each backend (run inside a worker process)
# --------------------------------------------------------------------------------------
def map_ours(query, frozen, method: str, **kwargs) -> None:
    import mscpotency as mp

    mp.tl.map_to_reference(query, frozen, method=method, **kwargs)


def map_ingest(query, reference) -> None:
    """What a scanpy user runs: normalise as the reference was, align genes, ``sc.tl.ingest``."""
    import numpy as np
    import scanpy as sc
    from scipy import sparse

    target_sum = reference.uns["preprocess"]["params"]["target_sum"]
    sc.pp.normalize_total(query, target_sum=target_sum)
    sc.pp.log1p(query)
    if not query.var_names.equals(reference.var_names):  # zero-pad genes QC removed from the query
        from anndata import AnnData

        positions = query.var_names.get_indexer(reference.var_names)
        found = positions >= 0
        select = sparse.csr_matrix(
            (np.ones(found.sum(), dtype=np.float32), (positions[found], np.flatnonzero(found))),
            shape=(query.n_vars, reference.n_vars),
        )
        aligned = AnnData(
            X=sparse.csr_matrix(query.X) @ select, obs=query.obs, var=reference.var[[]]
        )
    else:
        aligned = query
    sc.tl.ingest(aligned, reference, obs="cluster", embedding_method="pca")
    if aligned is not query:
        query.obs["cluster"] = aligned.obs["cluster"]


def _goes_approximate(n_query: int, n_reference: int) -> bool:
    """Whether some neighbour search of the timed mapping may use pynndescent (``knn_method="auto"``).

    The searches are query x reference, query x query and, in the calibration, held-out
    reference lots x the other lots; a tenth of the exact limit leaves a wide margin.
    """
    from mscpotency.tl._mapping import _neighbors

    limit = getattr(_neighbors, "EXACT_MAX_PAIRS", 0)
    return max(n_query, n_reference) ** 2 > limit / 10


def worker(args) -> None:
    """Time one backend's mapping in this (fresh) process; write measurements and predictions."""
    sampler = RssSampler()
    import anndata as ad
    import numpy as np
    import pandas as pd

    import mscpotency as mp
    from mscpotency.tl._mapping import _cache

    scratch = Path(args.scratch)
    method = args.worker
    rss_start = sampler.rss()
    clock = time.perf_counter()
    phases: dict[str, float] = {}
    query = ad.read_h5ad(scratch / "query.h5ad")
    warm_query = ad.read_h5ad(scratch / "query_small.h5ad")
    if method in OURS:
        reference = mp.io.read_reference(scratch / "frozen.h5ad")
        small = mp.io.read_reference(scratch / "frozen_small.h5ad")
        if not args.no_warmup:
            map_ours(warm_query.copy(), small, method)
            if _goes_approximate(query.n_obs, reference.n_obs):  # compile the search used at scale
                map_ours(warm_query.copy(), small, method, knn_method="approximate")
        call = lambda: map_ours(query, reference, method)  # noqa: E731
    else:
        reference = ad.read_h5ad(scratch / "reference.h5ad")
        small = ad.read_h5ad(scratch / "reference_small.h5ad")
        if not args.no_warmup:
            map_ingest(warm_query.copy(), small)
        call = lambda: map_ingest(query, reference)  # noqa: E731
    phases["load_and_warmup"] = time.perf_counter() - clock
    del small, warm_query
    _cache.clear_caches()  # every per-reference cache, and the reference's verified expression
    gc.collect()
    rss_before = sampler.rss()
    sampler.reset()
    load_before = os.getloadavg()[0]
    start, cpu_start = time.perf_counter(), time.process_time()
    call()
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu_start
    peak = sampler.peak()
    sampler.stop()
    if method in OURS:  # the most probable label, as Seurat's and ingest's
        from mapping_vs_seurat import argmax_labels

        predicted, confidence = argmax_labels(query)
        unassigned = (query.obs["predicted"] == "Unassigned").to_numpy()
    else:  # ingest gives a label, no score
        predicted = query.obs["cluster"].astype(str).to_numpy()
        confidence = np.full(query.n_obs, np.nan)
        unassigned = np.zeros(query.n_obs, dtype=bool)
    pd.DataFrame(
        {
            "cell": query.obs_names,
            "predicted": predicted,
            "score": confidence,
            "unassigned": unassigned,
        }
    ).to_csv(Path(args.json).with_suffix(".predictions.csv"), index=False)
    Path(args.json).write_text(
        json.dumps(
            {
                "method": method,
                "seconds": seconds,
                "cpu_seconds": cpu_seconds,
                "load_average": [load_before, os.getloadavg()[0]],
                "peak_rss": peak,
                "rss_before": rss_before,
                "rss_start": rss_start,
                "ru_maxrss": ru_maxrss_bytes(),
                "n_query": int(query.n_obs),
                "n_reference": int(reference.n_obs),
                "process_seconds": time.perf_counter() - clock,
                **phases,
            }
        )
    )


# --------------------------------------------------------------------------------------
# driver
# --------------------------------------------------------------------------------------
def _subprocess(args, role: str, scratch: Path, json_path: Path | None = None) -> None:
    cmd = [sys.executable, __file__, "--worker", role, "--scratch", str(scratch)]
    if role != "prepare":
        cmd += ["--json", str(json_path)]
    else:
        cmd += ["--data", str(args.data)]
    if args.no_warmup:
        cmd.append("--no-warmup")
    subprocess.run(cmd, check=True, env=dict(os.environ, PYTHONHASHSEED="0"))


def _obs_only(path: Path):
    """An AnnData with only the obs of the file (what ``score`` reads)."""
    import anndata as ad

    backed = ad.read_h5ad(path, backed="r")
    obs = backed.obs.copy()
    backed.file.close()
    return ad.AnnData(obs=obs)


def _score(reference_obs, query_obs, predictions, potency: str) -> dict:
    import numpy as np
    from mapping_vs_seurat import score

    query = query_obs[predictions["cell"].astype(str).to_numpy()]
    confidence = predictions["score"].to_numpy(dtype=float)
    has_score = np.isfinite(confidence).all()
    metrics = score(
        reference_obs,
        query,
        predictions["predicted"].astype(str).to_numpy(),
        confidence if has_score else np.ones(confidence.size),
        potency,
    )
    if not has_score:
        metrics["ECE"] = float("nan")
    if "unassigned" in predictions:
        metrics["Unassigned"] = float(predictions["unassigned"].astype(bool).mean())
    return metrics


def run_seurat_side(args, scratch: Path, potency: str) -> tuple[dict | None, list[str], str]:
    """Seurat's FindTransferAnchors + TransferData on the same data, when it can run here."""
    from mapping_vs_seurat import run_seurat, seurat_available

    if args.cells > args.seurat_max_cells:
        return (
            None,
            [f"Seurat: not run above --seurat-max-cells {args.seurat_max_cells:,} cells."],
            "",
        )
    available, detail = seurat_available()
    if not available:
        return None, [f"Seurat: skipped ({detail})."], ""
    import anndata as ad

    reference = ad.read_h5ad(scratch / "reference.h5ad")
    query = ad.read_h5ad(scratch / "query.h5ad")
    query.layers["counts"] = query.X  # the query's raw counts (pp.qc left them in X)
    try:
        rows, reference_seconds, version = run_seurat(
            reference,
            {QUERY_SET: query},
            potency,
            scratch / "seurat",
            args.seurat_timeout,
            args.seurat_k_filter,
        )
    except (subprocess.TimeoutExpired, subprocess.CalledProcessError) as error:
        return (
            None,
            [
                f"Seurat: failed or timed out ({type(error).__name__}, limit {args.seurat_timeout} s)."
            ],
            detail,
        )
    notes = [
        f"Seurat {version} reference preparation (NormalizeData, vst, ScaleData, RunPCA): "
        f"{reference_seconds:.0f} s, not counted; map time = NormalizeData + FindTransferAnchors + "
        "TransferData of the query (R's Sys.time); its memory is not measured."
    ]
    return rows[0], notes, version


def _versions(seurat: str) -> str:
    from importlib.metadata import version

    packages = [
        "mscpotency",
        "scanpy",
        "anndata",
        "numpy",
        "scipy",
        "scikit-learn",
        "pynndescent",
        "numba",
    ]
    text = ", ".join(f"{p} {version(p)}" for p in packages)
    return f"Python {platform.python_version()}, {text}" + (f", Seurat {seurat}" if seurat else "")


def _machine() -> str:
    import psutil

    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model}, {cores} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB RAM, {platform.system()}"


def summarise(runs: list[dict], seurat: dict | None, n_reference: int):
    """Per-run rows (the CSV) and the per-backend summary (best run)."""
    import numpy as np
    import pandas as pd

    long = pd.DataFrame(
        [
            {
                "backend": r["backend"],
                "run": r["run"],
                "query_cells": r["n_query"],
                "reference_cells": r["n_reference"],
                "seconds": r["seconds"],
                "cpu_seconds": r.get("cpu_seconds", np.nan),
                "load_average": r.get("load_average", [np.nan, np.nan])[1],
                "peak_rss_above_baseline_mib": (r["peak_rss"] - r["rss_before"]) / 2**20,
                "rss_before_mib": r["rss_before"] / 2**20,
                "ru_maxrss_mib": r["ru_maxrss"] / 2**20,
                **r["metrics"],
            }
            for r in runs
        ]
    )
    if seurat is not None:
        long = pd.concat(
            [
                long,
                pd.DataFrame(
                    [
                        {
                            "backend": seurat["backend"],
                            "run": 0,
                            "query_cells": seurat["cells"],
                            "reference_cells": n_reference,
                            "seconds": seurat["seconds"],
                            **{
                                k: v
                                for k, v in seurat.items()
                                if k not in ("backend", "set", "cells", "seconds")
                            },
                        }
                    ]
                ),
            ],
            ignore_index=True,
        )
    best = long.loc[long.groupby("backend", sort=False)["seconds"].idxmin()].set_index("backend")
    best["runs"] = long.groupby("backend", sort=False).size()
    best["cells/s"] = best["query_cells"] / best["seconds"]
    ingest = best.loc["scanpy ingest", "seconds"] if "scanpy ingest" in best.index else np.nan
    seurat_seconds = best.loc[seurat["backend"], "seconds"] if seurat is not None else np.nan
    best["speed-up vs ingest"] = ingest / best["seconds"]
    best["speed-up vs Seurat"] = seurat_seconds / best["seconds"]
    return long, best


def _format(best) -> object:
    import numpy as np
    import pandas as pd

    columns = {
        "query_cells": ("query cells", "{:,.0f}"),
        "reference_cells": ("reference cells", "{:,.0f}"),
        "seconds": ("seconds (best)", "{:.1f}"),
        "cpu_seconds": ("CPU seconds", "{:.1f}"),
        "load_average": ("load average after", "{:.1f}"),
        "runs": ("runs", "{:.0f}"),
        "cells/s": ("cells/s", "{:,.0f}"),
        "speed-up vs ingest": ("speed-up vs ingest", "{:.3g}x"),
        "speed-up vs Seurat": ("speed-up vs Seurat", "{:.3g}x"),
        "peak_rss_above_baseline_mib": ("peak RSS above baseline (MiB)", "{:,.0f}"),
        "F1 potency-like": ("F1 potency-like", "{:.4f}"),
        "accuracy": ("accuracy", "{:.4f}"),
        "ECE": ("ECE", "{:.4f}"),
        "lot share rho": ("lot share rho", "{:.3f}"),
        "max |share - true share|": ("max abs share error", "{:.4f}"),
        "Unassigned": ("Unassigned", "{:.4f}"),
    }
    shown = pd.DataFrame(index=best.index)
    for column, (title, fmt) in columns.items():
        values = best[column] if column in best.columns else pd.Series(np.nan, index=best.index)
        shown[title] = [
            fmt.format(v) if pd.notna(v) and np.isfinite(float(v)) else "" for v in values
        ]
    return shown


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--cells",
        type=int,
        default=10_000,
        help="cells per arm: reference and query (10000, 100000)",
    )
    parser.add_argument("--genes", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--repeat",
        type=int,
        default=2,
        help="runs per backend, each in a fresh process (best reported)",
    )
    parser.add_argument(
        "--methods", default=",".join(METHODS), help="comma-separated: fast, anchors, ingest"
    )
    parser.add_argument(
        "--seurat-max-cells", type=int, default=10_000, help="run Seurat only up to this many cells"
    )
    parser.add_argument(
        "--seurat-timeout", type=int, default=3600, help="seconds before Seurat is given up"
    )
    parser.add_argument(
        "--seurat-k-filter", default="NA", help="FindTransferAnchors' k.filter (NA: none)"
    )
    parser.add_argument("--data-dir", default=str(Path(tempfile.gettempdir()) / "mscpotency-bench"))
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument(
        "--no-warmup", action="store_true", help="time first calls (numba compilation) too"
    )
    parser.add_argument(
        "--prepared",
        help="a scratch folder kept by --keep-scratch: map its reference and query (no preparation)",
    )
    parser.add_argument(
        "--keep-scratch",
        action="store_true",
        help="keep the prepared reference, query and predictions (under --data-dir)",
    )
    # internal: one role in this process
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--scratch", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--json", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker == "prepare":
        prepare(args)
        return
    if args.worker:
        worker(args)
        return
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")

    import pandas as pd

    wall = time.perf_counter()
    if args.prepared:
        scratch = Path(args.prepared)
        args.keep_scratch = True  # not this run's to remove
    else:
        args.data = ensure_data(args)
        scratch = Path(tempfile.mkdtemp(prefix="mscpotency-mapping-", dir=args.data_dir))
        print(
            "preparing the reference (qc, preprocess, cluster, association, freeze; ingest's "
            "neighbours) ...",
            flush=True,
        )
        _subprocess(args, "prepare", scratch)
    info = json.loads((scratch / "prepare.json").read_text())
    potency = info["potency_cluster"]
    print(
        f"  reference {info['n_reference']:,} cells ({info['reference_seconds']:.0f} s), query "
        f"{info['n_query']:,} cells; potency cluster {potency}",
        flush=True,
    )
    reference_obs, query_obs = (
        _obs_only(scratch / "reference.h5ad"),
        _obs_only(scratch / "query.h5ad"),
    )
    names = {"fast": "mscpotency fast", "anchors": "mscpotency anchors", "ingest": "scanpy ingest"}
    runs = []
    for r in range(args.repeat):
        for method in methods if r % 2 == 0 else list(reversed(methods)):
            json_path = scratch / f"{method}_{r}.json"
            print(f"  mapping with {method} (run {r + 1}/{args.repeat}) ...", flush=True)
            _subprocess(args, method, scratch, json_path)
            run = json.loads(json_path.read_text())
            predictions = pd.read_csv(json_path.with_suffix(".predictions.csv"))
            run.update(
                backend=names[method],
                run=r,
                metrics=_score(reference_obs, query_obs, predictions, potency),
            )
            runs.append(run)
            print(
                f"    {run['seconds']:.1f} s (process {run['process_seconds']:.0f} s, of which loading and "
                f"warm-up {run['load_and_warmup']:.0f} s), peak +{(run['peak_rss'] - run['rss_before']) / 2**20:,.0f} MiB, "
                f"F1 {run['metrics']['F1 potency-like']:.4f}, accuracy {run['metrics']['accuracy']:.4f}",
                flush=True,
            )
    seurat, seurat_notes, seurat_version = run_seurat_side(args, scratch, potency)
    long, best = summarise(runs, seurat, info["n_reference"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"mapping_scale_{args.cells}"
    long.to_csv(stem.with_suffix(".csv"), index=False)
    lines = [
        f"# Mapping {info['n_query']:,} query cells onto a {info['n_reference']:,}-cell reference",
        "",
        f"- data: `simulate_lots`, two bone-marrow arms of {info['n_reference_lots']} lots x {CELLS_PER_LOT:,} cells "
        f"(reference {REFERENCE_SET}, query {QUERY_SET}), {args.genes:,} genes, seed {args.seed}; counts after "
        f"`pp.qc`: reference {info['n_reference']:,} x {info['n_genes']:,}, query {info['n_query']:,} cells",
        f"- machine: {_machine()}; {_versions(seurat_version)}",
        f"- best of {args.repeat} run(s) per backend, each in a fresh process after an untimed warm-up "
        f"(one query lot onto a {WARMUP_LOTS}-lot reference), backends alternating; load average at the end "
        f"{os.getloadavg()[0]:.1f} (the machine may be shared: times are wall times)",
        f"- reference preparation, not counted: mscpotency qc -> preprocess -> cluster ({info['n_clusters']} "
        f"clusters) -> lot_fractions -> potency_association {info['reference_seconds']:.1f} s, freeze_reference "
        f"{info['freeze_seconds']:.1f} s; for ingest, `sc.pp.neighbors` on the reference (15 neighbours, 30 PCs) "
        f"{info['ingest_neighbors_seconds']:.1f} s (ingest needs the reference's neighbour graph)",
        "- mscpotency times: `tl.map_to_reference(query, frozen, method=...)` with defaults (normalisation, gene "
        "harmonisation, projection, mapping score, transfer, calibration on held-out reference lots; every mapping "
        "cache cleared); ingest times: `normalize_total` + `log1p` + gene alignment + `sc.tl.ingest(obs='cluster', "
        "embedding_method='pca')`",
        *[f"- {note}" for note in seurat_notes],
        "",
        to_markdown(_format(best)),
        "",
        "peak RSS above baseline = the largest RSS sampled every 5 ms during the mapping call minus the RSS just "
        "before it (reference and query in memory). F1 potency-like: cells labelled as the reference's potency "
        f"cluster ({potency}) vs cells whose true population maps to it; accuracy: all labels; ECE: expected "
        "calibration error of the prediction score (ingest gives none); lot share rho: Spearman of each query "
        "lot's potency-like share with its true share of potency cells.",
    ]
    if "mscpotency fast" in best.index:
        seconds = best.loc["mscpotency fast", "seconds"]
        lines.append(
            f"\nTarget (10^5 query cells onto a 10^5-cell reference, fast backend, well under 60 s on 2 "
            f"cores): here {info['n_query']:,} onto {info['n_reference']:,} cells in {seconds:.1f} s."
        )
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(stem.with_suffix(".md").read_text())
    if args.keep_scratch:
        print(f"scratch files kept in {scratch}")
    else:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"benchmark wall time {time.perf_counter() - wall:.0f} s")


if __name__ == "__main__":
    main()
