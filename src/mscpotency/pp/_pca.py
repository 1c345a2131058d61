"""PCA of the highly variable genes, as ``sc.tl.pca`` writes it, without its copies.

Three kernels behind one call, chosen by the type of ``X``: sparse in memory (scikit-learn
ARPACK without the defensive copy), a Dask array of cell blocks (scanpy's
``covariance_eigh`` solver on densified float64 blocks) and dense in memory
(``sc.tl.pca`` itself). Each writes ``obsm['X_pca']``, ``varm['PCs']`` and ``uns['pca']``
and returns the per-gene centring of the highly variable genes.
"""

from __future__ import annotations

import numpy as np
import scanpy as sc
from anndata import AnnData
from scipy import sparse

from .. import _dask

#: ``uns['pca']['params']`` every kernel writes (the Dask one adds its solver).
_PCA_PARAMS = {"zero_center": True, "use_highly_variable": True, "mask_var": "highly_variable"}


def pca_of_hvg(adata: AnnData, n_comps: int, hvg: np.ndarray, random_state: int) -> np.ndarray:
    """PCA of the genes ``hvg`` (boolean mask) of log-normalised ``X``; returns their centring."""
    if _dask.is_dask(adata.X):
        return _dask_pca(adata, n_comps, hvg)
    if sparse.issparse(adata.X):
        return _sparse_pca(adata, n_comps, hvg, random_state)
    sc.tl.pca(adata, n_comps=n_comps, mask_var="highly_variable", random_state=random_state)
    return np.asarray(adata.X[:, hvg].mean(axis=0)).ravel()


def _write_pca(
    adata: AnnData,
    x_pca: np.ndarray,
    components: np.ndarray,
    hvg: np.ndarray,
    variance: np.ndarray,
    variance_ratio: np.ndarray,
    **params,
) -> None:
    """Write a PCA where ``sc.tl.pca`` writes it (loadings of genes outside ``hvg`` are 0)."""
    adata.obsm["X_pca"] = x_pca
    loadings = np.zeros((adata.n_vars, components.shape[0]))
    loadings[hvg] = components.T
    adata.varm["PCs"] = loadings
    adata.uns["pca"] = {
        "params": {**_PCA_PARAMS, **params},
        "variance": variance,
        "variance_ratio": variance_ratio,
    }


def _sparse_pca(adata: AnnData, n_comps: int, hvg: np.ndarray, random_state: int) -> np.ndarray:
    """``sc.tl.pca(adata, mask_var="highly_variable")`` for sparse ``X``, without its copies.

    The same estimator scanpy builds (scikit-learn ``PCA``, ARPACK on the implicitly
    centred sparse matrix, the same seed), so the same result; but scikit-learn's
    defensive copy of the input is skipped (``copy=False``: the sparse ARPACK path never
    writes to it) and an all-True mask is not applied by copying ``X``.
    """
    from sklearn.decomposition import PCA
    from sklearn.utils import check_random_state

    X = adata.X if hvg.all() else adata.X[:, hvg]
    pca = PCA(
        n_components=n_comps,
        svd_solver="arpack",
        random_state=check_random_state(random_state),
        copy=False,
    )
    x_pca = pca.fit_transform(X).astype(np.float32, copy=False)
    _write_pca(
        adata, x_pca, pca.components_, hvg, pca.explained_variance_, pca.explained_variance_ratio_
    )
    return pca.mean_


def _dense_float64(block) -> np.ndarray:
    return (
        block.toarray().astype(np.float64)
        if sparse.issparse(block)
        else np.asarray(block, dtype=np.float64)
    )


def _dask_pca(adata: AnnData, n_comps: int, hvg: np.ndarray) -> np.ndarray:
    """PCA of the highly variable genes of a Dask-backed ``X``.

    scanpy's Dask PCA (``svd_solver="covariance_eigh"``: one pass accumulates the gene x
    gene covariance, an eigendecomposition in memory, a second pass projects the cells).
    Blocks are densified to float64 first: on Dask, scanpy forms each block's Gram matrix
    with a sparse-sparse product, which is slow for scRNA-seq densities, and float64
    keeps the covariance exact enough to match the in-memory ARPACK result. Components
    get scikit-learn's sign convention (largest loading positive) so both paths give the
    same coordinates.
    """
    import dask

    _dask.check_cell_chunks(adata.X, where="X")
    X = adata.X[:, hvg] if not hvg.all() else adata.X
    dense = X.map_blocks(_dense_float64, dtype=np.float64, meta=np.empty((0, 0), dtype=np.float64))
    x_pca, components, ratio, variance = sc.pp.pca(
        dense, n_comps=n_comps, svd_solver="covariance_eigh", return_info=True
    )
    x_pca, mean = dask.compute(x_pca, dense.mean(axis=0))
    signs = _sklearn_signs(components)
    _write_pca(
        adata,
        (np.asarray(x_pca) * signs[None, :]).astype(np.float32),
        components * signs[:, None],
        hvg,
        np.asarray(variance),
        np.asarray(ratio),
        svd_solver="covariance_eigh",
    )
    return np.asarray(mean, dtype=np.float64)


def _sklearn_signs(components: np.ndarray) -> np.ndarray:
    """Sign per component that makes its largest loading positive (scikit-learn's convention)."""
    largest = np.argmax(np.abs(components), axis=1)
    signs = np.sign(components[np.arange(components.shape[0]), largest])
    signs[signs == 0] = 1.0
    return signs
