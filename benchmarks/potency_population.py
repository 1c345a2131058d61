"""Does the search find the potency population where one fixed-k cut does not? (issue 12)

For each seed of a preset (``hard`` or ``study``): the 11 bone-marrow training lots go
through the reference analysis with the package defaults (``pp.qc`` -> ``pp.preprocess``
-> ``tl.cluster(n_clusters=8)`` -> ``tl.lot_fractions`` -> ``tl.potency_association``),
then ``tl.potency_population``. Per seed, against the simulator's truth:

- ``true_rho``: Spearman of the true potency share of each lot with potency;
- fixed-k: ARI of the 8 clusters with the true populations, F1 of the potency cluster
  with the true potency cells, its association p and FDR, the rank of the planted marker
  among the potency cluster's markers;
- search: found (selection-aware p <= 0.05), its p and rho, F1 of the population found
  (of the best candidate when nothing is found: ``f1_best``), the planted marker's rank
  among the markers of the population found, seconds of the search.

``low_quality_kept``: the simulator's low-quality cells that ``pp.qc`` kept. With
``--qc-thresholds fixed|mad`` every QC call passes that rule (``pp.qc(thresholds=...)``) and
the results files' names gain ``_qc<rule>``; without it, the package's default.

Writes ``results/potency_population_<preset>.csv`` (one row per seed) and ``.md``
(the table and a summary).

    .venv/bin/python benchmarks/potency_population.py --preset hard --seeds 0-9
    .venv/bin/python benchmarks/potency_population.py --preset study --seeds 0-9
    .venv/bin/python benchmarks/potency_population.py --preset hard --seeds 0-19 --null
    .venv/bin/python benchmarks/potency_population.py --preset hard --seeds 0-9 --qc-thresholds mad
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from _results import write_results
from _truth import population_f1
from scipy import stats
from sklearn.metrics import adjusted_rand_score

import mscpotency as mp

mp.settings.progress = False

RESULTS = Path(__file__).parent / "results"
MARKER = "LRRC75A"


def _seeds(text: str) -> list[int]:
    if "-" in text:
        low, high = text.split("-")
        return list(range(int(low), int(high) + 1))
    return [int(s) for s in text.split(",")]


def _marker_rank(adata, cluster: str, cluster_key: str, rank_by: str = "score") -> int:
    """Rank (1-based) of the planted marker among the cluster's top 50 markers; 51 if absent."""
    b = adata.copy()
    mp.tl.potency_markers(b, cluster, cluster_key=cluster_key, n_genes=50, rank_by=rank_by)
    genes = list(mp.get.potency_markers(b)["gene"])
    return genes.index(MARKER) + 1 if MARKER in genes else 51


def _qc_kwargs(qc: str | None) -> dict:
    """``pp.qc``'s keyword for the QC rule (none: the package default)."""
    return {} if qc is None else {"thresholds": qc}


def _reference(preset: str, seed: int, null: bool, cache: Path | None, qc: str | None = None):
    """The fixed-k reference analysis of one seed (read from ``cache`` when saved there)."""
    name = f"{preset}{'_null' if null else ''}{seed}{'' if qc is None else '_qc' + qc}"
    cached = cache / f"{name}.h5ad" if cache else None
    if cached is not None and cached.exists():
        return ad.read_h5ad(cached)
    simulate = getattr(mp.datasets, preset)
    adata = simulate(random_state=seed, potency_slope=0 if null else None)
    adata = adata[adata.obs["set"] == "BM-train"].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mp.pp.qc(adata, **_qc_kwargs(qc))
        mp.pp.preprocess(adata)
        mp.tl.cluster(adata, n_clusters=8)
        mp.tl.lot_fractions(adata)
        mp.tl.potency_association(adata, "vegf")
    if cached is not None:
        adata.write_h5ad(cached)
    return adata


#: Options passed to every ``tl.potency_population`` call (``--local-representation``).
SEARCH_OPTIONS: dict = {}

