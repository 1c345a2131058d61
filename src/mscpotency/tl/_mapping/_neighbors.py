"""Nearest neighbours for mapping: exact (chunked brute force) by default, approximate at scale.

The approximate search is an inverted file (each query row compares itself with the
points of its nearest data clusters only), deterministic and in numpy/numba.
"""

from __future__ import annotations

import functools

import numba
import numpy as np
from scipy import sparse

from ..._cell_stats import worker_threads

#: Above this many query x reference distance evaluations, ``method="auto"`` goes approximate.
#: The exact search evaluates about 4 x 10^8 30-dimensional distances a CPU second (10^5 x
#: 10^5 cells: ~23 CPU s); the approximate one compares each query cell with ~10% of the
#: data and cost ~6 CPU s there (recall@30 0.99 on a 10^5-cell reference). Backends that
#: run many searches per call set their own, lower limit (``_anchors.EXACT_MAX_PAIRS``).
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
        ``"exact"`` (brute force), ``"approximate"`` (the data clusters nearest each query
        row only: :func:`_probed_candidates`) or ``"auto"`` (exact up to
        :data:`EXACT_MAX_PAIRS` distance evaluations). Both are deterministic.
    random_state
        Seed of the approximate search's clusters (the rows they start from).

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
        indices, distances = _probed(data, query, k + extra, random_state)
    else:
        indices, distances = _exact(data, query, k + extra)
    if exclude_self:
        indices, distances = _drop_self(indices, distances)
    return indices[:, :k], distances[:, :k]


