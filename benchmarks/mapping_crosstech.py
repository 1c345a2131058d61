"""Benchmark: mapping backends across technologies, with the calibrated novelty flags.

Usage (from the repository root)::

    .venv/bin/python benchmarks/mapping_crosstech.py                       # both presets
    .venv/bin/python benchmarks/mapping_crosstech.py --presets crosstech   # one
    .venv/bin/python benchmarks/mapping_crosstech.py --seeds 0,1,2         # several seeds

What it does
------------
Two scenarios, each mapped by ``tl.map_to_reference`` (``fast`` and ``anchors``, default
options, calibration cache cleared before every run so times include it), by scanpy's
``tl.ingest`` (the same reference genes, log-normalised, 50 PCs, 15 neighbours) and, where
R loads Seurat (Debian's ``r-cran-seurat``, 4.3), by Seurat's FindTransferAnchors +
TransferData on the same counts (``seurat_transfer.R``; k.filter NA, the fast setting,
by default; ``--seurat-k-filter NA,200`` adds Seurat 4.3's default, ``''`` skips Seurat),
with Seurat's MappingScore as its novelty score:

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
true label by the prediction sets (set_alpha 0.01) and their mean size (known cells; novel
cells: on the reference without them); seconds per run.
Seurat has no calibrated flag: its rows give the novelty AUROC of MappingScore. For ours
and Seurat's, the label confidence (the largest label probability; Seurat's
prediction.score.max) read as a novelty score: its AUROC, the shares of known and novel
cells under the usual cut-off 0.5, and the share of novel cells under the known cells' 5th
percentile (an oracle cut-off: what a flag at 5% of known cells could reach on it).
Writes ``benchmarks/results/mapping_crosstech.csv`` and ``.md``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import scanpy as sc
from mapping_vs_seurat import argmax_labels, seurat_available, seurat_predictions
from scipy import stats
from sklearn.metrics import f1_score, roc_auc_score

import mscpotency as mp
from mscpotency.tl._mapping import _cache

HERE = Path(__file__).resolve().parent
#: Seurat users' usual cut-off on TransferData's prediction.score.max
SEURAT_CUTOFF = 0.5


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
    predicted, _ = argmax_labels(mapped)
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
    row |= confidence_metrics(argmax_labels(novelty)[1], setting["novel"])
    row["mean set size, novel"] = float(
        novelty.obs["predicted_set_size"].to_numpy()[setting["novel"]].mean()
    )
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


def seurat(setting: dict, k_filter: str) -> dict:
    """Seurat 4.3: labels by TransferData; novelty by MappingScore and prediction.score.max.

    The study scenario runs twice (labels from the full reference, novelty from the one
    without SP3); seconds are the label run's FindTransferAnchors + TransferData.
    """
    query, same = setting["query"], setting["novelty"] is setting["labels"]
    with tempfile.TemporaryDirectory(prefix="crosstech-seurat-") as folder:

        def transfer(reference, name: str, mapping_score: bool):
            return seurat_predictions(
                reference,
                {"query": query},
                Path(folder) / name,
                3600,
                k_filter=k_filter,
                mapping_score=mapping_score,
            )

        labels, timing, version = transfer(setting["labels"], "labels", same)
        novelty = labels if same else transfer(setting["novelty"], "novelty", True)[0]
    predicted = labels["query"]["predicted.id"].astype(str).to_numpy()
    seconds = float(timing.loc[timing["step"] == "map", "seconds"].iloc[0])
    row = {"backend": f"Seurat {version} (k.filter={k_filter})", "seconds": seconds}
    row |= label_metrics(setting["labels"], query, predicted, setting["known"])
    return row | seurat_novelty_metrics(novelty["query"], setting["novel"])


def seurat_novelty_metrics(predictions: pd.DataFrame, novel: np.ndarray) -> dict:
    """The AUROC of Seurat's MappingScore, and :func:`confidence_metrics` of its labels."""
    mapping_score = predictions["mapping.score"].to_numpy(dtype=float)
    auroc = (
        float(roc_auc_score(novel, -mapping_score)) if np.isfinite(mapping_score).all() else np.nan
    )
    return {"novelty AUROC": auroc} | confidence_metrics(
        predictions["prediction.score.max"].to_numpy(), novel
    )


