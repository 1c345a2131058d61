"""What makes a mapping call cheaper must not change what it computes."""

from __future__ import annotations

import numpy as np
import pytest
import scanpy as sc
from anndata import AnnData
from scipy import sparse

import mscpotency as mp
from mscpotency.tl._mapping import _anchors, _cache
from mscpotency.tl._mapping._anchors import find_transfer_anchors, within_set_neighbours
from mscpotency.tl._mapping._neighbors import knn
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
    # rows taken in place: the products of the copied rows, in their order (repeats too)
    rows = np.r_[rng.permutation(300)[:150], 7, 7]
    taken = X[rows]
    np.testing.assert_array_equal(csr_dot(X, right, rows), np.asarray(taken @ right))
    left = rng.normal(size=(4, rows.size))
    np.testing.assert_array_equal(csr_rdot(X, left, rows), np.asarray((taken.T @ left.T).T))
    with pytest.raises(TypeError, match="integer positions"):
        csr_dot(X, right, np.ones(300, dtype=bool))


def test_cells_taken_in_place_equal_their_copy():
    """A calibration fold's cells, read where they are, give the axes of a copy of them."""
    from mscpotency.tl._mapping import _project

    rng = np.random.default_rng(3)
    X = sparse.random(500, 80, density=0.2, random_state=3, format="csr", dtype=np.float32)
    A = _project.centred(X, centre="lot", reference_mean=np.zeros(80), lots=rng.integers(0, 3, 500))
    cells = np.sort(rng.choice(500, 320, replace=False))
    taken = A.take(cells)
    copied = _project.CentredMatrix(X[cells], A.groups[cells], A.means)
    assert taken.shape == copied.shape == (320, 80)
    right, left = rng.normal(size=(80, 6)), rng.normal(size=(2, 320))
    np.testing.assert_array_equal(taken.dot(right), copied.dot(right))
    np.testing.assert_array_equal(taken.rdot(left), copied.rdot(left))
    np.testing.assert_array_equal(
        _project.principal_axes(taken, 5, random_state=2),
        _project.principal_axes(copied, 5, random_state=2),
    )
    twice = taken.take(np.arange(0, 320, 2))  # a subset of a subset
    np.testing.assert_array_equal(twice.dot(right), copied.dot(right)[::2])


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
    assert kept.shape == (tiny_ref.n_obs, 30 * _anchors._WIDTH)  # k_score, widened for folds
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


def test_checksum_changes_with_any_byte_and_order():
    from mscpotency._frozen import checksum

    rng = np.random.default_rng(0)
    values = rng.integers(0, 50, size=1003).astype(np.uint16)  # 2,006 bytes: a 6-byte tail
    reference = checksum(values)
    assert checksum(values.copy()) == reference
    for position in (0, 1, 500, 1000, 1002):  # in a word, across words, in the tail
        changed = values.copy()
        changed[position] += 1
        assert checksum(changed) != reference, position
    swapped = values.copy()
    swapped[[10, 700]] = swapped[[700, 10]]
    assert swapped[10] != swapped[700] and checksum(swapped) != reference
    assert checksum(values.view(np.int16)) != reference  # same bytes, other type
    assert checksum(values[1:]) != checksum(values[:-1])  # unaligned views are read too


def test_a_reference_edited_after_a_mapping_is_still_refused(tiny_query, tiny_ref, monkeypatch):
    """The expression is normalised and hashed once per content, and any edit is still caught."""
    from mscpotency import _frozen

    frozen = mp.tl.freeze_reference(tiny_ref)
    _cache.clear_caches()
    first = _frozen.reference_model(frozen, cluster_key="cluster")
    digests = []
    real_digest = _frozen.expression_digest
    monkeypatch.setattr(_frozen, "expression_digest", lambda x: digests.append(1) or real_digest(x))
    again = _frozen.reference_model(frozen, cluster_key="cluster")
    assert digests == [] and again.hash == first.hash  # not hashed again: its bytes are the same
    assert (again.expression != first.expression).nnz == 0
    mapped = mp.tl.map_to_reference(tiny_query, frozen, method="fast", copy=True)
    edits = {  # the arrays to edit in place (after the reference was verified and kept)
        "counts": lambda a: a.X.data,
        "normalisation factors": lambda a: a.obs["normalisation_scale"].to_numpy(),
        "embedding": lambda a: a.obsm["X_pca"].reshape(-1),
    }
    for name, values in edits.items():
        kept = values(frozen).copy()
        values(frozen)[7] += 1
        assert not np.array_equal(values(frozen), kept), name  # edited in place
        with pytest.raises(ValueError, match="modified after `tl.freeze_reference`"):
            mp.tl.map_to_reference(tiny_query, frozen, method="fast", copy=True)
        values(frozen)[:] = kept
        assert _frozen.reference_model(frozen, cluster_key="cluster").hash == first.hash, name
    assert digests, "an edited expression was hashed again"
    remapped = mp.tl.map_to_reference(tiny_query, frozen, method="fast", copy=True)
    np.testing.assert_array_equal(
        mapped.obsm["predicted_probabilities"].to_numpy(),
        remapped.obsm["predicted_probabilities"].to_numpy(),
    )


