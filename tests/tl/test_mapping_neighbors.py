"""The exact kNN's large-``k`` path (candidates selected per row) against brute force."""

from __future__ import annotations

import numpy as np
import pytest

from mscpotency.tl._mapping import _neighbors


def brute_force(data: np.ndarray, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Every distance by the kernel the search uses, the ``k`` nearest by (distance, position)."""
    every = np.tile(np.arange(data.shape[0]), (query.shape[0], 1))
    distances = _neighbors._direct_distances(query, data, every)
    order = np.lexsort((every, distances), axis=1)[:, :k]
    return order, np.take_along_axis(distances, order, axis=1)


@pytest.mark.parametrize("k", [56, 200])
def test_selected_candidates_equal_brute_force(k):
    rng = np.random.default_rng(3)
    data = rng.normal(size=(1500, 20))
    query = rng.normal(size=(300, 20))
    assert k + _neighbors._MARGIN >= _neighbors._SELECT_MIN_KEEP  # the selection path
    indices, distances = _neighbors.knn(data, query, k, method="exact")
    expected, expected_distances = brute_force(data, query, k)
    np.testing.assert_array_equal(indices, expected)
    np.testing.assert_array_equal(distances, expected_distances)


def test_selection_with_ties_duplicates_and_blocks(monkeypatch):
    monkeypatch.setattr(_neighbors, "_QUERY_BLOCK", 16)
    monkeypatch.setattr(_neighbors, "_DATA_BLOCK", 50)
    rng = np.random.default_rng(4)
    data = rng.integers(-2, 3, size=(2437, 3)).astype(float)  # many exact ties
    data[100:300] = data[5]  # duplicated points
    query = np.vstack([rng.integers(-2, 3, size=(60, 3)).astype(float), data[:5]])
    for k in (70, 250):
        indices, distances = _neighbors.knn(data, query, k, method="exact")
        full = np.linalg.norm(query[:, None] - data[None], axis=2)
        expected = np.argsort(full, axis=1, kind="stable")[:, :k]  # ties: lower position first
        np.testing.assert_array_equal(indices, expected)
        np.testing.assert_allclose(distances, np.take_along_axis(full, expected, axis=1))
    # the selection and the block-by-block merge keep the same candidates
    monkeypatch.setattr(_neighbors, "_SELECT_MIN_KEEP", 10**9)
    merged, _ = _neighbors.knn(data, query, 250, method="exact")
    np.testing.assert_array_equal(merged, indices)


def test_kth_of_a_row():
    rng = np.random.default_rng(5)
    for n in (1, 3, 100, 1023, 1024, 5000, 20_000):
        scratch = np.empty(n, dtype=np.float32)
        for trial in range(20):
            if trial % 3 == 0:
                row = rng.random(n).astype(np.float32)
            elif trial % 3 == 1:
                row = rng.integers(0, 4, n).astype(np.float32)  # ties everywhere
            else:
                row = np.sort(rng.random(n)).astype(np.float32)[::-1].copy()  # sample misleads
            kth = int(rng.integers(0, n))
            before = row.copy()
            assert _neighbors._kth_of_row(row, kth, scratch) == np.sort(row)[kth]
            np.testing.assert_array_equal(row, before)
