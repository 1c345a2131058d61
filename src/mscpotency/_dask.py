"""Shared helpers of the out-of-core path: Dask-backed count matrices chunked along cells.

The public functions (``pp.qc``, ``pp.preprocess``, ``tl.*``) accept an AnnData whose ``X``
(and counts layer) is a :class:`dask.array.Array` of CSR blocks chunked along cells, e.g.
from :func:`mscpotency.io.read_lots_lazy`. The reader lives in :mod:`mscpotency.io._lazy`,
the Dask PCA in :mod:`mscpotency.pp._pca`; this module holds only the array helpers they
and the tools share. See ``docs/scale.md``.

Dask is an optional dependency (``pip install "mscpotency[dask]"``); nothing here imports
it unless a lazy array is met.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np


def is_dask(X: Any) -> bool:
    """Whether ``X`` is a Dask array (without importing Dask)."""
    return type(X).__module__.startswith("dask.") and hasattr(X, "chunks")


def require_dask():
    """``dask.array``, or an ImportError that says how to install it."""
    try:
        import dask.array as da
    except ImportError as error:  # pragma: no cover - exercised only without dask
        msg = (
            'the out-of-core path needs Dask: pip install "mscpotency[dask]" '
            '(or "dask[array,distributed]")'
        )
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


def subset_cells(X, keep: np.ndarray):
    """Rows ``keep`` (a boolean mask over all cells) of a cell-chunked Dask array, block by block.

    Each block keeps its own rows (its chunk shrinks, possibly to zero rows), so the result
    has the blocks of ``X``: Dask's own boolean indexing (``X[keep]``) rebalances the chunks
    with a shuffle, after which every block is read from two of the source's and every
    pass over the data reads it about twice (with worker processes, also sends it between
    them). Only the block's slice of the mask travels with its task.
    """
    da = require_dask()
    keep = np.asarray(keep, dtype=bool)
    if keep.shape != (X.shape[0],):
        msg = f"the cell mask must have one entry per row ({X.shape[0]}), got shape {keep.shape}"
        raise ValueError(msg)
    check_cell_chunks(X, where="the matrix to subset")
    mask = da.from_array(keep, chunks=(X.chunks[0],))
    bounds = np.cumsum((0, *X.chunks[0]))
    kept = tuple(int(keep[a:b].sum()) for a, b in itertools.pairwise(bounds))
    return da.blockwise(
        _rows_of_block,
        "ij",
        X,
        "ij",
        mask,
        "i",
        dtype=X.dtype,
        adjust_chunks={"i": kept},
        meta=X._meta,
    )


def _rows_of_block(block, mask: np.ndarray):
    return block[np.asarray(mask, dtype=bool)]
