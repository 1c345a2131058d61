"""pp.integrate with the lot-specific states held out and the site as a covariate (issue 13).

Seed 4 of the donor preset is the hard one: Harmony with the lots alone left every
population split by site and pulled the lot-specific state into shared clusters (F1 0.66
even at theta 4, the state flagged in no seed at theta 2; benchmarks/results/lot_effects.md).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from sklearn.metrics import adjusted_rand_score

import mscpotency as mp
from mscpotency.pp._integrate import lot_specific_cells


def _chain(adata, use_rep: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mp.tl.cluster(adata, use_rep=use_rep, n_clusters=9)
        mp.tl.lot_fractions(adata)
        mp.tl.potency_association(adata, "vegf")


@pytest.fixture(scope="module")
def seed4():
    """Seed 4: clustered uncorrected, then corrected (lots theta 4 + site, states held out)."""
    adata = mp.datasets.donor(random_state=4)
    mp.pp.qc(adata)
    mp.pp.preprocess(adata)
    mp.tl.cluster(adata, use_rep="X_pca", n_clusters=9, key_added="cluster_uncorrected")
    uncorrected_ari = adjusted_rand_score(
        adata.obs["true_subpopulation"], adata.obs["cluster_uncorrected"]
    )
    mp.pp.integrate(
        adata,
        covariate_keys=("site",),
        theta=4.0,
        lot_specific_key="cluster_uncorrected",
        cluster_key="true_subpopulation",
    )
    _chain(adata, "X_pca_harmony")
    return adata, uncorrected_ari


def test_the_lot_specific_state_is_held_out_and_flagged_after_correction(seed4):
    adata, _ = seed4
    obs = adata.obs
    truth = obs["true_lot_specific"].to_numpy(dtype=bool)
    held = adata.uns["integrate"]["held_out"]
    assert list(held["lot"]) == [adata.uns["simulation"]["lot_specific_lot"]]
    mask = lot_specific_cells(adata, "cluster_uncorrected", "lot")["mask"]
    assert (mask & truth).sum() >= 0.95 * truth.sum()
    assert (mask & truth).sum() >= 0.95 * mask.sum()
    specific = obs.loc[truth, "cluster"].value_counts().idxmax()
    assert obs.loc[obs["cluster"] == specific, "true_lot_specific"].mean() >= 0.95
    table = mp.get.lot_specificity(adata)
    assert table.loc[str(specific), "lot_dominated"]
    assert table["lot_dominated"].sum() == 1  # only the state, no shared population


def test_correction_finds_the_potency_population_and_keeps_every_lots_composition(seed4):
    adata, uncorrected_ari = seed4
    obs = adata.obs
    assert adjusted_rand_score(obs["true_subpopulation"], obs["cluster"]) > uncorrected_ari + 0.3
    association = adata.uns["potency_association"]
    assert association["found"] and not association["lot_dominated"]
    cells = (obs["cluster"].astype(str) == association["potency_cluster"]).to_numpy()
    potency = obs["true_potency_cell"].to_numpy(dtype=bool)
    assert 2 * (cells & potency).sum() / (cells.sum() + potency.sum()) >= 0.9
    clusters = obs["cluster"].astype(str)
    majority = pd.crosstab(clusters, obs["true_subpopulation"].astype(str)).idxmax(axis=1)
    estimated = pd.crosstab(obs["lot"], clusters.map(majority), normalize="index")
    true = pd.crosstab(obs["lot"], obs["true_subpopulation"].astype(str), normalize="index")
    errors = (estimated.reindex(columns=true.columns, fill_value=0.0) - true).abs().max()
    assert (errors <= 0.02).all(), errors.to_dict()
    params = adata.uns["integrate"]["params"]
    assert params["covariate_keys"] == ["site"] and params["theta"] == 4.0


def _toy(rng) -> AnnData:
    """Four lots: lot d's cells all in cluster 'shifted', a fifth of lot a's in 'state'."""
    lots = np.repeat(["a", "b", "c", "d"], 200)
    clusters = rng.choice(["x", "y"], size=800).astype(object)
    clusters[600:] = "shifted"
    clusters[:40] = "state"
    obs = pd.DataFrame({"lot": lots, "cl": clusters}, index=[f"c{i}" for i in range(800)])
    adata = AnnData(X=np.zeros((800, 2), dtype=np.float32), obs=obs)
    adata.obsm["X_pca"] = rng.normal(size=(800, 3)).astype(np.float32)
    adata.obsm["X_pca"][600:] += 5.0  # lot d shifted as a whole
    return adata


def test_a_state_of_one_lot_is_held_out_a_whole_shifted_lot_is_not():
    adata = _toy(np.random.default_rng(0))
    found = lot_specific_cells(adata, "cl", "lot")
    assert list(found["table"]["cluster"]) == ["state"]
    np.testing.assert_array_equal(found["mask"], (adata.obs["cl"] == "state").to_numpy())
    mp.pp.integrate(adata, lot_specific_key="cl")
    x, corrected = adata.obsm["X_pca"], adata.obsm["X_pca_harmony"]
    kept = (adata.obs["lot"] == "a").to_numpy() & ~found["mask"]
    shift = (corrected[kept] - x[kept]).mean(axis=0)
    np.testing.assert_allclose(corrected[found["mask"]], x[found["mask"]] + shift, atol=1e-4)
    assert mp.get.integrate(adata).loc["harmony", "ilisi"] > 1.5  # lot d mixed back in


def test_bad_lot_specific_and_covariate_options():
    adata = _toy(np.random.default_rng(1))
    with pytest.raises(ValueError, match="Harmony only"):
        mp.pp.integrate(adata, method="scvi", lot_specific_key="cl")
    with pytest.raises(KeyError, match="obs has no column 'site'"):
        mp.pp.integrate(adata, covariate_keys=("site",))
    with pytest.raises(KeyError, match="obs has no column 'nope'.*tl.cluster"):
        mp.pp.integrate(adata, lot_specific_key="nope")
    with pytest.raises(ValueError, match="covariate_theta"):
        mp.pp.integrate(adata, covariate_keys=("lot",), covariate_theta=-1.0)


def test_held_out_lots_map_onto_the_integrated_reference():
    """Two held-out lots (one per site) get the corrected clustering's labels by mapping.

    Today's route (``tl.map_to_reference``: projection into the reference PCA, labels of
    the corrected clusters transferred) against truth; Symphony is compared in
    benchmarks/results/lot_effects_mapping.md.
    """
    adata = mp.datasets.donor(random_state=0)
    held = adata.obs["lot"].isin(["A02", "B08"])
    assert adata.uns["simulation"]["lot_specific_lot"] not in ("A02", "B08")
    ref, query = adata[~held].copy(), adata[held].copy()
    mp.pp.qc(ref)
    mp.pp.preprocess(ref)
    mp.tl.cluster(ref, use_rep="X_pca", n_clusters=9, key_added="cluster_uncorrected")
    mp.pp.integrate(
        ref, covariate_keys=("site",), theta=4.0, lot_specific_key="cluster_uncorrected"
    )
    _chain(ref, "X_pca_harmony")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mp.tl.map_to_reference(query, mp.tl.freeze_reference(ref))
    obs = ref.obs
    clusters = obs["cluster"].astype(str)
    majority = pd.crosstab(clusters, obs["true_subpopulation"].astype(str)).idxmax(axis=1)
    labels = query.obs["predicted"].astype(str)
    truth = query.obs["true_subpopulation"].astype(str)
    assert (labels.map(majority) == truth).mean() >= 0.95
    potency = (labels == ref.uns["potency_association"]["potency_cluster"]).to_numpy()
    true_potency = query.obs["true_potency_cell"].to_numpy(dtype=bool)
    assert 2 * (potency & true_potency).sum() / (potency.sum() + true_potency.sum()) >= 0.9
    share = pd.Series(potency).groupby(query.obs["lot"].to_numpy()).mean()
    true_share = pd.Series(true_potency).groupby(query.obs["lot"].to_numpy()).mean()
    assert (share - true_share).abs().max() <= 0.02
