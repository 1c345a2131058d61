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
