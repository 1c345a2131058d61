"""Cell-level statistics of a cells x genes matrix in bounded memory (no AnnData).

The kernels behind :func:`mscpotency.tl.potency_markers` and the in-memory QC metrics.
Every function walks the matrix in row blocks, so its scratch memory is one block, not one
matrix, and takes the same three kinds of input: a CSR matrix (or any scipy sparse
matrix), a dense array, or a :class:`dask.array.Array` of row blocks (the out-of-core path:
each block is a Dask task, and only per-gene results come back).

- :func:`group_moments`: per group of cells and per gene, the sum, the sum of squares and
  the number of non-zero values, in one pass (group means, variances, detection rates;
  groups can be as fine as lot x cluster).
- :func:`rank_sum_z`: the Wilcoxon rank-sum z of one group of cells against the others,
  per gene, exactly as ``scanpy.tl.rank_genes_groups(method="wilcoxon")`` computes it
  (average ranks for ties, no tie correction of the variance), without ranking the whole
  matrix: see the function's notes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numba
import numpy as np
from scipy import sparse

from . import _dask
from ._memory import release_freed_memory

#: Stored entries per row chunk of the in-memory walks (bounds their scratch memory:
#: about 40 bytes per entry, i.e. ~80 MB).
CHUNK_ENTRIES = 1 << 21
#: Cap on the stored entries of the smaller group held sorted at once by :func:`rank_sum_z`
#: (genes are processed in as many passes as needed); in memory, also at most an eighth of
#: the matrix's entries, so the scratch stays a fraction of the matrix.
SORTED_ENTRIES = 1 << 26
#: Stored entries per row chunk of the side :func:`rank_sum_z` streams against the sorted
#: one (on Dask, blocks are stacked into tasks of about as many): each chunk walks the
#: sorted side once, a cost that does not shrink with the chunk (at 10^6 cells, one walk
#: per 1,500-cell block took most of the markers step).
STREAM_ENTRIES = 1 << 23


# --------------------------------------------------------------------------------------
# walking a matrix in row blocks
# --------------------------------------------------------------------------------------
def _as_csr(block) -> sparse.csr_matrix:
    if sparse.issparse(block):
        return block if block.format == "csr" else sparse.csr_matrix(block)
    return sparse.csr_matrix(np.asarray(block))


def _row_chunks(X, max_entries: int) -> Iterator[tuple[int, int]]:
    """Row ranges of an in-memory matrix holding at most ``max_entries`` stored entries each."""
    n_obs = X.shape[0]
    if sparse.issparse(X) and X.format == "csr":
        targets = np.arange(max_entries, int(X.indptr[-1]), max_entries)
        cuts = np.unique(np.searchsorted(X.indptr, targets, side="right") - 1)
        edges = np.unique(np.r_[0, cuts, n_obs])
    else:
        step = max(1, max_entries // max(1, X.shape[1]))
        edges = np.r_[np.arange(0, n_obs, step), n_obs]
    if n_obs == 0:
        yield 0, 0
    for start, stop in pairwise(edges):
        if stop > start:
            yield int(start), int(stop)


def _row_block(X, start: int, stop: int) -> sparse.csr_matrix:
    """Rows ``start:stop`` as CSR; a view of the arrays of a CSR ``X`` (no copy)."""
    if sparse.issparse(X) and X.format == "csr":
        lo, hi = int(X.indptr[start]), int(X.indptr[stop])
        return sparse.csr_matrix(
            (X.data[lo:hi], X.indices[lo:hi], X.indptr[start : stop + 1] - lo),
            shape=(stop - start, X.shape[1]),
        )
    return _as_csr(X[start:stop])


def _add(a, b):
    if isinstance(a, tuple):
        return tuple(x + y for x, y in zip(a, b, strict=True))
    return a + b


def worker_threads() -> int:
    """Threads for in-memory compiled work (row-chunk walks, the blocked exact kNN).

    numba's setting: ``NUMBA_NUM_THREADS``, all cores by default.
    """
    return max(1, int(numba.config.NUMBA_NUM_THREADS))


def _chunk_results(
    block, func: Callable, row_args: tuple, shared: Any, max_entries: int, threads: int
):
    """``func`` on every row chunk of an in-memory block, in row order; chunks run in ``threads`` threads.

    The kernels release the GIL, so threads run them in parallel; results come back in
    row order whatever the threads do, so sums are added in one fixed order (identical
    results on every run).
    """

    def call(bounds):
        start, stop = bounds
        return func(_row_block(block, start, stop), *(a[start:stop] for a in row_args), shared)

    chunks = list(_row_chunks(block, max_entries))
    if threads <= 1 or len(chunks) <= 1:
        yield from map(call, chunks)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=threads) as pool:
        # at most 2 x threads chunks in flight, so memory stays a few chunks
        pending = [pool.submit(call, c) for c in chunks[: 2 * threads]]
        for i in range(len(chunks)):
            result = pending[i].result()
            pending[i] = None
            if i + 2 * threads < len(chunks):
                pending.append(pool.submit(call, chunks[i + 2 * threads]))
            yield result


def _sum_in_memory(
    block, func: Callable, row_args: tuple, shared: Any, max_entries: int, threads: int = 1
):
    """``func(rows, *row_args_of_rows, shared)`` summed over row chunks of one in-memory block."""
    total = None
    for part in _chunk_results(block, func, row_args, shared, max_entries, threads):
        total = part if total is None else _add(total, part)
    return total


def _shared_for_dask(value: Any):
    """``value`` once in the task graph: scattered to the workers when a distributed client runs."""
    import dask

    try:
        from distributed import default_client

        client = default_client()
    except (ImportError, ValueError):
        return dask.delayed(value, pure=True)
    return client.scatter(value, broadcast=True, hash=False)


def reduce_rows(
    X,
    func: Callable,
    *,
    row_args: tuple = (),
    shared: Any = None,
    max_entries: int | None = None,
    rows_per_task: int | None = None,
):
    """Sum of ``func(csr_rows, *row_args[rows], shared)`` over the row blocks of ``X``.

    ``func`` returns an array or a tuple of arrays (summed elementwise). ``row_args`` are
    per-cell arrays sliced like the rows; ``shared`` is passed whole (on Dask it enters the
    graph once, or is broadcast when a distributed client runs). On Dask, each block is
    one task (itself walked in row chunks) and partial results are added pairwise, so at
    most a few of them are alive at once; in memory, row chunks run in parallel threads
    (:func:`worker_threads`). ``max_entries``: stored entries per row chunk (default
    :data:`CHUNK_ENTRIES`). ``rows_per_task``: on Dask, consecutive blocks are taken
    together into tasks of about this many rows (never splitting a block), for work
    whose cost per chunk has a large fixed part (default: one block per task).
    """
    max_entries = CHUNK_ENTRIES if max_entries is None else max_entries
    if not _dask.is_dask(X):
        return _sum_in_memory(X, func, row_args, shared, max_entries, worker_threads())
    import dask

    parts = _block_tasks(_sum_in_memory, X, func, row_args, shared, max_entries, rows_per_task)
    while len(parts) > 1:
        parts = [
            dask.delayed(_add)(*parts[i : i + 2]) if i + 1 < len(parts) else parts[i]
            for i in range(0, len(parts), 2)
        ]
    return dask.compute(parts[0])[0]


def _map_in_memory(
    block, func: Callable, row_args: tuple, shared: Any, max_entries: int, threads: int = 1
) -> list:
    return list(_chunk_results(block, func, row_args, shared, max_entries, threads))


def map_rows(
    X, func: Callable, *, row_args: tuple = (), shared: Any = None, max_entries: int | None = None
) -> list:
    """``func(csr_rows, *row_args[rows], shared)`` for every row chunk of ``X``, in row order.

    For results that stay small (per-cell values of a chunk, a selection of its entries);
    use :func:`reduce_rows` to sum large per-gene results. On Dask, each block is one task.
    """
    max_entries = CHUNK_ENTRIES if max_entries is None else max_entries
    if not _dask.is_dask(X):
        return _map_in_memory(X, func, row_args, shared, max_entries, worker_threads())
    import dask

    tasks = _block_tasks(_map_in_memory, X, func, row_args, shared, max_entries)
    return [part for block_parts in dask.compute(*tasks) for part in block_parts]


def _block_tasks(
    walk: Callable,
    X,
    func: Callable,
    row_args: tuple,
    shared: Any,
    max_entries: int,
    rows_per_task: int | None = None,
) -> list:
    """One delayed ``walk(rows, func, row_args_of_rows, shared, max_entries)`` per task of Dask ``X``.

    A task is one row block, or (``rows_per_task``) consecutive blocks stacked together.
    """
    import dask

    _dask.check_cell_chunks(X, where="the matrix")
    bounds = np.cumsum((0, *X.chunks[0]))
    groups = _task_groups(X.chunks[0], rows_per_task)
    blocks = X.to_delayed().ravel()
    shared_value = _shared_for_dask(shared)
    return [
        dask.delayed(walk)(
            blocks[first]
            if last - first == 1
            else dask.delayed(_stacked)(list(blocks[first:last])),
            func,
            tuple(a[bounds[first] : bounds[last]] for a in row_args),
            shared_value,
            max_entries,
        )
        for first, last in groups
    ]


def _task_groups(chunks: tuple[int, ...], rows_per_task: int | None) -> list[tuple[int, int]]:
    """Consecutive ranges of blocks ``(first, last)`` of about ``rows_per_task`` rows each (>= 1 block)."""
    if not rows_per_task:
        return [(i, i + 1) for i in range(len(chunks))]
    groups, first, rows = [], 0, 0
    for i, size in enumerate(chunks):
        rows += size
        if rows >= rows_per_task:
            groups.append((first, i + 1))
            first, rows = i + 1, 0
    if first < len(chunks):
        groups.append((first, len(chunks)))
    return groups


def _stacked(blocks: list):
    """Row blocks stacked into one matrix (CSR stays CSR)."""
    if all(sparse.issparse(b) for b in blocks):
        return sparse.vstack([_as_csr(b) for b in blocks], format="csr")
    return np.concatenate([np.asarray(b) for b in blocks])


# --------------------------------------------------------------------------------------
# per-group moments
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GroupMoments:
    """Per group x gene: cells, sum, sum of squares and number of non-zero values."""

    n: np.ndarray
    sums: np.ndarray
    squares: np.ndarray
    nonzero: np.ndarray

    def mean(self) -> np.ndarray:
        """Group x gene means (``nan`` for an empty group)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.sums / self.n[:, None]

    def var(self, ddof: int = 1) -> np.ndarray:
        """Group x gene variances (one-pass formula in float64, clipped at 0)."""
        n = self.n[:, None].astype(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = self.sums / n
            var = np.maximum(self.squares / n - mean**2, 0.0)
            return var * n / (n - ddof)

    def fraction_nonzero(self) -> np.ndarray:
        """Group x gene share of cells with a non-zero value."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.nonzero / self.n[:, None]

    def merge(self, target: np.ndarray, n_targets: int) -> GroupMoments:
        """Moments of coarser groups: group ``g`` is added into ``target[g]``."""
        indicator = sparse.csr_matrix(
            (np.ones(target.size), (target, np.arange(target.size))), shape=(n_targets, target.size)
        )
        return GroupMoments(
            n=np.bincount(target, weights=self.n, minlength=n_targets).astype(np.int64),
            sums=indicator @ self.sums,
            squares=indicator @ self.squares,
            nonzero=indicator @ self.nonzero,
        )


@numba.njit(nogil=True, cache=True)
def _moments_kernel(
    data, indices, indptr, codes, sums, squares, nonzero
):  # pragma: no cover - compiled
    for row in range(indptr.size - 1):
        group = codes[row]
        for k in range(indptr[row], indptr[row + 1]):
            value = np.float64(data[k])
            gene = indices[k]
            sums[group, gene] += value
            squares[group, gene] += value * value
            if value != 0:
                nonzero[group, gene] += 1.0


@dataclass(frozen=True)
class _GroupPart:
    """Moments of the groups present in some rows: ``groups`` (sorted codes) x genes.

    A chunk of one lot holds 2 of the 2 x lots groups of the markers' per-lot moments:
    whole-width partial results made every block's result as large as the answer (64 MB
    at 667 lots), all of it sent between Dask worker processes. Adding two parts keeps
    the union of their groups; each value is the same sum as in whole-width arrays.
    """

    groups: np.ndarray
    sums: np.ndarray
    squares: np.ndarray
    nonzero: np.ndarray

    def __add__(self, other: _GroupPart) -> _GroupPart:
        groups = np.union1d(self.groups, other.groups)
        totals = [np.zeros((groups.size, self.sums.shape[1])) for _ in range(3)]
        for part in (self, other):
            rows = np.searchsorted(groups, part.groups)
            for total, values in zip(totals, (part.sums, part.squares, part.nonzero), strict=True):
                total[rows] += values
        return _GroupPart(groups, *totals)


def _moments_rows(rows: sparse.csr_matrix, codes: np.ndarray, _shared: None) -> _GroupPart:
    groups, local = np.unique(codes, return_inverse=True)
    shape = (groups.size, rows.shape[1])
    sums, squares, nonzero = np.zeros(shape), np.zeros(shape), np.zeros(shape)
    _moments_kernel(
        rows.data, rows.indices, rows.indptr, local.astype(np.int64), sums, squares, nonzero
    )
    return _GroupPart(groups, sums, squares, nonzero)


def group_moments(X, codes: np.ndarray, n_groups: int) -> GroupMoments:
    """Per-group sums, sums of squares and non-zero counts of every gene, in one pass.

    Parameters
    ----------
    X
        Cells x genes: scipy sparse, dense, or a Dask array of row blocks.
    codes
        Group of each cell, integers ``0 .. n_groups - 1``.
    n_groups
        Number of groups.
    """
    codes = np.asarray(codes)
    if codes.shape != (X.shape[0],):
        msg = f"codes must have one entry per cell ({X.shape[0]}), got shape {codes.shape}"
        raise ValueError(msg)
    if codes.size and (codes.min() < 0 or codes.max() >= n_groups):
        msg = f"codes must lie in 0..{n_groups - 1}, got {codes.min()}..{codes.max()}"
        raise ValueError(msg)

    part = reduce_rows(X, _moments_rows, row_args=(codes,))
    shape = (n_groups, X.shape[1])
    sums, squares, nonzero = np.zeros(shape), np.zeros(shape), np.zeros(shape)
    for total, values in zip(
        (sums, squares, nonzero), (part.sums, part.squares, part.nonzero), strict=True
    ):
        total[part.groups] = values
    return GroupMoments(
        n=np.bincount(codes, minlength=n_groups).astype(np.int64),
        sums=sums,
        squares=squares,
        nonzero=nonzero,
    )


# --------------------------------------------------------------------------------------
# Wilcoxon rank-sum
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _SortedSide:
    """The non-zero values of one group of cells for genes ``start:stop``, sorted per gene."""

    start: int
    stop: int
    values: np.ndarray  # concatenated, sorted within each gene
    offsets: np.ndarray  # gene j's values: values[offsets[j]:offsets[j + 1]]
    zeros: np.ndarray  # cells of the group with a zero value, per gene
    positives: np.ndarray  # values above zero, per gene


def _gathered_rows(
    rows: sparse.csr_matrix, keep: np.ndarray, genes: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    return _gather_by_gene(rows.data, rows.indices, rows.indptr, keep, *genes)


def _sorted_side(X, cells: np.ndarray, start: int, stop: int) -> _SortedSide:
    """The non-zero values of ``cells`` for genes ``start:stop``, gathered chunk by chunk, sorted per gene."""
    pieces = map_rows(X, _gathered_rows, row_args=(cells,), shared=(start, stop))
    stored = np.sum([np.diff(offsets) for _, offsets in pieces], axis=0)
    offsets = np.r_[0, np.cumsum(stored)].astype(np.int64)
    values = np.empty(int(offsets[-1]), dtype=pieces[0][0].dtype)
    fill = offsets[:-1].copy()
    for piece, piece_offsets in pieces:  # concatenate gene by gene
        for j in np.flatnonzero(np.diff(piece_offsets)):
            part = piece[piece_offsets[j] : piece_offsets[j + 1]]
            values[fill[j] : fill[j] + part.size] = part
            fill[j] += part.size
    del pieces
    release_freed_memory()  # the pieces: one per chunk or block, freed but still mapped
    _sort_segments(values, offsets)
    # each gene's values are sorted: its positives follow its last value <= 0 (no per-value
    # temporaries: the sorted side is the largest allocation of the markers step)
    positives = np.array(
        [
            stored[j] - np.searchsorted(values[offsets[j] : offsets[j + 1]], 0, side="right")
            for j in range(stored.size)
        ],
        dtype=np.int64,
    )
    return _SortedSide(
        start=start,
        stop=stop,
        values=values,
        offsets=offsets,
        zeros=int(cells.sum()) - stored,
        positives=positives,
    )


@numba.njit(nogil=True, cache=True)
def _gather_by_gene(data, indices, indptr, keep, start, stop):  # pragma: no cover - compiled
    """The non-zero values of rows ``keep`` and genes ``start:stop``, gene by gene (a counting sort)."""
    n_genes = stop - start
    offsets = np.zeros(n_genes + 1, dtype=np.int64)
    for row in range(indptr.size - 1):
        if keep[row]:
            for k in range(indptr[row], indptr[row + 1]):
                j = indices[k] - start
                if 0 <= j < n_genes and data[k] != 0:
                    offsets[j + 1] += 1
    for j in range(n_genes):
        offsets[j + 1] += offsets[j]
    by_gene = np.empty(offsets[n_genes], dtype=data.dtype)
    fill = offsets[:-1].copy()
    for row in range(indptr.size - 1):
        if keep[row]:
            for k in range(indptr[row], indptr[row + 1]):
                j = indices[k] - start
                if 0 <= j < n_genes and data[k] != 0:
                    by_gene[fill[j]] = data[k]
                    fill[j] += 1
    return by_gene, offsets


@numba.njit(nogil=True, cache=True)
def _skip(sorted_values, low, high, value, or_equal):  # pragma: no cover - compiled
    """First index in ``low..high`` whose value is not below ``value`` (``or_equal``: above it).

    A galloping search from ``low`` (steps 1, 2, 4, ... then bisection): its cost grows with
    the logarithm of the distance skipped, not the distance, so merging a few values into
    a long sorted run costs little more than the few values.
    """
    if low >= high:
        return high
    first = sorted_values[low]
    if not (first < value or (or_equal and first == value)):
        return low
    left, step = low, 1  # sorted_values[left] is below
    right = high
    while left + step < high:
        probe = sorted_values[left + step]
        if not (probe < value or (or_equal and probe == value)):
            right = left + step
            break
        left += step
        step *= 2
    while right - left > 1:  # sorted_values[left] below, right is high or not below
        middle = (left + right) >> 1
        probe = sorted_values[middle]
        if probe < value or (or_equal and probe == value):
            left = middle
        else:
            right = middle
    return right


@numba.njit(nogil=True, cache=True)
def _merge_counts(
    values, offsets, side_values, side_offsets, side_zeros, twice_u
):  # pragma: no cover - compiled
    """Per gene, both sorted: twice the side values below each value, plus ties, in one merge.

    The side is the whole smaller group and ``values`` one chunk of the other cells: the
    side's positions advance by galloping (:func:`_skip`), so a chunk costs about its own
    size times the logarithm of the side's, not the side's size (walking it made the
    rank-sum quadratic in the cells: 10^6 cells in ~670 blocks walked the side ~670 times).
    """
    for j in range(offsets.size - 1):
        first, last = side_offsets[j], side_offsets[j + 1]
        lower, upper, total = first, first, 0  # first side value >= / > the current value
        for k in range(offsets[j], offsets[j + 1]):
            value = values[k]
            lower = _skip(side_values, lower, last, value, False)
            upper = _skip(side_values, max(upper, lower), last, value, True)
            below = lower - first + (side_zeros[j] if value > 0 else 0)
            total += 2 * below + (upper - lower)
        twice_u[j] += total


def _sort_segments(values: np.ndarray, offsets: np.ndarray) -> None:
    """Sort ``values`` within each segment, in place (numpy's vectorised sort)."""
    for j in range(offsets.size - 1):
        if offsets[j + 1] - offsets[j] > 1:
            values[offsets[j] : offsets[j + 1]].sort()


def _twice_u_rows(
    rows: sparse.csr_matrix, other: np.ndarray, side: _SortedSide
) -> tuple[np.ndarray, np.ndarray]:
    """Twice the U of the ``other`` cells' non-zero values among these rows against ``side``.

    The values are gathered gene by gene, sorted within each gene and merged with that
    gene's sorted side values (linear in both, and in cache). Also returns how many
    non-zero values the other cells have, per gene of the side.
    """
    values, offsets = _gather_by_gene(
        rows.data, rows.indices, rows.indptr, other, side.start, side.stop
    )
    _sort_segments(values, offsets)
    twice_u = np.zeros(side.stop - side.start, dtype=np.int64)
    _merge_counts(values, offsets, side.values, side.offsets, side.zeros, twice_u)
    return twice_u, np.diff(offsets)


def _gene_chunks(nonzero: np.ndarray, max_entries: int) -> list[tuple[int, int]]:
    """Consecutive gene ranges whose ``nonzero`` entries stay within ``max_entries`` (>= 1 gene)."""
    chunks, start, total = [], 0, 0
    for j, count in enumerate(nonzero):
        if j > start and total + count > max_entries:
            chunks.append((start, j))
            start, total = j, 0
        total += count
    chunks.append((start, len(nonzero)))
    return chunks


def rank_sum_z(
    X,
    in_group: np.ndarray,
    *,
    nonzero: np.ndarray | None = None,
    max_sorted_entries: int | None = None,
) -> np.ndarray:
    """Wilcoxon rank-sum z of the cells ``in_group`` against all other cells, per gene.

    The statistic of ``scanpy.tl.rank_genes_groups(method="wilcoxon", tie_correct=False)``
    for one group against the rest: ``(R - n1 (n + 1) / 2) / sqrt(n1 n2 (n + 1) / 12)``
    with ``R`` the group's sum of average ranks. The sum is exact (integers and halves in
    int64), so z agrees with scanpy's to rounding.

    Parameters
    ----------
    X
        Cells x genes: scipy sparse, dense, or a Dask array of row blocks.
    in_group
        Boolean mask of the group's cells.
    nonzero
        Optional ``(2, n_genes)`` non-zero counts (group, rest) per gene, e.g. from
        :func:`group_moments`; they size the gene passes without another pass over ``X``.
    max_sorted_entries
        At most this many values of the smaller side are held sorted at once (a single
        gene with more is still processed whole). Default: :data:`SORTED_ENTRIES`, and for
        an in-memory matrix at most an eighth of its stored entries (at least
        :data:`CHUNK_ENTRIES`).

    Notes
    -----
    ``R = n1 (n1 + 1) / 2 + U`` where ``U`` counts, over pairs (group cell, other cell),
    how often the group's value is larger (ties count a half). ``U`` needs only the
    smaller side's values sorted per gene (zeros as a count, not stored): the other side
    is streamed row chunk by row chunk, its non-zero values sorted per gene and merged with
    the side's (a compiled kernel, chunks in parallel threads); zeros are counted. Memory: the smaller side's non-zero values for a range of genes
    (``max_sorted_entries``) plus a few row chunks. On Dask: one pass over the blocks to
    gather the smaller side and one to stream the other, per gene range; the sorted side
    is broadcast to the workers.
    """
    in_group = np.asarray(in_group, dtype=bool)
    if max_sorted_entries is None:
        max_sorted_entries = SORTED_ENTRIES
        if not _dask.is_dask(X):
            stored = X.nnz if sparse.issparse(X) else X.size
            max_sorted_entries = min(SORTED_ENTRIES, max(CHUNK_ENTRIES, stored // 8))
    n = in_group.size
    n1 = int(in_group.sum())
    n2 = n - n1
    if in_group.shape != (X.shape[0],):
        msg = f"in_group must be a boolean mask over the {X.shape[0]} cells, got shape {in_group.shape}"
        raise ValueError(msg)
    if n1 == 0 or n2 == 0:
        msg = f"the rank-sum test needs cells in both groups, got {n1} in and {n2} out"
        raise ValueError(msg)
    small_is_group = n1 <= n2
    small = in_group if small_is_group else ~in_group
    if nonzero is None:  # group 1 = in_group: reversed to (group, rest)
        nonzero = group_moments(X, in_group.astype(np.int64), 2).nonzero[::-1]
    nonzero_small = np.asarray(nonzero[0] if small_is_group else nonzero[1])
    twice_u_small = np.zeros(X.shape[1], dtype=np.int64)
    n_small, n_other = int(small.sum()), n - int(small.sum())
    entries_per_row = max(1.0, float(np.sum(nonzero)) / n)
    for start, stop in _gene_chunks(nonzero_small, max_sorted_entries):
        side = _sorted_side(X, small, start, stop)
        twice_u_other, other_stored = reduce_rows(
            X,
            _twice_u_rows,
            row_args=(~small,),
            shared=side,
            max_entries=STREAM_ENTRIES,
            rows_per_task=max(1, int(STREAM_ENTRIES // entries_per_row)),
        )
        # each zero of the other side: above the side's negative values, tied with its zeros
        side_negatives = np.diff(side.offsets) - side.positives
        twice_u_other = twice_u_other + (n_other - other_stored) * (2 * side_negatives + side.zeros)
        twice_u_small[start:stop] = 2 * n_small * n_other - twice_u_other
    u_small = twice_u_small / 2.0
    u_group = u_small if small_is_group else n1 * n2 - u_small
    rank_sum = u_group + n1 * (n1 + 1) / 2.0
    z = (rank_sum - n1 * ((n + 1) / 2.0)) / np.sqrt(n1 * n2 * (n + 1) / 12.0)
    z[np.isnan(z)] = 0
    return z
