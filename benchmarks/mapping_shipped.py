"""A new process mapping one set onto a saved frozen reference, with and without shipped calibrations.

What a QC lab running ``mscpotency map`` per new lot pays: every call is a fresh process
reading the frozen reference from disk. For each query set of the study preset and each
backend, one fresh process per reference file (alternating, plain first) times
``tl.map_to_reference(query, path)`` (reading the reference included; imports and the
numba cache warm-up excluded by one untimed tiny mapping first) and saves the results; the
two files' results must be identical.

Run from the repository root::

    .venv/bin/python benchmarks/mapping_shipped.py --cache DIR --out benchmarks/results/mapping_shipped.md

``--cache`` holds the study preset's reference analysis and query sets as written by
``benchmarks/mapping_profile.py --cache DIR`` (computed here if missing).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SETS = ("BM-test", "AD", "UC")
METHODS = ("anchors", "fast")


def child(reference: str, query: str, method: str, save: str) -> None:
    """One fresh process: warm up on the tiny preset, then map ``query`` onto ``reference``."""
    import anndata as ad

    import mscpotency as mp
    from mscpotency.tl._mapping._cache import clear_caches

    tiny = mp.datasets.tiny()
    train = tiny[tiny.obs["set"] == "BM-train"].copy()
    for step in (mp.pp.qc, mp.pp.preprocess):
        step(train)
    mp.tl.cluster(train, n_clusters=4)
    warm = tiny[tiny.obs["set"] == "BM-test"].copy()
    mp.pp.qc(warm)
    mp.tl.map_to_reference(warm, train, method=method, copy=True)  # compiles, loads kernels
    clear_caches()
    cells = ad.read_h5ad(query)
    start, cpu = time.perf_counter(), time.process_time()
    mapped = mp.tl.map_to_reference(cells, reference, method=method, copy=True)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    arrays = {c: mapped.obs[c].to_numpy() for c in mapped.obs if c.startswith("predicted")}
    arrays |= {k: np.asarray(mapped.obsm[k]) for k in mapped.obsm if k.startswith("predicted")}
    np.savez(
        save,
        **{k: np.asarray(v, dtype=str if v.dtype == object else None) for k, v in arrays.items()},
    )
    print(json.dumps({"seconds": seconds, "cpu": cpu, "n_cells": int(cells.n_obs)}))


def frozen_files(cache: Path) -> tuple[Path, Path, float, float]:
    """The study reference frozen without and with shipped calibrations, and the seconds each took."""
    import anndata as ad

    import mscpotency as mp

    reference = ad.read_h5ad(cache / "reference.h5ad")
    start = time.perf_counter()
    plain = mp.tl.freeze_reference(reference)
    plain_seconds = time.perf_counter() - start
    from mscpotency.tl._mapping._cache import clear_caches

    clear_caches()
    start = time.perf_counter()
    shipped = mp.tl.freeze_reference(reference, calibrations=METHODS)
    shipped_seconds = time.perf_counter() - start
    paths = cache / "frozen_plain.h5ad", cache / "frozen_shipped.h5ad"
    mp.io.write_reference(plain, paths[0], overwrite=True)
    mp.io.write_reference(shipped, paths[1], overwrite=True)
    return paths[0], paths[1], plain_seconds, shipped_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    cache = args.cache / "study_0"
    if not (cache / "reference.h5ad").exists():
        subprocess.run(
            [
                sys.executable,
                str(Path(__file__).with_name("mapping_profile.py")),
                "--cache",
                str(args.cache),
                "--kinds",
                "warm",
                "--methods",
                "fast",
                "--sets",
                "BM-test",
            ],
            check=True,
        )
    plain, shipped, plain_seconds, shipped_seconds = frozen_files(cache)
    rows = []
    for method in METHODS:
        for name in SETS:
            timings = {}
            for label, path in (("plain", plain), ("shipped", shipped)):
                save = cache / f"result_{method}_{name}_{label}.npz"
                done = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--cache",
                        str(args.cache),
                        "--child",
                        str(path),
                        str(cache / f"{name}.h5ad"),
                        method,
                        str(save),
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                timings[label] = json.loads(done.stdout.strip().splitlines()[-1])
            a = np.load(cache / f"result_{method}_{name}_plain.npz")
            b = np.load(cache / f"result_{method}_{name}_shipped.npz")
            same = sorted(a.files) == sorted(b.files) and all(
                np.array_equal(a[k], b[k], equal_nan=a[k].dtype.kind == "f") for k in a.files
            )
            row = (method, name, timings["plain"], timings["shipped"], same, len(a.files))
            rows.append(row)
            print(
                method,
                name,
                f"{row[2]['seconds']:.2f} -> {row[3]['seconds']:.2f} s",
                "identical" if same else "DIFFERENT",
                f"({len(a.files)} fields)",
                flush=True,
            )
    lines = [
        "# A new process mapping one set onto a saved frozen reference: shipped calibrations",
        "",
        f"- machine: {os.cpu_count()} cores; load average at the end {os.getloadavg()[0]:.2f}; "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- study preset, seed 0; reference {cache / 'reference.h5ad'} (16,314 cells); "
        f"`tl.freeze_reference` {plain_seconds:.1f} s plain, {shipped_seconds:.1f} s with "
        f"`calibrations={METHODS}`; files {plain.stat().st_size / 1e6:.1f} MB and "
        f"{shipped.stat().st_size / 1e6:.1f} MB",
        "- each cell: one fresh process, `tl.map_to_reference(query, path)` timed (reading the "
        "reference included), after an untimed tiny mapping (imports, compiled kernels)",
        "",
        "| backend | set | cells | plain: wall s (CPU s) | shipped: wall s (CPU s) | results |",
        "|---|---|---|---|---|---|",
    ]
    for method, name, p, s, same, n in rows:
        lines.append(
            f"| {method} | {name} | {p['n_cells']:,} | {p['seconds']:.2f} ({p['cpu']:.2f}) | "
            f"**{s['seconds']:.2f}** ({s['cpu']:.2f}) | {'identical' if same else 'DIFFERENT'} "
            f"({n} fields) |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
