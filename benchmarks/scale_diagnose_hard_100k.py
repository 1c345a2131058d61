"""Why does the potency-population search find nothing on hard_100k? (issue 12, item 3)

One seed of the hard preset's biology on 11 bone-marrow lots of ``--cells`` cells with
``--n-genes`` genes, analysed with ``pp.preprocess`` (``--n-top-genes`` HVGs,
``--n-comps`` PCs), ``tl.cluster(n_clusters=8)`` and ``tl.potency_population``. Prints,
as one JSON line (and the contingency table before it):

- ``true_rho``: Spearman of the true potency-cell share per lot (after QC) with potency;
- HVG coverage of the potency (SP3) and neighbour (SP4) programme genes and the marker;
- ARI, the fixed-k potency cluster and its F1, the cluster x true-population table;
- the search: found, selection-aware p, the chosen candidate, its rho, size and F1
  (before boundary refinement), and the candidate with the best F1 against the truth
  (its rho, its rank by rho) -- is the population among the candidates at all?

    python benchmarks/scale_diagnose_hard_100k.py --seed 0 --n-genes 4000

``--cache DIR`` keeps the clustered AnnData of each seed (about 2.7 GB) so later runs skip
the simulation and preprocessing; ``--integrate`` corrects lot effects (Harmony) and
re-clusters before the search (seeds 1 and 2, whose clusters follow lots).

``--information``: no cells, only the simulated population of seeds 0-9 with 2,000 and
4,000 genes: the per-cell Poisson information telling SP3 from SP4 (sum over genes of the
mean count at the library size times the squared log-fold-change difference).

    python benchmarks/scale_diagnose_hard_100k.py --information
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from _truth import population_f1
from scipy.stats import spearmanr
from sklearn.metrics import adjusted_rand_score

import mscpotency as mp
import mscpotency.tl._population._search as search_module
from mscpotency.datasets import SetSpec, hard_config, simulate_lots
from mscpotency.datasets._simulate import _population

mp.settings.progress = False


def _capture_candidates() -> dict:
    """Keep the candidates the search builds (they are not stored in ``uns``)."""
    captured: dict = {}
    original = search_module._collect

    def spy(*args, **kwargs):
        captured["candidates"] = original(*args, **kwargs)
        return captured["candidates"]

    search_module._collect = spy
    return captured


def _candidate_f1(candidates, truth: np.ndarray) -> np.ndarray:
    return np.array(
        [
            population_f1(search_module._members(candidates, i, truth.size), truth)
            for i in range(len(candidates.source))
        ]
    )


def _hvg_coverage(adata) -> dict:
    hvg = adata.var["highly_variable"].to_numpy()
    program = adata.var["true_program"].astype(str)
    out = {}
    for name in ("SP3", "SP4"):
        genes = program.str.split(",").apply(lambda p, n=name: n in p).to_numpy()
        out[f"{name}_genes_in_hvg"] = f"{int((genes & hvg).sum())}/{int(genes.sum())}"
    any_program = (program != "").to_numpy() & (program != "cycle").to_numpy()
    out["programme_genes_in_hvg"] = f"{int((any_program & hvg).sum())}/{int(any_program.sum())}"
    out["marker_in_hvg"] = bool(adata.var.loc["LRRC75A", "highly_variable"])
    return out


def _information(n_genes: int, seed: int, library_size: float) -> float:
    """Per-cell Poisson information separating SP3 from SP4 in one simulated population."""
    config = hard_config(sets=(SetSpec("BM-train", 11, "BM", "BM"),), n_genes=n_genes)
    population = _population(config, np.random.default_rng(seed))
    sp3, sp4 = (config.subpopulations.index(s) for s in ("SP3", "SP4"))
    difference = population.programs[sp3] - population.programs[sp4]
    level = np.exp(population.base_log + (population.programs[sp3] + population.programs[sp4]) / 2)
    return float((library_size * level / level.sum() * difference**2).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cells", type=int, default=9100)
    parser.add_argument("--n-genes", type=int, default=4000)
    parser.add_argument("--n-top-genes", type=int, default=2000)
    parser.add_argument("--n-comps", type=int, default=30)
    parser.add_argument("--library-size", type=float, default=6000.0)
    parser.add_argument("--information", action="store_true")
    parser.add_argument(
        "--cache",
        default=None,
        help="folder for the clustered AnnData (read when there, written when not)",
    )
    parser.add_argument("--cache-only", action="store_true", help="stop after caching")
    parser.add_argument(
        "--integrate",
        action="store_true",
        help="pp.integrate (Harmony over lots) and tl.cluster on X_pca_harmony before the search",
    )
    args = parser.parse_args()
    if args.information:
        for n_genes in (2000, 4000):
            values = [_information(n_genes, seed, args.library_size) for seed in range(10)]
            print(n_genes, "genes:", np.round(values, 1), f"median {np.median(values):.1f}")
        return
    warnings.simplefilter("ignore")
    start = time.perf_counter()
    adata = _clustered(args)
    if args.cache_only:
        return
    if args.integrate:
        mp.pp.integrate(adata)
        mp.tl.cluster(adata, use_rep="X_pca_harmony", n_clusters=8)
    mp.tl.lot_fractions(adata)
    mp.tl.potency_association(adata, "vegf")
    captured = _capture_candidates()
    mp.tl.potency_population(adata, "vegf", alpha=0.999)  # labels the best candidate
    row = {**vars(args), **_diagnose(adata, captured["candidates"])}
    row["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(row), flush=True)


def _clustered(args):
    """Simulated, QC'd, preprocessed and clustered lots (from ``--cache`` when there)."""
    name = (
        f"hard_s{args.seed}_c{args.cells}_g{args.n_genes}_h{args.n_top_genes}"
        f"_p{args.n_comps}_l{args.library_size:g}.h5ad"
    )
    path = Path(args.cache) / name if args.cache else None
    if path is not None and path.exists():
        return ad.read_h5ad(path)
    config = hard_config(
        sets=(SetSpec("BM-train", 11, "BM", "BM"),),
        n_cells_per_lot=args.cells,
        n_genes=args.n_genes,
        library_size_mean=args.library_size,
    )
    adata = simulate_lots(config, random_state=args.seed)
    mp.pp.qc(adata)
    mp.pp.preprocess(adata, n_top_genes=args.n_top_genes, n_comps=args.n_comps)
    mp.tl.cluster(adata, n_clusters=8)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        adata.write_h5ad(path)
    return adata


