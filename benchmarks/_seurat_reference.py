"""The reference analysis in Seurat 4.3, measured like the Python pipelines of the benchmark.

``run_seurat`` writes the benchmark's cached counts for R (CSC as raw binary vectors, as
``mapping_vs_seurat.py`` does), runs ``benchmarks/seurat_reference.R`` in a subprocess and
samples that process's RSS every 5 ms (``psutil``, with timestamps). R writes the epoch
start and end of every step, so each step gets its wall time and the largest RSS sampled
from its start to its end, as ``reference_analysis.worker`` measures a step (the samples
bracketing the window included, like ``RssSampler.reset``/``peak``). R also writes a
timestamp once its libraries are loaded and then waits 0.25 s: the RSS sampled in that
window is the baseline (``rss_after_warmup``; R has no warm-up to run).

The returned dict (also written to ``json_path``) has the shape of ``worker()``'s, plus
``seurat_version``, ``cluster_calls`` (FindClusters calls of the resolution search),
``cluster_single_seconds`` (the last call, at the final resolution), ``findmarkers_limma``
(whether FindMarkers could use limma's rank-sum test; Seurat 4.3 falls back to one
``wilcox.test`` per gene above 46,340 cells) and ``export_seconds`` (writing the counts for
R, not part of any step). The R log, the association table and the marker table are kept
beside ``json_path`` (``.seurat.log``, ``.seurat_association.csv``, ``.seurat_markers.csv``).

Standalone::

    .venv/bin/python benchmarks/_seurat_reference.py cells_10000.h5ad /tmp/seurat_10000.json
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from array import array
from pathlib import Path

HERE = Path(__file__).resolve().parent
R_SCRIPT = HERE / "seurat_reference.R"
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
#: seconds between two RSS samples of the R process
INTERVAL = 0.005


def _export(data: Path, folder: Path, potency: str) -> tuple[int, object]:
    """Write the counts, genes and obs for R; return the CSR bytes and the true subpopulations."""
    import anndata as ad
    import pandas as pd
    from mapping_vs_seurat import _write_counts
    from scipy import sparse

    adata = ad.read_h5ad(data)
    X = adata.X
    if not sparse.issparse(X) or X.format != "csr":
        msg = f"{data} should hold raw counts as CSR in X, got {type(X).__name__}"
        raise ValueError(msg)
    for column in ("lot", potency, "true_subpopulation"):
        if column not in adata.obs:
            msg = f"{data} has no obs column {column!r}; recreate it with reference_analysis.ensure_data"
            raise KeyError(msg)
    count_bytes = int(X.data.nbytes + X.indices.nbytes + X.indptr.nbytes)
    (folder / "genes.txt").write_text("\n".join(adata.var_names) + "\n")
    _write_counts(folder, "counts", X, adata.obs_names)
    pd.DataFrame(
        {
            "cell": adata.obs_names,
            "lot": adata.obs["lot"].astype(str).to_numpy(),
            potency: adata.obs[potency].to_numpy(),
        }
    ).to_csv(folder / "obs.csv", index=False)
    truth = adata.obs["true_subpopulation"].astype(str)
    del adata, X
    gc.collect()
    return count_bytes, truth


def _run_sampled(cmd: list[str], log: Path, timeout: int) -> tuple[array, array, int, bool]:
    """Run ``cmd``; sample its RSS every ``INTERVAL`` s; return times, RSS, ru_maxrss (bytes), timed out.

    The child is reaped with ``os.wait4`` so that its own high-water mark (``ru_maxrss``) is
    known, not the maximum over every child this process ever had. Past ``timeout`` seconds
    the child is killed and the samples so far are returned with ``timed out`` True.
    """
    import psutil

    times, rss = array("d"), array("q")
    with log.open("w") as out:
        popen = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    process = psutil.Process(popen.pid)  # Rscript execs R: one process, the same pid
    deadline = time.monotonic() + timeout
    pid, status, usage, timed_out = 0, None, None, False
    try:
        while True:
            pid, status, usage = os.wait4(popen.pid, os.WNOHANG)
            if pid:
                break
            try:
                value = process.memory_info().rss
            except psutil.Error:  # exiting: the next wait4 reaps it
                value = 0
            if value:
                times.append(time.time())
                rss.append(value)
            if time.monotonic() > deadline:
                timed_out = True
                break
            time.sleep(INTERVAL)
    finally:
        if pid == 0 or status is None:  # timed out or interrupted: end the R process we started
            os.kill(popen.pid, signal.SIGKILL)
            _, status, usage = os.wait4(popen.pid, 0)
        popen.returncode = os.waitstatus_to_exitcode(status)
    if timed_out:
        return times, rss, usage.ru_maxrss * 1024, True
    if popen.returncode != 0:
        tail = log.read_text()[-3000:]
        raise subprocess.CalledProcessError(popen.returncode, cmd, output=tail)
    return times, rss, usage.ru_maxrss * 1024, False


def _peak(times, rss, start: float, end: float) -> int:
    """The largest RSS sampled from the last sample at ``start`` to the first at ``end``."""
    import numpy as np

    first = max(int(np.searchsorted(times, start, side="right")) - 1, 0)
    last = min(int(np.searchsorted(times, end, side="left")), len(times) - 1)
    return int(rss[first : last + 1].max())


def run_seurat(
    data: Path, json_path: Path, *, n_clusters: int = 8, potency: str = "vegf", timeout: int = 7200
) -> dict:
    """Run the reference analysis in Seurat on ``data``; write and return its measurements.

    Raises ``RuntimeError`` when Rscript or Seurat is unavailable (the caller skips) and
    ``subprocess.CalledProcessError`` when the R script fails (output = the log's tail).
    After ``timeout`` seconds the R process is killed: if it had clustered by then, the
    finished steps are reported as usual and the step under way with the seconds it had run
    and ``"unfinished": True`` (a lower bound; the summary's ``unfinished_step`` names it);
    otherwise ``subprocess.TimeoutExpired`` is raised.
    """
    import numpy as np
    import pandas as pd
    from mapping_vs_seurat import seurat_available
    from sklearn.metrics import adjusted_rand_score

    available, detail = seurat_available()
    if not available:
        raise RuntimeError(f"Seurat is not available: {detail}")
    data, json_path = Path(data), Path(json_path)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="seurat-reference-", dir=json_path.parent))
    log = json_path.with_suffix(".seurat.log")
    try:
        start = time.perf_counter()
        count_bytes, truth = _export(data, folder, potency)
        export_seconds = time.perf_counter() - start
        print(f"  running seurat (Rscript {R_SCRIPT.name}) ...", flush=True)
        cmd = ["Rscript", str(R_SCRIPT), str(folder), str(n_clusters)]
        times, rss, ru_maxrss, timed_out = _run_sampled(cmd, log, timeout)
        stopped = time.time()
        if timed_out and not (folder / "labels.csv").exists():
            raise subprocess.TimeoutExpired(cmd, timeout, output=log.read_text()[-3000:])
        times, rss = np.frombuffer(times, dtype=np.float64), np.frombuffer(rss, dtype=np.int64)
        timing = pd.read_csv(folder / "timing.csv").set_index("step")
        running = (folder / "running.txt").read_text().split()
        ready = float((folder / "ready.txt").read_text())
        result = pd.read_csv(folder / "result.csv", dtype=str, keep_default_na=False).set_index(
            "key"
        )["value"]
        labels = pd.read_csv(folder / "labels.csv", dtype=str).set_index("cell")["label"]
        for name in ("association", "markers"):
            if (folder / f"{name}.csv").exists():
                shutil.copyfile(
                    folder / f"{name}.csv", json_path.with_suffix(f".seurat_{name}.csv")
                )
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    load_start, load_end = timing.loc["load", "start"], timing.loc["load", "end"]
    quiet = (times >= ready) & (times <= load_start)
    baseline = int(rss[quiet].max()) if quiet.any() else _peak(times, rss, ready, ready)
    after_load = rss[times >= load_end]
    steps = [
        {
            "step": step,
            "seconds": float(timing.loc[step, "end"] - timing.loc[step, "start"]),
            "peak_rss": _peak(times, rss, timing.loc[step, "start"], timing.loc[step, "end"]),
        }
        for step in STEPS
        if step in timing.index
    ]
    unfinished = None
    if timed_out:
        unfinished, started = running[0], float(running[1])
        steps.append(
            {
                "step": unfinished,
                "seconds": stopped - started,
                "peak_rss": _peak(times, rss, started, stopped),
                "unfinished": True,
            }
        )
        print(
            f"  seurat stopped after {timeout} s, {stopped - started:.0f} s into {unfinished}",
            flush=True,
        )
    labels.index.name = None
    summary = {
        "pipeline": "seurat",
        "n_cells_after_qc": int(result["n_cells_after_qc"]),
        "n_genes_after_qc": int(result["n_genes_after_qc"]),
        "count_matrix_bytes": count_bytes,
        "rss_start": int(rss[0]),
        "rss_after_imports": baseline,
        "rss_after_warmup": baseline,
        "rss_after_load": int(after_load[0]) if after_load.size else int(rss[-1]),
        "ru_maxrss": int(max(ru_maxrss, rss.max())),
        "resolution": float(result["resolution"]),
        "n_clusters": int(labels.nunique()),
        "ari_vs_truth": float(adjusted_rand_score(truth.reindex(labels.index), labels)),
        "potency_cluster": result["potency_cluster"],
        "top_markers": result["top_markers"].split(";") if "top_markers" in result else [],
        "steps": steps,
        "seurat_version": result["seurat_version"],
        "cluster_calls": int(result["cluster_calls"]),
        "cluster_single_seconds": float(result["cluster_single_seconds"]),
        "findmarkers_limma": result["findmarkers_limma"] == "TRUE",
        "export_seconds": export_seconds,
        "unfinished_step": unfinished,
        "timeout": timeout,
    }
    labels.to_frame("label").to_csv(json_path.with_suffix(".labels.csv"))
    json_path.write_text(json.dumps(summary, default=str))
    return summary


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    if len(sys.argv) != 3:
        sys.exit(f"usage: {sys.argv[0]} DATA.h5ad OUT.json")
    print(json.dumps(run_seurat(Path(sys.argv[1]), Path(sys.argv[2])), indent=1))
