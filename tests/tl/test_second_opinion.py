"""Second opinions: quasi-binomial count model, Milo-style neighbourhoods, method agreement."""

from __future__ import annotations

from itertools import permutations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

import mscpotency as mp
from mscpotency import _stats
from mscpotency.tl._robustness._second_opinion import (
    count_permutation_test,
    quasibinomial_t,
    spatial_fdr,
)


def test_quasibinomial_kernel_equals_statsmodels():
    rng = np.random.default_rng(3)
    totals = rng.integers(800, 2000, 11).astype(float)
    share = 1 / (1 + np.exp(-(-2 + 0.4 * rng.normal(size=11))))
    counts = rng.binomial(totals.astype(int), share).astype(float)
    z = rng.normal(size=11)
    slope, se, t, dispersion = quasibinomial_t(counts, totals, z)
    model = sm.GLM(
        counts / totals, sm.add_constant(z), family=sm.families.Binomial(), var_weights=totals
    )
    fit = model.fit(scale="X2")
    assert slope[0] == pytest.approx(fit.params[1], rel=1e-7)
    assert se[0] == pytest.approx(fit.bse[1], rel=1e-6)
    assert dispersion[0] == pytest.approx(fit.scale, rel=1e-6)
    assert t[0] == pytest.approx(fit.tvalues[1], rel=1e-6)
    # vectorised over covariate vectors: each row is its own fit
    many = np.vstack([z, z[::-1], -z])
    slopes = quasibinomial_t(counts, totals, many)[0]
    assert slopes[0] == pytest.approx(slope[0]) and slopes[2] == pytest.approx(-slope[0])


def test_exact_count_permutation_p_counts_every_ordering():
    rng = np.random.default_rng(5)
    totals = np.full(5, 500.0)
    counts = np.array([[30.0], [45.0], [60.0], [52.0], [80.0]])
    y = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    result = count_permutation_test(counts, totals, y, random_state=rng)
    assert result["method"] == "exact"
    z = (y - y.mean()) / y.std(ddof=1)
    observed = abs(quasibinomial_t(counts[:, 0], totals, z)[2][0])
    null = [
        abs(quasibinomial_t(counts[:, 0], totals, z[list(p)])[2][0]) for p in permutations(range(5))
    ]
    assert result["pvalue"][0] == pytest.approx(np.mean(np.asarray(null) >= observed * (1 - 1e-9)))
    assert result["pvalue"][0] >= 1 / 120


def test_count_association_finds_the_potency_cluster(tiny_ref):
    adata = tiny_ref.copy()
    mp.tl.count_association(adata)
    table = mp.get.count_association(adata)
    cluster = adata.uns["potency_association"]["potency_cluster"]
    assert table.index[0] == cluster  # sorted by slope, largest first
    assert table.loc[cluster, "pvalue"] < 0.01 and table.loc[cluster, "odds_ratio"] > 1.3
    assert (table["pvalue_method"] == "exact").all()  # 8 lots: all 40,320 orderings
    assert (table["dispersion"] > 0).all() and (table["n_lots"] == 8).all()
    # truth: the slope has the sign of the true potency cells' association
    truth = adata.obs.groupby("lot", observed=True)["true_potency_cell"].mean()
    potency = mp.get.potency_association(adata, kind="lots")["vegf"]
    assert (
        truth.corr(potency.reindex(truth.index), method="spearman") > 0
        and table.loc[cluster, "coef"] > 0
    )


def test_count_association_permutation_above_eight_lots_and_copy(tiny_all):
    adata = tiny_all[tiny_all.obs["set"].isin(["BM-train", "BM-test"])].copy()
    adata.obs["cluster"] = adata.obs["true_subpopulation"]
    mp.tl.lot_fractions(adata)
    returned = mp.tl.count_association(adata, n_permutations=999, copy=True)
    assert "count_association" not in adata.uns
    table = mp.get.count_association(returned)
    assert (table["pvalue_method"] == "permutation").all()
    assert table.loc["SP3", "pvalue"] < 0.01 and table.index[0] == "SP3"
    assert (table["pvalue"] >= 1 / 1000).all()
    again = mp.tl.count_association(adata, n_permutations=999, copy=True)
    pd.testing.assert_frame_equal(mp.get.count_association(again), table)


