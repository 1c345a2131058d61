"""The covariance PCA of the highly variable genes is the PCA that ARPACK finds, only faster.

``svd_solver="covariance_eigh"`` (the default for sparse ``X``) densifies chunks of cells
to float64 and eigendecomposes the genes x genes covariance; ``"arpack"`` is what
``sc.tl.pca`` runs. On float64 data both are exact, so they agree to float precision; on
float32 data ARPACK iterates in float32 (about 1e-4 relative on the variances) while the
covariance kernel still computes in float64, so it equals ARPACK run on the float64 copy
(its loadings and centring then rounded to float32, the precision of ``X``, as
scikit-learn returns them).
"""

from __future__ import annotations

import numpy as np
import pytest
import scanpy as sc
from anndata import AnnData
from scipy import sparse
from sklearn.metrics import adjusted_rand_score

import mscpotency as mp
from mscpotency.pp import _pca


@pytest.fixture(scope="module")
def lognorm(tiny_train) -> AnnData:
    """Log-normalised float32 CSR of the tiny training lots, 300 HVGs flagged (read-only)."""
    adata = AnnData(
        X=sparse.csr_matrix(tiny_train.X, dtype=np.float32),
        obs=tiny_train.obs[["true_subpopulation"]].copy(),
        var=tiny_train.var[[]].copy(),
    )
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    sc.pp.highly_variable_genes(adata, n_top_genes=300, flavor="seurat")
    return adata


def _run(lognorm: AnnData, solver: str, *, dtype=np.float32, n_comps: int = 20, hvg=None):
    """(AnnData with the PCA written, centring) of ``lognorm`` cast to ``dtype``."""
    hvg = lognorm.var["highly_variable"].to_numpy() if hvg is None else hvg
    adata = AnnData(X=lognorm.X.astype(dtype), obs=lognorm.obs.copy())
    mean = _pca.pca_of_hvg(adata, n_comps, hvg, 0, svd_solver=solver)
    return adata, mean