@pytest.mark.parametrize("width", [2, 1])
def test_neighbours_within_a_fold_equal_a_search_of_the_fold(monkeypatch, width):
    """Read off the cached search of every cell, or searched again: what the fold's own search gives."""
    monkeypatch.setattr(_anchors, "_WIDTH", width)  # 1: every fold cell short of neighbours
    _cache.clear_caches()
    rng = np.random.default_rng(7)
    centres = rng.normal(scale=4.0, size=(6, 5))
    lots = np.repeat(np.arange(12), 50)
    embedding = centres[rng.integers(0, 6, size=600)] + rng.normal(size=(600, 5))
    embedding[lots == 3] += 2.0  # a lot effect: some cells' neighbours are mostly in their lot
    embedding[[10, 11, 12]] = embedding[9]  # exact ties
    for held_out in ([0, 1, 2, 3], [3], list(range(11))):
        rows = np.flatnonzero(~np.isin(lots, held_out))
        found = _anchors.reference_neighbours(embedding, rows, 20, "exact", 0, owner="t")
        expected = within_set_neighbours(embedding[rows], 20, "exact", 0)
        np.testing.assert_array_equal(found, expected)
    every = _anchors.reference_neighbours(embedding, np.arange(600), 20, "exact", 0, owner="t")
    np.testing.assert_array_equal(every, within_set_neighbours(embedding, 20, "exact", 0))
    # approximate: read off an approximate wide search, near the fold's exact neighbours
    rows = np.flatnonzero(~np.isin(lots, [0, 1, 2, 3]))
    approximate = _anchors.reference_neighbours(embedding, rows, 20, "approximate", 0, owner="t")
    exact = within_set_neighbours(embedding[rows], 20, "exact", 0)
    np.testing.assert_array_equal(approximate[:, 0], np.arange(rows.size))  # the cell first
    shared = [np.intersect1d(a, b).size for a, b in zip(approximate, exact, strict=True)]
    assert np.mean(shared) / 20 >= 0.95


@pytest.mark.slow
def test_approximate_anchors_mapping_is_deterministic_and_near_exact(tiny_query, tiny_ref):
    """The anchors backend with approximate neighbours: identical on re-run, labels as exact.

    Agreement with exact labels on the tiny preset's other sets: 0.990 (AD, UC).
    """
    mapped = {}
    for method in ("approximate", "approximate", "exact"):
        _cache.clear_caches()
        mapped.setdefault(method, []).append(
            mp.tl.map_to_reference(
                tiny_query, tiny_ref, method="anchors", knn_method=method, copy=True
            )
        )
    first, again = mapped["approximate"]
    np.testing.assert_array_equal(
        first.obsm["predicted_probabilities"].to_numpy(),
        again.obsm["predicted_probabilities"].to_numpy(),
    )
    exact = mapped["exact"][0].obs["predicted"].to_numpy()
    assert (first.obs["predicted"].to_numpy() == exact).mean() >= 0.97


def test_anchors_searches_go_approximate_above_their_own_limit(monkeypatch):
    rng = np.random.default_rng(8)
    data, query = rng.normal(size=(900, 6)), rng.normal(size=(300, 6))
    approximate = knn(data, query, 10, method="approximate")
    exact = knn(data, query, 10, method="exact")
    monkeypatch.setattr(_anchors, "EXACT_MAX_PAIRS", 900 * 300 - 1)
    for expected, found in zip(approximate, _anchors._knn(data, query, 10), strict=True):
        np.testing.assert_array_equal(found, expected)
    monkeypatch.setattr(_anchors, "EXACT_MAX_PAIRS", 900 * 300)
    for expected, found in zip(exact, _anchors._knn(data, query, 10), strict=True):
        np.testing.assert_array_equal(found, expected)


