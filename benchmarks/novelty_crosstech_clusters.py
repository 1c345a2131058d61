"""Does a query-only clustering isolate SP9 on the cross-technology preset? (issue 16, step 1)

Usage (from the repository root; ``seurat_v3`` needs scikit-misc, the ``benchmarks`` extra)::

    .venv/bin/python benchmarks/novelty_crosstech_clusters.py --seeds 0,1,2,3,4,5

The query of ``datasets.crosstech()`` (split as the tests split it) is clustered on its own
counts only, by scanpy's standard pipeline: HVGs (``seurat_v3`` on counts, or ``seurat`` on
log-normalised counts, ``n_top_genes``), scaled, PCA 30, kNN (``k``), Leiden at several
resolutions. Printed per seed and setting: the F1 of the cluster closest to SP9, its recall,
its size, the share of its cells flagged by their own novelty p-value at 0.05
(``map_to_reference(method="fast", novelty_alpha=0.05)``), and the AUROC of the p <= 0.05
flags averaged over each cell and its neighbours in the kNN graph (graph-smoothed flags).
Results quoted in ``benchmarks/results/novelty_crosstech_groups_notes.md``.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import scanpy as sc
from sklearn.metrics import roc_auc_score

import mscpotency as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _truth import population_f1
from novelty_crosstech_groups import scenario


def _embedded(query, flavor: str, n_top_genes: int, k: int):
    a = query.copy()
    a.X = a.layers["counts"].copy()
    if flavor == "seurat_v3":
        sc.pp.highly_variable_genes(a, flavor="seurat_v3", n_top_genes=n_top_genes)
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    if flavor == "seurat":
        sc.pp.highly_variable_genes(a, flavor="seurat", n_top_genes=n_top_genes)
    a = a[:, a.var["highly_variable"]].copy()
    sc.pp.scale(a, max_value=10)
    sc.pp.pca(a, n_comps=30, random_state=0)
    sc.pp.neighbors(a, n_neighbors=k, random_state=0)
    return a


def one_seed(seed: int, flavors, genes, ks, resolutions) -> None:
    reference, query, novel = scenario("crosstech", seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        mapped = mp.tl.map_to_reference(
            query, reference, method="fast", novelty_alpha=0.05, copy=True
        )
    flagged = (mapped.obs["predicted_novelty_p"] <= 0.05).to_numpy().astype(float)
    for flavor in flavors:
        for n_top_genes in genes:
            for k in ks:
                a = _embedded(query, flavor, n_top_genes, k)
                W = a.obsp["connectivities"]
                smoothed = (W @ flagged + flagged) / (np.asarray(W.sum(axis=1)).ravel() + 1)
                for resolution in resolutions:
                    sc.tl.leiden(
                        a,
                        resolution=resolution,
                        key_added="leiden",
                        random_state=0,
                        flavor="igraph",
                        n_iterations=2,
                        directed=False,
                    )
                    labels = a.obs["leiden"].to_numpy()
                    best = max(np.unique(labels), key=lambda c: population_f1(labels == c, novel))
                    cluster = labels == best
                    print(
                        f"seed {seed} {flavor} genes {n_top_genes} k {k} res {resolution}: "
                        f"F1 {population_f1(cluster, novel):.3f} recall {(cluster & novel).sum() / novel.sum():.3f} "
                        f"size {cluster.sum()} (SP9 {novel.sum()}) flagged in it "
                        f"{flagged[cluster].mean():.3f} (SP9 {flagged[novel].mean():.3f}, known "
                        f"{flagged[~novel].mean():.3f}); smoothed-flag AUROC "
                        f"{roc_auc_score(novel, smoothed):.3f}",
                        flush=True,
                    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--flavors", default="seurat_v3,seurat")
    parser.add_argument("--genes", default="300,500")
    parser.add_argument("--neighbors", default="15")
    parser.add_argument("--resolutions", default="0.5,1.0,2.0")
    args = parser.parse_args(argv)
    for seed in (int(s) for s in args.seeds.split(",")):
        one_seed(
            seed,
            args.flavors.split(","),
            [int(g) for g in args.genes.split(",")],
            [int(k) for k in args.neighbors.split(",")],
            [float(r) for r in args.resolutions.split(",")],
        )


if __name__ == "__main__":
    main()