def test_count_association_validation(tiny_ref):
    adata = tiny_ref.copy()
    with pytest.raises(ValueError, match="n_permutations"):
        mp.tl.count_association(adata, n_permutations=10)
    lots = mp.get.potency_association(adata, kind="lots")
    with pytest.raises(ValueError, match="same for every lot"):
        mp.tl.count_association(adata, dict.fromkeys(lots.index, 1.0))
    missing = lots["vegf"].copy()
    missing.iloc[1] = np.nan
    with pytest.raises(ValueError, match="missing, non-numeric"):
        mp.tl.count_association(adata, missing)
    tied = lots["vegf"].copy()
    tied.iloc[:3] = tied.iloc[0]  # ties: permutations of tied values are still valid
    mp.tl.count_association(adata, tied, key_added="tied")
    assert np.isfinite(mp.get.count_association(adata, key="tied")["pvalue"]).all()
    few = adata[adata.obs["lot"].isin(["BM01", "BM02", "BM03"])].copy()
    mp.tl.lot_fractions(few)
    with pytest.raises(ValueError, match="needs at least 4 lots, got 3"):
        mp.tl.count_association(few)
    with pytest.raises(KeyError, match="tl.lot_fractions"):
        mp.tl.count_association(adata, fractions_key="absent")


# ----------------------------------------------------------------------------- neighbourhoods
@pytest.fixture(scope="module")
def two_states():
    """10 well-mixed lots, two cell states; the share of state B drives potency exactly (truth known)."""
    rng = np.random.default_rng(0)
    shares = rng.permutation(np.linspace(0.05, 0.45, 10))
    blocks, obs = [], []
    for i, share in enumerate(shares):
        state_b = rng.random(200) < share
        blocks.append(rng.normal(0, 1, (200, 5)) + 8 * state_b[:, None])
        obs.append(
            pd.DataFrame(
                {"lot": f"L{i:02d}", "vegf": 400 + 4000 * share, "true_b": state_b},
                index=[f"L{i:02d}_{j}" for j in range(200)],
            )
        )
    adata = ad.AnnData(obs=pd.concat(obs))
    adata.obsm["X_pca"] = np.vstack(blocks)
    mp.tl.cluster(adata, n_clusters=2)
    return adata


def test_neighbourhoods_recover_the_potency_state_without_clusters(two_states):
    adata = two_states.copy()
    mp.tl.neighbourhood_association(adata)
    nhoods = mp.get.neighbourhood_association(adata)
    membership = adata.obsm["neighbourhood_association"]
    in_b = (
        np.asarray(membership.T @ adata.obs["true_b"].to_numpy(dtype=float)).ravel()
        / nhoods["size"].to_numpy()
    )
    mostly_b, mostly_a = in_b > 0.9, in_b < 0.1
    assert mostly_b.sum() >= 5 and mostly_a.sum() >= 5
    assert (nhoods.loc[mostly_b, "rho"] > 0.6).mean() > 0.9
    # state A's share varies less across lots (0.55-0.95), so its neighbourhoods are noisier
    assert (nhoods.loc[mostly_a, "rho"] < 0).mean() > 0.95 and nhoods.loc[
        mostly_a, "rho"
    ].median() < -0.4
    assert nhoods.loc[mostly_b, "significant"].mean() > 0.8
    assert (nhoods["size"] == 80).all()  # 'auto': max(30, 8 x 10 lots) nearest cells
    clusters = mp.get.neighbourhood_association(adata, kind="clusters")
    b_cluster = adata.obs.loc[adata.obs["true_b"], "cluster"].mode()[0]
    assert clusters.loc[b_cluster, "share_positive"] > 0.8
    assert adata.obs["neighbourhood_association_rho"].notna().mean() > 0.5


def test_graph_neighbourhoods_and_bh(two_states):
    adata = two_states.copy()
    mp.tl.neighbourhood_association(adata, n_neighbors="graph", fdr="bh", key_added="graph")
    nhoods = mp.get.neighbourhood_association(adata, key="graph")
    np.testing.assert_allclose(
        nhoods["fdr"], _stats.benjamini_hochberg(nhoods["pvalue"].to_numpy())
    )
    connectivities = adata.obsp["cluster_neighbors_connectivities"]
    first = adata.obs_names.get_loc(nhoods["index_cell"].iloc[0])
    assert nhoods["size"].iloc[0] == connectivities[first].nnz + 1


