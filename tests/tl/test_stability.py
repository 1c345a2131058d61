"""Stability of the potency cluster (resolution sweep, subsamples) and influential lots."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import mscpotency as mp
from mscpotency._stored import NotSignificantWarning
from mscpotency.tl._robustness._stability import (
    igraph_from_connectivities,
    influence_kernel,
    jaccard_matrix,
    leiden_labels,
    robust_z,
)


@pytest.fixture(scope="module")
def stable(tiny_ref):
    adata = tiny_ref.copy()
    mp.tl.association_stability(adata, n_subsamples=8)
    return adata


def _truth_jaccard(labels: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Jaccard of every cluster of ``labels`` with the true potency cells."""
    out = []
    for k in np.unique(labels):
        inside = labels == k
        out.append((inside & truth).sum() / (inside | truth).sum())
    return np.asarray(out)


def test_stability_recovers_the_true_potency_subpopulation_across_resolutions(stable):
    table = mp.get.association_stability(stable)
    summary = mp.get.association_stability(stable, kind="summary").iloc[0]
    assert summary["share_resolutions_recovered"] >= 0.7
    # against the simulator's truth: at most resolutions the cluster with the largest rho
    # is the true potency subpopulation (re-clustered here with the same graph and seed)
    graph = igraph_from_connectivities(stable.obsp["cluster_neighbors_connectivities"])
    truth = stable.obs["true_potency_cell"].to_numpy()
    hits = []
    for _, row in table.iterrows():
        labels = leiden_labels(graph, row["resolution"], seed=0)  # tl.cluster's seed
        fractions = pd.crosstab(stable.obs["lot"].to_numpy(), labels, normalize="index")
        potency = mp.get.potency_association(stable, kind="lots")["vegf"].reindex(fractions.index)
        rho = fractions.corrwith(potency, method="spearman")
        top = rho.idxmax()
        assert np.isclose(rho.max(), row["top_rho"])
        hits.append(_truth_jaccard(labels, truth)[list(rho.index).index(top)] >= 0.5)
    assert np.mean(hits) >= 0.7
    assert (table.loc[table["recovered"], "jaccard"] >= 0.5).all()
    assert table["n_clusters"].is_monotonic_increasing
    # the sweep at the reference resolution gives the reference clustering back
    reference = table.loc[
        np.isclose(table["resolution"], stable.uns["cluster"]["resolution"])
    ].iloc[0]
    assert (
        reference["jaccard"] == 1.0 and reference["n_clusters"] == stable.obs["cluster"].nunique()
    )


def test_subsamples_keep_the_potency_cluster(stable):
    subsamples = mp.get.association_stability(stable, kind="subsamples")
    clusters = mp.get.association_stability(stable, kind="clusters")
    cluster = stable.uns["potency_association"]["potency_cluster"]
    assert len(subsamples) == 8
    assert subsamples["jaccard"].median() > 0.9
    assert subsamples["recovered"].mean() >= 0.75
    assert (subsamples["n_cells"] == round(0.8 * stable.n_obs)).all()
    assert (
        clusters.loc[cluster, "mean_jaccard"] > 0.9 and clusters.loc[cluster, "is_potency_cluster"]
    )
    assert clusters["is_potency_cluster"].sum() == 1
    assert set(clusters.index) == set(stable.obs["cluster"].cat.categories)


def test_a_cluster_without_association_is_not_recovered(tiny_ref):
    adata = tiny_ref.copy()
    table = mp.get.potency_association(adata)
    weakest = table["rho"].abs().idxmin()
    mp.tl.association_stability(adata, cluster=weakest, n_subsamples=2, key_added="weak")
    assert mp.get.association_stability(adata, key="weak")["recovered"].sum() == 0


