"""Planted-marker rank by score vs by fold change (issue 12): which default for markers?

Reads the per-seed results of ``benchmarks/potency_population.py`` (hard and study
presets), whose columns ``marker_rank_search`` (``tl.potency_markers(rank_by="score")``)
and ``marker_rank_search_lfc`` (``rank_by="logfoldchange"``) give the rank of the planted
marker (LRRC75A) among the top 50 markers of the population found, and writes
``results/potency_markers_rank_by.md``.

    .venv/bin/python benchmarks/potency_population_markers.py
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    lines = ["# Planted marker's rank: rank_by='score' vs rank_by='logfoldchange'", ""]
    tables = []
    for preset in ("hard", "study"):
        table = pd.read_csv(RESULTS / f"potency_population_{preset}.csv")
        table = table[table["found"]]
        score, lfc = table["marker_rank_search"], table["marker_rank_search_lfc"]
        lines.append(
            f"- {preset}, {len(table)} seeds: 1st by score {int((score == 1).sum())}/"
            f"{len(table)}, by fold change {int((lfc == 1).sum())}/{len(table)}; fold change "
            f"ranks it no worse in {int((lfc <= score).sum())}/{len(table)}"
        )
        tables.append(
            table[["seed", "marker_rank_search", "marker_rank_search_lfc"]].assign(preset=preset)
        )
    both = pd.concat(tables)[["preset", "seed", "marker_rank_search", "marker_rank_search_lfc"]]
    text = "\n".join(lines) + "\n\n" + both.to_markdown(index=False) + "\n"
    (RESULTS / "potency_markers_rank_by.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