def test_spatial_fdr_reduces_to_bh_with_equal_weights():
    p = np.array([0.01, 0.04, 0.03, 0.2, np.nan, 0.5])
    np.testing.assert_allclose(spatial_fdr(p, np.ones(6)), _stats.benjamini_hochberg(p))
    weighted = spatial_fdr(p, np.array([10.0, 1, 1, 1, 1, 1]))
    assert weighted[0] < _stats.benjamini_hochberg(p)[0]


def test_neighbourhood_validation(two_states, tiny_ref):
    adata = two_states.copy()
    with pytest.raises(ValueError, match="prop"):
        mp.tl.neighbourhood_association(adata, prop=0)
    with pytest.raises(ValueError, match="fdr must be"):
        mp.tl.neighbourhood_association(adata, fdr="holm")
    with pytest.raises(ValueError, match="n_neighbors must be"):
        mp.tl.neighbourhood_association(adata, n_neighbors=1)
    with pytest.raises(KeyError, match="obsm has no 'X_none'"):
        mp.tl.neighbourhood_association(adata, use_rep="X_none")
    with pytest.raises(ValueError, match="same for every lot"):
        mp.tl.neighbourhood_association(adata, dict.fromkeys(adata.obs["lot"].unique(), 2.0))
    bare = tiny_ref.copy()
    del bare.uns["cluster"]
    with pytest.raises(KeyError, match="tl.cluster"):
        mp.tl.neighbourhood_association(bare)


@pytest.mark.slow
def test_neighbourhoods_of_the_potency_cluster_rank_first_on_the_study(study_ref):
    adata = study_ref.copy()
    mp.tl.neighbourhood_association(adata)
    clusters = mp.get.neighbourhood_association(adata, kind="clusters")
    assert clusters["median_rho"].idxmax() == adata.uns["potency_association"]["potency_cluster"]


# ----------------------------------------------------------------------------- agreement
@pytest.mark.filterwarnings("ignore::mscpotency._stored.NotSignificantWarning")
def test_methods_agree_on_the_potency_cluster(tiny_ref):
    adata = tiny_ref.copy()
    mp.tl.count_association(adata)
    mp.tl.neighbourhood_association(adata)
    mp.tl.method_agreement(adata)
    table = mp.get.method_agreement(adata)
    cluster = adata.uns["potency_association"]["potency_cluster"]
    row = table.loc[cluster]
    assert row["call_fraction"] == row["call_clr"] == row["call_count"] == "+"
    assert row["rho_clr"] > 0.8 and row["p_clr"] < 0.05
    assert row["same_direction"] and row["nhood_median_rho"] > 0
    assert {"nhood_median_rho", "call_neighbourhood", "agree", "call"} <= set(table.columns)
    assert (table["n_methods"] == 4).all()
    assert table.loc[table["agree"], "call"].isin(["+", "-", "0"]).all()
    assert cluster in adata.uns["method_agreement"]["summary"]["text"]
    # CLR p equals the association's own CLR transform
    mp.tl.potency_association(adata, transform="clr", key_added="clr")
    clr = mp.get.potency_association(adata, key="clr", sort=False)
    np.testing.assert_allclose(table["p_clr"], clr["pvalue"].reindex(table.index))


@pytest.mark.filterwarnings("ignore::mscpotency._stored.NotSignificantWarning")
def test_method_agreement_without_optional_methods_and_validation(tiny_ref):
    adata = tiny_ref.copy()
    mp.tl.method_agreement(adata, count_key=None, neighbourhood_key=None)
    table = mp.get.method_agreement(adata)
    assert (table["n_methods"] == 2).all() and "call_count" not in table
    with pytest.raises(KeyError, match="tl.count_association"):
        mp.tl.method_agreement(adata, neighbourhood_key=None)
    mp.tl.potency_association(adata, transform="clr")
    with pytest.raises(ValueError, match="needs the fraction association"):
        mp.tl.method_agreement(adata, count_key=None, neighbourhood_key=None)
