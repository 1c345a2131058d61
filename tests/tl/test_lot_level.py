"""Lot fractions, composition deviation, potency association and markers on tiny data."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import mscpotency as mp
from mscpotency._stored import NotSignificantWarning


def test_fractions_match_a_manual_crosstab(tiny_ref):
    fractions = mp.get.lot_fractions(tiny_ref)
    counts = mp.get.lot_fractions(tiny_ref, kind="counts")
    manual = pd.crosstab(tiny_ref.obs["lot"], tiny_ref.obs["cluster"])
    np.testing.assert_array_equal(counts.to_numpy(), manual.to_numpy())
    np.testing.assert_allclose(fractions.sum(axis=1), 1.0)
    tidy = mp.get.lot_fractions(tiny_ref, long=True)
    assert len(tidy) == fractions.size and {"lot", "cluster", "fraction"} <= set(tidy.columns)


def test_potency_cluster_fraction_tracks_truth(tiny_ref):
    cluster = tiny_ref.uns["potency_association"]["potency_cluster"]
    fractions = mp.get.lot_fractions(tiny_ref)[cluster]
    truth = tiny_ref.obs.groupby("lot", observed=True)["true_potency_cell"].mean()
    np.testing.assert_allclose(
        fractions.to_numpy(), truth.reindex(fractions.index).to_numpy(), atol=0.02
    )


def test_weighted_fractions_with_one_hot_weights_equal_counts(tiny_ref):
    adata = tiny_ref.copy()
    labels = adata.obs["cluster"]
    adata.obsm["onehot"] = pd.get_dummies(labels).astype(float).set_index(adata.obs_names)
    mp.tl.lot_fractions(adata, weights_key="onehot", key_added="weighted")
    np.testing.assert_allclose(
        mp.get.lot_fractions(adata, key="weighted").to_numpy(),
        mp.get.lot_fractions(adata).to_numpy(),
    )


def test_small_lot_warns(tiny_ref):
    adata = tiny_ref[
        ~((tiny_ref.obs["lot"] == "BM01") & (np.arange(tiny_ref.n_obs) % 10 != 0))
    ].copy()
    with pytest.warns(UserWarning, match="BM01"):
        mp.tl.lot_fractions(adata, key_added="small")


def test_duplicate_cell_names_are_an_error(tiny_ref):
    adata = tiny_ref.copy()
    adata.obs_names = [
        name.split("_")[-1] for name in adata.obs_names
    ]  # barcodes repeat across lots
    with pytest.raises(ValueError, match="cell names are not unique"):
        mp.tl.lot_fractions(adata)


def test_missing_labels_name_the_tool(tiny_train):
    with pytest.raises(KeyError, match="tl.cluster"):
        mp.tl.lot_fractions(tiny_train.copy())


def test_deviation_flags_a_lot_drawn_away_from_the_pool(tiny_ref):
    adata = tiny_ref.copy()
    biggest = adata.obs["cluster"].cat.categories[0]
    odd = (adata.obs["lot"] == "BM02") & (adata.obs["cluster"] != biggest)
    adata = adata[~odd.to_numpy()].copy()  # BM02 now holds only the largest cluster
    mp.tl.lot_fractions(adata, min_cells_per_lot=10)
    mp.tl.composition_deviation(adata)
    per_lot = mp.get.composition_deviation(adata)
    assert per_lot["distance"].idxmax() == "BM02"
    assert per_lot.loc["BM02", "sampling_p"] < 0.01
    assert per_lot.loc["BM02", "most_deviating_cluster"] != ""
    for metric in ("tvd", "aitchison"):
        mp.tl.composition_deviation(adata, metric=metric, key_added=metric)
        assert mp.get.composition_deviation(adata, key=metric)["distance"].idxmax() == "BM02"


def test_deviation_of_a_lot_sampled_from_the_pool_is_unremarkable():
    from mscpotency.tl._population._deviation import composition_distance

    pooled = np.array([0.5, 0.3, 0.2])
    assert composition_distance(pooled[None], pooled, "jsd")[0] == pytest.approx(0)
    assert composition_distance(np.array([[1.0, 0, 0]]), pooled, "tvd")[0] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="metric"):
        composition_distance(pooled[None], pooled, "l2")


def test_association_finds_the_potency_cluster(tiny_ref):
    table = mp.get.potency_association(tiny_ref)
    top = table.index[0]
    assert top == tiny_ref.uns["potency_association"]["potency_cluster"]
    truth = tiny_ref.obs["true_potency_cell"].to_numpy()
    in_top = (tiny_ref.obs["cluster"] == top).to_numpy()
    f1 = 2 * (truth & in_top).sum() / (truth.sum() + in_top.sum())
    assert f1 >= 0.9
    assert table.loc[top, "pvalue"] < 0.05 and table.loc[top, "pvalue_method"] == "exact"
    assert table.loc[top, "ci_low"] > 0
    assert {"fdr", "pvalue_asymptotic", "loo_min", "loo_max", "loo_most_influential_lot"} <= set(
        table.columns
    )
    lots = mp.get.potency_association(tiny_ref, kind="lots")
    assert list(lots.columns[:1]) == ["vegf"] and len(lots) == 8


def test_association_with_a_table_and_clr(tiny_ref):
    adata = tiny_ref.copy()
    potency = mp.get.lot_table(adata)["vegf"]
    # on 8 tiny lots the CLR share of the potency cluster has p = 0.007 but FDR = 0.058 over
    # 8 clusters: the association says it is not significant at FDR <= 0.05
    with pytest.warns(NotSignificantWarning, match="No cluster's share tracks vegf at FDR"):
        mp.tl.potency_association(adata, potency, transform="clr", key_added="clr")
    clr_table = mp.get.potency_association(adata, key="clr")
    assert clr_table.index[0] == adata.uns["potency_association"]["potency_cluster"]
    assert adata.uns["clr"]["found"] is False
    assert "FDR = 0.0579" in adata.uns["clr"]["message"]


def test_association_permutation_method_is_reproducible(tiny_ref):
    a = mp.tl.potency_association(tiny_ref, method="permutation", n_permutations=999, copy=True)
    b = mp.tl.potency_association(tiny_ref, method="permutation", n_permutations=999, copy=True)
    pd.testing.assert_frame_equal(mp.get.potency_association(a), mp.get.potency_association(b))
    assert (mp.get.potency_association(a)["pvalue_method"] == "permutation").all()


def test_four_lots_say_they_cannot_reach_significance(tiny_ref):
    four = tiny_ref[tiny_ref.obs["lot"].isin(["BM01", "BM02", "BM03", "BM04"]).to_numpy()].copy()
    mp.tl.lot_fractions(four)
    mp.tl.potency_association(four)
    assert "no Spearman test can reach" in four.uns["potency_association"]["note"]
    # no warning (the note says it), but the result does not claim a potency cluster
    assert four.uns["potency_association"]["found"] is False
    assert "with 4 lots no test can reach it" in four.uns["potency_association"]["message"]
    assert (mp.get.potency_association(four)["pvalue"] >= 2 / 24 - 1e-12).all()


@pytest.mark.parametrize(
    ("potency", "match"),
    [
        ({"BM01": 1.0}, "have cells but no"),
        ("tissue_code", "not constant within lots"),
        ("nan_potency", "NaN"),
        ("inf_potency", "infinite"),
        ("flat", "same for every lot"),
    ],
)
def test_association_rejects_bad_potency(tiny_ref, potency, match):
    adata = tiny_ref.copy()
    adata.obs["tissue_code"] = np.arange(adata.n_obs) % 2
    adata.obs["nan_potency"] = np.where(adata.obs["lot"] == "BM03", np.nan, adata.obs["vegf"])
    adata.obs["flat"] = 5.0
    adata.obs["inf_potency"] = np.where(adata.obs["lot"] == "BM05", np.inf, adata.obs["vegf"])
    with pytest.raises(ValueError, match=match):
        mp.tl.potency_association(adata, potency)


def test_association_rejects_lot_without_cells_and_too_few_lots(tiny_ref):
    potency = mp.get.lot_table(tiny_ref)["vegf"].to_dict()
    potency["BM99"] = 1.0
    with pytest.raises(ValueError, match=r"\['BM99'\] in the vegf table have no cells|BM99"):
        mp.tl.potency_association(tiny_ref, pd.Series(potency, name="vegf"), copy=True)
    two = tiny_ref[tiny_ref.obs["lot"].isin(["BM01", "BM02"]).to_numpy()].copy()
    mp.tl.lot_fractions(two)
    with pytest.raises(ValueError, match="at least 3 lots"):
        mp.tl.potency_association(two)


def test_association_needs_fractions_first(tiny_train):
    with pytest.raises(KeyError, match="tl.lot_fractions"):
        mp.tl.potency_association(tiny_train.copy())


def test_markers_put_the_planted_marker_first(tiny_ref):
    table = mp.get.potency_markers(tiny_ref)
    assert table["gene"].iloc[0] == "LRRC75A"
    top = table.iloc[0]
    assert (
        top["n_lots_up"] == top["n_lots_tested"] >= 6
    )  # lots with < 5 potency cells are not tested
    assert top["lot_sign_pvalue"] < 0.05 and top["median_lot_log2fc"] > 1
    assert (table["pct_in"] >= 0).all() and len(table) == 20
    assert table["pct_in"].iloc[0] > 1.5 * table["pct_out"].iloc[0]


def test_markers_of_a_named_cluster_and_unknown_cluster(tiny_ref):
    adata = mp.tl.potency_markers(tiny_ref, "CL0", n_genes=5, copy=True)
    assert adata.uns["potency_markers"]["cluster"] == "CL0"
    with pytest.raises(ValueError, match="unknown cluster 'CL42'"):
        mp.tl.potency_markers(tiny_ref, "CL42", copy=True)


def test_markers_need_association_or_a_cluster(tiny_ref):
    adata = tiny_ref.copy()
    del adata.uns["potency_association"]
    with pytest.raises(KeyError, match="tl.potency_association"):
        mp.tl.potency_markers(adata)


def test_four_lots_with_an_absent_cluster_give_no_all_nan_warning(tiny_ref):
    """Leave-one-lot-out on 4 lots: a label absent from every lot (a reference class no new
    lot has) has no finite rho in any fold; numpy used to warn "All-NaN slice"."""
    four = tiny_ref[tiny_ref.obs["lot"].isin(["BM01", "BM02", "BM03", "BM04"]).to_numpy()].copy()
    labels = four.obs["cluster"].astype(str).to_numpy()
    labels[np.flatnonzero(four.obs["lot"] == "BM01")[:5]] = "ONLY1"
    four.obs["cluster"] = pd.Categorical(labels, categories=[*sorted(set(labels)), "ABSENT"])
    mp.tl.lot_fractions(four, min_cells_per_lot=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mp.tl.potency_association(four)
    table = mp.get.potency_association(four, sort=False)
    assert np.isnan(table.loc["ABSENT", ["rho", "loo_min", "loo_max"]].astype(float)).all()
    assert np.isfinite(table.loc["ONLY1", ["loo_min", "loo_max"]].astype(float)).all()
    finite = table["loo_min"].notna()
    assert (table.loc[finite, "loo_min"] <= table.loc[finite, "loo_max"]).all()


def test_lot_table_leaves_out_per_cell_qc_metrics_even_when_constant(tiny_train):
    adata = tiny_train.copy()
    mp.pp.qc(adata)
    # the simulator measures no ribosomal gene: its QC metrics are 0 in every cell
    assert (adata.obs["pct_counts_ribo"] == 0).all()
    table = mp.get.lot_table(adata)
    assert list(table.columns) == ["set", "tissue", "vegf"]
    assert table.index.tolist() == sorted(adata.obs["lot"].unique().tolist())


def test_markers_are_named_by_symbol_when_the_gene_names_are_ensembl_ids(tiny_ref):
    adata = tiny_ref.copy()
    symbols = adata.var_names.to_numpy()
    adata.var["gene_symbols"] = symbols
    adata.var_names = [f"ENSG{i:011d}" for i in range(adata.n_vars)]
    mp.tl.potency_markers(adata)
    table = mp.get.potency_markers(adata)
    assert table["gene"].iloc[0].startswith("ENSG")
    assert table["symbol"].iloc[0] == "LRRC75A"
    assert list(table.columns[:3]) == ["rank", "gene", "symbol"]
    # gene names that are the symbols: no extra column
    assert "symbol" not in mp.get.potency_markers(tiny_ref).columns
