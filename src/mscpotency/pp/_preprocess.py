"""Normalise, log-transform, select highly variable genes and reduce with PCA."""

from __future__ import annotations

import warnings
from typing import Literal

import numpy as np
import pandas as pd
import scanpy as sc
from anndata import AnnData
from scipy import sparse

from .. import _dask, _keys, _registry
from .._provenance import record
from .._validate import check_counts, lots_of

#: Rows per chunk of the chunked sparse kernels below (bounds their scratch memory).
_CHUNK_ROWS = 8192


@record("pp.preprocess")
def preprocess(
    adata: AnnData,
    *,
    counts_layer: str = _keys.COUNTS_LAYER,
    target_sum: float = 1e4,
    n_top_genes: int = 2000,
    hvg_flavor: Literal["seurat", "cell_ranger"] = "seurat",
    batch_key: str | None = None,
    n_comps: int = 30,
    random_state: int = 0,
    key_added: str = _registry.PREPROCESS.key,
    copy: bool = False,
) -> AnnData | None:
    """Standard reduction of pooled counts: normalise → log1p → HVG → PCA.

    Raw counts are kept in ``layers[counts_layer]`` (copied there from ``X`` if the layer is
    absent), so every later step (markers, mapping, pseudobulk) can return to them.

    Parameters
    ----------
    adata
        Cells with raw integer counts in ``layers[counts_layer]`` or in ``X``.
    counts_layer
        Layer that holds (or receives) the raw counts.
    target_sum
        Counts per cell after normalisation.
    n_top_genes
        Number of highly variable genes used for PCA (all genes if fewer exist).
    hvg_flavor
        scanpy's HVG flavour on log data.
    batch_key
        obs column (e.g. ``"lot"``) whose groups select HVGs separately, so that genes
        varying between lots only do not dominate.
    n_comps
        Number of principal components.
    random_state
        Seed of the (randomised) PCA solver.
    key_added
        ``adata.uns`` key of the parameters.
    copy
        Return a processed copy instead of working in place.

    Returns
    -------
    ``None``, or the copy when ``copy=True``. Writes log-normalised ``X``,
    ``layers[counts_layer]``, ``var['highly_variable']`` (with scanpy's ``means``,
    ``dispersions``, ``dispersions_norm``), ``var['pca_mean']`` (the centring used by the PCA,
    needed to project new cells), ``obsm['X_pca']``, ``varm['PCs']``, ``uns['pca']`` and
    ``uns[key_added]['params']``.

    Notes
    -----
    Out of core: with a Dask array of CSR blocks chunked along cells (e.g. from
    :func:`mscpotency.io.read_lots_lazy`) in ``X`` or the counts layer, ``X`` and the counts
    layer stay lazy Dask arrays, normalisation, ``log1p`` and HVG run block by block
    (scanpy's Dask support), and the PCA (scanpy's Dask ``covariance_eigh`` solver on
    densified float64 blocks) brings only ``obsm['X_pca']`` into memory; see
    ``docs/scale.md``.

    Memory: for CSR counts, ``X`` shares the sparsity structure (``indices``, ``indptr``)
    of ``layers[counts_layer]`` and holds only its own values, so the two cost 1.5x the
    counts instead of 2x; every value-level operation (scaling, ``log1p``, ``expm1``) is
    unaffected, but an in-place *structural* edit of one (e.g. ``X.eliminate_zeros()``)
    would reach the other: run ``adata.X = adata.X.copy()`` first. When the counts come in
    ``X`` they move to the layer without a copy. Highly variable genes (seurat flavour, no
    ``batch_key``) are computed in row chunks instead of on a full ``expm1`` copy.
    """
    if counts_layer in adata.layers:
        counts = adata.layers[counts_layer]
        check_counts(counts, where=f"layers[{counts_layer!r}]")
    else:
        counts = adata.X
        check_counts(counts, where="X (no counts layer yet)")
    if batch_key is not None:
        lots_of(adata, batch_key)
    if adata.n_obs < 3 or adata.n_vars < 3:
        msg = f"preprocess needs at least 3 cells and 3 genes, got {adata.shape}"
        raise ValueError(msg)
    lazy = _dask.is_dask(counts)
    if lazy:
        _dask.check_cell_chunks(counts, where="the count matrix")
    adata = adata.copy() if copy else adata
    if counts_layer not in adata.layers:
        # the counts move to the layer (no copy): X is rebuilt from them just below
        adata.layers[counts_layer] = adata.X
    adata.X = _float_values(adata.layers[counts_layer])
    if _is_csr(adata.X):
        _normalize_log1p_inplace(adata.X, target_sum)
    else:
        sc.pp.normalize_total(adata, target_sum=target_sum)
        sc.pp.log1p(adata)
    adata.uns.pop("log1p", None)
    adata.uns["log1p"] = {"base": None}
    n_top = min(n_top_genes, adata.n_vars)
    if hvg_flavor == "seurat" and batch_key is None and _is_csr(adata.X):
        _write_hvg(adata, _seurat_hvg(adata.X, n_top), hvg_flavor)
    else:
        sc.pp.highly_variable_genes(
            adata, n_top_genes=n_top, flavor=hvg_flavor, batch_key=batch_key
        )
    hvg = adata.var["highly_variable"].to_numpy()
    n_comps = min(n_comps, int(hvg.sum()) - 1, adata.n_obs - 1)
    mean = np.zeros(adata.n_vars)
    if lazy:
        mean[hvg] = _dask.pca(adata, n_comps, hvg)
    elif sparse.issparse(adata.X):
        mean[hvg] = _sparse_pca(adata, n_comps, hvg, random_state)
    else:
        sc.tl.pca(adata, n_comps=n_comps, mask_var="highly_variable", random_state=random_state)
        mean[hvg] = np.asarray(adata.X[:, hvg].mean(axis=0)).ravel()
    adata.var["pca_mean"] = mean
    adata.uns[key_added] = {
        "params": {
            "counts_layer": counts_layer,
            "target_sum": target_sum,
            "n_top_genes": n_top,
            "hvg_flavor": hvg_flavor,
            "batch_key": batch_key,
            "n_comps": n_comps,
            "random_state": random_state,
        }
    }
    return adata if copy else None


