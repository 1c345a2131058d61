"""Benchmark: tl.map_to_reference backends beside Seurat's FindTransferAnchors + TransferData.

Usage (from the repository root)::

    .venv/bin/python benchmarks/mapping_vs_seurat.py                 # study preset, all backends
    .venv/bin/python benchmarks/mapping_vs_seurat.py --preset tiny   # a quick check
    .venv/bin/python benchmarks/mapping_vs_seurat.py --no-seurat     # ours only
    .venv/bin/python benchmarks/mapping_vs_seurat.py --install-r     # apt-get R + Seurat first

What it does
------------
1. Simulates the study preset (``mscpotency.datasets.study()``, seed 0): the 11 BM-train lots
   are the reference (``pp.qc``, ``pp.preprocess``, ``tl.cluster(n_clusters=8)``,
   ``tl.lot_fractions``, ``tl.potency_association``); the 4 BM-test, 4 AD and 5 UC lots
   (``pp.qc``) are mapped onto it, one set at a time, as the study did.
2. Times ``tl.map_to_reference`` per set for each backend (``fast``, ``anchors`` and, when
   scvi-tools is installed, ``scvi``) with default options; the in-process calibration cache
   is cleared before every run, so each time includes the calibration on the reference.
3. If ``Rscript -e 'library(Seurat)'`` works (Seurat 4.x from Debian's ``r-cran-seurat``),
   writes the same counts for R and runs ``benchmarks/seurat_transfer.R``: Seurat's
   standard reference preparation (LogNormalize, 2,000 vst genes, ScaleData, 30 PCs, done
   once and not counted per set) and per set ``NormalizeData`` + ``FindTransferAnchors``
   (``pcaproject``, 30 dims, k.anchor 5, k.score 30, k.filter NA: no anchor filtering,
   Seurat's fast setting and Seurat 5's default; ``--seurat-k-filter 200`` for Seurat 4.3's
   default, several times slower) + ``TransferData`` (k.weight 50). Without R or Seurat it
   says so and skips them (``--install-r`` tries ``apt-get install r-base-core
   r-cran-seurat`` first).
4. Scores every backend against the simulator's truth: each query cell's true label is the
   reference cluster holding most reference cells of its true population; ours by the most
   probable label, as Seurat's ``predicted.id`` (``obs['predicted']`` also leaves cells
   flagged novel or with an empty prediction set ``"Unassigned"``, about 1% of known cells:
   their share is the ``Unassigned`` column). Per set: F1 of
   the potency-like cells, overall accuracy, expected calibration error of the prediction
   score, and Spearman's rho between each lot's potency-like share and its true share.
5. Writes ``benchmarks/results/mapping_vs_seurat_<preset>.csv`` and ``.md`` (one table:
   accuracy and wall time per backend and set, speed-up against Seurat).

Both sides run on the same machine in the same session; wall times are ``perf_counter`` /
``Sys.time`` around the per-set mapping only (reading data excluded on both sides).
"""

from __future__ import annotations

import argparse
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import sparse, stats

import mscpotency as mp
from mscpotency.tl._mapping import _pca_backends, expected_calibration_error

HERE = Path(__file__).resolve().parent
SETS = ("BM-test", "AD", "UC")


