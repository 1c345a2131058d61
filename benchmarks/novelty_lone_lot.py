"""Benchmark: a new population in one lot, mapped alone or together with other new lots.

Usage (from the repository root)::

    .venv/bin/python benchmarks/novelty_lone_lot.py              # study seed 0, ~4 min
    .venv/bin/python benchmarks/novelty_lone_lot.py --seeds 0,1

What it does
------------
The study preset's reference without its potency population SP3 (``mapping_crosstech.py``'s
``novelty`` reference: SP3 is new to it). From one query lot of each tissue (the lot with the
most SP3 cells: bone marrow ``BM-test``, adipose ``AD``, umbilical cord ``UC``) a lot of
``--cells`` cells is drawn with a set share of SP3 cells (0, 10, 33 and 60%; a share needing
more SP3 cells than the lot has is skipped), and mapped with the default backend

- ``alone``: the drawn lot is the whole query (one lot released on its own);
- ``together``: the drawn lot with the query's other lots, as ``mscpotency map`` maps the
  lots of a folder (every query lot but the source lot, which shares its cells; their SP3
  cells left out, so that only the drawn lot holds the new population).

A lot mapped alone is scored beside reference cells that fill it up to a calibration fold's
size unless its make-up is unusual (``make_up_unusual``; ``docs/concepts.md``).

Columns: ``seed``, ``set``, ``source``, ``share_new`` (the lot's share of SP3 cells),
``mapped`` (alone / together), ``new_flagged_0.01`` and ``new_flagged_0.05`` (its SP3 cells
with a novelty p-value at most 0.01 / 0.05), ``known_flagged_0.01`` and
``known_flagged_0.05`` (its other cells), ``excess_novel`` (the lot fails the per-lot excess
test at the default ``novelty_alpha`` 0.01) and ``make_up_unusual`` (from
``get.map_to_reference``). Writes ``benchmarks/results/novelty_lone_lot.csv`` and ``.md``.

With ``--known-lots``, instead: each of the study preset's query lots (bone marrow, adipose,
umbilical cord; every cell of a population the reference knows) mapped alone onto the full
reference, as a lot released on its own: ``lot``, ``set``, ``n_cells``,
``n_scored_beside`` (``uns['predicted']['novelty']``), ``flagged_0.01`` and
``flagged_0.05`` (its cells with a novelty p-value at most 0.01 / 0.05, all false flags),
``excess_novel`` and ``make_up_unusual``. Writes ``novelty_lone_lot_known.csv`` and ``.md``
(~4 min a seed).
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from _results import write_table
from mapping_crosstech import scenario

import mscpotency as mp

mp.settings.progress = False

RESULTS = Path(__file__).parent / "results"
NAME = "novelty_lone_lot"
SHARES = (0.0, 0.1, 0.33, 0.6)
SETS = ("BM-test", "AD", "UC")


def drawn_lot(query: ad.AnnData, where: str, share: float, n_cells: int, seed: int):
    """``n_cells`` cells of the set's lot richest in SP3, a share ``share`` of them SP3 (or None)."""
    rng = np.random.default_rng([seed, 11])
    new = (query.obs["true_subpopulation"].astype(str) == "SP3").to_numpy()
    in_set = (query.obs["set"].astype(str) == where).to_numpy()
    source = query.obs["lot"][in_set & new].astype(str).value_counts().index[0]
    here = (query.obs["lot"].astype(str) == source).to_numpy()
    n_new = round(n_cells * share)
    if n_new > (here & new).sum() or n_cells - n_new > (here & ~new).sum():
        return None, source
    cells = np.concatenate(
        [
            rng.choice(np.flatnonzero(here & new), n_new, replace=False),
            rng.choice(np.flatnonzero(here & ~new), n_cells - n_new, replace=False),
        ]
    )
    lot = query[np.sort(cells)].copy()
    lot.obs["lot"] = "NEW"
    lot.obs_names = [f"NEW-{i}" for i in range(lot.n_obs)]
    return lot, source


