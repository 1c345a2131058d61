"""Benchmark: mapping backends across technologies, with the calibrated novelty flags.

Usage (from the repository root)::

    .venv/bin/python benchmarks/mapping_crosstech.py                       # both presets
    .venv/bin/python benchmarks/mapping_crosstech.py --presets crosstech   # one
    .venv/bin/python benchmarks/mapping_crosstech.py --seeds 0,1,2         # several seeds

What it does
------------
Two scenarios, each mapped by ``tl.map_to_reference`` (``fast`` and ``anchors``, default
options, calibration cache cleared before every run so times include it) and by scanpy's
``tl.ingest`` (the same reference genes, log-normalised, 50 PCs, 15 neighbours):

- ``study``: ``datasets.study()`` with the 11 BM-train lots as reference (SP3, the potency
  population, left out of it, so one population is novel) and the 13 BM-test, AD and UC lots
  as the query (same technology, other tissues);
- ``crosstech``: ``datasets.crosstech()``: 8 reference lots, 6 query lots from another
  technology (40% depth, gene-specific capture, log-sd 0.5) carrying SP9, absent from the
  reference.

Scores against the simulator's truth (each query cell's true label is the reference cluster
holding most reference cells of its true population; novel cells have none): on known cells
accuracy and macro-F1 of the argmax label, F1 of the potency-like cells (study: with SP3
left out there is no potency cluster, so the study scenario's label figures come from a
second, full reference), Spearman's rho of each lot's potency-like share with its true share;
novelty AUROC of the mapping score, the share of known and of novel cells flagged at
novelty_alpha 0.01 and 0.05; the share of known cells left ``Unassigned``; coverage of the
true label by the prediction sets (set_alpha 0.01) and their mean size; seconds per run.
Writes ``benchmarks/results/mapping_crosstech.csv`` and ``.md``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import scanpy as sc
from scipy import stats
from sklearn.metrics import f1_score, roc_auc_score

import mscpotency as mp
from mscpotency.tl._mapping import _cache

HERE = Path(__file__).resolve().parent


def population(adata) -> np.ndarray:
    return np.where(
        adata.obs["true_low_quality"], "LQ", adata.obs["true_subpopulation"].astype(str)
    )


def true_labels(reference, query) -> np.ndarray:
    table = pd.crosstab(population(reference), reference.obs["cluster"].astype(str))
    return table.idxmax(axis=1).reindex(population(query)).fillna("").to_numpy()


def build_reference(adata, n_clusters: int):
    mp.pp.qc(adata)
    mp.pp.preprocess(adata)
    mp.tl.cluster(adata, n_clusters=n_clusters)
    return adata


def scenario(name: str, seed: int) -> dict:
    """Reference(s), query and which cells are novel."""
    if name == "crosstech":
        data = mp.datasets.crosstech(random_state=seed)
        reference = build_reference(data[data.obs["set"] == "reference"].copy(), 8)
        query = data[data.obs["set"] != "reference"].copy()
        mp.pp.qc(query)
        novel = query.obs["true_novel"].to_numpy()
        return {
            "labels": reference,
            "novelty": reference,
            "query": query,
            "novel": novel,
            "known": ~novel,
        }
    data = mp.datasets.study(random_state=seed)
    train = data[data.obs["set"] == "BM-train"]
    full = build_reference(train.copy(), 8)
    without = build_reference(train[train.obs["true_subpopulation"] != "SP3"].copy(), 7)
    query = data[data.obs["set"] != "BM-train"].copy()
    mp.pp.qc(query)
    novel = (query.obs["true_subpopulation"] == "SP3").to_numpy()
    known = np.ones(query.n_obs, dtype=bool)  # the label reference knows every population
    return {"labels": full, "novelty": without, "query": query, "novel": novel, "known": known}


def label_metrics(reference, query, predicted: np.ndarray, known: np.ndarray) -> dict:
    truth = true_labels(reference, query)
    potency = (
        pd.crosstab(population(reference), reference.obs["cluster"].astype(str)).loc["SP3"].idxmax()
    )
    p, t = predicted[known] == potency, truth[known] == potency
    lots = query.obs["lot"].astype(str).to_numpy()[known]
    share = pd.Series(p).groupby(lots).mean()
    true_share = pd.Series(query.obs["true_potency_cell"].to_numpy()[known]).groupby(lots).mean()
    return {
        "accuracy": float((predicted[known] == truth[known]).mean()),
        "macro-F1": float(f1_score(truth[known], predicted[known], average="macro")),
        "F1 potency-like": float(2 * (p & t).sum() / max(p.sum() + t.sum(), 1)),
        "lot share rho": float(stats.spearmanr(share, true_share.loc[share.index])[0]),
    }


def ours(setting: dict, method: str) -> dict:
    query, known = setting["query"], setting["known"]
    _cache.clear_caches()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        mapped = mp.tl.map_to_reference(query, setting["labels"], method=method, copy=True)
        seconds = time.perf_counter() - start
        novelty = (
            mapped
            if setting["novelty"] is setting["labels"]
            else mp.tl.map_to_reference(query, setting["novelty"], method=method, copy=True)
        )
    probabilities = mapped.obsm["predicted_probabilities"]
    predicted = probabilities.idxmax(axis=1).to_numpy()
    row = {"seconds": seconds, **label_metrics(setting["labels"], mapped, predicted, known)}
    truth = true_labels(setting["labels"], mapped)
    in_set = mapped.obsm["predicted_set"]
    covered = np.array(
        [
            in_set.iloc[i][label] if label in in_set.columns else False
            for i, label in enumerate(truth)
        ]
    )
    unassigned = (mapped.obs["predicted"] == "Unassigned").to_numpy()
    row |= {
        "set coverage (0.99)": float(covered[known].mean()),
        "mean set size": float(mapped.obs["predicted_set_size"].to_numpy()[known].mean()),
        "known Unassigned": float(unassigned[known].mean()),
    }
    return row | novelty_metrics(novelty, setting["novel"])


def novelty_metrics(mapped, novel: np.ndarray) -> dict:
    score = mapped.obs["predicted_mapping_score"].to_numpy()
    p = mapped.obs["predicted_novelty_p"].to_numpy()
    record = mapped.uns["predicted"]["novelty"]
    row = {
        "novelty AUROC": float(roc_auc_score(novel, -score)),
        "depth ratio": float(record["depth_ratio"]),
        "depth matched": float(record["depth_matched"]),
    }
    for alpha in (0.01, 0.05):
        row[f"known flagged @{alpha}"] = float((p[~novel] <= alpha).mean())
        row[f"novel flagged @{alpha}"] = float((p[novel] <= alpha).mean())
    return row


def ingest(setting: dict, *, warm_up: bool = True) -> dict:
    """scanpy's ingest (its first call in a process, compiling numba code, is not timed)."""
    if warm_up:
        small = {
            "labels": setting["labels"][:300].copy(),
            "query": setting["query"][:100].copy(),
            "novel": setting["novel"][:100],
            "known": setting["known"][:100],
        }
        ingest(small, warm_up=False)
    reference, query, known = setting["labels"], setting["query"], setting["known"]
    genes = reference.var_names[reference.var["highly_variable"].to_numpy()]
    start = time.perf_counter()
    # copies: normalize_total and log1p work in place, and the counts are the scenario's
    ref = sc.AnnData(reference.layers["counts"].copy(), obs=reference.obs[["cluster"]].copy())
    ref.var_names = reference.var_names
    qry = sc.AnnData(query.layers["counts"].copy(), obs=query.obs[["lot"]].copy())
    qry.var_names = query.var_names
    for adata in (ref, qry):
        sc.pp.normalize_total(adata, target_sum=1e4)
        sc.pp.log1p(adata)
    ref, qry = ref[:, genes].copy(), qry[:, genes].copy()
    sc.pp.pca(ref, n_comps=50, random_state=0)
    sc.pp.neighbors(ref, n_neighbors=15, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc.tl.ingest(qry, ref, obs="cluster", embedding_method="pca")
    seconds = time.perf_counter() - start
    predicted = qry.obs["cluster"].astype(str).to_numpy()
    return {"seconds": seconds, **label_metrics(reference, query, predicted, known)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", default="study,crosstech")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--study-seeds", default=None, help="seeds of the study preset (--seeds)")
    args = parser.parse_args(argv)
    study_seeds = args.seeds if args.study_seeds is None else args.study_seeds
    rows = []
    for name in args.presets.split(","):
        seeds = study_seeds if name == "study" else args.seeds
        for seed in (int(s) for s in seeds.split(",")):
            setting = scenario(name, seed)
            runs = {f"mscpotency {m}": (ours, m) for m in ("fast", "anchors")}
            for backend, (func, method) in runs.items():
                rows.append(
                    {"preset": name, "seed": seed, "backend": backend} | func(setting, method)
                )
                print(rows[-1], flush=True)
            rows.append(
                {"preset": name, "seed": seed, "backend": "scanpy ingest"} | ingest(setting)
            )
            print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    out = HERE / "results" / "mapping_crosstech"
    table.to_csv(out.with_suffix(".csv"), index=False)
    mean = (
        table.groupby(["preset", "backend"], sort=False)
        .mean(numeric_only=True)
        .drop(columns="seed")
    )
    header = [
        "# Mapping across technologies, with calibrated novelty flags",
        "",
        f"Machine: {platform.machine()}, Python {platform.python_version()}, "
        f"mscpotency {mp.__version__}, scanpy {importlib.metadata.version('scanpy')}; seeds "
        f"{args.seeds} (study: {study_seeds}; means, per seed below). "
        "Seurat is not installed on this machine (see mapping_vs_seurat.md for Seurat 4.3 on "
        "the study preset). Label figures on known cells (argmax label); novelty figures from "
        "the p-values (study: reference without SP3); coverage of the true label by the "
        "prediction sets at set_alpha 0.01. Seconds: ours include the calibrations on the "
        "reference (cache cleared); ingest's include its reference PCA and neighbours (its "
        "first, compiling call untimed). Machine shared with other jobs: times are loose "
        f"(load average at the end {os.getloadavg()[0]:.1f}). "
        "Command: `python benchmarks/mapping_crosstech.py "
        f"--presets {args.presets} --seeds {args.seeds} --study-seeds {study_seeds}`.",
        "",
    ]
    body = mean.reset_index().to_markdown(index=False, floatfmt=".3f")
    novelty_columns = [c for c in table.columns if "flagged" in c or c.startswith("depth")]
    ours_rows = table[table["backend"] == "mscpotency fast"]
    per_seed = ours_rows[["preset", "seed", *novelty_columns]].to_markdown(
        index=False, floatfmt=".3f"
    )
    text = (
        "\n".join(header)
        + body
        + "\n\nNovelty per seed (fast; the flags do not depend on the backend):\n\n"
    )
    out.with_suffix(".md").write_text(text + per_seed + "\n")
    print(body)


if __name__ == "__main__":
    main()
