"""Benchmark: the scvi backend trained once into the frozen reference, each query set mapped from the file.

Usage (from the repository root)::

    nice -n 10 .venv/bin/python benchmarks/scvi_frozen.py                    # study preset
    nice -n 10 .venv/bin/python benchmarks/scvi_frozen.py --fraction 0.25    # a quarter of each set's cells
    nice -n 10 .venv/bin/python benchmarks/scvi_frozen.py --preset tiny      # a quick check

What it does
------------
1. Simulates the preset (seed 0) and runs the reference analysis on its BM-train lots as
   ``benchmarks/mapping_vs_seurat.py`` does (``--fraction`` first keeps that share of every
   lot's cells, drawn at random, in the reference and in the query sets alike).
2. Freezes the reference with ``tl.freeze_reference(..., scvi=ScviOptions(...))`` (scVI ->
   scANVI on the reference counts, lots as batches, plus one model per fold of lots for the
   calibration) and writes it with ``io.write_reference``; times both.
3. Maps each query set (BM-test, AD, UC) from the file with ``method="scvi"`` (reading the
   file, rebuilding the model from its arrays, scArches surgery on the query alone), and with
   ``anchors`` and ``fast`` beside it; per set: seconds, potency-like F1, accuracy, ECE and
   the Spearman correlation of each lot's potency-like share with its true share.
4. Writes ``benchmarks/results/scvi_frozen_<preset>[_<fraction>].md`` and ``.csv``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import mscpotency as mp
from mscpotency.tl._mapping import _pca_backends
from mscpotency.tl._mapping._scvi import STEPS, epochs_for

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from mapping_vs_seurat import SETS, score, summarise, to_markdown  # noqa: E402


def subsample(adata, fraction: float, seed: int):
    """``fraction`` of every lot's cells, at random."""
    if fraction >= 1:
        return adata
    rng = np.random.default_rng(seed)
    keep = np.zeros(adata.n_obs, dtype=bool)
    for lot in adata.obs["lot"].unique():
        rows = np.flatnonzero((adata.obs["lot"] == lot).to_numpy())
        keep[rng.choice(rows, size=max(1, round(fraction * rows.size)), replace=False)] = True
    return adata[keep].copy()


def prepare(preset: str, fraction: float) -> tuple:
    """The processed reference and the QC'd query sets (as mapping_vs_seurat.prepare)."""
    adata = subsample(getattr(mp.datasets, preset)(random_state=0), fraction, 0)
    reference = adata[adata.obs["set"] == "BM-train"].copy()
    mp.pp.qc(reference)
    mp.pp.preprocess(reference)
    mp.tl.cluster(reference, n_clusters=8)
    mp.tl.lot_fractions(reference)
    mp.tl.potency_association(reference, "vegf")
    queries = {}
    for name in SETS:
        queries[name] = adata[adata.obs["set"] == name].copy()
        mp.pp.qc(queries[name])
    return reference, queries


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="study", choices=["tiny", "study"])
    parser.add_argument("--fraction", type=float, default=1.0)
    parser.add_argument("--folds", type=int, default=3, help="calibration folds")
    parser.add_argument("--methods", default="scvi,anchors,fast")
    parser.add_argument("--max-epochs", type=int, default=None, help="scVI (default: step budget)")
    parser.add_argument("--scanvi-epochs", type=int, default=None)
    parser.add_argument("--query-epochs", type=int, default=None)
    parser.add_argument("--tag", default=None, help="suffix of the results' file names")
    parser.add_argument("--torch-threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument(
        "--frozen",
        default=None,
        help="frozen reference file: written there after training, or read from there when "
        "it exists (skips the training; freeze seconds then refer to the earlier run)",
    )
    args = parser.parse_args(argv)
    reference, queries = prepare(args.preset, args.fraction)
    potency = reference.uns["potency_association"]["potency_cluster"]
    options = mp.tl.ScviOptions(
        n_calibration_folds=args.folds,
        max_epochs=args.max_epochs,
        scanvi_epochs=args.scanvi_epochs,
        query_epochs=args.query_epochs,
        torch_threads=args.torch_threads,
    )
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        path, freeze_seconds = frozen_file(reference, options, args.frozen or folder)
        size = path.stat().st_size / 1e6
        for method in args.methods.split(","):
            for name, query in queries.items():
                _pca_backends._CALIBRATIONS.clear()  # the temperature is fitted anew for each set
                _pca_backends._HELD_OUT.clear()
                begin = time.perf_counter()
                mapped = mp.tl.map_to_reference(
                    query,
                    path,
                    method=method,
                    options=options if method == "scvi" else None,
                    copy=True,
                )
                seconds = time.perf_counter() - begin
                metrics = score(
                    reference,
                    mapped,
                    mapped.obs["predicted"].astype(str).to_numpy(),
                    mapped.obs["predicted_score"].to_numpy(),
                    potency,
                )
                rows.append(
                    {
                        "backend": f"mscpotency {method}",
                        "set": name,
                        "cells": query.n_obs,
                        "seconds": seconds,
                        **metrics,
                    }
                )
                print(
                    f"{method:8s} {name:8s} {seconds:7.1f} s  F1 {metrics['F1 potency-like']:.4f}",
                    flush=True,
                )
    epochs = {
        "scVI": options.max_epochs or epochs_for(reference.n_obs, 128, STEPS["scvi"]),
        "scANVI": options.scanvi_epochs or epochs_for(reference.n_obs, 128, STEPS["scanvi"], low=5),
        "query surgery": {
            n: options.query_epochs or epochs_for(q.n_obs, 128, STEPS["query"])
            for n, q in queries.items()
        },
    }
    write(args, reference, rows, freeze_seconds, size, epochs)