def _assert_same_pca(found: AnnData, expected: AnnData, *, rtol: float, min_corr: float) -> None:
    """Every PC correlates with its counterpart at >= min_corr, same sign; variances to rtol."""
    x, y = found.obsm["X_pca"].astype(np.float64), expected.obsm["X_pca"].astype(np.float64)
    for i in range(x.shape[1]):
        assert np.corrcoef(x[:, i], y[:, i])[0, 1] >= min_corr, f"PC{i + 1}"
    signs = np.sum(found.varm["PCs"] * expected.varm["PCs"], axis=0)
    assert (signs > 0).all()
    for field in ("variance", "variance_ratio"):
        np.testing.assert_allclose(found.uns["pca"][field], expected.uns["pca"][field], rtol=rtol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_covariance_pca_equals_arpack_on_the_exact_values(lognorm, dtype):
    found, mean = _run(lognorm, "covariance_eigh", dtype=dtype)
    expected, expected_mean = _run(lognorm, "arpack", dtype=np.float64)
    _assert_same_pca(found, expected, rtol=1e-6, min_corr=1 - 1e-7)  # X_pca is float32
    np.testing.assert_allclose(found.varm["PCs"], expected.varm["PCs"], atol=1e-6)
    # float32 X: the centring is stored at X's precision (half a float32 ulp: 6e-8 relative)
    np.testing.assert_allclose(mean, expected_mean, rtol=1e-12 if dtype == np.float64 else 1e-7)
    assert found.uns["pca"]["params"]["svd_solver"] == "covariance_eigh"
    assert expected.uns["pca"]["params"]["svd_solver"] == "arpack"


def test_covariance_pca_equals_float32_arpack_within_its_precision(lognorm):
    """What ``sc.tl.pca`` gives on the same float32 matrix: ARPACK's float32 error only."""
    found, _ = _run(lognorm, "covariance_eigh")
    expected, _ = _run(lognorm, "arpack")
    _assert_same_pca(found, expected, rtol=1e-3, min_corr=0.999)


def test_covariance_pca_is_the_pca_of_the_hvg_matrix(lognorm):
    """From first principles on the dense matrix: centring, projection, variances, ratio, sign."""
    adata, mean = _run(lognorm, "covariance_eigh", dtype=np.float64)
    hvg = lognorm.var["highly_variable"].to_numpy()
    dense = lognorm.X[:, hvg].toarray().astype(np.float64)
    np.testing.assert_allclose(mean, dense.mean(axis=0), rtol=1e-12)
    loadings = adata.varm["PCs"]
    assert (loadings[~hvg] == 0).all()
    components = loadings[hvg]
    np.testing.assert_allclose(components.T @ components, np.eye(20), atol=1e-10)
    projected = (dense - mean) @ components
    np.testing.assert_allclose(adata.obsm["X_pca"], projected, rtol=1e-5, atol=1e-5)
    variance = projected.var(axis=0, ddof=1)
    np.testing.assert_allclose(adata.uns["pca"]["variance"], variance, rtol=1e-10)
    total = dense.var(axis=0, ddof=1).sum()  # scikit-learn's denominator
    np.testing.assert_allclose(adata.uns["pca"]["variance_ratio"], variance / total, rtol=1e-10)
    largest = components[np.argmax(np.abs(components), axis=0), np.arange(20)]
    assert (largest > 0).all()  # scikit-learn's sign convention
    assert np.all(np.diff(adata.uns["pca"]["variance"]) <= 0)


def test_float32_x_gets_float32_loadings_and_centring_that_project_its_cells(lognorm):
    """As scikit-learn returns them for float32 input: a frozen (float32) reference maps alike."""
    adata, mean = _run(lognorm, "covariance_eigh")
    exact, exact_mean = _run(lognorm, "covariance_eigh", dtype=np.float64)
    loadings = adata.varm["PCs"]
    np.testing.assert_array_equal(loadings.astype(np.float32).astype(np.float64), loadings)
    np.testing.assert_array_equal(mean.astype(np.float32).astype(np.float64), mean)
    np.testing.assert_array_equal(loadings, exact.varm["PCs"].astype(np.float32))
    np.testing.assert_array_equal(mean, exact_mean.astype(np.float32))
    # the coordinates are the cells projected with the stored (rounded) values
    hvg = lognorm.var["highly_variable"].to_numpy()
    dense = lognorm.X[:, hvg].toarray().astype(np.float64)
    projected = (dense - mean[None, :]) @ loadings[hvg]
    np.testing.assert_allclose(adata.obsm["X_pca"], projected, rtol=1e-5, atol=1e-5)


def test_all_hvg_mask_and_almost_as_many_comps_as_genes(lognorm):
    hvg = lognorm.var["highly_variable"].to_numpy()
    genes = np.flatnonzero(hvg)[:40]
    small = AnnData(X=lognorm.X[:, genes], obs=lognorm.obs.copy())
    small.var["highly_variable"] = True
    every = np.ones(40, dtype=bool)
    found, _ = _run(small, "covariance_eigh", dtype=np.float64, n_comps=39, hvg=every)
    expected, _ = _run(small, "arpack", dtype=np.float64, n_comps=39, hvg=every)
    _assert_same_pca(found, expected, rtol=1e-6, min_corr=1 - 1e-6)
    # 39 of 40 components: the ratios sum to all but the smallest eigenvalue's share
    dense = small.X.toarray()
    smallest = np.linalg.eigvalsh(np.cov(dense, rowvar=False))[0]
    total = dense.var(axis=0, ddof=1).sum()
    np.testing.assert_allclose(found.uns["pca"]["variance_ratio"].sum(), 1 - smallest / total)
    # the whole spectrum is allowed too (ARPACK needs fewer components than genes)
    whole, _ = _run(small, "covariance_eigh", dtype=np.float64, n_comps=40, hvg=every)
    np.testing.assert_allclose(whole.uns["pca"]["variance_ratio"].sum(), 1.0)


def test_chunk_borders_do_not_change_the_pca(lognorm, monkeypatch):
    one_chunk, _ = _run(lognorm, "covariance_eigh", dtype=np.float64)
    monkeypatch.setattr(_pca, "_CHUNK_VALUES", 300 * 37)  # chunks of 37 cells
    chunked, _ = _run(lognorm, "covariance_eigh", dtype=np.float64)
    np.testing.assert_allclose(chunked.obsm["X_pca"], one_chunk.obsm["X_pca"], atol=1e-6)
    np.testing.assert_allclose(chunked.uns["pca"]["variance"], one_chunk.uns["pca"]["variance"])


def test_dask_blocks_give_the_in_memory_pca(lognorm):
    da = pytest.importorskip("dask.array")
    hvg = lognorm.var["highly_variable"].to_numpy()
    lazy = AnnData(
        X=da.from_array(lognorm.X, chunks=(64, lognorm.n_vars), asarray=False),
        obs=lognorm.obs.copy(),
    )
    mean = _pca.pca_of_hvg(lazy, 20, hvg, 0)
    memory, memory_mean = _run(lognorm, "covariance_eigh")
    np.testing.assert_allclose(mean, memory_mean, rtol=1e-10)
    np.testing.assert_allclose(lazy.obsm["X_pca"], memory.obsm["X_pca"], atol=1e-5)
    np.testing.assert_allclose(lazy.varm["PCs"], memory.varm["PCs"], atol=1e-10)
    for field in ("variance", "variance_ratio"):
        np.testing.assert_allclose(lazy.uns["pca"][field], memory.uns["pca"][field], rtol=1e-10)


def test_both_solvers_give_the_same_clusters_of_the_true_subpopulations(lognorm):
    found, _ = _run(lognorm, "covariance_eigh")
    expected, _ = _run(lognorm, "arpack")
    for adata in (found, expected):
        mp.tl.cluster(adata, n_clusters=8)
    assert adjusted_rand_score(found.obs["cluster"], expected.obs["cluster"]) == 1.0
    assert adjusted_rand_score(found.obs["true_subpopulation"], found.obs["cluster"]) >= 0.8


def test_unknown_solver_is_rejected(lognorm):
    with pytest.raises(ValueError, match="svd_solver must be one of"):
        _run(lognorm, "randomized")