def _exact(data: np.ndarray, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute force: every query row's candidates over all data rows (:func:`_brute_candidates`).

    Exact and deterministic: see :func:`_nearest_candidates`.
    """
    keep = min(k + _MARGIN, data.shape[0])
    candidates = _brute_candidates(data.astype(np.float32), query.astype(np.float32), keep)
    return _nearest_candidates(data, query, candidates, k)


def _probed(
    data: np.ndarray, query: np.ndarray, k: int, random_state: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Approximate: candidates from each query row's nearest data clusters (:func:`_probed_candidates`).

    Deterministic (the clusters start from rows drawn with ``random_state``); the distances returned
    are exact, the neighbours those found among the probed clusters' points.
    """
    keep = min(k + _MARGIN, data.shape[0])
    candidates = _probed_candidates(
        data.astype(np.float32), query.astype(np.float32), keep, random_state
    )
    return _nearest_candidates(data, query, candidates, k)


def _nearest_candidates(
    data: np.ndarray, query: np.ndarray, candidates: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest of each row's candidates by direct distances, ties by position.

    The candidates are each row's ``k + _MARGIN`` smallest single-precision
    ``|q|^2 + |r|^2 - 2 q.r`` (twice the BLAS throughput), by (value, position); the margin
    and the direct double-precision distances (no cancellation) make the final choice exact.
    """
    distances = _direct_distances(query, data, candidates)
    order = np.lexsort((candidates, distances), axis=1)[:, :k]
    return np.take_along_axis(candidates, order, axis=1), np.take_along_axis(
        distances, order, axis=1
    )


def _in_threads(work, starts) -> None:
    """``work(start)`` for every start, in parallel threads (one BLAS thread each)."""
    from concurrent.futures import ThreadPoolExecutor

    with (
        _blas_controller().limit(limits=1, user_api="blas"),
        ThreadPoolExecutor(max_workers=worker_threads()) as pool,
    ):
        list(pool.map(work, starts))


@functools.cache
def _blas_controller():
    """One ``threadpoolctl`` controller for the process, built at the first search.

    Building one scans every loaded library: ~25 ms a search in a mapping process, ~1.3 s
    of a 10^5 x 10^5 call.
    """
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def _brute_candidates(data32: np.ndarray, query32: np.ndarray, keep: int) -> np.ndarray:
    """Each query row's ``keep`` smallest values over every data row (brute force).

    Queries and data are taken in blocks whose distance matrix stays in cache
    (``_QUERY_BLOCK`` x ``_DATA_BLOCK``); a compiled scan merges each block into every
    query's running ``keep`` smallest (from :data:`_SELECT_MIN_KEEP` of them, a block's
    full rows are kept instead and the smallest selected per row in linear time: the same
    candidates). Query blocks run in parallel threads; the scan releases the GIL.
    """
    n_data = data32.shape[0]
    data_norms = np.einsum("ij,ij->i", data32, data32)
    candidates = np.empty((query32.shape[0], keep), dtype=np.int64)
    block = min(_DATA_BLOCK, n_data)
    select = keep >= _SELECT_MIN_KEEP and n_data <= _SELECT_MAX_DATA

    def nearest_of(start: int) -> None:
        chunk = query32[start : start + _QUERY_BLOCK]
        query_norms = np.einsum("ij,ij->i", chunk, chunk)
        best = np.full((chunk.shape[0], keep), np.inf, dtype=np.float32)
        where = np.full((chunk.shape[0], keep), -1, dtype=np.int64)
        products = np.empty((chunk.shape[0], block), dtype=np.float32)
        values = np.empty((chunk.shape[0], n_data), dtype=np.float32) if select else None
        every = np.arange(chunk.shape[0])
        for first in range(0, n_data, block):
            part = data32[first : first + block]
            out = products[:, : part.shape[0]]
            np.matmul(chunk, part.T, out=out)
            norms = data_norms[first : first + block]
            if select:
                _squared_distances(out, query_norms, norms, values[:, first : first + block])
            else:
                ids = np.arange(first, first + part.shape[0])
                _heap_smallest(out, query_norms, norms, ids, every, best, where)
        if select:
            _select_smallest(values, where)
        candidates[start : start + chunk.shape[0]] = where

    _in_threads(nearest_of, range(0, query32.shape[0], _QUERY_BLOCK))
    return candidates


def _probed_candidates(
    data32: np.ndarray, query32: np.ndarray, keep: int, random_state: int = 0
) -> np.ndarray:
    """Each query row's ``keep`` smallest values over the data clusters nearest it (approximate).

    An inverted-file search: the data are partitioned into clusters (:func:`_partition`);
    each query row compares itself with the points of its :data:`_PROBE_SHARE` nearest
    clusters by centre only. The rows, ordered by their nearest centre, are taken in parts
    (run in parallel threads); a part visits the clusters nearest its own mean first, each
    with all the part's rows probing it (one matrix product), so a row's running smallest
    fill with near values early and later values rarely enter. A row keeps its smallest by
    (value, data row) in a max-heap (:func:`_heap_smallest`), whatever order the clusters
    come in, so the result depends on neither the order nor the threads. Rows whose probed clusters hold fewer than ``keep``
    points are searched by brute force.
    """
    centres, order, bounds = _partition(data32, random_state)
    n_clusters, n_query = centres.shape[0], query32.shape[0]
    n_probe = min(n_clusters, int(np.ceil(_PROBE_SHARE * n_clusters)))
    probes = _nearest_centres(query32, centres, n_probe)
    by_centre = np.argsort(_nearest_centres(query32, centres, 1), kind="stable")
    sorted_query, probes = query32[by_centre], probes[by_centre]
    # the (sorted) rows probing each cluster, ascending
    starts, pairs = _grouped_positions(probes.ravel(), n_clusters)
    probing = pairs // n_probe
    members = data32[order]
    member_norms = np.einsum("ij,ij->i", members, members)
    query_norms = np.einsum("ij,ij->i", sorted_query, sorted_query)
    best = np.full((n_query, keep), np.inf, dtype=np.float32)
    where = np.full((n_query, keep), -1, dtype=np.int64)
    step = max(1, min(_PART_ROWS, -(-n_query // worker_threads())))

    def visit(low: int) -> None:
        mean = sorted_query[low : low + step].mean(axis=0, keepdims=True)
        for cluster in _nearest_centres(mean, centres, n_clusters, ordered=True)[0]:
            rows = probing[starts[cluster] : starts[cluster + 1]]
            rows = rows[np.searchsorted(rows, low) : np.searchsorted(rows, low + step)]
            first, last = bounds[cluster], bounds[cluster + 1]
            if rows.size == 0 or first == last:
                continue
            products = sorted_query[rows] @ members[first:last].T
            _heap_smallest(
                products,
                query_norms[rows],
                member_norms[first:last],
                order[first:last],
                rows,
                best,
                where,
            )

    _in_threads(visit, range(0, n_query, step))
    candidates = np.empty_like(where)
    candidates[by_centre] = where
    short = np.flatnonzero((candidates < 0).any(axis=1))
    if short.size:
        candidates[short] = _brute_candidates(data32, query32[short], keep)
    return candidates


def _grouped_positions(values: np.ndarray, n_values: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions of ``values`` (integers ``0 .. n_values - 1``) grouped by value, in order.

    ``np.argsort(values, kind="stable")`` and where each value's positions start
    (``n_values + 1`` bounds), by a counting sort: linear time where the sort of the
    approximate search's probes (10^5 rows x 63 clusters) took ~0.5 s.
    """
    starts = np.zeros(n_values + 1, dtype=np.int64)
    np.cumsum(np.bincount(values, minlength=n_values), out=starts[1:])
    return starts, _counting_order(np.ascontiguousarray(values, dtype=np.int64), starts)


@numba.njit(cache=True)
def _counting_order(values, starts):  # pragma: no cover - compiled
    """Each value's positions, in order, placed from its start on."""
    filled = starts[:-1].copy()
    order = np.empty(values.size, dtype=np.int64)
    for i in range(values.size):
        order[filled[values[i]]] = i
        filled[values[i]] += 1
    return order


def _nearest_centres(
    points: np.ndarray, centres: np.ndarray, n: int, *, ordered: bool = False
) -> np.ndarray:
    """The ``n`` nearest centres of every point (``n = 1``: a vector), in row chunks.

    Ranked by ``|c|^2 - 2 p.c`` in single precision (the point's own norm ranks nothing);
    in any order, or nearest first when ``ordered``.
    """
    centres32 = centres.astype(np.float32)
    norms = np.einsum("ij,ij->i", centres32, centres32)
    out = np.empty((points.shape[0], n) if n > 1 else points.shape[0], dtype=np.int64)
    for start in range(0, points.shape[0], 8192):
        ranked = norms - 2.0 * (points[start : start + 8192] @ centres32.T)
        if n == 1:
            out[start : start + 8192] = ranked.argmin(axis=1)
        elif ordered:
            out[start : start + 8192] = np.argsort(ranked, axis=1, kind="stable")[:, :n]
        elif n < centres.shape[0]:
            out[start : start + 8192] = np.argpartition(ranked, n - 1, axis=1)[:, :n]
        else:
            out[start : start + 8192] = np.arange(n)
    return out


def _partition(
    data32: np.ndarray, random_state: int = 0, n_iterations: int = 4
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clusters of the data rows by a few k-means steps from rows drawn with ``random_state``.

    About ``sqrt(n)`` clusters. Returns the centres, the data rows ordered by cluster and
    where each cluster starts in that order (``n_clusters + 1`` bounds).
    """
    n = data32.shape[0]
    n_clusters = max(1, int(np.sqrt(n)))
    start = np.sort(np.random.default_rng(random_state).choice(n, n_clusters, replace=False))
    centres = data32[start].astype(np.float64)
    for _ in range(n_iterations + 1):
        label = _nearest_centres(data32, centres, 1)
        counts = np.bincount(label, minlength=n_clusters)
        one_hot = sparse.csr_matrix(
            (np.ones(n), (label, np.arange(n))), shape=(n_clusters, n), dtype=np.float64
        )
        sums = one_hot @ data32.astype(np.float64)
        filled = counts > 0
        centres[filled] = sums[filled] / counts[filled, None]
    order = np.argsort(label, kind="stable")
    return centres, order, np.concatenate([[0], np.cumsum(counts)])


#: Share of the data clusters each query row compares itself with (approximate search).
_PROBE_SHARE = 0.2
#: Query rows per part of the approximate search (rows near one another, ordered by centre).
_PART_ROWS = 2048


#: Candidates kept beyond ``k`` before the direct distances decide (guards against rounding).
_MARGIN = 8
#: Query rows and data rows of one block of the distance matrix (2 MB of float64).
_QUERY_BLOCK = 256
_DATA_BLOCK = 1024


#: From this many candidates per query row, they are selected from each row's full list of
#: values (linear time) rather than merged into a heap block by block:
#: the anchor filter keeps 208 of every reference cell's distances to the query cells.
_SELECT_MIN_KEEP = 64
#: ... when a query block's full rows of values stay this small (256 x 65,536 x 4 bytes).
_SELECT_MAX_DATA = 65_536


@numba.njit(nogil=True, cache=True)
def _squared_distances(products, query_norms, data_norms, out):  # pragma: no cover - compiled
    """``out = |q|^2 + |r|^2 - 2 q.r``, the values :func:`_heap_smallest` forms."""
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
def _heap_smallest(
    products, query_norms, data_norms, ids, rows, best, where
):  # pragma: no cover - compiled
    """Merge a block's ``|q|^2 + |r|^2 - 2 q.r`` into each row's running smallest.

    Row ``i`` of the block is row ``rows[i]`` of ``best`` and ``where``; column ``j`` is
    data row ``ids[j]``. Each row keeps its smallest by (value, data row) in a max-heap,
    whatever order the blocks come in: the root is the row's largest kept pair, and a
    smaller pair replaces it and sinks, ``O(log keep)`` where a sorted insertion shifts up to
    ``keep`` entries.
    """
    keep = best.shape[1]
    values = np.empty(products.shape[1], dtype=products.dtype)
    for i in range(products.shape[0]):
        row = rows[i]
        for j in range(products.shape[1]):  # vectorised; the scan below mostly compares
            values[j] = query_norms[i] + data_norms[j] - np.float32(2.0) * products[i, j]
        for j in range(products.shape[1]):
            value, cell = values[j], ids[j]
            root, root_cell = best[row, 0], where[row, 0]
            if value > root or (value == root and cell >= root_cell >= 0):
                continue
            position = 0
            while True:  # sink the new pair from the root
                child = 2 * position + 1
                if child >= keep:
                    break
                other = child + 1
                if other < keep and (
                    best[row, other] > best[row, child]
                    or (
                        best[row, other] == best[row, child]
                        and where[row, other] > where[row, child]
                    )
                ):
                    child = other
                if best[row, child] > value or (
                    best[row, child] == value and where[row, child] > cell
                ):
                    best[row, position] = best[row, child]
                    where[row, position] = where[row, child]
                    position = child
                else:
                    break
            best[row, position] = value
            where[row, position] = cell


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