def test_same_seed_same_result_and_copy(tiny_ref):
    adata = tiny_ref.copy()
    returned = mp.tl.association_stability(adata, resolutions=[1.0, 2.0], n_subsamples=3, copy=True)
    assert "association_stability" not in adata.uns
    mp.tl.association_stability(adata, resolutions=[1.0, 2.0], n_subsamples=3)
    pd.testing.assert_frame_equal(
        mp.get.association_stability(adata, kind="subsamples"),
        mp.get.association_stability(returned, kind="subsamples"),
    )
    pd.testing.assert_frame_equal(
        mp.get.association_stability(adata), mp.get.association_stability(returned)
    )
    assert mp.get.provenance(adata)["function"].iloc[-1] == "tl.association_stability"


def test_jaccard_and_robust_z_kernels():
    a = np.array([0, 0, 1, 1, 2])
    b = np.array([1, 1, 0, 0, 0])
    jac = jaccard_matrix(a, b, 3, 2)
    np.testing.assert_allclose(jac, [[0, 1], [2 / 3, 0], [1 / 3, 0]])
    z = robust_z(np.array([0.5, 0.5, 0.5, 0.5, 0.9]))  # MAD 0: the mean deviation takes over
    assert np.isfinite(z).all() and z[-1] > 3.5 and (z[:-1] == 0).all()


def test_stability_validation(tiny_ref):
    adata = tiny_ref.copy()
    with pytest.raises(ValueError, match="unknown cluster 'CLX'"):
        mp.tl.association_stability(adata, cluster="CLX")
    with pytest.raises(ValueError, match="subsample_fraction"):
        mp.tl.association_stability(adata, subsample_fraction=0)
    with pytest.raises(ValueError, match="n_subsamples"):
        mp.tl.association_stability(adata, n_subsamples=-1)
    with pytest.raises(ValueError, match="min_jaccard"):
        mp.tl.association_stability(adata, min_jaccard=0)
    with pytest.raises(ValueError, match="resolutions must be positive"):
        mp.tl.association_stability(adata, resolutions=[1.0, -1.0])
    constant = dict.fromkeys(mp.get.potency_association(adata, kind="lots").index, 1.0)
    with pytest.raises(ValueError, match="same for every lot"):
        mp.tl.association_stability(adata, constant)
    missing = mp.get.potency_association(adata, kind="lots")["vegf"].copy()
    missing.iloc[0] = np.nan
    with pytest.raises(ValueError, match="missing, non-numeric"):
        mp.tl.association_stability(adata, missing)
    no_association = adata.copy()
    del no_association.uns["potency_association"]
    with pytest.raises(KeyError, match="tl.potency_association"):
        mp.tl.association_stability(no_association)
    no_graph = adata.copy()
    del no_graph.obsp["cluster_neighbors_connectivities"]
    with pytest.raises(KeyError, match="tl.cluster"):
        mp.tl.association_stability(no_graph)
    with pytest.raises(KeyError, match="tl.association_stability"):
        mp.get.association_stability(adata, key="absent")
    with pytest.raises(ValueError, match="kind must be"):
        mp.get.association_stability(adata, kind="lots")


# ----------------------------------------------------------------------------- influence
@pytest.fixture(scope="module")
def planted(tiny_ref):
    """The tiny reference with one planted discordant lot: most potency cells, lowest potency."""
    adata = tiny_ref.copy()
    cluster = adata.uns["potency_association"]["potency_cluster"]
    lots = mp.get.potency_association(adata, kind="lots")
    potency = lots["vegf"].copy()
    outlier = lots[cluster].idxmax()
    potency[outlier] = potency.min() - 50
    with pytest.warns(NotSignificantWarning, match="No cluster"):
        mp.tl.potency_association(adata, potency)
    return adata, cluster, outlier


