"""PCA of the highly variable genes, as ``sc.tl.pca`` writes it, without its copies.

Three kernels behind one call, chosen by the type of ``X``:

- sparse in memory: by default the covariance eigendecomposition (``"covariance_eigh"``:
  rows densified to float64 chunk by chunk, the genes x genes covariance accumulated with
  BLAS, its top eigenvectors, a second chunked pass projects the cells); or scikit-learn's
  ARPACK on the implicitly centred sparse matrix (``"arpack"``, what ``sc.tl.pca`` runs);
- a Dask array of cell blocks: the same covariance kernel, block by block;
- dense in memory: ``sc.tl.pca`` itself.

Each writes ``obsm['X_pca']``, ``varm['PCs']`` and ``uns['pca']`` (with scikit-learn's
sign convention and its variance and variance ratio: ``ddof=1``, the ratio to the total
variance of the highly variable genes) and returns the per-gene centring.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import scanpy as sc
from anndata import AnnData
from scipy import linalg, sparse
from threadpoolctl import threadpool_limits

from .. import _dask

#: ``uns['pca']['params']`` every kernel writes (each adds its ``svd_solver``).
_PCA_PARAMS = {"zero_center": True, "use_highly_variable": True, "mask_var": "highly_variable"}

#: Values per densified chunk of the covariance kernel (float64: 32 MiB), so a chunk of
#: 2,000 genes holds 2,048 cells. At 10^5 cells x 2,000 genes the whole PCA then needs
#: 174 MiB above ``X`` (456 MiB with 8,192-cell chunks) and is as fast.
_CHUNK_VALUES = 2**22

SvdSolver = Literal["covariance_eigh", "arpack"]
_SOLVERS = ("covariance_eigh", "arpack")


def pca_of_hvg(
    adata: AnnData,
    n_comps: int,
    hvg: np.ndarray,
    random_state: int,
    svd_solver: SvdSolver = "covariance_eigh",
) -> np.ndarray:
    """PCA of the genes ``hvg`` (boolean mask) of log-normalised ``X``; returns their centring.

    Parameters
    ----------
    adata
        Cells with log-normalised ``X`` (sparse, Dask or dense).
    n_comps
        Number of principal components (at most the number of genes in ``hvg``; ARPACK
        needs strictly fewer).
    hvg
        Boolean mask of the genes to reduce.
    random_state
        Seed of ARPACK's start vector (the covariance solver is deterministic).
    svd_solver
        For sparse ``X`` in memory: ``"covariance_eigh"`` (default) accumulates the
        genes x genes covariance from dense float64 chunks of cells and takes its top
        eigenvectors: an exact PCA, 5.9x faster than ARPACK in wall time (3.6x in CPU
        time) at 99,385 cells x 2,000 genes on 2 cores, equal to it to 1e-13 on float64
        values; on float32 ``X`` it is the more accurate of the two (scikit-learn runs
        ARPACK in float32: about 1e-4 relative on the variances, ARI 0.9998 of the
        clusters downstream). Its cost grows with the square of the number of genes, so
        for many thousands of genes ``"arpack"`` (scikit-learn's
        ``PCA(svd_solver="arpack")``, what ``sc.tl.pca`` runs on sparse data, bit for bit)
        can be faster. Dask arrays always use the covariance kernel, dense arrays
        ``sc.tl.pca``. The solver is recorded in ``uns['pca']['params']['svd_solver']``.
    """
    if svd_solver not in _SOLVERS:
        msg = f"svd_solver must be one of {_SOLVERS}, got {svd_solver!r}"
        raise ValueError(msg)
    if _dask.is_dask(adata.X):
        return _dask_pca(adata, n_comps, hvg)
    if sparse.issparse(adata.X):
        if svd_solver == "arpack":
            return _sparse_pca(adata, n_comps, hvg, random_state)
        return _covariance_pca(adata, n_comps, hvg)
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
        adata,
        x_pca,
        pca.components_,
        hvg,
        pca.explained_variance_,
        pca.explained_variance_ratio_,
        svd_solver="arpack",
    )
    return pca.mean_


def _covariance_pca(adata: AnnData, n_comps: int, hvg: np.ndarray) -> np.ndarray:
    """Exact PCA of the genes ``hvg`` of sparse ``X`` from their covariance, chunk by chunk.

    Pass 1 densifies ``X[rows][:, hvg]`` to float64 for one chunk of rows at a time and
    adds its Gram matrix (one BLAS ``syrk``, both cores) and column sums; the covariance
    (``ddof=1``) is the Gram matrix less ``n * mean * mean.T``, its top ``n_comps``
    eigenvectors the components. Pass 2 projects the sparse chunks on the loadings (zero
    outside ``hvg``, so no column subset) and subtracts the projected mean. Scratch memory
    is one dense chunk (at most ``_CHUNK_VALUES`` float64 values) and two genes x genes
    matrices; the chunks are views of ``X``, which is never copied.
    """
    X = adata.X if adata.X.format == "csr" else adata.X.tocsr()
    columns = None if hvg.all() else np.flatnonzero(hvg)
    n_genes = int(hvg.sum())
    rows = _chunk_rows(n_genes)
    gram, total = np.zeros((n_genes, n_genes)), np.zeros(n_genes)
    for _, block in _row_blocks(X, rows):
        chunk = _dense_float64(block if columns is None else block[:, columns])
        gram += _gram(chunk)
        total += chunk.sum(axis=0)
    components, variance, ratio = _top_components(gram, total / X.shape[0], X.shape[0], n_comps)
    components, mean = _at_precision_of(X.dtype, components, total / X.shape[0])
    loadings = np.zeros((X.shape[1], n_comps))
    loadings[hvg] = components.T
    offset = mean @ components.T
    x_pca = np.empty((X.shape[0], n_comps), dtype=np.float32)
    for start, block in _row_blocks(X, rows):
        x_pca[start : start + block.shape[0]] = block @ loadings - offset
    _write_pca(adata, x_pca, components, hvg, variance, ratio, svd_solver="covariance_eigh")
    return mean


def _at_precision_of(
    dtype: np.dtype, components: np.ndarray, mean: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Components and centring rounded to the precision of ``X`` (float32 stays float32).

    scikit-learn returns them in the input's precision too; the frozen reference stores
    them as float32, so a reference frozen from float32 ``X`` maps exactly as the live one
    (the cells are projected with the rounded values, so the coordinates agree with them).
    """
    if np.dtype(dtype) != np.float32:
        return components, mean
    rounded = (components.astype(np.float32), mean.astype(np.float32))
    return rounded[0].astype(np.float64), rounded[1].astype(np.float64)


