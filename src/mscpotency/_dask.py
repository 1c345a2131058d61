"""The out-of-core path: Dask-backed AnnData through QC, normalisation, HVG and PCA.

The public functions (``pp.qc``, ``pp.preprocess``, ``tl.*``) accept an AnnData whose ``X``
(and counts layer) is a :class:`dask.array.Array` of CSR blocks chunked along cells, e.g.
from :func:`read_lots_lazy`. Per-cell and per-gene statistics, normalisation, ``log1p``,
highly variable genes and the PCA run block by block through Dask (scanpy's own Dask
support, as far as it goes); the PCA coordinates come back in memory, and everything
after (neighbours, Leiden, lot-level statistics) runs on them as usual. See
``docs/scale.md``.

Dask is an optional dependency (``pip install "mscpotency[dask]"``); nothing here is
imported unless a lazy array is met.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from . import _keys
from ._provenance import record

#: Cells per block when reading lots lazily.
DEFAULT_CHUNK_CELLS = 10_000


def is_dask(X: Any) -> bool:
    """Whether ``X`` is a Dask array (without importing Dask)."""
    return type(X).__module__.startswith("dask.") and hasattr(X, "chunks")


def require_dask():
    """``dask.array``, or an ImportError that says how to install it."""
    try:
        import dask.array as da
    except ImportError as error:  # pragma: no cover - exercised only without dask
        msg = 'the out-of-core path needs Dask: pip install "mscpotency[dask]" (or "dask[array,distributed]")'
        raise ImportError(msg) from error
    return da


def check_cell_chunks(X, *, where: str) -> None:
    """Dask arrays must be chunked along cells only (one block spans every gene)."""
    if len(X.chunks[1]) != 1:
        msg = (
            f"{where} is a Dask array chunked along genes too (chunks {X.chunksize}); the "
            "out-of-core path needs blocks of whole cells: X = X.rechunk((n_cells_per_block, -1))."
        )
        raise ValueError(msg)


def as_float32(X):
    """Lazy float32 values (the counts stay as they are)."""
    return X.map_blocks(lambda b: b.astype(np.float32), dtype=np.float32)


def _dense_float64(block) -> np.ndarray:
    return (
        block.toarray().astype(np.float64)
        if sparse.issparse(block)
        else np.asarray(block, dtype=np.float64)
    )


def pca(adata: AnnData, n_comps: int, hvg: np.ndarray) -> np.ndarray:
    """PCA of the highly variable genes of a Dask-backed ``X``; writes what ``sc.tl.pca`` writes.

    scanpy's Dask PCA (``svd_solver="covariance_eigh"``: one pass accumulates the gene x
    gene covariance, an eigendecomposition in memory, a second pass projects the cells).
    Blocks are densified to float64 first: on Dask, scanpy forms each block's Gram matrix
    with a sparse-sparse product, which is slow for scRNA-seq densities, and float64
    keeps the covariance exact enough to match the in-memory ARPACK result. Components
    get scikit-learn's sign convention (largest loading positive) so both paths give the
    same coordinates. Returns the per-gene centring of the highly variable genes.
    """
    import dask
    import scanpy as sc

    check_cell_chunks(adata.X, where="X")
    X = adata.X[:, hvg] if not hvg.all() else adata.X
    dense = X.map_blocks(_dense_float64, dtype=np.float64, meta=np.empty((0, 0), dtype=np.float64))
    x_pca, components, ratio, variance = sc.pp.pca(
        dense, n_comps=n_comps, svd_solver="covariance_eigh", return_info=True
    )
    x_pca, mean = dask.compute(x_pca, dense.mean(axis=0))
    signs = np.sign(
        components[np.arange(components.shape[0]), np.argmax(np.abs(components), axis=1)]
    )
    signs[signs == 0] = 1.0
    components = components * signs[:, None]
    adata.obsm["X_pca"] = (np.asarray(x_pca) * signs[None, :]).astype(np.float32)
    loadings = np.zeros((adata.n_vars, n_comps))
    loadings[hvg] = components.T
    adata.varm["PCs"] = loadings
    adata.uns["pca"] = {
        "params": {
            "zero_center": True,
            "use_highly_variable": True,
            "mask_var": "highly_variable",
            "svd_solver": "covariance_eigh",
        },
        "variance": np.asarray(variance),
        "variance_ratio": np.asarray(ratio),
    }
    return np.asarray(mean, dtype=np.float64)


@record("io.read_lots_lazy")
def read_lots_lazy(
    source: str | os.PathLike | Mapping[str, str | os.PathLike],
    *,
    lot_key: str = _keys.LOT,
    chunk_cells: int = DEFAULT_CHUNK_CELLS,
) -> AnnData:
    """Open per-lot ``.h5ad`` files lazily as one Dask-backed AnnData, chunked along cells.

    Only the cell and gene annotations are read; the counts stay on disk and are read
    block by block (``anndata.experimental.read_elem_lazy``) when a computation needs
    them, so the pooled matrix may be larger than memory. Pass the result to
    :func:`mscpotency.pp.qc` and :func:`mscpotency.pp.preprocess` as usual (see
    ``docs/scale.md``).

    Parameters
    ----------
    source
        A folder of ``.h5ad`` files, one per lot (the lot is named after the file without
        its extension; hidden files are skipped), or a mapping lot name -> path.
    lot_key
        obs column written with the lot of each cell.
    chunk_cells
        Cells per Dask block (a lot smaller than this is one block).

    Returns
    -------
    AnnData with ``X`` a Dask array of CSR blocks (the raw counts: each file's
    ``layers['counts']`` if it has one, else its ``X``), cell names ``{lot}_{cell}``, and

    `adata.obs[lot_key]` : categorical
        The lot of each cell, lots in the order read (a folder: sorted by name).
    `adata.uns['read_lots_lazy']` : dict
        ``'sources'`` (lot -> path), ``'count_source'`` (lot -> ``'X'`` or
        ``"layers['counts']"``), ``'params'``.
    """
    import h5py
    from anndata.experimental import read_elem_lazy
    from anndata.io import read_elem

    da = require_dask()
    if (
        not isinstance(chunk_cells, (int, np.integer))
        or isinstance(chunk_cells, bool)
        or chunk_cells < 1
    ):
        msg = f"chunk_cells must be a positive integer, got {chunk_cells!r}"
        raise ValueError(msg)
    lots = _lazy_sources(source)
    blocks, obs_parts, count_source = [], [], {}
    var_names: pd.Index | None = None
    var: pd.DataFrame | None = None
    first_lot = None
    for lot, path in lots.items():
        # the lazy blocks reopen the file by path when they are computed
        with h5py.File(path, "r") as handle:
            obs = read_elem(handle["obs"])
            lot_var = read_elem(handle["var"])
            key = (
                "layers/counts"
                if "layers" in handle and _keys.COUNTS_LAYER in handle["layers"]
                else "X"
            )
            element = handle[key]
            encoding = element.attrs.get("encoding-type", "a dense array")
            if isinstance(element, h5py.Dataset) or encoding != "csr_matrix":
                msg = (
                    f"lot {lot!r} ({str(path)!r}): {key} is stored as {encoding!r}; the lazy reader "
                    "needs CSR (write it with adata.X = scipy.sparse.csr_matrix(adata.X)) or use `io.read_lots`."
                )
                raise ValueError(msg)
            n_cells, n_genes = len(obs), len(lot_var)
            if n_cells == 0:
                msg = f"lot {lot!r} ({str(path)!r}) has no cells; remove it."
                raise ValueError(msg)
            if var_names is None:
                var_names, var, first_lot = lot_var.index, lot_var, lot
            elif not lot_var.index.equals(var_names):
                msg = (
                    f"lot {lot!r} has other genes (or another gene order) than lot {first_lot!r}: the "
                    "lazy reader needs one gene list; harmonise the files or use `io.read_lots` (join=)."
                )
                raise ValueError(msg)
            blocks.append(read_elem_lazy(element, chunks=(min(chunk_cells, n_cells), n_genes)))
        obs = obs.copy()
        obs.index = pd.Index([f"{lot}_{cell}" for cell in obs.index])
        obs[lot_key] = lot
        obs_parts.append(obs)
        count_source[lot] = "X" if key == "X" else f"layers[{_keys.COUNTS_LAYER!r}]"
    obs = pd.concat(obs_parts)
    obs[lot_key] = pd.Categorical(obs[lot_key], categories=list(lots))
    for column in obs.columns:
        if column != lot_key and obs[column].dtype == object:
            obs[column] = obs[column].astype("category")
    if not obs.index.is_unique:
        duplicated = obs.index[obs.index.duplicated()].unique()[:5].tolist()
        msg = f"cell names repeat within a lot (e.g. {duplicated}); make them unique in the files."
        raise ValueError(msg)
    X = da.concatenate(blocks, axis=0)
    adata = AnnData(X=X, obs=obs, var=pd.DataFrame(index=var.index.copy()))
    adata.uns["read_lots_lazy"] = {
        "sources": {lot: str(path) for lot, path in lots.items()},
        "count_source": count_source,
        "params": {"lot_key": lot_key, "chunk_cells": int(chunk_cells)},
    }
    return adata


def _lazy_sources(source) -> dict[str, Path]:
    if isinstance(source, Mapping):
        if not source:
            msg = "the mapping lot name -> path is empty; give at least one lot."
            raise ValueError(msg)
        lots = {str(lot): Path(path) for lot, path in source.items()}
    else:
        folder = Path(source)
        if not folder.is_dir():
            msg = f"{str(folder)!r} is not a folder of per-lot .h5ad files; pass the folder or a mapping lot -> path."
            raise ValueError(msg)
        lots = {p.stem: p for p in sorted(folder.glob("*.h5ad")) if not p.name.startswith(".")}
        if not lots:
            msg = f"folder {str(folder)!r} holds no .h5ad files (one per lot is expected)."
            raise ValueError(msg)
    for lot, path in lots.items():
        if not path.is_file():
            msg = f"lot {lot!r}: {str(path)!r} does not exist."
            raise FileNotFoundError(msg)
        if path.suffix != ".h5ad":
            msg = f"lot {lot!r}: {str(path)!r} is not an .h5ad file; the lazy reader reads .h5ad only."
            raise ValueError(msg)
    return lots