#: ``--local-representation`` choices -> ``tl.potency_population(local_representation=...)``.
LOCAL = {"on": True, "off": False, "default": None}


def one_seed(
    preset: str, seed: int, null: bool, cache: Path | None = None, qc: str | None = None
) -> dict:
    adata = _reference(preset, seed, null, cache, qc)
    per_lot = adata.obs.groupby("lot", observed=True)
    true_rho = stats.spearmanr(per_lot["true_potency_cell"].mean(), per_lot["vegf"].first())[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        mp.tl.potency_population(adata, "vegf", **SEARCH_OPTIONS)
        seconds = time.perf_counter() - start
    truth = adata.obs["true_potency_cell"].to_numpy()
    association = adata.uns["potency_association"]
    fixed = association["potency_cluster"]
    row = association["table"].loc[fixed]
    summary = adata.uns["potency_population"]["summary"]
    table = adata.uns["potency_population"]["candidates"]
    best = table.index[table["chosen"]][0]
    labels = adata.obs["potency_population"]
    found_cells = (labels == "potency").to_numpy()
    out = {
        "seed": seed,
        "true_rho": round(float(true_rho), 3),
        "ari_fixed_k": round(
            adjusted_rand_score(adata.obs["true_subpopulation"], adata.obs["cluster"]), 3
        ),
        "f1_fixed_k": round(population_f1((adata.obs["cluster"] == fixed).to_numpy(), truth), 3),
        "p_fixed_k": float(row["pvalue"]),
        "fdr_fixed_k": float(row["fdr"]),
        "association_found": bool(association["found"]),
        "found": bool(summary["found"]),
        "p_search": summary["pvalue"],
        "rho_search": round(summary["rho"], 3),
        "population": best,
        "n_candidates": summary["n_candidates"],
        "changed": bool(summary["changed"]),
        "f1_search": round(population_f1(found_cells, truth), 3),
        "lot_splits_skipped": summary.get("lot_splits_skipped", ""),
        "n_lot_splits": int(table["lot_split"].sum()) if "lot_split" in table else None,
        "lot_split_lift": round(float(summary.get("lot_split_lift", np.nan)), 3),
        "boundary_added": summary.get("boundary_added"),
        "boundary_removed": summary.get("boundary_removed"),
        "seconds_search": round(seconds, 2),
        "low_quality_kept": int(adata.obs["true_low_quality"].sum()),
    }
    # F1 of the best candidate even when nothing is named (how close the search came)
    out["f1_best"] = round(population_f1(_best_cells(adata), truth), 3)
    if not null:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out["marker_rank_fixed_k"] = _marker_rank(adata, fixed, "cluster")
            out["marker_rank_search"] = (
                _marker_rank(adata, "potency", "potency_population") if summary["found"] else None
            )
            out["marker_rank_search_lfc"] = (
                _marker_rank(adata, "potency", "potency_population", "logfoldchange")
                if summary["found"]
                else None
            )
    return out


def _best_cells(adata) -> np.ndarray:
    """The cells of the best candidate: rerun the search's labelling with found forced."""
    labels = adata.obs["potency_population"]
    if adata.uns["potency_population"]["summary"]["found"]:
        return (labels == "potency").to_numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        forced = mp.tl.potency_population(
            adata, "vegf", alpha=0.999999, copy=True, **SEARCH_OPTIONS
        )
    return (forced.obs["potency_population"] == "potency").to_numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="hard", choices=["hard", "study", "tiny"])
    parser.add_argument("--seeds", default="0-9")
    parser.add_argument("--null", action="store_true", help="potency_slope=0 (null studies)")
    parser.add_argument(
        "--cache", type=Path, default=None, help="folder of saved reference analyses (h5ad)"
    )
    parser.add_argument(
        "--append", action="store_true", help="keep the rows of the results file already there"
    )
    parser.add_argument("--suffix", default="", help="added to the results files' names")
    parser.add_argument(
        "--qc-thresholds",
        choices=["fixed", "mad"],
        default=None,
        help="pp.qc(thresholds=...) (default: the package's; the files' names gain _qc<rule>)",
    )
    parser.add_argument(
        "--local-representation",
        choices=sorted(LOCAL),
        default="default",
        help="tl.potency_population(local_representation=...): on (True), off (False) or "
        "the package's default (name the files with --suffix)",
    )
    args = parser.parse_args()
    if args.local_representation != "default":
        SEARCH_OPTIONS["local_representation"] = LOCAL[args.local_representation]
    rows = []
    RESULTS.mkdir(exist_ok=True)
    qc = args.qc_thresholds
    name = f"potency_population_{args.preset}{'_null' if args.null else ''}{args.suffix}"
    name += "" if qc is None else f"_qc{qc}"
    if args.append and (RESULTS / f"{name}.csv").exists():
        rows = pd.read_csv(RESULTS / f"{name}.csv").to_dict("records")
    for seed in _seeds(args.seeds):  # the files are rewritten after every seed
        rows.append(one_seed(args.preset, seed, args.null, args.cache, qc))
        print(rows[-1], flush=True)
        table = pd.DataFrame(rows).sort_values("seed")
        table.to_csv(RESULTS / f"{name}.csv", index=False)
        write_results(
            RESULTS / f"{name}.md",
            _summary(table, args) + "\n\n" + table.to_markdown(index=False),
            keep_notes=args.append,
        )
    print(_summary(table, args))


