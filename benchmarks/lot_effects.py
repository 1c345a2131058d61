"""Lot effects on the donor preset: uncorrected vs Harmony variants vs scVI (``--scvi``).

For every seed of :func:`mscpotency.datasets.donor` and every representation: Leiden with 9
clusters (8 populations and the lot-specific state), lot fractions, potency association,
the potency-population search; the representations (``method`` column):

- ``uncorrected``: ``X_pca``;
- ``harmony``: Harmony with the lots as batch, theta 2 (its default), every cell corrected
  (the route measured before); ``harmony_theta4``: theta 4;
- ``*_held_out``: the lot-specific states of the uncorrected clustering (9 clusters;
  ``lot_specific_key`` of ``pp.integrate``) held out of Harmony's fit and moved by their
  lot's mean correction;
- ``harmony_site*``: lots and site (``covariate_keys=('site',)``, ``covariate_theta=2``)
  corrected together, states held out; ``_theta4``: theta 4 for the lots;
- ``scvi``: the scVI latent space (lots as batch), every cell (``--scvi``,
  ``--scvi-epochs``).

Columns:

- ``ari``: adjusted Rand index of clusters against the true populations; ``ari_lot``:
  against the lots (how far clusters follow lots);
- ``found`` and ``f1``: whether the potency association is significant, and the F1 of its
  potency cluster against the true potency cells;
- ``ls_flagged``: whether the cluster holding most lot-specific cells is flagged
  ``lot_dominated``; ``ls_purity``: the share of that cluster's cells that are lot-specific
  (low: the state was mixed into a shared cluster); ``potency_flagged_warned``: the potency
  cluster is lot-dominated and a ``LotDominatedWarning`` was raised (never silently);
  ``n_flagged``: flagged clusters;
- ``search_f1``: F1 of the population ``tl.potency_population`` names (0 when none);
- ``held_out_recall`` / ``held_out_precision``: of the true lot-specific cells among the
  cells held out of the fit (``*_held_out`` and ``harmony_site*`` rows only);
- ``ilisi_norm``/``clisi_norm``: scaled median iLISI (lots) and cLISI (true populations);
- ``sp3_error``: largest per-lot error of the potency population's fraction (clusters
  mapped to their majority population); ``max_error_other_lots``: largest error of any
  population in the lots without the lot-specific state (both through the clusters, so
  fixed-k Leiden merging the close pair SP6/SP7 counts here); ``transfer_error``: largest
  per-lot error of any population's fraction when every cell takes the majority true label
  of its 15 nearest cells of the other lots in the representation (lot-specific cells left
  out): whether the representation keeps each lot's composition, whatever the clustering.

Run::

    nice -n 10 .venv/bin/python benchmarks/lot_effects.py --seeds 0 1 2 3 4 [--scvi --scvi-epochs N]

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
    clusters = obs["cluster"].astype(str)
    majority = pd.crosstab(clusters, obs["true_subpopulation"].astype(str)).idxmax(axis=1)
    found = clusters.map(majority)  # (mapping the categorical column mislabelled clusters)
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
        mp.tl.potency_population(adata, "vegf")
    obs = adata.obs
    spec = mp.get.lot_specificity(adata)
    association = adata.uns["potency_association"]
    named = association["potency_cluster"]
    cells = (obs["cluster"].astype(str) == named).to_numpy()
    truth = obs["true_potency_cell"].to_numpy(dtype=bool)
    ls_cluster = str(obs.loc[obs["true_lot_specific"], "cluster"].value_counts().idxmax())
    warned = any(issubclass(w.category, LotDominatedWarning) for w in caught)
    search = (obs["potency_population"].astype(str) == "potency").to_numpy()
    sp3_error, other_error = _fraction_errors(adata)
    return {
        "ari": adjusted_rand_score(obs["true_subpopulation"], obs["cluster"]),
        "ari_lot": adjusted_rand_score(obs["lot"], obs["cluster"]),
        "found": bool(association["found"]),
        "f1": 2 * (cells & truth).sum() / (cells.sum() + truth.sum()),
        "search_f1": 2 * (search & truth).sum() / (search.sum() + truth.sum()),
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


HELD = {"lot_specific_key": "cluster_uncorrected"}
SITE = {"covariate_keys": ("site",), "covariate_theta": 2.0}
HARMONY = [
    ("harmony", {}),
    ("harmony_theta4", {"theta": 4.0}),
    ("harmony_held_out", HELD),
    ("harmony_theta4_held_out", {"theta": 4.0, **HELD}),
    ("harmony_site", {**SITE, **HELD}),
    ("harmony_site_theta4", {"theta": 4.0, **SITE, **HELD}),
]


def _held_out(adata, key: str) -> dict:
    if adata.uns[key]["params"]["lot_specific_key"] is None:
        return {}
    from mscpotency.pp._integrate import lot_specific_cells

    held = lot_specific_cells(adata, "cluster_uncorrected", "lot")["mask"]
    truth = adata.obs["true_lot_specific"].to_numpy(dtype=bool)
    return {
        "held_out_recall": (held & truth).sum() / truth.sum(),
        "held_out_precision": (held & truth).sum() / max(held.sum(), 1),
    }


def run_seed(seed: int, use_scvi: bool, scvi_epochs: int | None) -> list[dict]:
    adata = mp.datasets.donor(random_state=seed)
    mp.pp.qc(adata)
    mp.pp.preprocess(adata)
    mp.tl.cluster(adata, use_rep="X_pca", n_clusters=9, key_added="cluster_uncorrected")
    methods = [("harmony", name, options) for name, options in HARMONY]
    if use_scvi:
        methods.append(("scvi", "scvi", {"max_epochs": scvi_epochs}))
        site = {"max_epochs": scvi_epochs, "covariate_keys": ("site",)}
        methods.append(("scvi", "scvi_site", site))  # the site as a categorical covariate
    row = {"seed": seed, "method": "uncorrected", **evaluate(adata, "X_pca", 0.0)}
    rows = [row]
    print(row, flush=True)
    for method, name, options in methods:
        rep = f"X_{name}"
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
        metrics = {c: table.loc[method, c] for c in ("ilisi_norm", "clisi_norm")}
        rows[0].update({c: table.loc["uncorrected", c] for c in ("ilisi_norm", "clisi_norm")})
        row = {"seed": seed, "method": name, **evaluate(adata, rep, seconds), **metrics}
        row.update(_held_out(adata, f"int_{name}"))
        rows.append(row)
        print(row, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--scvi", action="store_true")
    parser.add_argument("--scvi-epochs", type=int, default=None, help="scVI epochs (None: auto)")
    parser.add_argument("--name", default="lot_effects", help="file name of the results")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    rows = [row for seed in args.seeds for row in run_seed(seed, args.scvi, args.scvi_epochs)]
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
        f"{' --scvi' if args.scvi else ''}"
        f"{f' --scvi-epochs {args.scvi_epochs}' if args.scvi_epochs else ''}{'' if args.name == 'lot_effects' else ' --name ' + args.name}`. Columns: see the script's docstring.",
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
