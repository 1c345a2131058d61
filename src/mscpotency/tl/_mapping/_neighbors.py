"""Nearest neighbours for mapping: exact (chunked brute force) by default, approximate at scale."""

from __future__ import annotations

import numpy as np

#: Above this many query x reference distance evaluations, ``method="auto"`` goes approximate.
EXACT_MAX_PAIRS = 2_000_000_000


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
    """scikit-learn's brute-force search (a threaded, chunked arg-k-min reduction): exact and fast."""
    from sklearn.neighbors import NearestNeighbors

    index = NearestNeighbors(n_neighbors=k, algorithm="brute", metric="euclidean").fit(data)
    distances, indices = index.kneighbors(query, n_neighbors=k)
    return indices.astype(np.int64), distances.astype(np.float64)


def _approximate(data: np.ndarray, query: np.ndarray, k: int, random_state: int) -> tuple[np.ndarray, np.ndarray]:
    from pynndescent import NNDescent

    index = NNDescent(data, n_neighbors=max(k, 15), random_state=random_state, n_jobs=1)
    indices, distances = index.query(query, k=k)
    return indices.astype(np.int64), distances.astype(np.float64)


def _drop_self(indices: np.ndarray, distances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rows = np.arange(indices.shape[0])[:, None]
    is_self = indices == rows
    # where a point is not among its own candidates (exact duplicates), drop the last one instead
    missing = ~is_self.any(axis=1)
    is_self[missing, -1] = True
    keep = ~is_self
    width = indices.shape[1] - 1
    return indices[keep].reshape(-1, width), distances[keep].reshape(-1, width)