def rows_of(reference: ad.AnnData, query: ad.AnnData) -> dict:
    """The drawn lot's flagged shares (its cells are named ``NEW-*``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        mapped = mp.tl.map_to_reference(query, reference, copy=True)
    lot = (mapped.obs["lot"].astype(str) == "NEW").to_numpy()
    new = (mapped.obs["true_subpopulation"].astype(str) == "SP3").to_numpy()[lot]
    p = mapped.obs["predicted_novelty_p"].to_numpy()[lot]
    per_lot = mp.get.map_to_reference(mapped).loc["NEW"]
    row = {}
    for alpha in (0.01, 0.05):
        row[f"new_flagged_{alpha}"] = float((p[new] <= alpha).mean()) if new.any() else np.nan
        row[f"known_flagged_{alpha}"] = float((p[~new] <= alpha).mean())
    row["excess_novel"] = bool(per_lot["excess_novel"])
    row["make_up_unusual"] = bool(per_lot["make_up_unusual"])
    return row


def _summary(table: pd.DataFrame) -> str:
    """Mean share of the new population flagged at 0.05, alone and together, per share."""
    new = table[table["share_new"] > 0]
    means = new.groupby(["share_new", "mapped"])["new_flagged_0.05"].mean().unstack()
    lines = ["Mean share of the new population's cells flagged at 0.05 (alone / together):", ""]
    for share, row in means.iterrows():
        lines.append(f"- {share:.0%} new: {row['alone']:.2f} / {row['together']:.2f}")
    return "\n".join(lines)


def known_lots_alone(seed: int) -> list[dict]:
    """Each study query lot mapped alone onto the reference that knows all its populations."""
    setting = scenario("study", seed)
    query, reference = setting["query"], setting["labels"]
    rows = []
    for lot in query.obs["lot"].astype(str).unique():
        cells = query[(query.obs["lot"].astype(str) == lot).to_numpy()].copy()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            mapped = mp.tl.map_to_reference(cells, reference, copy=True)
        p = mapped.obs["predicted_novelty_p"].to_numpy()
        per_lot = mp.get.map_to_reference(mapped).loc[lot]
        rows.append(
            {
                "seed": seed,
                "lot": lot,
                "set": str(cells.obs["set"].iloc[0]),
                "n_cells": cells.n_obs,
                "n_scored_beside": mapped.uns["predicted"]["novelty"]["n_scored_beside"],
                "flagged_0.01": float((p <= 0.01).mean()),
                "flagged_0.05": float((p <= 0.05).mean()),
                "excess_novel": bool(per_lot["excess_novel"]),
                "make_up_unusual": bool(per_lot["make_up_unusual"]),
            }
        )
        print(rows[-1], flush=True)
    return rows


def _known_summary(table: pd.DataFrame) -> str:
    """The range of false flags per tissue, and how many lots fail the excess test."""
    lines = ["Known cells flagged (lots released alone), range over lots:", ""]
    for where, part in table.groupby("set", sort=False):
        lines.append(
            f"- {where}: {part['flagged_0.01'].min():.3f}-{part['flagged_0.01'].max():.3f} at "
            f"0.01, {part['flagged_0.05'].min():.3f}-{part['flagged_0.05'].max():.3f} at 0.05; "
            f"{int(part['excess_novel'].sum())} of {len(part)} lots fail the excess test"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--cells", type=int, default=300)
    parser.add_argument("--known-lots", action="store_true")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s]
    if args.known_lots:
        table = pd.DataFrame([row for seed in seeds for row in known_lots_alone(seed)]).round(3)
        write_table(
            RESULTS / f"{NAME}_known",
            table,
            title="Lots of known populations released alone: false novelty flags",
            command=f"python benchmarks/{NAME}.py --known-lots --seeds {args.seeds}",
            summary=_known_summary(table),
        )
        return
    rows = []
    for seed in seeds:
        setting = scenario("study", seed)
        query, reference = setting["query"], setting["novelty"]
        for where in SETS:
            for share in SHARES:
                lot, source = drawn_lot(query, where, share, args.cells, seed)
                if lot is None:
                    continue
                others = query[
                    (query.obs["lot"].astype(str) != source).to_numpy()
                    & (query.obs["true_subpopulation"].astype(str) != "SP3").to_numpy()
                ]
                together = ad.concat([lot, others], merge="same")
                for mapped, cells in (("alone", lot), ("together", together)):
                    row = {"seed": seed, "set": where, "source": source, "share_new": share}
                    rows.append(row | {"mapped": mapped} | rows_of(reference, cells))
                    print(rows[-1], flush=True)
    table = pd.DataFrame(rows).round(3)
    write_table(
        RESULTS / NAME,
        table,
        title="A new population in one lot, mapped alone or together with other new lots",
        command=f"python benchmarks/{NAME}.py --seeds {args.seeds} --cells {args.cells}",
        summary=_summary(table),
    )


if __name__ == "__main__":
    main()
