"""pp.qc: low-quality cells found, reported per lot, nothing removed silently."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import mscpotency as mp


def test_qc_removes_the_simulated_low_quality_cells(tiny_train):
    adata = tiny_train.copy()
    truth = adata.obs["true_low_quality"].copy()
    mp.pp.qc(adata)
    kept = truth.index.isin(adata.obs_names)
    recall = (~kept[truth.to_numpy()]).mean()
    false_removal = (~kept[~truth.to_numpy()]).mean()
    assert recall >= 0.9
    assert false_removal <= 0.02


def test_report_accounts_for_every_cell(tiny_train):
    adata = tiny_train.copy()
    mp.pp.qc(adata)
    report = mp.get.qc(adata)
    assert list(report.index) == list(tiny_train.obs["lot"].cat.categories)
    assert (report["cells_before"] - report["cells_removed"] == report["cells_after"]).all()
    assert report["cells_before"].sum() == tiny_train.n_obs
    assert report["cells_after"].sum() == adata.n_obs
    assert (report["cells_after"] == adata.obs["lot"].value_counts().reindex(report.index)).all()
    assert set(adata.uns["qc"]["genes_removed"]).isdisjoint(adata.var_names)
    assert adata.n_vars + len(adata.uns["qc"]["genes_removed"]) == tiny_train.n_vars


def test_copy_leaves_input_untouched_and_matches_inplace(tiny_train):
    original = tiny_train.copy()
    returned = mp.pp.qc(original, copy=True)
    assert original.n_obs == tiny_train.n_obs and "qc" not in original.uns
    inplace = tiny_train.copy()
    assert mp.pp.qc(inplace) is None
    assert returned.obs_names.equals(inplace.obs_names)
    assert returned.var_names.equals(inplace.var_names)


def test_lot_emptied_by_qc_is_an_error_naming_it(tiny_train):
    adata = tiny_train.copy()
    with pytest.raises(ValueError, match="every cell of lots"):
        mp.pp.qc(adata, thresholds="fixed", min_genes=10**6)


def test_non_count_data_is_rejected(tiny_train):
    adata = tiny_train.copy()
    del adata.layers["counts"]
    adata.X = adata.X.multiply(0.37).tocsr()
    with pytest.raises(ValueError, match="non-integer"):
        mp.pp.qc(adata)


def test_nan_and_negative_values_are_rejected(tiny_train):
    adata = tiny_train.copy()
    del adata.layers["counts"]
    adata.X = adata.X.copy()
    adata.X.data[0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        mp.pp.qc(adata)
    adata.X.data[0] = -1
    with pytest.raises(ValueError, match="negative"):
        mp.pp.qc(adata)


def test_missing_lot_key_is_an_error(tiny_train):
    adata = tiny_train.copy()
    with pytest.raises(KeyError, match="batch"):
        mp.pp.qc(adata, lot_key="batch")


def test_adaptive_threshold_is_per_lot(tiny_train):
    adata = tiny_train.copy()
    mp.pp.qc(adata, thresholds="fixed", min_genes=0, max_pct_mito=None, mad_counts=3)
    report = mp.get.qc(adata)
    assert "cells_below_mad_counts" in report
    assert report["cells_below_mad_counts"].sum() > 0


def test_metrics_equal_scanpys_calculate_qc_metrics(tiny_all, monkeypatch):
    import scanpy as sc

    from mscpotency import _cell_stats
    from mscpotency.pp import _qc

    monkeypatch.setattr(_cell_stats, "CHUNK_ENTRIES", 5_000)  # many row chunks
    expected = tiny_all.copy()
    expected.var["mt"] = expected.var_names.str.startswith("MT-")
    sc.pp.calculate_qc_metrics(
        expected, qc_vars=["mt"], percent_top=None, log1p=False, inplace=True
    )
    obs, var = _qc.qc_metrics(tiny_all.X, expected.var["mt"].to_numpy())
    assert expected.var["mt"].sum() == 8
    for column in obs:
        theirs = expected.obs[column].to_numpy()
        assert obs[column].dtype == theirs.dtype, column
        np.testing.assert_allclose(obs[column].to_numpy(), theirs, rtol=1e-6, err_msg=column)
    for column in var:
        np.testing.assert_allclose(
            var[column].to_numpy(), expected.var[column].to_numpy(), rtol=1e-6, err_msg=column
        )
    # the same cells pass the filters
    removed = (obs["n_genes_by_counts"] < 200) | (obs["pct_counts_mt"] > 20)
    expected_removed = (expected.obs["n_genes_by_counts"] < 200) | (
        expected.obs["pct_counts_mt"] > 20
    )
    np.testing.assert_array_equal(removed.to_numpy(), expected_removed.to_numpy())


# --- the report names counts and states its thresholds; lots left small -----------------


def test_report_columns_are_counts_of_failing_cells_and_thresholds_are_stated(tiny_train):
    adata = tiny_train.copy()
    mp.pp.qc(adata, thresholds="fixed", min_counts=500)
    report = mp.get.qc(adata)
    assert list(report.columns) == [
        "cells_before",
        "cells_below_min_genes",
        "cells_below_min_counts",
        "cells_above_max_pct_mito",
        "cells_removed",
        "cells_after",
    ]
    # each column counts the cells failing its filter, recomputed here from the raw counts
    X = tiny_train.layers["counts"]
    n_genes = np.asarray((X > 0).sum(axis=1)).ravel()
    total = np.asarray(X.sum(axis=1)).ravel()
    mito = tiny_train.var_names.str.upper().str.startswith("MT-")
    pct_mito = np.asarray(X[:, mito].sum(axis=1)).ravel() / total * 100
    lots = tiny_train.obs["lot"].to_numpy()
    for column, failing in [
        ("cells_below_min_genes", n_genes < 200),
        ("cells_below_min_counts", total < 500),
        ("cells_above_max_pct_mito", pct_mito > 20),
    ]:
        expected = pd.Series(failing).groupby(lots).sum()
        assert report[column].to_dict() == expected.loc[report.index].to_dict(), column
    assert report["cells_below_min_genes"].sum() > 0
    thresholds = adata.uns["qc"]["thresholds"]
    assert list(thresholds.index) == [
        "cells_below_min_genes",
        "cells_below_min_counts",
        "cells_above_max_pct_mito",
        "genes_removed",
    ]
    assert thresholds["threshold"].tolist() == [200.0, 500.0, 20.0, 3.0]
    assert thresholds["removed_if"].tolist() == ["<", "<", ">", "<"]
    assert thresholds.loc["cells_below_min_genes", "rule"] == "n_genes_by_counts < 200"
    assert thresholds.loc["cells_above_max_pct_mito", "rule"] == (
        "pct_counts_mt > 20 (genes starting with 'MT-')"
    )


def test_refused_qc_leaves_the_input_untouched(tiny_train):
    adata = tiny_train.copy()
    with pytest.raises(ValueError, match="every cell of lots"):
        mp.pp.qc(adata, thresholds="fixed", min_genes=10**6)
    pd.testing.assert_frame_equal(adata.obs, tiny_train.obs)
    assert list(adata.var.columns) == list(tiny_train.var.columns) and "qc" not in adata.uns


@pytest.fixture
def small_lot(tiny_train):
    """The training lots with BM08 cut to its first 12 cells."""
    in_lot = (tiny_train.obs["lot"] == "BM08").to_numpy()
    keep = ~in_lot | (np.cumsum(in_lot) <= 12)
    return tiny_train[keep].copy()


def test_a_lot_left_small_warns_how_it_enters_the_statistics(small_lot):
    adata = small_lot.copy()
    with pytest.warns(
        UserWarning,
        match=(
            r"after QC, lots \{'BM08': \d+\} have fewer than min_cells_per_lot=20 cells and "
            r"are kept\. A small lot is kept as a full lot.*rank association.*same weight"
        ),
    ):
        mp.pp.qc(adata)
    assert "BM08" in set(adata.obs["lot"])
    with pytest.raises(ValueError, match=r"lots \{'BM08': \d+\} have fewer than min_cells_per_lot"):
        mp.pp.qc(small_lot.copy(), small_lots="error")


def test_small_lots_drop_removes_the_lot_and_reports_it(small_lot):
    adata = small_lot.copy()
    mp.pp.qc(adata, small_lots="drop")
    assert "BM08" not in set(adata.obs["lot"])
    assert "BM08" not in adata.obs["lot"].cat.categories
    report = mp.get.qc(adata)
    assert report.loc["BM08", "cells_in_small_lot"] == 12
    assert report.loc["BM08", "cells_after"] == 0
    assert (report.drop(index="BM08")["cells_in_small_lot"] == 0).all()
    assert report["cells_after"].sum() == adata.n_obs
    assert adata.uns["qc"]["thresholds"].loc["cells_in_small_lot", "threshold"] == 20
    # the other lots are filtered exactly as without the rule
    others = small_lot[(small_lot.obs["lot"] != "BM08").to_numpy()].copy()
    mp.pp.qc(others)
    assert adata.obs_names.equals(others.obs_names)
    # a lower minimum keeps it without a word
    kept = small_lot.copy()
    mp.pp.qc(kept, min_cells_per_lot=5)
    assert "BM08" in set(kept.obs["lot"])


def test_small_lot_warning_of_the_tools_says_how_the_lot_enters_each_statistic():
    from mscpotency._validate import warn_small_lots

    counts = pd.Series({"BM01": 150, "BM02": 4})
    with pytest.warns(
        UserWarning,
        match=(
            r"lot_fractions: lots \{'BM02': 4\} have fewer than 50 cells; their fractions are "
            r"noisy\. .*0\.22 at 5 cells.*same weight as the largest.*small_lots='drop'"
        ),
    ):
        warn_small_lots(counts, 50, context="lot_fractions")


# --- gene identifiers: Ensembl ids, a symbol column, no mitochondrial gene -------------


def _with_ensembl_ids(adata, symbol_key="gene_symbols"):
    """The same cells with Ensembl-like ids as gene names and the symbols in a var column."""
    out = adata.copy()
    out.var[symbol_key] = out.var_names.to_numpy()
    out.var_names = [f"ENSG{i:011d}" for i in range(out.n_vars)]
    return out


def test_ensembl_ids_are_detected():
    from mscpotency._validate import looks_like_ensembl

    assert looks_like_ensembl(["ENSG00000198888", "ENSG00000198763.3", "MT-ND1"])
    assert looks_like_ensembl(["ENSMUSG00000064341", "ENSMUSG00000064345"])
    assert not looks_like_ensembl(["MT-ND1", "ACTB", "ENSG00000198888"])
    assert not looks_like_ensembl([])


def test_mito_genes_are_found_through_the_symbol_column(tiny_train):
    by_symbol = tiny_train.copy()
    mp.pp.qc(by_symbol)
    # var['gene_symbols'] is read by default
    ensembl = _with_ensembl_ids(tiny_train)
    mp.pp.qc(ensembl)
    assert ensembl.var["mt"].sum() == 8
    assert ensembl.uns["qc"]["params"]["symbols_from"] == "var['gene_symbols']"
    np.testing.assert_array_equal(ensembl.obs_names, by_symbol.obs_names)
    pd.testing.assert_frame_equal(mp.get.qc(ensembl), mp.get.qc(by_symbol))
    # a column the user names
    named = _with_ensembl_ids(tiny_train, symbol_key="symbol")
    mp.pp.qc(named, symbol_key="symbol")
    np.testing.assert_array_equal(named.obs_names, by_symbol.obs_names)
    np.testing.assert_allclose(named.obs["pct_counts_mt"], by_symbol.obs["pct_counts_mt"])


def test_no_mito_gene_found_warns_where_it_searched_and_how_to_point_at_symbols(tiny_train):
    named = _with_ensembl_ids(tiny_train, symbol_key="symbol")
    with pytest.warns(
        UserWarning,
        match=(
            r"no mitochondrial gene found: no gene in var_names starts with 'MT-'.*removes no "
            r"cell.*look like Ensembl ids.*var\['symbol'\] has 8 genes starting with it: pass "
            r"symbol_key='symbol'.*max_pct_mito=None"
        ),
    ):
        mp.pp.qc(named, thresholds="fixed")
    assert named.var["mt"].sum() == 0
    assert mp.get.qc(named)["cells_above_max_pct_mito"].sum() == 0
    # saying there are none silences it
    mp.pp.qc(
        _with_ensembl_ids(tiny_train, symbol_key="symbol"), thresholds="fixed", max_pct_mito=None
    )
    with pytest.raises(KeyError, match=r"adata.var has no column 'symbols'.*'symbol'"):
        mp.pp.qc(_with_ensembl_ids(tiny_train, symbol_key="symbol"), symbol_key="symbols")


def test_no_mito_gene_found_warns_with_the_default_mad_thresholds_too(tiny_train):
    named = _with_ensembl_ids(tiny_train, symbol_key="symbol")
    with pytest.warns(UserWarning, match=r"no mitochondrial gene found.*max_pct_mito=None"):
        mp.pp.qc(named)
    assert "cells_above_mad_pct_mito" not in mp.get.qc(named)  # no mitochondrial filter
    # saying there are none silences it (warnings are errors here), with the same cells kept
    silent = _with_ensembl_ids(tiny_train, symbol_key="symbol")
    mp.pp.qc(silent, max_pct_mito=None)
    assert silent.obs_names.equals(named.obs_names)


def test_default_thresholds_are_fixed(tiny_train):
    """Fixed thresholds stay the default (per-lot MADs are measured in benchmarks/results/*_qcmad.md)."""
    default = mp.pp.qc(tiny_train, copy=True)
    fixed = mp.pp.qc(tiny_train, thresholds="fixed", copy=True)
    assert default.uns["qc"]["params"]["thresholds"] == "fixed"
    assert default.obs_names.equals(fixed.obs_names)
    pd.testing.assert_frame_equal(mp.get.qc(default), mp.get.qc(fixed))
    assert "cells_below_min_genes" in mp.get.qc(default)


def test_ribosomal_genes_are_measured_by_symbol(tiny_train):
    adata = _with_ensembl_ids(tiny_train)
    symbols = adata.var["gene_symbols"].to_numpy().copy()
    symbols[[10, 11, 12]] = ["RPS3", "RPL7", "rpl13"]
    adata.var["gene_symbols"] = symbols
    counts = adata.layers["counts"]
    mp.pp.qc(adata, thresholds="fixed", min_genes=0, max_pct_mito=None, min_cells_per_gene=0)
    assert adata.var["ribo"].sum() == 3
    ribo = np.asarray(counts[:, [10, 11, 12]].sum(axis=1)).ravel()
    total = np.asarray(counts.sum(axis=1)).ravel()
    np.testing.assert_allclose(adata.obs["total_counts_ribo"], ribo, rtol=1e-6)
    np.testing.assert_allclose(adata.obs["pct_counts_ribo"], ribo / total * 100, rtol=1e-5)


# --- QC that fits the data: shares removed, per-lot MAD thresholds --------------------


def test_removing_most_of_a_lot_warns_and_is_flagged(tiny_train):
    adata = tiny_train.copy()
    n_genes = np.asarray((adata.layers["counts"] > 0).sum(axis=1)).ravel()
    threshold = int(np.quantile(n_genes, 0.6))  # removes about 60% of the cells
    with pytest.warns(
        UserWarning,
        match=r"the cell filters remove more than 50% of the cells of lots \{'BM0\d': '\d+ of "
        r"150 \(\d+%\), most by cells_below_min_genes'.*thresholds='mad'",
    ):
        mp.pp.qc(adata, thresholds="fixed", min_genes=threshold)
    flagged = adata.uns["qc"]["lots_flagged"]
    report = mp.get.qc(adata)
    share = report["cells_removed"] / report["cells_before"]
    assert sorted(flagged.index) == sorted(share.index[share > 0.5])
    np.testing.assert_allclose(flagged["share_removed"], share.loc[flagged.index])
    assert flagged["above_max_removed_share"].all()
    # the share is an option; None never warns but still lists the lots
    quiet = tiny_train.copy()
    mp.pp.qc(quiet, thresholds="fixed", min_genes=threshold, max_removed_share=0.9)
    assert quiet.uns["qc"]["lots_flagged"].empty
    silent = tiny_train.copy()
    mp.pp.qc(silent, thresholds="fixed", min_genes=threshold, max_removed_share=None)
    assert silent.uns["qc"]["lots_flagged"].empty
    with pytest.raises(ValueError, match=r"max_removed_share must lie between 0 and 1"):
        mp.pp.qc(tiny_train.copy(), max_removed_share=50)


def test_the_heavy_removal_warning_names_the_rule_in_use(tiny_train):
    with pytest.warns(UserWarning, match=r"remove more than 0%.*consider a larger n_mads") as got:
        mp.pp.qc(tiny_train.copy(), thresholds="mad", max_removed_share=0.001)
    assert not any("consider thresholds='mad'" in str(w.message) for w in got)
    with pytest.warns(UserWarning, match=r"remove more than 0%.*consider thresholds='mad'"):
        mp.pp.qc(tiny_train.copy(), max_removed_share=0.001)


def test_a_lot_taken_below_the_minimum_is_flagged(small_lot):
    adata = small_lot.copy()
    with pytest.warns(UserWarning, match=r"Cells before -> after QC: \{'BM08': '12 -> \d+'\}"):
        mp.pp.qc(adata)
    flagged = adata.uns["qc"]["lots_flagged"]
    assert list(flagged.index) == ["BM08"]
    assert flagged.loc["BM08", "below_min_cells_per_lot"]
    assert flagged.loc["BM08", "cells_before"] == 12


def _scater_outliers(values, lots, n_mads, lower):
    """scater's isOutlier(values, nmads, type, batch=lots) written out: median -/+ n x mad()."""
    out = np.zeros(len(values), dtype=bool)
    limits = {}
    for lot in np.unique(lots):
        v = values[lots == lot]
        median = np.median(v)
        mad = 1.4826 * np.median(np.abs(v - median))
        limit = median - n_mads * mad if lower else median + n_mads * mad
        limits[lot] = limit
        out[lots == lot] = v < limit if lower else v > limit
    return out, limits


def test_mad_thresholds_are_scaters_per_lot_and_stated(tiny_train):
    adata = tiny_train.copy()
    mp.pp.qc(adata, thresholds="mad", n_mads=3)
    X = tiny_train.layers["counts"]
    lots = tiny_train.obs["lot"].astype(str).to_numpy()
    total = np.asarray(X.sum(axis=1)).ravel()
    n_genes = np.asarray((X > 0).sum(axis=1)).ravel()
    mito = tiny_train.var_names.str.startswith("MT-")
    pct = np.asarray(X[:, mito].sum(axis=1)).ravel() / total * 100
    expected = {
        "cells_below_mad_log_counts": _scater_outliers(np.log1p(total), lots, 3, True),
        "cells_below_mad_log_genes": _scater_outliers(np.log1p(n_genes), lots, 3, True),
        "cells_above_mad_pct_mito": _scater_outliers(pct, lots, 3, False),
    }
    report = mp.get.qc(adata)
    table = adata.uns["qc"]["thresholds"]
    assert "cells_below_min_genes" not in report.columns  # the fixed filters are replaced
    removed = np.zeros(len(lots), dtype=bool)
    for name, (fails, limits) in expected.items():
        counted = pd.Series(fails).groupby(lots).sum()
        assert report[name].to_dict() == counted.loc[report.index].to_dict(), name
        rows = table.loc[name].set_index("lot")
        for lot, limit in limits.items():
            np.testing.assert_allclose(rows.loc[lot, "threshold"], limit, rtol=1e-5)
        removed |= fails
    assert table.loc["cells_below_mad_log_counts", "removed_if"].eq("<").all()
    assert table.loc["cells_above_mad_pct_mito", "removed_if"].eq(">").all()
    assert table.loc["genes_removed", "lot"] == "all"
    assert adata.n_obs == (~removed).sum()
    # the simulated low-quality cells are found, and few others
    truth = tiny_train.obs["true_low_quality"].to_numpy(dtype=bool)
    assert removed[truth].mean() >= 0.9
    assert removed[~truth].mean() <= 0.05
    assert adata.uns["qc"]["params"]["thresholds"] == "mad"
    copied = mp.pp.qc(tiny_train, thresholds="mad", n_mads=3, copy=True)
    assert copied.obs_names.equals(adata.obs_names) and "qc" not in tiny_train.uns
    pd.testing.assert_frame_equal(copied.uns["qc"]["thresholds"], adata.uns["qc"]["thresholds"])


def test_mad_of_zero_sets_no_threshold_in_that_lot(tiny_train):
    adata = tiny_train[tiny_train.obs["lot"].isin(["BM01", "BM02"]).to_numpy()].copy()
    counts = adata.layers["counts"].tolil()
    mito = np.flatnonzero(adata.var_names.str.startswith("MT-"))
    in_bm01 = np.flatnonzero((adata.obs["lot"] == "BM01").to_numpy())
    for cell in in_bm01:  # BM01: no mitochondrial counts but in 3 cells
        counts[cell, mito] = 0
    counts[in_bm01[:3], mito[0]] = 50
    adata.layers["counts"] = counts.tocsr()
    mp.pp.qc(adata, thresholds="mad", min_cells_per_lot=0)
    rows = adata.uns["qc"]["thresholds"].loc["cells_above_mad_pct_mito"].set_index("lot")
    assert rows.loc["BM01", "threshold"] == np.inf
    assert rows.loc["BM01", "rule"].startswith("not applied")
    assert np.isfinite(rows.loc["BM02", "threshold"])
    assert mp.get.qc(adata).loc["BM01", "cells_above_mad_pct_mito"] == 0


def test_a_cell_without_counts_leaves_its_lots_mito_threshold_in_place(tiny_train):
    """An empty droplet's mitochondrial share is 0/0; it must not switch the lot's MAD filter
    off (it did: the lot's MAD became NaN, its threshold inf, 9 of 10 damaged cells kept)."""
    adata = tiny_train[tiny_train.obs["lot"].isin(["BM01", "BM02"]).to_numpy()].copy()
    with_empty = adata.copy()
    counts = with_empty.layers["counts"].tolil()
    empty = np.flatnonzero((with_empty.obs["lot"] == "BM01").to_numpy())[-1]
    empty_name = with_empty.obs_names[empty]
    counts[empty, :] = 0
    with_empty.layers["counts"] = counts.tocsr()
    for data in (adata, with_empty):
        mp.pp.qc(data, thresholds="mad", min_cells_per_lot=0)
    mito = "cells_above_mad_pct_mito"
    rows = with_empty.uns["qc"]["thresholds"].loc[mito].set_index("lot")
    before = adata.uns["qc"]["thresholds"].loc[mito].set_index("lot")
    assert np.isfinite(rows.loc["BM01", "threshold"])
    # one cell fewer in BM01's median and MAD (the empty one replaced a measured cell)
    np.testing.assert_allclose(rows["threshold"], before["threshold"], rtol=0.01)
    assert mp.get.qc(with_empty).loc["BM01", mito] == mp.get.qc(adata).loc["BM01", mito] > 0
    # the empty cell is removed (by the counts filter); every other decision is unchanged
    assert with_empty.obs_names.equals(adata.obs_names.drop(empty_name, errors="ignore"))
