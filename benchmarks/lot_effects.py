"""Lot effects on the donor preset: uncorrected vs Harmony (theta 2, its default, and 4) vs scVI (``--scvi``).

For every seed of :func:`mscpotency.datasets.donor` and every representation (``X_pca``
uncorrected, ``X_pca_harmony``, ``X_scvi``): Leiden with 9 clusters (8 populations and the
lot-specific state), lot fractions, potency association; then

- ``ari``: adjusted Rand index of clusters against the true populations; ``ari_lot``:
  against the lots (how far clusters follow lots);
- ``found`` and ``f1``: whether the potency association is significant, and the F1 of its
  potency cluster against the true potency cells;
- ``ls_flagged``: whether the cluster holding most lot-specific cells is flagged
  ``lot_dominated``; ``ls_purity``: the share of that cluster's cells that are lot-specific
  (low: the state was mixed into a shared cluster); ``potency_flagged_warned``: the potency
  cluster is lot-dominated and a ``LotDominatedWarning`` was raised (never silently);
  ``n_flagged``: flagged clusters;
- ``ilisi_norm``/``clisi_norm``: scaled median iLISI (lots) and cLISI (true populations);
- ``sp3_error``: largest per-lot error of the potency population's fraction (clusters
  mapped to their majority population); ``max_error_other_lots``: largest error of any
  population in the lots without the lot-specific state (both through the clusters, so
  fixed-k Leiden merging the close pair SP6/SP7 counts here); ``transfer_error``: largest
  per-lot error of any population's fraction when every cell takes the majority true label
  of its 15 nearest cells of the other lots in the representation (lot-specific cells left
  out): whether the representation keeps each lot's composition, whatever the clustering.

Run::

    nice -n 10 .venv/bin/python benchmarks/lot_effects.py --seeds 0 1 2 3 4 [--scvi]

Writes ``benchmarks/results/lot_effects.csv`` and ``.md``.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import adjusted_rand_score

import mscpotency as mp
from mscpotency._stored import LotDominatedWarning

RESULTS = Path(__file__).resolve().parent / "results"


def _fraction_errors(adata) -> tuple[float, float]:
    obs = adata.obs
    majority = pd.crosstab(obs["cluster"], obs["true_subpopulation"]).idxmax(axis=1)
    found = obs["cluster"].map(majority).astype(str)
    estimated = pd.crosstab(obs["lot"], found, normalize="index")
    true = pd.crosstab(obs["lot"], obs["true_subpopulation"].astype(str), normalize="index")
    estimated = estimated.reindex(columns=true.columns, fill_value=0.0)
    sp3 = float((estimated["SP3"] - true["SP3"]).abs().max())
    others = true.index != adata.uns["simulation"]["lot_specific_lot"]
    shared = [c for c in true.columns if c != "LS"]
    other = float((estimated.loc[others, shared] - true.loc[others, shared]).abs().max().max())
    return sp3, other


def _transfer_error(adata, rep: str) -> float:
    from sklearn.neighbors import KNeighborsClassifier

    x = np.asarray(adata.obsm[rep])
    labels = adata.obs["true_subpopulation"].astype(str).to_numpy()
    lots = adata.obs["lot"].astype(str).to_numpy()
    out = np.empty(adata.n_obs, dtype=object)
    for lot in np.unique(lots):
        held = lots == lot
        knn = KNeighborsClassifier(n_neighbors=15).fit(x[~held], labels[~held])
        out[held] = knn.predict(x[held])
    shared = ~adata.obs["true_lot_specific"].to_numpy()
    estimated = pd.crosstab(lots[shared], out[shared].astype(str), normalize="index")
    true = pd.crosstab(lots[shared], labels[shared], normalize="index")
    return float((estimated.reindex(columns=true.columns, fill_value=0.0) - true).abs().max().max())


def evaluate(adata, rep: str, seconds: float) -> dict:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mp.tl.cluster(adata, use_rep=rep, n_clusters=9)
        mp.tl.lot_fractions(adata)
        mp.tl.potency_association(adata, "vegf")
    obs = adata.obs
    spec = mp.get.lot_specificity(adata)
    association = adata.uns["potency_association"]
    named = association["potency_cluster"]
    cells = (obs["cluster"].astype(str) == named).to_numpy()
    truth = obs["true_potency_cell"].to_numpy(dtype=bool)
    ls_cluster = str(obs.loc[obs["true_lot_specific"], "cluster"].value_counts().idxmax())
    warned = any(issubclass(w.category, LotDominatedWarning) for w in caught)
    sp3_error, other_error = _fraction_errors(adata)
    return {
        "ari": adjusted_rand_score(obs["true_subpopulation"], obs["cluster"]),
        "ari_lot": adjusted_rand_score(obs["lot"], obs["cluster"]),
        "found": bool(association["found"]),
        "f1": 2 * (cells & truth).sum() / (cells.sum() + truth.sum()),
        "ls_flagged": bool(spec.loc[ls_cluster, "lot_dominated"]),
        "ls_purity": float(
            obs.loc[obs["cluster"].astype(str) == ls_cluster, "true_lot_specific"].mean()
        ),
        "potency_flagged": bool(association["lot_dominated"]),
        "potency_flagged_warned": bool(association["lot_dominated"]) == warned,
        "n_flagged": int(spec["lot_dominated"].sum()),
        "sp3_error": sp3_error,
        "max_error_other_lots": other_error,
        "transfer_error": _transfer_error(adata, rep),
        "integrate_seconds": seconds,
    }


def run_seed(seed: int, use_scvi: bool) -> list[dict]:
    adata = mp.datasets.donor(random_state=seed)
    mp.pp.qc(adata)
    mp.pp.preprocess(adata)
    rows = []
    methods = [
        ("uncorrected", "X_pca", None, {}),
        ("harmony", "X_pca_harmony", "harmony", {}),
        ("harmony_theta4", "X_pca_harmony_theta4", "harmony", {"theta": 4.0}),
    ]
    if use_scvi:
        methods.append(("scvi", "X_scvi", "scvi", {}))
    for name, rep, method, options in methods:
        seconds = 0.0
        metrics = {}
        if method is not None:
            start = time.perf_counter()
            mp.pp.integrate(
                adata,
                method=method,
                cluster_key="true_subpopulation",
                rep_added=rep,
                key_added=f"int_{name}",
                **options,
            )
            seconds = time.perf_counter() - start
            table = mp.get.integrate(adata, key=f"int_{name}")
            metrics = {
                "ilisi_norm": table.loc[method, "ilisi_norm"],
                "clisi_norm": table.loc[method, "clisi_norm"],
            }
            uncorrected = {
                "ilisi_norm": table.loc["uncorrected", "ilisi_norm"],
                "clisi_norm": table.loc["uncorrected", "clisi_norm"],
            }
            rows[0].update({k: v for k, v in uncorrected.items() if k not in rows[0]})
        row = {"seed": seed, "method": name, **evaluate(adata, rep, seconds), **metrics}
        rows.append(row)
        print(row, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--scvi", action="store_true")
    parser.add_argument("--name", default="lot_effects", help="file name of the results")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    rows = [row for seed in args.seeds for row in run_seed(seed, args.scvi)]
    table = pd.DataFrame(rows)
    RESULTS.mkdir(exist_ok=True)
    table.to_csv(RESULTS / f"{args.name}.csv", index=False)
    summary = table.drop(columns="seed").groupby("method", sort=False).mean(numeric_only=True)
    text = [
        "# Lot effects: the donor preset, uncorrected vs corrected",
        "",
        f"Seeds {args.seeds} of `datasets.donor` (12 lots, 2 sites, one lot-specific state); "
        "Leiden with 9 clusters on each representation. Command: "
        f"`nice -n 10 .venv/bin/python benchmarks/lot_effects.py --seeds {' '.join(map(str, args.seeds))}"
        f"{' --scvi' if args.scvi else ''}{'' if args.name == 'lot_effects' else ' --name ' + args.name}`. Columns: see the script's docstring.",
        "",
        "## Mean over seeds",
        "",
        summary.round(3).to_markdown(),
        "",
        "## Every seed",
        "",
        table.round(3).to_markdown(index=False),
        "",
    ]
    (RESULTS / f"{args.name}.md").write_text("\n".join(text))


if __name__ == "__main__":
    main()