def frozen_file(reference, options, where: str) -> tuple[Path, float | None]:
    """The frozen reference file: trained and written now, or an earlier run's file."""
    path = Path(where)
    path = path / "reference.h5ad" if path.is_dir() else path
    if path.exists():
        print(f"reading the frozen reference {path} (no training)", flush=True)
        return path, None
    start = time.perf_counter()
    frozen = mp.tl.freeze_reference(reference, scvi=options)
    seconds = time.perf_counter() - start
    print(f"freeze_reference: {seconds:.0f} s", flush=True)
    return mp.io.write_reference(frozen, path), seconds


def write(args, reference, rows, freeze_seconds, size, epochs) -> None:
    table = summarise(rows)
    suffix = "" if args.fraction >= 1 else f"_fraction{args.fraction:g}".replace(".", "_")
    suffix += "" if args.tag is None else f"_{args.tag}"
    stem = HERE / "results" / f"scvi_frozen_{args.preset}{suffix}"
    table.to_csv(f"{stem}.csv")
    header = [
        f"# scvi backend from a frozen reference ({args.preset} preset, seed 0"
        + (f", {args.fraction:.0%} of every lot's cells" if args.fraction < 1 else "")
        + ")",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, load average "
        f"{os.getloadavg()[0]:.1f} / {os.getloadavg()[2]:.1f} (1 / 15 min) when the run ended "
        f"(nice {os.nice(0)}), torch {args.torch_threads} thread(s) "
        f"(`ScviOptions.torch_threads`), Python {sys.version.split()[0]}. Command: `python "
        f"benchmarks/scvi_frozen.py --preset {args.preset} --fraction {args.fraction:g} "
        f"--folds {args.folds} --max-epochs {args.max_epochs} --scanvi-epochs "
        f"{args.scanvi_epochs} --query-epochs {args.query_epochs} --torch-threads "
        f"{args.torch_threads} --methods {args.methods}"
        + (" --frozen <file>" if args.frozen else "")
        + "` (None: the default step budget).",
        "",
        f"- Reference: {reference.n_obs} BM-train cells. `tl.freeze_reference(scvi=...)` "
        f"trained the model once plus {args.folds} calibration-fold models in "
        + (f"{freeze_seconds:.0f} s" if freeze_seconds is not None else "an earlier run")
        + f"; the file is {size:.1f} MB.",
        f"- Epochs (default step budgets {STEPS}, batch 128): {epochs}.",
        "- Each row maps one set from the file (read, verify, rebuild the model, surgery); "
        "anchors and fast map from the same file.",
        "",
    ]
    text = to_markdown(table, header)
    Path(f"{stem}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