def _is_csr(X) -> bool:
    return sparse.issparse(X) and X.format == "csr"


def _float_values(counts):
    """A float32 copy of the counts' values to normalise in place.

    Canonical CSR counts without stored zeros give a CSR matrix that shares their
    ``indices``/``indptr`` (value operations only ever touch ``data``); anything else is
    copied whole; a Dask array gets a lazy float32 view.
    """
    if _dask.is_dask(counts):
        return _dask.as_float32(counts)
    if (
        _is_csr(counts)
        and counts.has_canonical_format
        and np.count_nonzero(counts.data) == counts.data.size
    ):
        data = counts.data.astype(np.float32, copy=True)
        return type(counts)((data, counts.indices, counts.indptr), shape=counts.shape, copy=False)
    return counts.astype(np.float32, copy=True)


def _normalize_log1p_inplace(X, target_sum: float) -> None:
    """``sc.pp.normalize_total`` then ``sc.pp.log1p`` on CSR ``X``, in row chunks, in place.

    scanpy's own call allocates two temporaries of the size of ``X.data`` (the repeated
    scale factors and the quotient); here scanpy's function runs on one chunk of rows at
    a time (rows are independent, ``target_sum`` is fixed), so the result is the same,
    bit for bit, with a scratch memory of one chunk.
    """
    for start in range(0, X.shape[0], _CHUNK_ROWS):
        stop = min(start + _CHUNK_ROWS, X.shape[0])
        lo, hi = int(X.indptr[start]), int(X.indptr[stop])
        chunk = sparse.csr_matrix(
            (X.data[lo:hi], X.indices[lo:hi], X.indptr[start : stop + 1] - lo),
            shape=(stop - start, X.shape[1]),
        )
        part = AnnData(X=chunk)
        sc.pp.normalize_total(part, target_sum=target_sum)
        np.log1p(part.X.data, out=X.data[lo:hi])