def _chunk_rows(n_genes: int) -> int:
    """Cells per densified chunk: ``_CHUNK_VALUES`` values, at least one cell."""
    return max(1, _CHUNK_VALUES // max(n_genes, 1))


def _row_blocks(X: sparse.csr_matrix, rows: int):
    """``(start, X[start:start + rows])`` for consecutive blocks of rows, as views of ``X``."""
    for start in range(0, X.shape[0], rows):
        stop = min(start + rows, X.shape[0])
        first, last = X.indptr[start], X.indptr[stop]
        indptr = X.indptr[start : stop + 1] - first
        block = sparse.csr_matrix(
            (X.data[first:last], X.indices[first:last], indptr), shape=(stop - start, X.shape[1])
        )
        yield start, block


def _dense_float64(block) -> np.ndarray:
    """A block of cells as a dense float64 array (float32 values convert exactly)."""
    return (
        block.toarray().astype(np.float64)
        if sparse.issparse(block)
        else np.asarray(block, dtype=np.float64)
    )


def _gram(block: np.ndarray) -> np.ndarray:
    """``block.T @ block`` of a dense float64 block (BLAS ``syrk``)."""
    return block.T @ block


def _top_components(
    gram: np.ndarray, mean: np.ndarray, n_obs: int, n_comps: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Components, variance and variance ratio of the top ``n_comps`` PCs from a Gram matrix.

    ``gram`` is the uncentred ``X.T @ X`` of ``n_obs`` cells with column means ``mean``.
    The covariance is ``(gram - n_obs * mean mean.T) / (n_obs - 1)`` (``ddof=1``, as
    scikit-learn's ``explained_variance_``); the ratio divides by its trace, the total
    variance of the genes (scikit-learn's denominator). Components come in descending
    order of variance, each with its largest loading positive (scikit-learn's sign).
    """
    covariance = gram - n_obs * np.outer(mean, mean)
    covariance /= n_obs - 1
    n_genes = covariance.shape[0]
    # one BLAS thread: the tridiagonal reduction is memory-bound and, on busy cores,
    # spinning BLAS threads made it 20x slower (0.6 s on one thread for 2,000 genes)
    with threadpool_limits(limits=1, user_api="blas"):
        values, vectors = linalg.eigh(covariance, subset_by_index=[n_genes - n_comps, n_genes - 1])
    total = float(np.trace(covariance))
    values, components = values[::-1], vectors[:, ::-1].T
    components = components * _sklearn_signs(components)[:, None]
    return np.ascontiguousarray(components), values, values / total


def _project(block: np.ndarray, mean: np.ndarray, components: np.ndarray) -> np.ndarray:
    """Coordinates of the cells of a dense block on ``components`` (centred by ``mean``)."""
    return block @ components.T - (mean @ components.T)[None, :]


def _dask_pca(adata: AnnData, n_comps: int, hvg: np.ndarray) -> np.ndarray:
    """PCA of the highly variable genes of a Dask-backed ``X``, with the in-memory kernel.

    Blocks are densified to float64 (on Dask, scanpy forms each block's Gram matrix with
    a sparse-sparse product, which is slow for scRNA-seq densities); one pass sums the
    blocks' Gram matrices and column sums, the eigendecomposition runs in memory
    (:func:`_top_components`, as for in-memory ``X``), a second pass projects the cells.
    """
    import dask
    import dask.array as da

    _dask.check_cell_chunks(adata.X, where="X")
    X = adata.X[:, hvg] if not hvg.all() else adata.X
    dense = X.map_blocks(_dense_float64, dtype=np.float64, meta=np.empty((0, 0), dtype=np.float64))
    n_genes = dense.shape[1]
    grams = dense.map_blocks(
        lambda block: _gram(block)[None],
        new_axis=1,  # (blocks of cells, genes, genes), summed over the blocks
        chunks=((1,) * dense.numblocks[0], (n_genes,), (n_genes,)),
        dtype=np.float64,
        meta=np.empty((0, 0, 0), dtype=np.float64),
    )
    gram, mean = dask.compute(grams.sum(axis=0), dense.mean(axis=0))
    mean = np.asarray(mean, dtype=np.float64)
    components, variance, ratio = _top_components(gram, mean, dense.shape[0], n_comps)
    components, mean = _at_precision_of(X.dtype, components, mean)
    x_pca = da.map_blocks(
        _project,
        dense,
        mean=mean,
        components=components,
        chunks=(dense.chunks[0], (n_comps,)),
        dtype=np.float64,
        meta=np.empty((0, 0), dtype=np.float64),
    ).compute()
    _write_pca(
        adata,
        np.asarray(x_pca).astype(np.float32),
        components,
        hvg,
        variance,
        ratio,
        svd_solver="covariance_eigh",
    )
    return mean


def _sklearn_signs(components: np.ndarray) -> np.ndarray:
    """Sign per component that makes its largest loading positive (scikit-learn's convention)."""
    largest = np.argmax(np.abs(components), axis=1)
    signs = np.sign(components[np.arange(components.shape[0]), largest])
    signs[signs == 0] = 1.0
    return signs
