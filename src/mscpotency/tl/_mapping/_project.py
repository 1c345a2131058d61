"""Centre and project query cells onto the reference embedding, and find the query's own axes.

Everything here works on the sparse log-normalised query without densifying it: centring is
carried implicitly (``X - G @ M`` with ``G`` the cells x groups indicator and ``M`` the group
means), so the memory cost is cells x components, not cells x genes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import sparse

Centre = Literal["reference", "query", "lot"]


@dataclass(frozen=True)
class CentredMatrix:
    """``X - G @ M``: sparse expression minus per-group means, never formed densely."""

    X: sparse.csr_matrix  # (n, genes)
    groups: np.ndarray  # (n,) group code of each cell
    means: np.ndarray  # (n_groups, genes)

    def dot(self, right: np.ndarray) -> np.ndarray:
        """``(X - G M) @ right``."""
        return np.asarray(self.X @ right) - (self.means @ right)[self.groups]

    def rdot(self, left: np.ndarray) -> np.ndarray:
        """``left @ (X - G M)`` for ``left`` of shape (r, n)."""
        group_sums = np.zeros((left.shape[0], self.means.shape[0]))
        for g in range(self.means.shape[0]):
            group_sums[:, g] = left[:, self.groups == g].sum(axis=1)
        return np.asarray((self.X.T @ left.T).T) - group_sums @ self.means


def centred(
    X: sparse.csr_matrix, *, centre: Centre, reference_mean: np.ndarray, lots: np.ndarray | None
) -> CentredMatrix:
    """Centre the query on the reference's mean, on its own mean, or on each lot's mean.

    ``"reference"`` is what Seurat's ``pcaproject`` and scanpy's ``ingest`` do. ``"query"`` and
    ``"lot"`` remove a shift shared by the whole query (tissue) or by each lot (donor,
    processing) before projection, so the shift cannot masquerade as biology: each group's
    mean lands on the reference's mean (the origin of the reference PCA).
    """
    X = sparse.csr_matrix(X, dtype=np.float64)
    n = X.shape[0]
    if centre == "reference":
        return CentredMatrix(X, np.zeros(n, dtype=np.int64), np.asarray(reference_mean, dtype=np.float64)[None, :])
    if centre == "query" or lots is None:
        groups = np.zeros(n, dtype=np.int64)
    elif centre == "lot":
        _, groups = np.unique(np.asarray(lots, dtype=str), return_inverse=True)
    else:
        msg = f"centre must be 'reference', 'query' or 'lot', got {centre!r}"
        raise ValueError(msg)
    n_groups = int(groups.max()) + 1
    indicator = sparse.csr_matrix((np.ones(n), (groups, np.arange(n))), shape=(n_groups, n))
    sizes = np.asarray(indicator.sum(axis=1)).ravel()
    means = np.asarray((indicator @ X).todense()) / sizes[:, None]
    return CentredMatrix(X, groups, means)


def own_axes(A: CentredMatrix, n_comps: int, *, random_state: int = 0, n_iter: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Top principal axes of the (centred) query itself, by a randomised range finder.

    Returns
    -------
    axes
        ``(genes, n_comps)`` orthonormal directions of largest variance.
    scores
        ``(n, n_comps)`` the cells' coordinates on them.
    """
    rng = np.random.default_rng(random_state)
    n, genes = A.X.shape
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
    axes = axes * signs
    scores = A.dot(axes) - overall @ axes
    return axes, scores