@pytest.mark.filterwarnings("ignore::mscpotency._stored.NotSignificantWarning")
def test_planted_outlier_lot_is_flagged(planted):
    adata, cluster, outlier = planted
    assert mp.get.potency_association(adata).loc[cluster, "loo_most_influential_lot"] == outlier
    mp.tl.influential_lots(adata, cluster)
    table = mp.get.influential_lots(adata)
    assert table.index[table["influential"]].tolist() == [outlier]
    assert table.loc[outlier, "shift"] > 0.4  # without it, the association comes back
    assert table.loc[outlier, "changes_call"]
    assert table.loc[outlier, "pvalue_without"] < 0.05


def test_clean_reference_flags_no_lot(tiny_ref):
    adata = tiny_ref.copy()
    mp.tl.influential_lots(adata)
    table = mp.get.influential_lots(adata)
    assert not table["influential"].any()
    assert len(table) == 8 and np.isfinite(table["rho_without"]).all()
    assert (
        adata.uns["influential_lots"]["cluster"]
        == adata.uns["potency_association"]["potency_cluster"]
    )


def test_influence_rule_on_many_simulated_studies():
    """11 lots of 1,500 cells: planted outlier flagged (alone) in >= 95%, clean studies in <= 3%."""
    rng = np.random.default_rng(7)
    n_studies, caught, false = 400, 0, 0
    for _ in range(n_studies):
        fraction = rng.uniform(0.03, 0.22, 11)
        observed = rng.binomial(1500, fraction) / 1500
        potency = 400 + 4000 * fraction + rng.normal(0, 60, 11)
        false += influence_kernel(observed, potency)[3].any()
        outlier = np.argmax(observed)
        potency[outlier] = potency.min() - 50
        flagged = influence_kernel(observed, potency)[3]
        caught += flagged[outlier] and flagged.sum() == 1
    assert caught / n_studies >= 0.95
    assert false / n_studies <= 0.03


@pytest.mark.filterwarnings("ignore::mscpotency._stored.NotSignificantWarning")
def test_influential_lots_with_clr_and_validation(tiny_ref):
    adata = tiny_ref.copy()
    mp.tl.potency_association(adata, transform="clr", key_added="clr")
    mp.tl.influential_lots(adata, association_key="clr", key_added="clr_influence")
    table = mp.get.influential_lots(adata, key="clr_influence")
    assert adata.uns["clr_influence"]["params"]["transform"] == "clr"
    counts = mp.get.lot_fractions(adata, kind="counts")
    cluster = adata.uns["clr"]["potency_cluster"]
    clr = np.log(counts + 0.5)
    clr = clr.sub(clr.mean(axis=1), axis=0)
    np.testing.assert_allclose(table["feature"], clr[cluster].reindex(table.index))
    with pytest.raises(ValueError, match="unknown cluster"):
        mp.tl.influential_lots(adata, "CLX")
    with pytest.raises(ValueError, match="z_threshold"):
        mp.tl.influential_lots(adata, z_threshold=0)
    with pytest.raises(KeyError, match="tl.potency_association"):
        mp.tl.influential_lots(adata, association_key="absent")
    few = adata[adata.obs["lot"].isin(["BM01", "BM02", "BM03"])].copy()
    mp.tl.lot_fractions(few, min_cells_per_lot=1)
    mp.tl.potency_association(few)
    with pytest.raises(ValueError, match="at least 4 lots"):
        mp.tl.influential_lots(few)


@pytest.mark.slow
def test_stability_on_the_study(study_ref):
    adata = study_ref.copy()
    mp.tl.association_stability(adata, n_subsamples=5)
    summary = mp.get.association_stability(adata, kind="summary").iloc[0]
    assert (
        summary["share_resolutions_recovered"] >= 0.8
        and summary["share_subsamples_recovered"] >= 0.8
    )
    cluster = adata.uns["potency_association"]["potency_cluster"]
    truth = adata.obs["true_potency_cell"].to_numpy()
    inside = (adata.obs["cluster"] == cluster).to_numpy()
    assert (truth & inside).sum() / (truth | inside).sum() > 0.95
