"""The main analysis gives bit-identical results across processes and thread counts.

Two fresh Python processes run the reference analysis of the tiny preset (QC, preprocess,
cluster, fractions, association, markers), one with every thread pool (OpenMP, OpenBLAS,
MKL, numba) at 1 thread and one at 2; their clusters, fractions, p-values and markers must
be equal bit for bit. The two run side by side, so the test costs one analysis of wall time.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd

SCRIPT = textwrap.dedent(
    """
    import pickle, sys
    import mscpotency as mp

    adata = mp.datasets.tiny()
    adata = adata[adata.obs["set"] == "BM-train"].copy()
    mp.pp.qc(adata)
    mp.pp.preprocess(adata)
    mp.tl.cluster(adata, n_clusters=8)
    mp.tl.lot_fractions(adata)
    mp.tl.potency_association(adata, "vegf")
    mp.tl.potency_markers(adata)
    out = {
        "clusters": adata.obs["cluster"].astype(str).to_numpy(),
        "pca": adata.obsm["X_pca"],
        "fractions": mp.get.lot_fractions(adata),
        "association": mp.get.potency_association(adata),
        "markers": mp.get.potency_markers(adata),
    }
    with open(sys.argv[1], "wb") as f:
        pickle.dump(out, f)
    """
)
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
THREAD_VARIABLES += ("NUMBA_NUM_THREADS", "NUMEXPR_NUM_THREADS")


def _start(threads: int, out: Path) -> subprocess.Popen:
    env = {**os.environ, **dict.fromkeys(THREAD_VARIABLES, str(threads))}
    env["PYTHONHASHSEED"] = str(threads)  # string hashing must not matter either
    return subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(out)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_main_analysis_is_bit_identical_across_processes_and_thread_counts(tmp_path):
    outputs = {threads: tmp_path / f"threads{threads}.pkl" for threads in (1, 2)}
    runs = {threads: _start(threads, path) for threads, path in outputs.items()}
    for threads, run in runs.items():
        log, _ = run.communicate(timeout=600)
        assert run.returncode == 0, f"the run with {threads} thread(s) failed:\n{log[-3000:]}"
    one, two = (pickle.loads(outputs[t].read_bytes()) for t in (1, 2))
    assert np.array_equal(one["clusters"], two["clusters"])
    assert len(set(one["clusters"])) == 8
    assert one["pca"].tobytes() == two["pca"].tobytes()
    for name in ("fractions", "association", "markers"):
        pd.testing.assert_frame_equal(one[name], two[name], check_exact=True, obj=name)
        numbers = one[name].select_dtypes("number")
        assert numbers.to_numpy().tobytes() == two[name][numbers.columns].to_numpy().tobytes()
