"""pp.qc: low-quality cells found, reported per lot, nothing removed silently."""

from __future__ import annotations

import numpy as np
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
        mp.pp.qc(adata, min_genes=10**6)


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
    mp.pp.qc(adata, min_genes=0, max_pct_mito=None, mad_counts=3)
    report = mp.get.qc(adata)
    assert "mad_counts" in report
    assert report["mad_counts"].sum() > 0


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
