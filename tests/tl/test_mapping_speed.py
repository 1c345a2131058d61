"""What makes a mapping call cheaper must not change what it computes."""

from __future__ import annotations

import numpy as np
import pytest
from anndata import AnnData
from scipy import sparse

import mscpotency as mp
from mscpotency.tl._mapping import _anchors, _cache
from mscpotency.tl._mapping._anchors import find_transfer_anchors, within_set_neighbours
from mscpotency.tl._mapping._project import csr_dot, csr_rdot


@pytest.fixture(scope="module")
def tiny_query(tiny_all) -> AnnData:
    query = tiny_all[tiny_all.obs["set"] == "BM-test"].copy()
    mp.pp.qc(query)
    return query


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_csr_products_are_scipys_bit_for_bit(dtype):
    rng = np.random.default_rng(0)
    X = sparse.random(300, 120, density=0.2, format="csr", dtype=dtype, random_state=1)
    X.data = rng.lognormal(size=X.nnz).astype(dtype)
    right = rng.normal(size=(120, 7))
    np.testing.assert_array_equal(csr_dot(X, right), np.asarray(X @ right))
    for left in (rng.normal(size=(5, 300)), np.full((1, 300), 1 / 300)):
        np.testing.assert_array_equal(csr_rdot(X, left), np.asarray((X.T @ left.T).T))


def test_given_reference_neighbours_give_the_same_anchors():
    rng = np.random.default_rng(0)
    centres = np.array([[10.0, 0, 0], [0, 10.0, 0], [0, 0, 10.0]])
    reference = centres[np.repeat(np.arange(3), 100)] + rng.normal(size=(300, 3))
    query = centres[np.repeat(np.arange(3), 60)] + rng.normal(size=(180, 3)) + 0.5
    options = {"reference_filter": None, "query_filter": None, "k_score": 20}
    computed = find_transfer_anchors(reference, query, **options)
    given = find_transfer_anchors(
        reference,
        query,
        reference_neighbours=within_set_neighbours(reference, 20, "auto", 0),
        **options,
    )
    for field in ("reference", "query", "score"):
        np.testing.assert_array_equal(getattr(computed, field), getattr(given, field))
    assert computed.n_mnn == given.n_mnn


def test_a_warm_anchors_mapping_equals_a_cold_one(tiny_query, tiny_ref):
    _cache.clear_caches()  # a cold call: every per-reference cache forgotten
    cold = mp.tl.map_to_reference(tiny_query, tiny_ref, method="anchors", copy=True)
    # the reference's own neighbours were kept for the next query
    assert len(_anchors._REFERENCE_NEIGHBOURS) == 1
    (kept,) = _anchors._REFERENCE_NEIGHBOURS.values()
    assert kept.shape == (tiny_ref.n_obs, 30)
    assert (kept[:, 0] == np.arange(tiny_ref.n_obs)).all()
    warm = mp.tl.map_to_reference(tiny_query, tiny_ref, method="anchors", copy=True)
    assert (cold.obs["predicted"] == warm.obs["predicted"]).all()
    for key in ("predicted_probabilities", "predicted_set"):
        np.testing.assert_array_equal(cold.obsm[key].to_numpy(), warm.obsm[key].to_numpy())
    for key in ("predicted_score", "predicted_novelty_p", "predicted_mapping_score"):
        np.testing.assert_array_equal(cold.obs[key].to_numpy(), warm.obs[key].to_numpy())


def test_bounded_caches_drop_the_oldest_and_clear_together():
    from mscpotency.tl._mapping._cache import BoundedCache

    first, second = BoundedCache(2), BoundedCache(2)
    calls = []
    for key in ("a", "b", "a", "c"):
        first.get(key, lambda key=key: calls.append(key) or key.upper())
    assert calls == ["a", "b", "c"] and list(first.values()) == ["B", "C"]  # "a" left first
    second.get("x", lambda: 1)
    _cache.clear_caches()
    assert len(first) == 0 and len(second) == 0