def _sparse_pca(adata: AnnData, n_comps: int, hvg: np.ndarray, random_state: int) -> np.ndarray:
    """``sc.tl.pca(adata, mask_var="highly_variable")`` for sparse ``X``, without its copies.

    The same estimator scanpy builds (scikit-learn ``PCA``, ARPACK on the implicitly
    centred sparse matrix, the same seed), so the same result; but scikit-learn's
    defensive copy of the input is skipped (``copy=False``: the sparse ARPACK path never
    writes to it) and an all-True mask is not applied by copying ``X``. Writes
    ``obsm['X_pca']``, ``varm['PCs']`` and ``uns['pca']`` as scanpy does, and returns the
    per-gene centring of the highly variable genes (the estimator's ``mean_``).
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
    adata.obsm["X_pca"] = x_pca
    loadings = np.zeros((adata.n_vars, n_comps))
    loadings[hvg] = pca.components_.T
    adata.varm["PCs"] = loadings
    adata.uns["pca"] = {
        "params": {"zero_center": True, "use_highly_variable": True, "mask_var": "highly_variable"},
        "variance": pca.explained_variance_,
        "variance_ratio": pca.explained_variance_ratio_,
    }
    return pca.mean_


def _seurat_mean_var(X) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene mean and unbiased variance of ``expm1(X)`` for CSR log data, in row chunks.

    The quantities of scanpy's ``highly_variable_genes(flavor="seurat")`` (which first
    copies the whole matrix and then makes a second, ``expm1``-transformed copy), with a
    scratch memory of one chunk: one pass accumulates per-gene sums and sums of squares
    in float64 (the values are non-negative and the variance is a sizeable part of the
    second moment here, so the one-pass formula loses nothing that matters).
    """
    n_obs, n_vars = X.shape
    sums = np.zeros(n_vars)
    squares = np.zeros(n_vars)
    for start in range(0, n_obs, _CHUNK_ROWS):
        lo, hi = int(X.indptr[start]), int(X.indptr[min(start + _CHUNK_ROWS, n_obs)])
        values = np.expm1(X.data[lo:hi]).astype(np.float64)
        columns = X.indices[lo:hi]
        sums += np.bincount(columns, weights=values, minlength=n_vars)
        squares += np.bincount(columns, weights=values * values, minlength=n_vars)
    mean = sums / n_obs
    var = np.maximum(squares / n_obs - mean**2, 0.0)
    if n_obs > 1:
        var *= n_obs / (n_obs - 1)
    return mean, var


def _seurat_hvg(X, n_top: int, n_bins: int = 20) -> pd.DataFrame:
    """Seurat-flavour HVG selection as scanpy makes it (``n_top_genes``, one batch), on chunked statistics."""
    mean, var = _seurat_mean_var(X)
    mean[mean == 0] = 1e-12
    dispersion = var / mean
    dispersion[dispersion == 0] = np.nan
    dispersion = np.log(dispersion)
    mean = np.log1p(mean)
    frame = pd.DataFrame({"means": mean, "dispersions": dispersion})
    frame["mean_bin"] = pd.cut(frame["means"], bins=n_bins)
    stats = frame.groupby("mean_bin", observed=True)["dispersions"].agg(avg="mean", dev="std")
    single = stats["dev"].isnull()  # a gene alone in its bin gets a normalised dispersion of 1
    stats.loc[single, "dev"] = stats.loc[single, "avg"]
    stats.loc[single, "avg"] = 0
    per_gene = stats.loc[frame["mean_bin"]].set_index(frame.index)
    frame["dispersions_norm"] = (frame["dispersions"] - per_gene["avg"]) / per_gene["dev"]
    norm = frame["dispersions_norm"].to_numpy()
    finite = np.sort(norm[~np.isnan(norm)])[::-1]
    if n_top > finite.size:
        warnings.warn(
            "`n_top_genes` > number of normalized dispersions, returning all genes with normalized dispersions.",
            UserWarning,
            stacklevel=4,
        )
        n_top = finite.size
    cutoff = finite[n_top - 1]
    frame["highly_variable"] = np.nan_to_num(norm, nan=-np.inf) >= cutoff
    return frame


def _write_hvg(adata: AnnData, frame: pd.DataFrame, flavor: str) -> None:
    """Write HVG results where ``sc.pp.highly_variable_genes`` writes them."""
    adata.uns["hvg"] = {"flavor": flavor}
    adata.var["highly_variable"] = frame["highly_variable"].to_numpy()
    adata.var["means"] = frame["means"].to_numpy()
    adata.var["dispersions"] = frame["dispersions"].to_numpy()
    adata.var["dispersions_norm"] = (
        frame["dispersions_norm"].to_numpy().astype(np.float32, copy=False)
    )
