"""Benchmark: size and read time of a frozen reference (issue 15, item 6).

Usage (from the repository root)::

    .venv/bin/python benchmarks/reference_size.py                 # study preset
    .venv/bin/python benchmarks/reference_size.py --preset tiny   # a quick check

What it does
------------
1. Simulates the preset (seed 0); its BM-train lots are the reference, processed as a user
   would (``pp.qc``, ``pp.preprocess``, ``tl.cluster(n_clusters=8)``, ``tl.lot_fractions``,
   ``tl.potency_association``).
2. Freezes it (``tl.freeze_reference``) and writes it three ways: the format before this
   change (log-normalised float32 ``X``, ``AnnData.write_h5ad`` uncompressed and gzip), and
   ``io.write_reference`` (counts of the embedding genes in the smallest exact integer type
   plus each cell's normalisation factor; ``X`` byte-shuffled + gzip, the rest gzip).
3. Times ``io.read_reference`` (read, decode, recompute and check the content hash) and a
   plain ``anndata.read_h5ad`` of each file, median of ``--repeats`` runs.
4. Writes ``benchmarks/results/reference_size.md``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import anndata
import numpy as np

import mscpotency as mp
from mscpotency._frozen import reference_model

HERE = Path(__file__).resolve().parent


def reference(preset: str) -> anndata.AnnData:
    data = getattr(mp.datasets, preset)()
    ref = data[data.obs["set"] == "BM-train"].copy()
    mp.pp.qc(ref)
    mp.pp.preprocess(ref)
    mp.tl.cluster(ref, n_clusters=8)
    mp.tl.lot_fractions(ref)
    mp.tl.potency_association(ref, "vegf")
    return ref


def timed(func, repeats: int) -> tuple[float, float]:
    """Median wall-clock and CPU seconds (CPU time: what an idle core would take, load aside)."""
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        func()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="study", choices=["tiny", "study"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    ref = reference(args.preset)
    frozen = mp.tl.freeze_reference(ref)
    model = reference_model(frozen, cluster_key="cluster")
    old = frozen.copy()  # the format before: log-normalised float32 X
    old.X = model.expression.astype(np.float32)
    del old.obs["normalisation_scale"]
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        paths = {
            "before: log-normalised float32 X, uncompressed": Path(folder) / "raw.h5ad",
            "before: log-normalised float32 X, gzip (write_h5ad)": Path(folder) / "gzip.h5ad",
            "now: io.write_reference (integer counts + factor, shuffle+gzip)": Path(folder)
            / "now.h5ad",
        }
        keys = list(paths)
        old.write_h5ad(paths[keys[0]])
        old.write_h5ad(paths[keys[1]], compression="gzip")
        write = timed(lambda: mp.io.write_reference(frozen, paths[keys[2]], overwrite=True), 1)[0]
        for name, path in paths.items():
            plain = timed(lambda p=path: anndata.read_h5ad(p), args.repeats)
            checked = (
                timed(lambda p=path: mp.io.read_reference(p), args.repeats)
                if name.startswith("now")
                else (float("nan"), float("nan"))
            )
            rows.append((name, path.stat().st_size / 1e6, plain, checked))
        loaded = mp.io.read_reference(paths[keys[2]])
        same = reference_model(loaded, cluster_key="cluster").hash == model.hash
    write_results(args.preset, ref, frozen, rows, write, same)


def write_results(preset, ref, frozen, rows, write, same) -> None:
    lines = [
        f"# Frozen reference: size and read time ({preset} preset, seed 0)",
        "",
        f"Machine: {platform.machine()}, 2 cores shared with other jobs, Python "
        f"{sys.version.split()[0]}. Reference: {ref.n_obs} cells; frozen on "
        f"{frozen.n_vars} embedding genes ({frozen.X.nnz} non-zero values, X dtype "
        f"{frozen.X.dtype}). Command: `nice -n 10 python benchmarks/reference_size.py "
        f"--preset {preset}`.",
        "",
        "- read_h5ad: `anndata.read_h5ad` only; read_reference: `io.read_reference` (read, "
        "recompute the log-normalised expression from the counts, recompute and check the "
        "content hash). Median of 3 runs; wall-clock seconds, and in brackets CPU seconds of "
        "the process (single-threaded: the wall time on an idle core; the machine was shared "
        "with other sessions' jobs, so wall times are inflated).",
        f"- io.write_reference took {write:.1f} s; the file read back has the same content "
        f"hash as the processed reference: {same}.",
        "",
        "| file | MB | read_h5ad s | read_reference s |",
        "|---|---|---|---|",
    ]
    for name, size, plain, checked in rows:
        shown = "" if np.isnan(checked[0]) else f"{checked[0]:.2f} ({checked[1]:.2f} CPU)"
        lines.append(f"| {name} | {size:.1f} | {plain[0]:.2f} ({plain[1]:.2f} CPU) | {shown} |")
    out = HERE / "results" / "reference_size.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
