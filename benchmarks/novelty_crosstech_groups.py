"""Novelty of the query's own groups on the cross-technology and study presets (issue 16).

Usage (from the repository root)::

    .venv/bin/python benchmarks/novelty_crosstech_groups.py --scenarios crosstech --seeds 0,1,2
    .venv/bin/python benchmarks/novelty_crosstech_groups.py --scenarios crosstech_null,study --seeds 0

What it measures
----------------
The query is clustered on its own genes (``_novel_groups.query_groups``: scanpy's ``seurat``
HVGs, scaled, PCA 30, 15 neighbours, Leiden) and a group is novel as a whole when its share
of cells flagged at ``alpha = 0.05`` by their own novelty p-value
(``map_to_reference(method="fast", novelty_alpha=0.05)``) passes the one-sided binomial test
against ``alpha``, Bonferroni over groups at 0.05 (``_novel_groups.group_novelty``).
Scenarios (the split of the tests and of ``benchmarks/mapping_crosstech.py``):

- ``crosstech``: ``datasets.crosstech()``, SP9 novel;
- ``crosstech_null``: the same query without its SP9 cells (no novel population, another
  technology);
- ``study``: ``datasets.study()``, the BM-train lots without SP3 as reference, BM-test, AD and
  UC lots as query (SP3 novel; other tissues);
- ``study_null``: the same query onto the full BM-train reference (nothing novel).

Per scenario, seed and clustering (``--genes`` x ``--resolutions``): the F1 of the query
cluster closest to the novel population, the shares of novel and known cells flagged by the
cells' p-values alone and with their groups, and the groups flagged (all, and those whose
cells are mostly known). Appends to ``benchmarks/results/novelty_crosstech_groups.csv`` and
rewrites ``.md`` from it.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from _truth import population_f1

import mscpotency as mp
from mscpotency._frozen import lognormalise
from mscpotency.tl._mapping import _cache
from mscpotency.tl._mapping._harmonise import query_counts
from mscpotency.tl._mapping._novel_groups import group_novelty, query_groups

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
ALPHA = 0.05


def _reference(adata, n_clusters: int):
    mp.pp.qc(adata)
    mp.pp.preprocess(adata)
    mp.tl.cluster(adata, n_clusters=n_clusters)
    return adata


def scenario(name: str, seed: int):
    """(reference, query, novel cells) of a scenario."""
    if name.startswith("crosstech"):
        data = mp.datasets.crosstech(random_state=seed)
        reference = _reference(data[data.obs["set"] == "reference"].copy(), 8)
        query = data[data.obs["set"] != "reference"].copy()
        if name == "crosstech_null":
            query = query[~query.obs["true_novel"].to_numpy()].copy()
        mp.pp.qc(query)
        return reference, query, query.obs["true_novel"].to_numpy()
    data = mp.datasets.study(random_state=seed)
    train = data[data.obs["set"] == "BM-train"]
    query = data[data.obs["set"] != "BM-train"].copy()
    mp.pp.qc(query)
    if name == "study_null":
        return _reference(train.copy(), 8), query, np.zeros(query.n_obs, dtype=bool)
    without = train[train.obs["true_subpopulation"] != "SP3"].copy()
    return _reference(without, 7), query, (query.obs["true_subpopulation"] == "SP3").to_numpy()


def _share(x: np.ndarray, where: np.ndarray) -> float:
    return float(x[where].mean()) if where.any() else np.nan


def _novel_group(table: pd.DataFrame, mostly_known: np.ndarray, column: str) -> float:
    """The column for the group of mostly novel cells with the most cells (NaN: none)."""
    mostly_novel = table[~mostly_known]
    return (
        float(mostly_novel.sort_values("n_cells")[column].iloc[-1]) if len(mostly_novel) else np.nan
    )


def one_seed(name: str, seed: int, genes: list[int], resolutions: list[float]) -> list[dict]:
    reference, query, novel = scenario(name, seed)
    _cache.clear_caches()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        mapped = mp.tl.map_to_reference(
            query, reference, method="fast", novelty_alpha=ALPHA, copy=True
        )
    flagged = mapped.obs["predicted_novel"].to_numpy()
    expression = lognormalise(query_counts(query, "counts"), 1e4)
    rows = []
    for n_genes in genes:
        for resolution in resolutions:
            start = time.perf_counter()
            groups = query_groups(expression, n_top_genes=n_genes, resolution=resolution)
            seconds = time.perf_counter() - start
            table, in_group = group_novelty(groups, flagged, ALPHA)
            both = flagged | in_group
            mostly_known = np.array([novel[groups == g].mean() < 0.5 for g in table.index])
            known_groups = table[mostly_known]
            rows.append(
                {
                    "scenario": name,
                    "seed": seed,
                    "genes": n_genes,
                    "resolution": resolution,
                    "n_groups": len(table),
                    "best group F1": max(population_f1(groups == g, novel) for g in table.index)
                    if novel.any()
                    else np.nan,
                    "novel flagged, cells": _share(flagged, novel),
                    "novel flagged, with groups": _share(both, novel),
                    "known flagged, cells": _share(flagged, ~novel),
                    "known flagged, with groups": _share(both, ~novel),
                    "groups flagged": int(table["excess_novel"].sum()),
                    "known groups flagged": int((table["excess_novel"] & mostly_known).sum()),
                    "novel group share": _novel_group(table, mostly_known, "share_novel"),
                    "novel group p": _novel_group(table, mostly_known, "novelty_pvalue"),
                    "known groups: top share": float(known_groups["share_novel"].max()),
                    "known groups: min p": float(known_groups["novelty_pvalue"].min()),
                    "clustering s": seconds,
                }
            )
            print(rows[-1], flush=True)
    return rows


def _markdown(frame: pd.DataFrame) -> str:
    lines = [
        "# Novelty of the query's own groups (issue 16)",
        "",
        "Script: `benchmarks/novelty_crosstech_groups.py` (its docstring says what it does). "
        f"alpha = {ALPHA}; shares of novel / known cells flagged by their own p-value "
        "('cells') and with the cells of groups novel as a whole ('with groups').",
        "",
        frame.to_markdown(index=False, floatfmt=".3f"),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", default="crosstech")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--genes", default="300")
    parser.add_argument("--resolutions", default="1.0")
    args = parser.parse_args(argv)
    genes = [int(g) for g in args.genes.split(",")]
    resolutions = [float(r) for r in args.resolutions.split(",")]
    rows = []
    for name in args.scenarios.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            rows += one_seed(name, seed, genes, resolutions)
    csv = RESULTS / "novelty_crosstech_groups.csv"
    frame = pd.DataFrame(rows)
    if csv.exists():
        frame = pd.concat([pd.read_csv(csv), frame], ignore_index=True)
    frame.to_csv(csv, index=False)
    (RESULTS / "novelty_crosstech_groups.md").write_text(_markdown(frame))


if __name__ == "__main__":
    main()
