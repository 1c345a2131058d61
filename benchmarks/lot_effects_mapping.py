"""Held-out lots of the donor preset mapped onto an integrated reference: PCA transfer vs Symphony.

Per seed of :func:`mscpotency.datasets.donor`: two lots are held out (the second lot of
each site that is not the lot with the lot-specific state); the other ten are the
reference: ``pp.qc``, ``pp.preprocess``, Leiden with 9 clusters uncorrected, ``pp.integrate``
(lots theta 4 + site, the uncorrected lot-specific states held out), Leiden with 9 clusters
on the corrected PCA, ``tl.lot_fractions`` and ``tl.potency_association``. The held-out lots
(raw counts) get the reference's cluster labels by

- ``pca_transfer`` (today's route): ``tl.freeze_reference`` + ``tl.map_to_reference``
  (anchors, defaults): the query is projected into the reference's *uncorrected* PCA and the
  labels of the corrected clustering are transferred;
- ``symphony``: Symphony (Kang et al. 2021) through ``symphonypy``: Harmony refitted on the
  reference PCA with ``symphonypy.pp.harmony_integrate`` (lots theta 4, site theta 2), the
  query projected with the reference's centring and loadings, its lots corrected against
  the reference's Harmony centroids (``tl.map_embedding``, query lots as batch), labels by
  the 15 nearest reference cells (``tl.transfer_labels_kNN``).

Columns: ``accuracy`` (share of query cells whose label's majority true population is
theirs), ``f1`` (cells labelled the potency cluster vs the true potency cells),
``fraction_error`` (largest per-lot error of the potency fraction in the query lots),
``seconds`` (mapping only).

Run::

    nice -n 10 .venv/bin/python benchmarks/lot_effects_mapping.py --seeds 0 1 2 3 4
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

import mscpotency as mp

RESULTS = Path(__file__).resolve().parent / "results"


def _reference(adata):
    mp.pp.qc(adata)
    mp.pp.preprocess(adata)
    mp.tl.cluster(adata, use_rep="X_pca", n_clusters=9, key_added="cluster_uncorrected")
    mp.pp.integrate(
        adata,
        covariate_keys=("site",),
        theta=4.0,
        lot_specific_key="cluster_uncorrected",
    )
    mp.tl.cluster(adata, use_rep="X_pca_harmony", n_clusters=9)
    mp.tl.lot_fractions(adata)
    mp.tl.potency_association(adata, "vegf")


def _pca_transfer(ref, query) -> np.ndarray:
    frozen = mp.tl.freeze_reference(ref)
    mp.tl.map_to_reference(query, frozen)
    return query.obs["predicted"].astype(str).to_numpy()


def _symphony(ref, query) -> np.ndarray:
    import scanpy as sc
    import symphonypy as sp

    ref = ref.copy()
    ref.var["mean"] = ref.var["pca_mean"]
    ref.var["std"] = 1.0  # the reference PCA is centred, not scaled
    sp.pp.harmony_integrate(
        ref, key=["lot", "site"], ref_basis_adjusted="X_symphony", theta=[4.0, 2.0]
    )
    q = query.copy()
    q.layers["counts"] = q.X.copy()
    sc.pp.normalize_total(q, target_sum=ref.uns["preprocess"]["params"]["target_sum"])
    sc.pp.log1p(q)
    sp.tl.map_embedding(q, ref, key="lot", transferred_adjusted_basis="X_symphony")
    sp.tl.transfer_labels_kNN(
        q, ref, "cluster", 15, ref_basis="X_symphony", query_basis="X_symphony"
    )
    return q.obs["cluster"].astype(str).to_numpy()


def one(seed: int) -> list[dict]:
    adata = mp.datasets.donor(random_state=seed)
    special = adata.uns["simulation"]["lot_specific_lot"]
    held = []
    for site in ("site-A", "site-B"):
        lots = sorted(set(adata.obs.loc[adata.obs["site"] == site, "lot"].astype(str)) - {special})
        held.append(lots[1])
    query = adata[adata.obs["lot"].isin(held)].copy()
    ref = adata[~adata.obs["lot"].isin(held)].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _reference(ref)
        rows = []
        for name, route in (("pca_transfer", _pca_transfer), ("symphony", _symphony)):
            start = time.perf_counter()
            labels = route(ref, query.copy())
            seconds = time.perf_counter() - start
            rows.append(
                {"seed": seed, "route": name, **_score(ref, query, labels), "seconds": seconds}
            )
            print(rows[-1], flush=True)
    return rows


def _score(ref, query, labels: np.ndarray) -> dict:
    obs = ref.obs
    majority = pd.crosstab(obs["cluster"].astype(str), obs["true_subpopulation"].astype(str))
    majority = majority.idxmax(axis=1)
    truth = query.obs["true_subpopulation"].astype(str).to_numpy()
    predicted = pd.Series(labels).map(majority).to_numpy()
    potency = labels == ref.uns["potency_association"]["potency_cluster"]
    true_potency = query.obs["true_potency_cell"].to_numpy(dtype=bool)
    lots = query.obs["lot"].astype(str).to_numpy()
    error = max(
        abs(potency[lots == lot].mean() - true_potency[lots == lot].mean()) for lot in set(lots)
    )
    return {
        "query_lots": ",".join(sorted(set(lots))),
        "accuracy": float((predicted == truth).mean()),
        "f1": float(2 * (potency & true_potency).sum() / (potency.sum() + true_potency.sum())),
        "fraction_error": float(error),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    args = parser.parse_args()
    table = pd.DataFrame([row for seed in args.seeds for row in one(seed)])
    RESULTS.mkdir(exist_ok=True)
    table.to_csv(RESULTS / "lot_effects_mapping.csv", index=False)
    summary = table.drop(columns=["seed", "query_lots"]).groupby("route").mean()
    text = [
        "# Held-out donor lots mapped onto an integrated reference: PCA transfer vs Symphony",
        "",
        f"Seeds {args.seeds}. Command: `nice -n 10 .venv/bin/python "
        f"benchmarks/lot_effects_mapping.py --seeds {' '.join(map(str, args.seeds))}`. "
        "Columns: see the script's docstring.",
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
    (RESULTS / "lot_effects_mapping.md").write_text("\n".join(text))


if __name__ == "__main__":
    main()
