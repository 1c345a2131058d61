"""The mapping score: how much of a query cell's own structure the reference can represent.

A cell from a population the reference lacks still lands somewhere in the reference PCA,
often near the middle of known populations: its defining genes vary along directions the
reference embedding does not have, so distances in that embedding hardly notice it
(the kNN distance separates such cells at AUROC ~0.65 on the simulator). The query itself
does notice: a new population is a direction of variation in the query. So the score

1. centres the query per lot (removing donor and tissue shifts, which are not cell types),
2. finds the query's own principal axes,
3. splits each cell's coordinates on those axes into the part the reference axes span and
   the residual, and averages both over the cell and its nearest query neighbours (in the
   query's own space) so that noise cancels and structure remains,
4. reports ``1 - |residual|^2 / |total|^2``: the share of the cell's local, structured
   deviation from its lot's mean that the reference embedding represents.

On the simulator's study preset, cells of known populations score ~0.9 (1% below 0.75; the
rest is noise the smoothing leaves) and cells of a population left out of the reference
~0.2 (AUROC 0.99 between the two, in held-out BM lots and in other tissues alike).
Low = off-reference.

What it does not see: a population that the reference *embedding* spans but whose cells
were removed from the reference afterwards (the embedding still represents it). A reference
built the usual way, embedding and labels from the same cells, does not have that gap.
"""

from __future__ import annotations

import numpy as np

from ._neighbors import knn
from ._project import CentredMatrix, own_axes


def mapping_score(
    A: CentredMatrix,
    loadings: np.ndarray,
    *,
    n_comps: int = 20,
    n_neighbors: int = 20,
    knn_method: str = "auto",
    random_state: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-cell mapping score in [0, 1] (low = not represented by the reference).

    Parameters
    ----------
    A
        The query, log-normalised and centred per lot, on the reference's genes.
    loadings
        Reference PCA loadings (genes x components, orthonormal columns).
    n_comps
        Number of the query's own principal axes.
    n_neighbors
        Query neighbours the per-cell quantities are averaged over.
    knn_method, random_state
        See :func:`._neighbors.knn`.

    Returns
    -------
    score
        ``(n,)`` mapping score.
    axes, coordinates
        The query's own axes (genes x n_comps) and the cells' coordinates on them
        (reused by the anchor filter).
    """
    n = A.X.shape[0]
    n_comps = int(min(n_comps, max(1, n - 2), A.X.shape[1] - 1))
    axes, coordinates = own_axes(A, n_comps, random_state=random_state)
    if n < 3:
        return np.full(n, np.nan), axes, coordinates
    projected = A.dot(loadings)  # the cells' reference coordinates, centred per lot
    explained = projected @ (loadings.T @ axes)
    residual = coordinates - explained
    neighbours, _ = knn(coordinates, coordinates, min(n_neighbors, n - 1), exclude_self=True,
                        method=knn_method, random_state=random_state)
    neighbours = np.hstack([np.arange(n)[:, None], neighbours])
    smoothed_residual = residual[neighbours].mean(axis=1)
    smoothed_total = coordinates[neighbours].mean(axis=1)
    unexplained = (smoothed_residual**2).sum(axis=1)
    total = (smoothed_total**2).sum(axis=1)
    share = np.divide(unexplained, total, out=np.ones_like(total), where=total > 0)
    return np.clip(1.0 - share, 0.0, 1.0), axes, coordinates