def _summary(table: pd.DataFrame, args) -> str:
    n = len(table)
    qc = "" if args.qc_thresholds is None else f", pp.qc(thresholds={args.qc_thresholds!r})"
    if args.local_representation != "default":
        qc += f", local_representation={LOCAL[args.local_representation]}"
    lines = [
        f"# tl.potency_population on the {args.preset} preset{' (null)' if args.null else ''}{qc}, {n} seeds",
        "",
    ]
    lines.append(f"- found (selection-aware p <= 0.05): {int(table['found'].sum())}/{n}")
    lines.append(
        f"- fixed-k association significant at FDR <= 0.05: {int(table['association_found'].sum())}/{n}"
    )
    if not args.null:
        strong = table["true_rho"] >= 0.8
        lines.append(f"- seeds with true rho >= 0.8: {int(strong.sum())}")
        lines.append(
            f"- F1 >= 0.9: fixed-k {int((table['f1_fixed_k'] >= 0.9).sum())}/{n}, "
            f"search (found) {int((table['f1_search'] >= 0.9).sum())}/{n}, "
            f"best candidate {int((table['f1_best'] >= 0.9).sum())}/{n}"
        )
        lines.append(
            f"- median F1: fixed-k {table['f1_fixed_k'].median():.3f}, search {table['f1_search'].median():.3f}, "
            f"best candidate {table['f1_best'].median():.3f}; median ARI fixed-k {table['ari_fixed_k'].median():.3f}"
        )
        lines.append(
            f"- marker 1st: fixed-k {int((table['marker_rank_fixed_k'] == 1).sum())}/{n}, "
            f"search {int((table['marker_rank_search'] == 1).sum())}/{int(table['found'].sum())} found "
            f"(rank_by='score'), {int((table['marker_rank_search_lfc'] == 1).sum())}/"
            f"{int(table['found'].sum())} (rank_by='logfoldchange')"
        )
    if "lot_splits_skipped" in table:
        skipped = table["lot_splits_skipped"].fillna("").astype(str).str.len() > 0
        lines.append(
            f"- seeds where a candidate stronger than the one named was set aside as a lot "
            f"split: {int(skipped.sum())}/{n}"
        )
    if "n_lot_splits" in table:
        lines.append(
            f"- candidates set aside as lot splits before the test: median "
            f"{table['n_lot_splits'].median():.0f} per seed"
        )
    if "low_quality_kept" in table:
        lines.append(
            f"- simulated low-quality cells kept by QC: median {table['low_quality_kept'].median():.0f}"
        )
    lines.append(
        f"- seconds of the search: median {table['seconds_search'].median():.1f}, max {table['seconds_search'].max():.1f}"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