def test_mapping_leaves_the_references_own_matrices_writable(tiny_query, tiny_ref):
    """The kept expression's own values are read-only, the reference's counts and X stay writable.

    The expression computed from the counts layer shares its ``indices``/``indptr``: freezing
    those in place made the user's reference read-only, and scanpy's ``rank_genes_groups`` on
    it then failed (``WRITEBACKIFCOPY base is read-only``).
    """
    from mscpotency import _frozen

    reference = tiny_ref.copy()  # buffers of its own
    _cache.clear_caches()
    _frozen.forget_expressions()
    mp.tl.map_to_reference(tiny_query, reference, method="fast", copy=True)
    kept = [entry for entry, _ in _frozen._EXPRESSIONS.values() if entry is not None]
    assert kept and not any(entry.data.flags.writeable for entry in kept)
    for matrix in (reference.X, *reference.layers.values()):
        for buffer in (matrix.data, matrix.indices, matrix.indptr):
            assert buffer.flags.writeable
    sc.tl.rank_genes_groups(reference, "cluster", method="wilcoxon", use_raw=False)


def test_shared_counts_count_the_entries_of_each_left_row_in_its_right_row():
    rng = np.random.default_rng(3)
    left, right = rng.integers(0, 40, (500, 30)), rng.integers(0, 40, (500, 30))
    expected = (left[:, :, None] == right[:, None, :]).any(axis=2).sum(axis=1)
    np.testing.assert_array_equal(_anchors._shared_counts(left, right), expected)


@pytest.mark.parametrize("n_anchors", [6, 4000])
def test_nearest_anchors_equal_a_search_over_every_anchors_point(n_anchors):
    """Searching the distinct anchored cells and expanding them gives the same anchors."""
    rng = np.random.default_rng(4)
    embedding = rng.standard_normal((3000, 30))
    cells = rng.integers(0, 40 if n_anchors < 10 else 3000, n_anchors)  # cells repeat
    expected = knn(embedding[cells], embedding, 50, method="exact")
    found = _anchors._nearest_anchors(embedding, cells, 50, knn_method="exact", random_state=0)
    np.testing.assert_array_equal(found[0], expected[0])
    np.testing.assert_array_equal(found[1], expected[1])


@pytest.mark.parametrize("cap", [10_000, 150])
def test_principal_axes_are_own_axes_without_the_coordinates(cap, monkeypatch):
    """Axes alone (calibration folds) equal those own_axes returns, with or without a subset."""
    from mscpotency.tl._mapping import _project

    monkeypatch.setattr(_project, "OWN_AXES_MAX_CELLS", cap)
    rng = np.random.default_rng(7)
    X = sparse.random(400, 60, density=0.2, random_state=7, format="csr", dtype=np.float32)
    A = _project.centred(X, centre="lot", reference_mean=np.zeros(60), lots=rng.integers(0, 3, 400))
    axes, scores = _project.own_axes(A, 5, random_state=1)
    np.testing.assert_array_equal(_project.principal_axes(A, 5, random_state=1), axes)
    centred = A.X.toarray() - A.means[A.groups]
    spread = scores - (centred @ axes)
    np.testing.assert_allclose(spread, np.broadcast_to(spread[:1], spread.shape), atol=1e-10)


def test_grouped_positions_are_a_stable_argsort():
    """The approximate search's probes grouped by cluster: a stable sort and its bounds."""
    from mscpotency.tl._mapping._neighbors import _grouped_positions

    rng = np.random.default_rng(5)
    values = rng.integers(0, 40, size=5000)
    values[values == 7] = 8  # a value with no position
    starts, order = _grouped_positions(values, 41)
    np.testing.assert_array_equal(order, np.argsort(values, kind="stable"))
    np.testing.assert_array_equal(starts, np.searchsorted(values[order], np.arange(42)))
    assert starts[7] == starts[8] and starts[-1] == values.size
