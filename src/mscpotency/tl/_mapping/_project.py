"""Centre and project query cells onto the reference embedding, and find the query's own axes.

Everything here works on the sparse log-normalised query without densifying it: centring is
carried implicitly (``X - G @ M`` with ``G`` the cells x groups indicator and ``M`` the group
means), so the memory cost is cells x components, not cells x genes. The single-precision
values are not copied to double precision: the products are formed in double precision by
a compiled kernel, rows in parallel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numba
import numpy as np
from scipy import sparse

from ..._cell_stats import group_moments

Centre = Literal["reference", "query", "lot", "lot_shift"]


@numba.njit(parallel=True, cache=True)
def _csr_dot(data, indices, indptr, rows, right, out):  # pragma: no cover - compiled
    """``out = X[rows] @ right`` for CSR ``X``, rows in parallel, each row summed in stored order."""
    for i in numba.prange(rows.size):
        row = rows[i]
        for k in range(indptr[row], indptr[row + 1]):
            value = np.float64(data[k])
            column = indices[k]
            for c in range(right.shape[1]):
                out[i, c] += value * right[column, c]


@numba.njit(parallel=True, cache=True)
def _csr_rdot(data, indices, indptr, rows, left_t, out, n_parts):  # pragma: no cover - compiled
    """``out = X[rows].T @ left_t`` for CSR ``X``: each thread the columns of ``X`` in its share.

    Every entry of ``out`` is summed over ``rows`` in their order, as scipy's
    ``X[rows].T @ left_t`` (its CSC kernel, walking the rows of ``X[rows]`` in order) sums it.
    """
    n_columns = out.shape[0]
    width = left_t.shape[1]
    for part in numba.prange(n_parts):
        low, high = part * n_columns // n_parts, (part + 1) * n_columns // n_parts
        for i in range(rows.size):
            row = rows[i]
            for k in range(indptr[row], indptr[row + 1]):
                column = indices[k]
                if column >= low and column < high:
                    value = np.float64(data[k])
                    for c in range(width):
                        out[column, c] += value * left_t[i, c]


def _row_index(X: sparse.csr_matrix, rows: np.ndarray | None) -> np.ndarray:
    """``rows`` as the kernels take them (every row of ``X`` when ``None``)."""
    if rows is None:
        return np.arange(X.shape[0], dtype=np.int64)
    rows = np.asarray(rows)
    if rows.dtype.kind not in "iu":  # a boolean mask would be read as rows 0 and 1
        msg = f"rows must be integer positions, got an array of {rows.dtype}"
        raise TypeError(msg)
    return np.ascontiguousarray(rows, dtype=np.int64)


def csr_rdot(X: sparse.csr_matrix, left: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """``left @ X[rows]`` in double precision on every core, bit for bit scipy's product.

    scipy's ``(X[rows].T @ left.T).T``, without scipy's double-precision copy of ``X``, nor
    a copy of its ``rows`` (``None``: all).
    """
    from ..._cell_stats import worker_threads

    left_t = np.ascontiguousarray(np.asarray(left, dtype=np.float64).T)
    out = np.zeros((X.shape[1], left_t.shape[1]))
    _csr_rdot(X.data, X.indices, X.indptr, _row_index(X, rows), left_t, out, worker_threads())
    return out.T


def csr_dot(X: sparse.csr_matrix, right: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """``X[rows] @ right`` in double precision, rows in parallel; scipy's sums, bit for bit.

    scipy upcasts single-precision ``X`` to a double-precision copy and walks the rows on
    one thread; here each row is summed in the same order, without the copy (nor one of
    the ``rows`` taken; ``None``: every row), on every core.
    """
    rows = _row_index(X, rows)
    right = np.ascontiguousarray(right, dtype=np.float64)
    product = np.zeros((rows.size, right.shape[1]))
    _csr_dot(X.data, X.indices, X.indptr, rows, right, product)
    return product


@dataclass(frozen=True)
class CentredMatrix:
    """``X[rows] - G @ M``: sparse expression minus per-group means, never formed densely.

    ``rows`` (``None``: every row of ``X``) selects cells without copying them: a
    calibration fold or a subset is the rows of the reference's own matrix.
    """

    X: sparse.csr_matrix  # (n, genes), float32 or float64 values
    groups: np.ndarray  # (n_cells,) group code of each cell
    means: np.ndarray  # (n_groups, genes)
    rows: np.ndarray | None = None  # (n_cells,) the rows of X these cells are

    @property
    def shape(self) -> tuple[int, int]:
        """``(cells, genes)``."""
        return (self.X.shape[0] if self.rows is None else self.rows.size), self.X.shape[1]

    def take(self, cells: np.ndarray) -> CentredMatrix:
        """The cells ``cells`` (positions among this matrix's cells), with their groups."""
        rows = cells if self.rows is None else self.rows[cells]
        return CentredMatrix(self.X, self.groups[cells], self.means, rows)

    def dot(self, right: np.ndarray) -> np.ndarray:
        """``(X - G M) @ right`` (in double precision, rows in parallel; scipy's sums, bit for bit)."""
        right = np.ascontiguousarray(right, dtype=np.float64)
        return csr_dot(self.X, right, self.rows) - (self.means @ right)[self.groups]

    def rdot(self, left: np.ndarray) -> np.ndarray:
        """``left @ (X - G M)`` for ``left`` of shape (r, n)."""
        group_sums = np.zeros((left.shape[0], self.means.shape[0]))
        for g in range(self.means.shape[0]):
            group_sums[:, g] = left[:, self.groups == g].sum(axis=1)
        return csr_rdot(self.X, left, self.rows) - group_sums @ self.means


def centred(
    X: sparse.csr_matrix, *, centre: Centre, reference_mean: np.ndarray, lots: np.ndarray | None
) -> CentredMatrix:
    """Centre the query on the reference's mean, on its own mean, or on each lot's mean.

    ``"reference"`` is what Seurat's ``pcaproject`` and scanpy's ``ingest`` do. ``"query"`` and
    ``"lot"`` remove a shift shared by the whole query (tissue) or by each lot (donor,
    processing) before projection, so the shift cannot masquerade as biology: each group's
    mean lands on the reference's mean (the origin of the reference PCA).
    """
    if not (sparse.issparse(X) and X.format == "csr" and X.dtype in (np.float32, np.float64)):
        X = sparse.csr_matrix(X, dtype=np.float64)
    n = X.shape[0]
    if centre == "reference":
        return CentredMatrix(
            X, np.zeros(n, dtype=np.int64), np.asarray(reference_mean, dtype=np.float64)[None, :]
        )
    if centre == "query" or lots is None:
        groups = np.zeros(n, dtype=np.int64)
    elif centre in ("lot", "lot_shift"):  # lot_shift: :mod:`._make_up` moves the lots on
        _, groups = np.unique(np.asarray(lots, dtype=str), return_inverse=True)
    else:
        msg = f"centre must be 'reference', 'query' or 'lot', got {centre!r}"
        raise ValueError(msg)
    n_groups = int(groups.max()) + 1
    # per-group sums in double precision (compiled, row chunks in parallel; deterministic)
    moments = group_moments(X, groups, n_groups)
    means = moments.sums / moments.n[:, None].astype(np.float64)
    return CentredMatrix(X, groups, means)


#: The query's own axes are fitted on at most this many cells (every cell is then placed on them).
OWN_AXES_MAX_CELLS = 20_000


def own_axes(
    A: CentredMatrix, n_comps: int, *, random_state: int = 0, n_iter: int = 4
) -> tuple[np.ndarray, np.ndarray]:
    """Top principal axes of the (centred) query itself, and every cell's coordinates on them.

    The axes are :func:`principal_axes`'s; the coordinates are computed in one pass over all
    cells of ``A``, whatever the subset the axes were fitted on.

    Returns
    -------
    axes
        ``(genes, n_comps)`` orthonormal directions of largest variance.
    scores
        ``(n, n_comps)`` the cells' coordinates on them.
    """
    axes, overall = _principal_axes(A, n_comps, random_state=random_state, n_iter=n_iter)
    return axes, A.dot(axes) - overall @ axes


def principal_axes(
    A: CentredMatrix, n_comps: int, *, random_state: int = 0, n_iter: int = 4
) -> np.ndarray:
    """Top principal axes of the (centred) cells, by a randomised range finder: ``(genes, n_comps)``.

    Above :data:`OWN_AXES_MAX_CELLS` cells the axes are fitted on a random subset of that
    many cells (the leading axes of 10^4 cells are those of the population): the cost stays
    that of 2 x 10^4 cells, whatever the number of cells.
    """
    return _principal_axes(A, n_comps, random_state=random_state, n_iter=n_iter)[0]


def _principal_axes(
    A: CentredMatrix, n_comps: int, *, random_state: int, n_iter: int
) -> tuple[np.ndarray, np.ndarray]:
    """The axes of :func:`principal_axes` and the mean they are centred on, ``(1, genes)``."""
    rng = np.random.default_rng(random_state)
    if A.shape[0] > OWN_AXES_MAX_CELLS:
        subset = np.sort(
            np.random.default_rng([random_state, 1]).choice(
                A.shape[0], OWN_AXES_MAX_CELLS, replace=False
            )
        )
        A = A.take(subset)
    n, genes = A.shape
    # the reference-mean shift is a constant per group; remove the overall mean for a true PCA
    overall = A.rdot(np.full((1, n), 1.0 / n))  # (1, genes)
    width = min(n_comps + 10, n, genes)
    omega = rng.standard_normal((genes, width))
    Y = A.dot(omega) - (overall @ omega)
    Q, _ = np.linalg.qr(Y)
    for _ in range(n_iter):
        W = A.rdot(Q.T).T - overall.T @ Q.sum(axis=0, keepdims=True)
        W, _ = np.linalg.qr(W)
        Y = A.dot(W) - (overall @ W)
        Q, _ = np.linalg.qr(Y)
    B = A.rdot(Q.T) - Q.sum(axis=0)[:, None] * overall  # (width, genes) = Q^T (A - 1 overall)
    _, _, vt = np.linalg.svd(B, full_matrices=False)
    axes = vt[:n_comps].T
    # deterministic signs: largest loading positive
    signs = np.sign(axes[np.abs(axes).argmax(axis=0), np.arange(axes.shape[1])])
    signs[signs == 0] = 1
    return axes * signs, overall
