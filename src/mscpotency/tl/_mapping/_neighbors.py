"""Nearest neighbours for mapping: exact (chunked brute force) by default, approximate at scale."""

from __future__ import annotations

import numba
import numpy as np

from ..._cell_stats import worker_threads

#: Above this many query x reference distance evaluations, ``method="auto"`` goes approximate.
#: The exact search evaluates about 5 x 10^8 30-dimensional distances a second on 2 cores
#: (10^5 x 10^5 cells: ~20 s); pynndescent's index build, search compilation and queries
#: cost more than that below this size.
EXACT_MAX_PAIRS = 20_000_000_000


def knn(
    data: np.ndarray,
    query: np.ndarray,
    k: int,
    *,
    exclude_self: bool = False,
    method: str = "auto",
    random_state: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest rows of ``data`` for every row of ``query`` (Euclidean).

    Parameters
    ----------
    data, query
        Points as rows.
    k
        Neighbours per query row (capped at the number of candidates).
    exclude_self
        ``query`` is ``data``: leave every point out of its own neighbours.
    method
        ``"exact"`` (brute force, deterministic), ``"approximate"`` (pynndescent) or
        ``"auto"`` (exact up to :data:`EXACT_MAX_PAIRS` distance evaluations).
    random_state
        Seed of the approximate index.

    Returns
    -------
    indices, distances
        ``(n_query, k)`` arrays, nearest first.
    """
    data = np.ascontiguousarray(data, dtype=np.float64)
    query = np.ascontiguousarray(query, dtype=np.float64)
    k = int(min(k, data.shape[0] - (1 if exclude_self else 0)))
    if k < 1:
        msg = "nearest neighbours need at least one candidate point"
        raise ValueError(msg)
    extra = 1 if exclude_self else 0
    if method == "auto":
        method = "exact" if data.shape[0] * query.shape[0] <= EXACT_MAX_PAIRS else "approximate"
    if method == "approximate":
        indices, distances = _approximate(data, query, k + extra, random_state)
    else:
        indices, distances = _exact(data, query, k + extra)
    if exclude_self:
        indices, distances = _drop_self(indices, distances)
    return indices[:, :k], distances[:, :k]


def _exact(data: np.ndarray, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute force: squared distances by matrix products (BLAS), the ``k`` smallest by a compiled scan.

    Queries and data are taken in blocks whose distance matrix stays in cache
    (``_QUERY_BLOCK`` x ``_DATA_BLOCK``); a compiled scan merges each block into every
    query's running ``k + _MARGIN`` smallest (from :data:`_SELECT_MIN_KEEP` of them, a
    block's full rows are kept instead and the smallest selected per row in linear time:
    the same candidates). Query blocks run in parallel threads (one
    BLAS thread each; the scan releases the GIL). The kept candidates' distances are then
    computed directly (no cancellation in ``|q|^2 + |r|^2 - 2 q.r``) and the ``k``
    nearest returned, ties by position. Exact and deterministic.
    """
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_limits

    n_data = data.shape[0]
    keep = min(k + _MARGIN, n_data)
    # candidates from single-precision products (twice the BLAS throughput); the margin and
    # the direct double-precision distances below make the final choice exact
    data32, query32 = data.astype(np.float32), query.astype(np.float32)
    data_norms = np.einsum("ij,ij->i", data32, data32)
    candidates = np.empty((query.shape[0], keep), dtype=np.int64)
    block = min(_DATA_BLOCK, n_data)

    select = keep >= _SELECT_MIN_KEEP and n_data <= _SELECT_MAX_DATA

    def nearest_of(start: int) -> None:
        chunk = query32[start : start + _QUERY_BLOCK]
        query_norms = np.einsum("ij,ij->i", chunk, chunk)
        best = np.full((chunk.shape[0], keep), np.inf, dtype=np.float32)
        where = np.full((chunk.shape[0], keep), -1, dtype=np.int64)
        products = np.empty((chunk.shape[0], block), dtype=np.float32)
        values = np.empty((chunk.shape[0], n_data), dtype=np.float32) if select else None
        for first in range(0, n_data, block):
            part = data32[first : first + block]
            out = products[:, : part.shape[0]]
            np.matmul(chunk, part.T, out=out)
            norms = data_norms[first : first + block]
            if select:
                _squared_distances(out, query_norms, norms, values[:, first : first + block])
            else:
                _merge_smallest(out, query_norms, norms, first, best, where)
        if select:
            _select_smallest(values, where)
        candidates[start : start + chunk.shape[0]] = where

    starts = range(0, query.shape[0], _QUERY_BLOCK)
    with (
        threadpool_limits(limits=1, user_api="blas"),
        ThreadPoolExecutor(max_workers=worker_threads()) as pool,
    ):
        list(pool.map(nearest_of, starts))
    # direct distances of the candidates, then the k nearest (stable: ties by position)
    distances = _direct_distances(query, data, candidates)
    order = np.lexsort((candidates, distances), axis=1)[:, :k]
    return np.take_along_axis(candidates, order, axis=1), np.take_along_axis(
        distances, order, axis=1
    )


#: Candidates kept beyond ``k`` before the direct distances decide (guards against rounding).
_MARGIN = 8
#: Query rows and data rows of one block of the distance matrix (2 MB of float64).
_QUERY_BLOCK = 256
_DATA_BLOCK = 1024


#: From this many candidates per query row, they are selected from each row's full list of
#: values (linear time) rather than merged block by block (an insertion costs ``keep``):
#: the anchor filter keeps 208 of every reference cell's distances to the query cells.
_SELECT_MIN_KEEP = 64
#: ... when a query block's full rows of values stay this small (256 x 65,536 x 4 bytes).
_SELECT_MAX_DATA = 65_536


@numba.njit(nogil=True, cache=True)
def _squared_distances(products, query_norms, data_norms, out):  # pragma: no cover - compiled
    """``out = |q|^2 + |r|^2 - 2 q.r``, the values :func:`_merge_smallest` forms."""
    for i in range(products.shape[0]):
        for j in range(products.shape[1]):
            out[i, j] = query_norms[i] + data_norms[j] - np.float32(2.0) * products[i, j]


@numba.njit(nogil=True, cache=True)
def _kth_smallest(values, kth):  # pragma: no cover - compiled
    """The ``kth`` smallest (0-based) of ``values`` (no NaN), which is reordered: quickselect."""
    low, high = 0, values.size - 1
    while high > low:
        middle = (low + high) // 2
        # median of three as the pivot
        a, b, c = values[low], values[middle], values[high]
        pivot = max(min(a, b), min(max(a, b), c))
        i, j = low, high
        while i <= j:
            while values[i] < pivot:
                i += 1
            while values[j] > pivot:
                j -= 1
            if i <= j:
                values[i], values[j] = values[j], values[i]
                i += 1
                j -= 1
        if kth <= j:
            high = j
        elif kth >= i:
            low = i
        else:
            return values[kth]
    return values[kth]


@numba.njit(nogil=True, cache=True)
def _kth_of_row(row, kth, scratch):  # pragma: no cover - compiled
    """The ``kth`` smallest of ``row`` (left as it is), by way of a sample's bound.

    A quickselect over the whole row is slow (its branches follow the data); so a bound
    is taken from an evenly spaced sample (a rank safely above ``kth``'s share of it), the
    values at or below it are counted in one branch-free pass and only those are
    selected from. When the bound holds fewer than ``kth + 1`` values, the whole row is.
    """
    n = row.size
    stride = n // _SAMPLE
    if stride < 4:
        scratch[:n] = row
        return _kth_smallest(scratch[:n], kth)
    sample = scratch[:_SAMPLE]
    for s in range(_SAMPLE):
        sample[s] = row[s * stride]
    rank = min(_SAMPLE - 1, (kth + 1) * _SAMPLE * 3 // (2 * n) + 8)
    bound = _kth_smallest(sample, rank)
    count = 0
    for j in range(n):
        count += row[j] <= bound
    if count <= kth:
        scratch[:n] = row
        return _kth_smallest(scratch[:n], kth)
    count = 0
    for j in range(n):
        if row[j] <= bound:
            scratch[count] = row[j]
            count += 1
    return _kth_smallest(scratch[:count], kth)


#: Values sampled from a row to bound its ``kth`` smallest (:func:`_kth_of_row`).
_SAMPLE = 256


@numba.njit(nogil=True, cache=True)
def _select_smallest(values, where):  # pragma: no cover - compiled
    """Each row's ``keep`` smallest values by ``(value, position)``: what a scan merging them keeps.

    The ``keep``-th smallest value is found by partition (linear time); every value below
    it is kept, and of the values equal to it, the first ones.
    """
    keep = where.shape[1]
    scratch = np.empty(values.shape[1], dtype=values.dtype)
    for i in range(values.shape[0]):
        row = values[i]
        threshold = _kth_of_row(row, keep - 1, scratch)
        count = 0
        for j in range(row.size):
            if row[j] < threshold:
                where[i, count] = j
                count += 1
        for j in range(row.size):
            if count == keep:
                break
            if row[j] == threshold:
                where[i, count] = j
                count += 1


@numba.njit(nogil=True, cache=True)
def _merge_smallest(
    products, query_norms, data_norms, offset, best, where
):  # pragma: no cover - compiled
    """Merge a block's ``|q|^2 + |r|^2 - 2 q.r`` into each row's running smallest (ties: first)."""
    keep = best.shape[1]
    for i in range(products.shape[0]):
        worst = best[i, keep - 1]
        for j in range(products.shape[1]):
            value = query_norms[i] + data_norms[j] - np.float32(2.0) * products[i, j]
            if value < worst:
                position = keep - 1
                while position > 0 and best[i, position - 1] > value:
                    best[i, position] = best[i, position - 1]
                    where[i, position] = where[i, position - 1]
                    position -= 1
                best[i, position] = value
                where[i, position] = offset + j
                worst = best[i, keep - 1]


@numba.njit(parallel=True, cache=True)
def _direct_distances_kernel(query, data, candidates, out):  # pragma: no cover - compiled
    for i in numba.prange(candidates.shape[0]):
        for c in range(candidates.shape[1]):
            j = candidates[i, c]
            total = 0.0
            for d in range(query.shape[1]):
                diff = query[i, d] - data[j, d]
                total += diff * diff
            out[i, c] = np.sqrt(total)


def _direct_distances(query: np.ndarray, data: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Euclidean distance of every query row to each of its candidate data rows."""
    distances = np.empty(candidates.shape)
    _direct_distances_kernel(query, data, candidates, distances)
    return distances


def _approximate(
    data: np.ndarray, query: np.ndarray, k: int, random_state: int
) -> tuple[np.ndarray, np.ndarray]:
    from pynndescent import NNDescent

    index = NNDescent(data, n_neighbors=max(k, 15), random_state=random_state, n_jobs=1)
    indices, distances = index.query(query, k=k)
    return indices.astype(np.int64), distances.astype(np.float64)


def _drop_self(
    indices: np.ndarray, distances: np.ndarray, own: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Each query row's neighbours without itself (``own``: its index in the data; its row)."""
    rows = np.arange(indices.shape[0]) if own is None else np.asarray(own)
    is_self = indices == rows[:, None]
    # where a point is not among its own candidates (exact duplicates), drop the last one instead
    missing = ~is_self.any(axis=1)
    is_self[missing, -1] = True
    keep = ~is_self
    width = indices.shape[1] - 1
    return indices[keep].reshape(-1, width), distances[keep].reshape(-1, width)