def seurat_available() -> tuple[bool, str]:
    """Whether Rscript and Seurat can be used, and the reason when not."""
    if shutil.which("Rscript") is None:
        return False, "Rscript is not installed"
    result = subprocess.run(
        [
            "Rscript",
            "-e",
            "suppressPackageStartupMessages(library(Seurat)); cat(as.character(packageVersion('Seurat')))",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    if result.returncode != 0:
        return (
            False,
            f"R cannot load Seurat ({result.stderr.strip().splitlines()[-1] if result.stderr.strip() else 'unknown error'})",
        )
    return True, result.stdout.strip().splitlines()[-1]


def install_r() -> None:
    """Install R and Seurat from Debian packages (needs root and network)."""
    print("installing r-base-core r-cran-seurat r-bioc-limma with apt-get ...", flush=True)
    subprocess.run(["apt-get", "update"], check=False)
    subprocess.run(
        ["apt-get", "install", "-y", "r-base-core", "r-cran-seurat", "r-bioc-limma"], check=False
    )


def prepare(preset: str, seed: int) -> tuple:
    adata = (
        mp.datasets.study(random_state=seed)
        if preset == "study"
        else mp.datasets.tiny(random_state=seed)
    )
    reference = adata[adata.obs["set"] == "BM-train"].copy()
    start = time.perf_counter()
    mp.pp.qc(reference)
    mp.pp.preprocess(reference)
    mp.tl.cluster(reference, n_clusters=8)
    mp.tl.lot_fractions(reference)
    mp.tl.potency_association(reference, "vegf")
    reference_seconds = time.perf_counter() - start
    queries = {}
    for name in SETS:
        query = adata[adata.obs["set"] == name].copy()
        mp.pp.qc(query)
        queries[name] = query
    return reference, queries, reference_seconds


def true_labels(reference, query) -> np.ndarray:
    def population(a):
        return np.where(a.obs["true_low_quality"], "LQ", a.obs["true_subpopulation"].astype(str))

    table = pd.crosstab(population(reference), reference.obs["cluster"].astype(str))
    return table.idxmax(axis=1).reindex(population(query)).fillna("").to_numpy()


def argmax_labels(mapped) -> tuple[np.ndarray, np.ndarray]:
    """Each cell's most probable label and its probability, as Seurat's predicted.id.

    Not ``obs['predicted']``: that is ``"Unassigned"`` for cells flagged novel or with an
    empty prediction set (about 1% of known cells), which Seurat has no counterpart for;
    their share is reported beside (column ``Unassigned``).
    """
    probabilities = mapped.obsm["predicted_probabilities"]
    return probabilities.idxmax(axis=1).astype(str).to_numpy(), probabilities.max(axis=1).to_numpy()


def score(reference, query, predicted: np.ndarray, confidence: np.ndarray, potency: str) -> dict:
    truth = true_labels(reference, query)
    p, t = predicted == potency, truth == potency
    correct = predicted == truth
    lots = query.obs["lot"].astype(str).to_numpy()
    share = pd.Series(p).groupby(lots).mean()
    true_share = pd.Series(query.obs["true_potency_cell"].to_numpy()).groupby(lots).mean()
    return {
        "F1 potency-like": 2 * (p & t).sum() / max(p.sum() + t.sum(), 1),
        "accuracy": correct.mean(),
        "ECE": expected_calibration_error(confidence, correct),
        "lot share rho": stats.spearmanr(share, true_share.loc[share.index])[0],
        "max |share - true share|": float(np.abs(share - true_share.loc[share.index]).max()),
    }


def run_ours(reference, queries, methods, potency) -> list[dict]:
    rows = []
    for method in methods:
        for name, query in queries.items():
            _pca_backends._CALIBRATIONS.clear()  # the temperature is fitted anew for each set
            _pca_backends._HELD_OUT.clear()
            start = time.perf_counter()
            mapped = mp.tl.map_to_reference(query, reference, method=method, copy=True)
            seconds = time.perf_counter() - start
            metrics = score(reference, mapped, *argmax_labels(mapped), potency) | {
                "Unassigned": float((mapped.obs["predicted"] == "Unassigned").mean())
            }
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
                f"{method:8s} {name:8s} {seconds:7.1f} s  F1 {metrics['F1 potency-like']:.4f}  acc {metrics['accuracy']:.4f}",
                flush=True,
            )
    return rows


def _write_counts(directory: Path, name: str, counts, cells) -> None:
    csc = sparse.csr_matrix(counts).T.tocsc()  # genes x cells, compressed by cell
    csc.sort_indices()
    csc.indices.astype(np.int32).tofile(directory / f"{name}_i.bin")
    csc.indptr.astype(np.int32).tofile(directory / f"{name}_p.bin")
    csc.data.astype(np.float64).tofile(directory / f"{name}_x.bin")
    (directory / f"{name}_shape.txt").write_text(f"{csc.shape[0]} {csc.shape[1]}\n")
    (directory / f"{name}_cells.txt").write_text("\n".join(map(str, cells)) + "\n")


def _on_genes(query, genes) -> sparse.csr_matrix:
    """The query's counts on the reference genes; genes QC removed from the query are zeros."""
    positions = query.var_names.get_indexer(genes)
    found = positions >= 0
    select = sparse.csr_matrix(
        (np.ones(found.sum()), (positions[found], np.flatnonzero(found))),
        shape=(query.n_vars, len(genes)),
    )
    return sparse.csr_matrix(query.layers["counts"]) @ select


def seurat_predictions(
    reference, queries, data_dir: Path, timeout: int, *, k_filter: str = "200", mapping_score=False
) -> tuple[dict[str, pd.DataFrame], pd.DataFrame, str]:
    """Seurat's transfer of ``reference.obs["cluster"]`` to every query (``seurat_transfer.R``).

    Returns each query's predictions (indexed by its cells, in its order; ``mapping.score``
    too when ``mapping_score``), the R script's timing table and Seurat's version.
    ``k_filter`` is FindTransferAnchors' (``"NA"``: no anchor filtering).
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    genes = reference.var_names
    (data_dir / "genes.txt").write_text("\n".join(genes) + "\n")
    _write_counts(data_dir, "reference", reference.layers["counts"], reference.obs_names)
    (data_dir / "reference_labels.txt").write_text(
        "\n".join(reference.obs["cluster"].astype(str)) + "\n"
    )
    for name, query in queries.items():
        _write_counts(data_dir, f"query_{name}", _on_genes(query, genes), query.obs_names)
    (data_dir / "sets.txt").write_text("\n".join(queries) + "\n")
    out_dir = data_dir / "out"
    print(
        f"running Seurat (FindTransferAnchors k.filter={k_filter} + TransferData) ...", flush=True
    )
    subprocess.run(
        [
            "Rscript",
            str(HERE / "seurat_transfer.R"),
            str(data_dir),
            str(out_dir),
            k_filter,
            str(bool(mapping_score)).upper(),
        ],
        check=True,
        timeout=timeout,
    )
    timing = pd.read_csv(out_dir / "seurat_timing.csv")
    version = (out_dir / "seurat_version.txt").read_text().strip()
    predictions = {
        name: pd.read_csv(out_dir / f"seurat_{name}.csv").set_index("cell").loc[query.obs_names]
        for name, query in queries.items()
    }
    return predictions, timing, version


def run_seurat(
    reference, queries, potency, data_dir: Path, timeout: int, k_filter: str = "NA"
) -> tuple[list[dict], float, str]:
    all_predictions, timing, version = seurat_predictions(
        reference, queries, data_dir, timeout, k_filter=k_filter
    )
    rows = []
    for name, query in queries.items():
        predictions = all_predictions[name]
        seconds = float(
            timing.loc[(timing["step"] == "map") & (timing["set"] == name), "seconds"].iloc[0]
        )
        metrics = score(
            reference,
            query,
            predictions["predicted.id"].astype(str).to_numpy(),
            predictions["prediction.score.max"].to_numpy(),
            potency,
        )
        rows.append(
            {
                "backend": f"Seurat {version} (k.filter={k_filter})",
                "set": name,
                "cells": query.n_obs,
                "seconds": seconds,
                **metrics,
            }
        )
        print(
            f"Seurat   {name:8s} {seconds:7.1f} s  F1 {metrics['F1 potency-like']:.4f}  acc {metrics['accuracy']:.4f}",
            flush=True,
        )
    reference_seconds = float(timing.loc[timing["step"] == "reference", "seconds"].iloc[0])
    return rows, reference_seconds, version


def summarise(rows: list[dict]) -> pd.DataFrame:
    table = pd.DataFrame(rows)
    totals = (
        table.groupby("backend", sort=False)
        .agg(
            cells=("cells", "sum"),
            seconds=("seconds", "sum"),
            accuracy=("accuracy", "mean"),
            ECE=("ECE", "mean"),
            Unassigned=("Unassigned", "mean"),
        )
        .reset_index()
    )
    totals["set"] = "all (sum of times, mean of scores)"
    totals["F1 potency-like"] = (
        table.groupby("backend", sort=False)["F1 potency-like"].mean().to_numpy()
    )
    totals["lot share rho"] = table.groupby("backend", sort=False)["lot share rho"].min().to_numpy()
    totals["max |share - true share|"] = (
        table.groupby("backend", sort=False)["max |share - true share|"].max().to_numpy()
    )
    table = pd.concat([table, totals], ignore_index=True)
    seurat = table[table["backend"].str.startswith("Seurat")].set_index("set")["seconds"]
    table["speed-up vs Seurat"] = [
        seurat[s] / sec if s in seurat.index else np.nan
        for s, sec in zip(table["set"], table["seconds"], strict=True)
    ]
    return table


def to_markdown(table: pd.DataFrame, header: list[str]) -> str:
    columns = [
        "backend",
        "set",
        "cells",
        "seconds",
        "speed-up vs Seurat",
        "F1 potency-like",
        "accuracy",
        "ECE",
        "lot share rho",
        "max |share - true share|",
        "Unassigned",
    ]
    lines = [*header, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for _, row in table[columns].iterrows():
        cells = []
        for column in columns:
            value = row[column]
            if isinstance(value, float):
                cells.append(
                    ""
                    if not np.isfinite(value)
                    else (
                        f"{value:.1f}"
                        if column in ("seconds", "speed-up vs Seurat")
                        else f"{value:.4f}"
                    )
                )
            else:
                cells.append(str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=["study", "tiny"], default="study")
    parser.add_argument(
        "--methods", default=None, help="comma-separated backends (default: fast,anchors[,scvi])"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-seurat", action="store_true")
    parser.add_argument(
        "--install-r", action="store_true", help="apt-get install R and Seurat when missing"
    )
    parser.add_argument("--seurat-timeout", type=int, default=7200)
    parser.add_argument(
        "--seurat-k-filter", default="NA", help="FindTransferAnchors' k.filter (NA: none)"
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="where the counts for R are written (default: a temp dir)",
    )
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)

    methods = args.methods.split(",") if args.methods else ["fast", "anchors"]
    if args.methods is None:
        try:
            import scvi  # noqa: F401

            methods.append("scvi")
        except ImportError:
            print(
                "scvi-tools is not installed: the scvi backend is skipped (pip install 'mscpotency[scvi]')."
            )
    reference, queries, reference_seconds = prepare(args.preset, args.seed)
    potency = reference.uns["potency_association"]["potency_cluster"]
    print(
        f"reference: {reference.n_obs} cells, processed in {reference_seconds:.0f} s; potency cluster {potency}"
    )
    rows = run_ours(reference, queries, methods, potency)
    notes = [
        f"mscpotency reference analysis (qc, preprocess, cluster, association): {reference_seconds:.0f} s, not counted per set."
    ]
    if args.no_seurat:
        notes.append("Seurat: skipped (--no-seurat).")
    else:
        available, detail = seurat_available()
        if not available and args.install_r:
            install_r()
            available, detail = seurat_available()
        if available:
            data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="mapping_vs_seurat_"))
            seurat_rows, seurat_reference, version = run_seurat(
                reference, queries, potency, data_dir, args.seurat_timeout, args.seurat_k_filter
            )
            rows.extend(seurat_rows)
            notes.append(
                f"Seurat {version} reference preparation (NormalizeData, vst, ScaleData, RunPCA): {seurat_reference:.0f} s, not counted per set."
            )
        else:
            print(
                f"Seurat skipped: {detail}. Install R and Seurat (apt-get install r-base-core r-cran-seurat) or pass --install-r."
            )
            notes.append(f"Seurat: skipped ({detail}).")
    table = summarise(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"mapping_vs_seurat_{args.preset}"
    table.to_csv(stem.with_suffix(".csv"), index=False)
    header = [
        f"# Reference mapping: mscpotency vs Seurat ({args.preset} preset, seed {args.seed})",
        "",
        f"Machine: {platform.machine()}, {_cpu_count()} cores, Python {platform.python_version()}, "
        f"mscpotency {mp.__version__}. Reference: {reference.n_obs} BM-train cells; one query set per run.",
        "",
        *[f"- {note}" for note in notes],
        "- F1 potency-like: cells labelled as the reference's potency cluster vs cells whose true population "
        "maps to it; accuracy: all labels; ECE: expected calibration error of the prediction score (10 bins); "
        "lot share rho: Spearman of each lot's potency-like share with its true share of potency cells.",
        "- Times include, for mscpotency, gene harmonisation, normalisation, projection, the mapping score, "
        "the UMAP placement (if any) and the calibration on held-out reference lots.",
    ]
    stem.with_suffix(".md").write_text(to_markdown(table, header))
    print(to_markdown(table, header))


def _cpu_count() -> int:
    import os

    return (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    )


if __name__ == "__main__":
    sys.exit(main())
