"""One table and one figure of the reference analysis vs bare scanpy, per number of cells.

Usage (from the repository root, after ``reference_analysis.py`` at each size)::

    .venv/bin/python benchmarks/reference_analysis.py --cells 10000 --repeat 2 --pipelines ours,bare --out benchmarks/results/performance
    .venv/bin/python benchmarks/reference_analysis.py --cells 100000 --repeat 2 --pipelines ours,bare --out benchmarks/results/performance
    .venv/bin/python benchmarks/performance_figure.py

Reads ``benchmarks/results/performance/reference_<cells>_process.csv`` (whole-process wall time and
peak RSS from ``/usr/bin/time -v``, ARI vs the simulated subpopulations, F1 of the potency
cluster vs the simulated potency cells; one row per pipeline) for every size present, and,
when ``reference_dask_1000000.md`` exists, the out-of-core (Dask) run at 10^6 cells (ours
only: the count matrix alone, 8.3 GB, does not fit bare scanpy on this machine; its wall
time is the sum of its steps, its memory the peak RSS of its process).

Writes ``benchmarks/results/performance/performance.csv`` and ``performance.md`` (the table) and
``docs/images/performance.png`` (time and memory vs cells, log-log, both tools), shown
by ``docs/performance.md``.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "performance"
FIGURE = HERE.parent / "docs" / "images" / "performance.png"
LABELS = {"ours": "mscpotency", "bare": "bare scanpy", "dask": "mscpotency (Dask)"}


def _dask_row(path: Path) -> dict | None:
    """The 10^6-cell out-of-core run, read from its Markdown report."""
    if not path.exists():
        return None
    text = path.read_text()
    cells = re.search(r"cells after QC ([\d,]+)", text)
    peak = re.search(r"peak RSS of the whole run ([\d,]+) MiB", text)
    wall = re.search(r"total wall time of the steps that ran \(qc → \.\.\.\): ([\d,.]+) s", text)
    ari = re.search(r"ARI vs truth ([\d.]+)", text)
    f1 = re.search(r"F1 ([\d.]+)", text)
    load = re.search(r"\| load \| ([\d.]+) \|", text)
    if not (cells and peak and wall and ari):
        return None
    return {
        "cells": 1_000_000,
        "pipeline": "dask",
        "process_wall_s": float(wall.group(1).replace(",", ""))
        + (float(load.group(1)) if load else 0.0),
        "process_max_rss_mb": float(peak.group(1).replace(",", "")),
        "ari_vs_truth": float(ari.group(1)),
        "potency_f1": float(f1.group(1)) if f1 else None,
        "load_average": None,
    }


def collect(results: Path) -> pd.DataFrame:
    """Every ``reference_<cells>_process.csv`` (and the Dask run) as one table."""
    rows = [
        row
        for path in sorted(results.glob("reference_*_process.csv"))
        for row in pd.read_csv(path).to_dict("records")
    ]
    dask = _dask_row(HERE / "results" / "reference_dask_1000000.md")
    if dask is not None:
        rows.append(dask)
    table = pd.DataFrame(rows)
    if table.empty:
        msg = f"no reference_<cells>_process.csv in {results}: run reference_analysis.py first"
        raise FileNotFoundError(msg)
    table = table[table["pipeline"].isin(LABELS)].sort_values(["cells", "pipeline"])
    return table.reset_index(drop=True)


def to_markdown(table: pd.DataFrame) -> str:
    """The summary table, with ours / bare ratios per size."""
    lines = [
        "| cells | tool | wall, whole process (s) | CPU, whole process (s) | peak RSS (MiB) "
        "| ARI vs truth | potency F1 | wall ours / bare | CPU ours / bare | RSS ours / bare "
        "| load average at start |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    table = table.reindex(columns=[*table.columns, *(c for c in _COLUMNS if c not in table)])
    for cells, group in table.groupby("cells", sort=True):
        rows = group.set_index("pipeline")
        for pipeline, row in rows.iterrows():
            ratios = ["", "", ""]
            if pipeline == "ours" and "bare" in rows.index:
                bare = rows.loc["bare"]
                ratios = [
                    _fmt(row[c] / bare[c], ".2f")
                    for c in ("process_wall_s", "process_cpu_s", "process_max_rss_mb")
                ]
            lines.append(
                f"| {cells:,} | {LABELS[pipeline]} | {_fmt(row['process_wall_s'], '.1f')} "
                f"| {_fmt(row['process_cpu_s'], '.1f')} | {_fmt(row['process_max_rss_mb'], ',.0f')} "
                f"| {_fmt(row['ari_vs_truth'], '.3f')} | {_fmt(row['potency_f1'], '.3f')} "
                f"| {' | '.join(ratios)} | {_fmt(row['load_average'], '.1f')} |"
            )
    return "\n".join(lines)


_COLUMNS = ("process_wall_s", "process_cpu_s", "process_max_rss_mb", "potency_f1", "load_average")


def _fmt(value, spec: str) -> str:
    """``value`` formatted, or empty when missing."""
    return "" if value is None or pd.isna(value) else format(value, spec)


def plot(table: pd.DataFrame, path: Path) -> None:
    """Wall time and peak memory vs cells, log-log, one line per tool."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), layout="constrained")
    styles = {"ours": ("C0", "o", "-"), "bare": ("C1", "s", "-"), "dask": ("C0", "D", ":")}
    for pipeline, group in table.groupby("pipeline", sort=False):
        color, marker, line = styles[pipeline]
        for ax, column in zip(axes, ("process_wall_s", "process_max_rss_mb"), strict=True):
            ax.plot(
                group["cells"],
                group[column] / (1024 if column.endswith("_mb") else 1),
                marker=marker,
                linestyle=line,
                color=color,
                label=LABELS[pipeline],
            )
    if {"ours", "dask"} <= set(table["pipeline"]):  # join the in-memory and Dask points
        joined = table[table["pipeline"].isin(["ours", "dask"])].sort_values("cells")
        for ax, column in zip(axes, ("process_wall_s", "process_max_rss_mb"), strict=True):
            values = joined[column] / (1024 if column.endswith("_mb") else 1)
            ax.plot(joined["cells"].iloc[-2:], values.iloc[-2:], ":", color="C0")
    loads = table["load_average"].dropna()
    if not loads.empty:
        fig.suptitle(
            f"2 shared cores, load average {loads.min():.0f}-{loads.max():.0f} at the start of "
            "the in-memory runs",
            fontsize="medium",
        )
    axes[0].set_ylabel("wall time, whole process (s)")
    axes[1].set_ylabel("peak RSS (GiB)")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("cells")
        ax.grid(True, which="both", alpha=0.3)
        ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axes[0].legend(frameon=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--figure", default=str(FIGURE))
    args = parser.parse_args(argv)
    table = collect(Path(args.results))
    table.to_csv(Path(args.results) / "performance.csv", index=False)
    markdown = to_markdown(table)
    (Path(args.results) / "performance.md").write_text(
        "# Reference analysis vs bare scanpy, per size\n\n"
        "Generated by `benchmarks/performance_figure.py` from "
        "`reference_<cells>_process.csv` (and `reference_dask_1000000.md`).\n\n" + markdown + "\n"
    )
    plot(table, Path(args.figure))
    print(markdown)


if __name__ == "__main__":
    main()