def confidence_metrics(confidence: np.ndarray, novel: np.ndarray) -> dict:
    """The label confidence (the largest label probability) as a novelty score.

    Its AUROC; the shares of known and novel cells under the usual cut-off (0.5); and the
    share of novel cells under the 5th percentile of the known cells' confidence: what a
    cut-off knowing the truth would flag at 5% of the known cells (an oracle, not a flag).
    """
    under = confidence < SEURAT_CUTOFF
    oracle = confidence[novel] < np.quantile(confidence[~novel], 0.05)
    return {
        "novelty AUROC (label confidence)": float(roc_auc_score(novel, -confidence)),
        f"known under {SEURAT_CUTOFF}": float(under[~novel].mean()),
        f"novel under {SEURAT_CUTOFF}": float(under[novel].mean()),
        "novel under known's 5% (oracle)": float(oracle.mean()),
    }


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


SEURAT_NOTE = (
    "Seurat 4.3 (seurat_transfer.R: LogNormalize, 2,000 vst genes, 30 PCs, FindTransferAnchors "
    "pcaproject, TransferData k.weight 50) on the same counts; its seconds are "
    "FindTransferAnchors + TransferData only (the reference's normalisation, genes, scaling and "
    "PCA not counted); its novelty AUROC is of MappingScore(anchors, ndim=30), "
    "beside that of prediction.score.max and the shares of known and novel cells under the "
    f"usual cut-off prediction.score.max < {SEURAT_CUTOFF} (Seurat has no calibrated flag). "
    "'label confidence': the largest label probability (ours: predicted_probabilities, "
    "study: onto the reference without SP3) as a novelty score; 'oracle': the share of novel "
    "cells under the known cells' 5th percentile of it (a cut-off that knows the truth)."
)


def seurat_runs(k_filters: str) -> list[str]:
    """The k.filter of every Seurat run asked for, none when R cannot load Seurat."""
    wanted = [k for k in k_filters.split(",") if k]
    available, detail = seurat_available() if wanted else (False, "")
    if wanted and not available:
        print(f"Seurat skipped: {detail}", flush=True)
        return []
    return wanted


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", default="study,crosstech")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--study-seeds", default=None, help="seeds of the study preset (--seeds)")
    parser.add_argument(
        "--seurat-k-filter",
        default="NA",
        help="Seurat runs, one per FindTransferAnchors k.filter ('' for none)",
    )
    args = parser.parse_args(argv)
    study_seeds = args.seeds if args.study_seeds is None else args.study_seeds
    k_filters = seurat_runs(args.seurat_k_filter)
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
            for k_filter in k_filters:
                rows.append({"preset": name, "seed": seed} | seurat(setting, k_filter))
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
        f"{SEURAT_NOTE if k_filters else 'Seurat not run (not installed or not asked for).'} "
        "Label figures on known cells (argmax label); novelty figures from "
        "the p-values (study: reference without SP3); coverage of the true label by the "
        "prediction sets at set_alpha 0.01. Seconds: ours include the calibrations on the "
        "reference (cache cleared); ingest's include its reference PCA and neighbours (its "
        "first, compiling call untimed). Machine shared with other jobs: times are loose "
        f"(load average at the end {os.getloadavg()[0]:.1f}). "
        "Command: `python benchmarks/mapping_crosstech.py "
        f"--presets {args.presets} --seeds {args.seeds} --study-seeds {study_seeds} "
        f"--seurat-k-filter '{args.seurat_k_filter}'`.",
        "",
    ]
    body = mean.reset_index().to_markdown(index=False, floatfmt=".3f")
    novelty_columns = [c for c in table.columns if "flagged" in c or c.startswith("depth")]
    ours_rows = table[table["backend"] == "mscpotency fast"]
    per_seed = ours_rows[["preset", "seed", *novelty_columns]].to_markdown(
        index=False, floatfmt=".3f"
    )
    scores = [c for c in table.columns if "AUROC" in c or "under" in c or "set size" in c]
    scored = table[table["backend"] != "scanpy ingest"]
    per_seed_scores = scored[["preset", "seed", "backend", *scores]].to_markdown(
        index=False, floatfmt=".3f"
    )
    text = (
        "\n".join(header)
        + body
        + "\n\nNovelty per seed (fast; the flags do not depend on the backend):\n\n"
        + per_seed
        + "\n\nNovelty scores per seed (no flag: AUROCs, fixed and oracle cut-offs, "
        + "prediction-set sizes):\n\n"
        + per_seed_scores
    )
    out.with_suffix(".md").write_text(text + "\n")
    print(body)


if __name__ == "__main__":
    main()
