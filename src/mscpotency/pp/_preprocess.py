"""Normalise, log-transform, select highly variable genes and reduce with PCA."""

from __future__ import annotations

from typing import Literal

import numpy as np
import scanpy as sc
from anndata import AnnData
from scipy import sparse

from .. import _keys
from .._provenance import record
from .._validate import check_counts, lots_of


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
    key_added: str = _keys.PREPROCESS,
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
    ``layers[counts_layer]``, ``var['highly_variable']``, ``var['pca_mean']`` (the centring
    used by the PCA, needed to project new cells), ``obsm['X_pca']``, ``varm['PCs']``,
    ``uns['pca']`` and ``uns[key_added]['params']``.
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
    adata = adata.copy() if copy else adata
    if counts_layer not in adata.layers:
        adata.layers[counts_layer] = adata.X.copy()
    adata.X = adata.layers[counts_layer].astype(np.float32, copy=True)
    sc.pp.normalize_total(adata, target_sum=target_sum)
    sc.pp.log1p(adata)
    adata.uns.pop("log1p", None)
    adata.uns["log1p"] = {"base": None}
    n_top = min(n_top_genes, adata.n_vars)
    sc.pp.highly_variable_genes(adata, n_top_genes=n_top, flavor=hvg_flavor, batch_key=batch_key)
    n_comps = min(n_comps, int(adata.var["highly_variable"].sum()) - 1, adata.n_obs - 1)
    sc.tl.pca(adata, n_comps=n_comps, mask_var="highly_variable", random_state=random_state)
    hvg = adata.var["highly_variable"].to_numpy()
    mean = np.zeros(adata.n_vars)
    X_hvg = adata.X[:, hvg]
    mean[hvg] = np.asarray(X_hvg.mean(axis=0)).ravel() if sparse.issparse(X_hvg) else X_hvg.mean(axis=0)
    adata.var["pca_mean"] = mean
    adata.uns[key_added] = {
        "params": {
            "counts_layer": counts_layer, "target_sum": target_sum, "n_top_genes": n_top,
            "hvg_flavor": hvg_flavor, "batch_key": batch_key, "n_comps": n_comps,
            "random_state": random_state,
        }
    }
    return adata if copy else None
