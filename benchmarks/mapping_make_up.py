"""Benchmark: lots of unusual make-up, centred on their own mean or on their shift net of it.

Usage (from the repository root)::

    .venv/bin/python benchmarks/mapping_make_up.py                 # study seed 0, crosstech 0-2
    .venv/bin/python benchmarks/mapping_make_up.py --crosstech-seeds 0 --study-seeds ""

What it does
------------
For each scenario of ``mapping_crosstech.py`` (the study preset's full reference of its 11
bone-marrow training lots; the cross-technology preset's 8 reference lots), new lots of
``--cells`` known cells are drawn from one lot of a query set (study: its held-out
bone-marrow lots ``BM-test``, adipose ``AD`` and umbilical-cord ``UC`` lots; crosstech: its
lots of another technology, ``query-xt``; the set's lot with the most potency cells) with a
set share of potency cells (SP3): 0, 2, 30, 50, 80, 95 and 100% (a share needing more
potency cells than the lot has is skipped). Each lot is mapped alone (a lot released on
its own) with ``fast`` and ``anchors``, each with ``centre="lot"`` (each lot on its own
mean, the default before) and ``centre="lot_shift"`` (each lot on its shift net of its
make-up, the default now). Alone, because the lots of a set are drawn from one source lot
and share cells: mapped together, a cell drawn into several lots weighed several times in
the query's own axes, and the shared cells were flagged novel (study seed 0: 27-51% of the
80-100% lots flagged at 0.01 mapped together, 4-12% mapped alone; real lots share no
cells).

Columns: ``preset``, ``seed``, ``set``, ``source`` (the lot drawn from), ``true_share``
(the lot's share of potency cells), ``method``, ``centre``, ``share`` (its cells whose most
probable label is the reference's potency cluster), ``unassigned`` (its cells labelled
``Unassigned``), ``novel`` (its cells flagged novel at the default ``novelty_alpha``
0.01), ``lot_shift``, ``make_up_ambiguous`` and ``make_up_unusual`` (from
``get.map_to_reference``; NaN/False for ``centre="lot"``).
Writes ``benchmarks/results/mapping_make_up.csv`` and ``.md``.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from _results import write_table
from mapping_crosstech import population, scenario

import mscpotency as mp

mp.settings.progress = False

RESULTS = Path(__file__).parent / "results"
NAME = "mapping_make_up"
SHARES = (0.0, 0.02, 0.3, 0.5, 0.8, 0.95, 1.0)
SETS = {"study": ("BM-test", "AD", "UC"), "crosstech": ("query-xt",)}
OPTIONS = {"fast": mp.tl.FastOptions, "anchors": mp.tl.AnchorOptions}


def drawn_lots(query: ad.AnnData, where: str, n_cells: int, seed: int) -> ad.AnnData:
    """Lots of ``n_cells`` known cells, one per share of :data:`SHARES`, drawn from one lot.

    The lot of the set ``where`` with the most potency cells: cells of one lot share its
    shift (donor, site), as a real lot's do (cells drawn from several lots would not).
    """
    rng = np.random.default_rng([seed, 7])
    known = ~query.obs["true_novel"].to_numpy() if "true_novel" in query.obs else True
    potency = query.obs["true_potency_cell"].to_numpy()
    in_set = (query.obs["set"].astype(str) == where).to_numpy() & known
    source = query.obs["lot"][in_set & potency].astype(str).value_counts().index[0]
    here = in_set & (query.obs["lot"].astype(str) == source).to_numpy()
    lots = []
    for share in SHARES:
        n_potency = round(n_cells * share)
        if n_potency > (here & potency).sum() or n_cells - n_potency > (here & ~potency).sum():
            continue
        cells = np.concatenate(
            [
                rng.choice(np.flatnonzero(here & potency), n_potency, replace=False),
                rng.choice(np.flatnonzero(here & ~potency), n_cells - n_potency, replace=False),
            ]
        )
        lot = query[np.sort(cells)].copy()
        lot.obs["lot"] = f"{where}-{share:.2f}"
        lot.obs["source"] = source
        lot.obs_names = [f"{where}-{share:.2f}-{i}" for i in range(lot.n_obs)]
        lots.append(lot)
    return ad.concat(lots, merge="same")


def mapped_rows(reference: ad.AnnData, lots: ad.AnnData, method: str, centre: str) -> list[dict]:
    """One row per lot: its true and mapped potency share, Unassigned share, shift."""
    potency = (
        pd.crosstab(population(reference), reference.obs["cluster"].astype(str)).loc["SP3"].idxmax()
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        mapped = mp.tl.map_to_reference(
            lots, reference, method=method, options=OPTIONS[method](centre=centre), copy=True
        )
    label = mapped.obsm["predicted_probabilities"].idxmax(axis=1).to_numpy()
    frame = pd.DataFrame(
        {
            "lot": lots.obs["lot"].to_numpy(),
            "true_share": lots.obs["true_potency_cell"].to_numpy(),
            "share": label == potency,
            "unassigned": (mapped.obs["predicted"].astype(str) == "Unassigned").to_numpy(),
            "novel": mapped.obs["predicted_novel"].to_numpy(),
        }
    )
    per_lot = mp.get.map_to_reference(mapped)
    rows = []
    for lot, cells in frame.groupby("lot", sort=False):
        rows.append(
            {
                "source": str(lots.obs["source"].iloc[0]),
                "true_share": float(cells["true_share"].mean()),
                "method": method,
                "centre": centre,
                "share": float(cells["share"].mean()),
                "unassigned": float(cells["unassigned"].mean()),
                "novel": float(cells["novel"].mean()),
                "lot_shift": float(per_lot.loc[lot, "lot_shift"]),
                "make_up_ambiguous": bool(per_lot.loc[lot, "make_up_ambiguous"]),
                "make_up_unusual": bool(per_lot.loc[lot, "make_up_unusual"]),
            }
        )
    return rows


def _summary(table: pd.DataFrame) -> str:
    """Largest error of the mapped share per centre and method, over lots of 0-95% and 100%."""
    table = table.assign(error=(table["share"] - table["true_share"]).abs())
    pure = table["true_share"] >= 0.999
    lines = ["Largest |mapped - true share| per centre and method (lots below 100% / of 100%):", ""]
    for (centre, method), rows in table.groupby(["centre", "method"], sort=False):
        lines.append(
            f"- `{centre}`, {method}: {rows.loc[~pure[rows.index], 'error'].max():.3f} / "
            f"{rows.loc[pure[rows.index], 'error'].max():.3f}; lots marked ambiguous: "
            f"{int(rows['make_up_ambiguous'].sum())} of {len(rows)}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--study-seeds", default="0")
    parser.add_argument("--crosstech-seeds", default="0,1,2")
    parser.add_argument("--cells", type=int, default=150)
    args = parser.parse_args(argv)
    rows = []
    for preset, seeds in (("study", args.study_seeds), ("crosstech", args.crosstech_seeds)):
        for seed in (int(s) for s in seeds.split(",") if s):
            setting = scenario(preset, seed)
            for where in SETS[preset]:
                lots = drawn_lots(setting["query"], where, args.cells, seed)
                for method in OPTIONS:
                    for centre in ("lot", "lot_shift"):
                        for name in lots.obs["lot"].unique():
                            lot = lots[(lots.obs["lot"] == name).to_numpy()].copy()
                            for row in mapped_rows(setting["labels"], lot, method, centre):
                                rows.append({"preset": preset, "seed": seed, "set": where} | row)
                print(pd.DataFrame(rows).tail(4 * len(lots.obs["lot"].unique())), flush=True)
    table = pd.DataFrame(rows).round(3)
    write_table(
        RESULTS / NAME,
        table,
        title="Lots of unusual make-up: centred on their own mean or on their shift net of it",
        command=(
            f"python benchmarks/{NAME}.py --study-seeds {args.study_seeds} "
            f"--crosstech-seeds {args.crosstech_seeds} --cells {args.cells}"
        ),
        summary=_summary(table),
    )


if __name__ == "__main__":
    main()
