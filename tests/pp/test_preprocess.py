"""pp.preprocess: normalised X, counts kept, HVG and PCA with the centring stored."""

from __future__ import annotations

import numpy as np
import pytest

import mscpotency as mp


@pytest.fixture(scope="module")
def processed(tiny_train):
    adata = tiny_train.copy()
    mp.pp.preprocess(adata, n_top_genes=300, n_comps=20)
    return adata


def test_counts_kept_and_x_log_normalised(processed, tiny_train):
    assert (processed.layers["counts"] != tiny_train.X).nnz == 0
    back = np.expm1(processed.X[:5].toarray()).sum(axis=1)
    np.testing.assert_allclose(back, 1e4, rtol=1e-4)


def test_hvg_pca_and_centring_written(processed):
    assert processed.var["highly_variable"].sum() == 300
    assert processed.obsm["X_pca"].shape == (processed.n_obs, 20)
    hvg = processed.var["highly_variable"].to_numpy()
    projected = (
        processed.X[:, hvg].toarray() - processed.var["pca_mean"].to_numpy()[hvg]
    ) @ processed.varm["PCs"][hvg]
    np.testing.assert_allclose(
        np.abs(projected), np.abs(processed.obsm["X_pca"]), rtol=1e-3, atol=1e-3
    )
    assert processed.uns["preprocess"]["params"]["target_sum"] == 1e4


def test_marker_gene_is_highly_variable(processed):
    assert processed.var.loc["LRRC75A", "highly_variable"]


def test_same_seed_same_embedding(tiny_train):
    a = mp.pp.preprocess(tiny_train, n_top_genes=300, copy=True)
    b = mp.pp.preprocess(tiny_train, n_top_genes=300, copy=True)
    np.testing.assert_array_equal(a.obsm["X_pca"], b.obsm["X_pca"])


def test_copy_equals_inplace_and_leaves_input(tiny_train):
    source = tiny_train.copy()
    returned = mp.pp.preprocess(source, n_top_genes=300, copy=True)
    assert "X_pca" not in source.obsm and (source.X != tiny_train.X).nnz == 0
    assert mp.pp.preprocess(source, n_top_genes=300) is None
    np.testing.assert_array_equal(returned.obsm["X_pca"], source.obsm["X_pca"])


def test_log_normalised_input_declared_as_counts_is_rejected(processed):
    adata = processed.copy()
    del adata.layers["counts"]
    with pytest.raises(ValueError, match="log-transformed"):
        mp.pp.preprocess(adata)
