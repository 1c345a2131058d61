"""A lot's shift net of its make-up (tl/_mapping/_make_up.py), against a known mixture."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse

from mscpotency.tl._mapping._make_up import gene_offsets, lot_make_up

#: Four populations in ten dimensions, well apart (unit within-population spread).
CENTROIDS = np.zeros((4, 10))
CENTROIDS[0, 0], CENTROIDS[1, 1], CENTROIDS[2, 2], CENTROIDS[3, :2] = 6.0, 6.0, 6.0, (4.0, 4.0)
REFERENCE_SHARES = np.array([0.4, 0.3, 0.2, 0.1])


def mixture(shares: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` cells of the four populations in ``shares`` (exact counts), and their labels."""
    counts = np.round(shares * n).astype(int)
    labels = np.repeat(np.arange(4), counts)
    return CENTROIDS[labels] + rng.standard_normal((labels.size, 10)), labels


@pytest.fixture(scope="module")
def reference() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reference cells in their PCA (centred on their mean, as ``obsm['X_pca']`` is), their
    labels, and that mean."""
    cells, labels = mixture(REFERENCE_SHARES, 4000, np.random.default_rng(0))
    return cells - cells.mean(axis=0), labels, cells.mean(axis=0)


def test_each_lot_make_up_is_recovered_whatever_its_shift(reference):
    """Lots of other make-ups, each shifted by its own large vector and centred on its own
    mean (which hides both): the make-up comes back, and with it where the cells belong."""
    embedding, labels, mean = reference
    rng = np.random.default_rng(1)
    make_ups = [REFERENCE_SHARES, np.array([0.05, 0.05, 0.1, 0.8]), np.array([0.9, 0.0, 0.1, 0.0])]
    cells, groups, lot_means, truth = [], [], [], []
    for lot, shares in enumerate(make_ups):
        lot_cells, _ = mixture(shares, 300, rng)
        lot_cells = lot_cells - mean  # in the reference's frame
        shifted = lot_cells + rng.normal(0, 1.0, 10)  # the lot's own shift (donor, tissue)
        cells.append(shifted - shifted.mean(axis=0))  # centred on its own mean
        lot_means.append(shifted.mean(axis=0))
        groups.append(np.full(len(lot_cells), lot))
        truth.append(lot_cells)
    make_up = lot_make_up(
        np.vstack(cells), np.concatenate(groups), np.vstack(lot_means), embedding, labels, 4
    )
    estimated = make_up.shares
    np.testing.assert_allclose(estimated.sum(axis=1), 1.0)
    assert not make_up.ambiguous.any()
    np.testing.assert_allclose(estimated, np.vstack(make_ups), atol=0.02)
    # the lots' cells moved by the offset their make-up implies sit where they belong
    centroids = np.vstack([embedding[labels == k].mean(axis=0) for k in range(4)])
    for lot, lot_cells in enumerate(cells):
        moved = lot_cells + estimated[lot] @ centroids
        assert np.abs(moved.mean(axis=0) - truth[lot].mean(axis=0)).max() < 0.15


def test_a_label_without_reference_cells_gets_no_share(reference):
    """A calibration fold may lack a label: it is no component of the mixture."""
    embedding, labels, mean = reference
    kept = labels != 3
    cells, _ = mixture(np.array([0.5, 0.25, 0.25, 0.0]), 400, np.random.default_rng(2))
    lot_mean = cells.mean(axis=0, keepdims=True) - mean
    estimated = lot_make_up(
        cells - cells.mean(axis=0), np.zeros(len(cells), dtype=int), lot_mean, embedding[kept],
        labels[kept], 4,
    ).shares  # fmt: skip
    assert estimated[0, 3] == 0.0
    np.testing.assert_allclose(estimated[0, :3], [0.5, 0.25, 0.25], atol=0.02)


def test_a_lot_of_one_population_sits_where_its_shift_is_smallest(reference):
    """A lot of one population fits any population once translated onto it (within a few
    hundredths of a nat per cell): the one needing the smallest shift is taken, and the lot
    is marked ambiguous. Its mean alone (centred, as ``"lot"`` does) sits at the origin."""
    embedding, labels, mean = reference
    rng = np.random.default_rng(5)
    for population in range(4):
        shares = np.eye(4)[population]
        lot_cells, _ = mixture(shares, 300, rng)
        shift = rng.normal(0, 0.5, 10)
        shifted = lot_cells - mean + shift
        make_up = lot_make_up(
            shifted - shifted.mean(axis=0), np.zeros(300, dtype=int),
            shifted.mean(axis=0, keepdims=True), embedding, labels, 4,
        )  # fmt: skip
        assert make_up.shares[0].argmax() == population, make_up.shares
        assert make_up.shares[0, population] > 0.98
        assert make_up.ambiguous[0]
        # the shift found is the lot's own (the within-population covariance is about I)
        assert abs(make_up.shift[0] - np.linalg.norm(shift)) < 0.25, (make_up.shift, shift)


def test_gene_offsets_are_centroids_minus_the_mean():
    rng = np.random.default_rng(3)
    expression = sparse.random(50, 7, density=0.5, random_state=4, format="csr", dtype=np.float32)
    labels = rng.integers(0, 3, 50)
    mean = np.asarray(expression.mean(axis=0)).ravel()
    offsets = gene_offsets(expression, labels, 4, mean, rows=np.arange(40))
    dense = expression.toarray()[:40]
    for k in range(3):
        np.testing.assert_allclose(
            offsets[k], dense[labels[:40] == k].mean(axis=0) - mean, atol=1e-6
        )
    assert (offsets[3] == 0).all()  # a label with no cells among the rows