def _diagnose(adata, candidates) -> dict:
    truth = adata.obs["true_potency_cell"].to_numpy()
    lots = adata.obs["lot"]
    per_lot = pd.DataFrame({"share": truth, "vegf": adata.obs["vegf"]}).groupby(lots, observed=True)
    share, vegf = per_lot["share"].mean(), per_lot["vegf"].first()
    fixed = adata.uns["potency_association"]["potency_cluster"]
    table = pd.crosstab(adata.obs["cluster"], adata.obs["true_subpopulation"])
    print(table.to_string(), flush=True)
    summary = adata.uns["potency_population"]["summary"]
    f1 = _candidate_f1(candidates, truth)
    rhos = adata.uns["potency_population"]["candidates"]["rho"].reindex(candidates.source)
    best = int(np.argmax(f1))
    chosen = candidates.source.index(summary["population"])
    return {
        "true_rho": round(float(spearmanr(share, vegf)[0]), 3),
        "true_share_range": [round(float(share.min()), 3), round(float(share.max()), 3)],
        **_hvg_coverage(adata),
        "ari": round(adjusted_rand_score(adata.obs["true_subpopulation"], adata.obs["cluster"]), 3),
        "fixed_k_cluster": str(fixed),
        "f1_fixed_k": round(population_f1((adata.obs["cluster"] == fixed).to_numpy(), truth), 3),
        "fixed_k_rho": round(float(summary["fixed_k_rho"]), 3),
        "selection_aware_p": round(float(summary["pvalue"]), 4),
        "null_max_q95": round(
            float(np.quantile(adata.uns["potency_population"]["null_max"], 0.95)), 3
        ),
        "n_candidates": int(summary["n_candidates"]),
        "chosen": summary["population"],
        "chosen_rho": round(float(summary["candidate_rho"]), 3),
        "chosen_n_cells": int(summary["candidate_n_cells"]),
        "chosen_f1": round(float(f1[chosen]), 3),
        "refined_f1": round(
            population_f1((adata.obs["potency_population"] == "potency").to_numpy(), truth), 3
        ),
        "best_f1_candidate": candidates.source[best],
        "best_f1": round(float(f1[best]), 3),
        "best_f1_rho": round(float(rhos.iloc[best]), 3),
        "best_f1_rank_by_rho": int((rhos > rhos.iloc[best]).sum()) + 1,
        "n_candidates_f1_ge_0.9": int((f1 >= 0.9).sum()),
    }


if __name__ == "__main__":
    main()
