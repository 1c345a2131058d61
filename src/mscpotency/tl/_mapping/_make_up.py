"""A lot's shift from the reference, net of its make-up.

Centring each query lot on its own mean removes what the lot's cells share (donor, tissue,
processing) before projection, but the mean of a lot is also its make-up: a lot made mostly
of potency cells has its mean near the potency population, and centring on it moves every
cell towards the reference's average make-up (on the tiny preset, a lot of 48 potency
cells in 60 was mapped 0.38 potency-like by anchors and 0.12 by fast).

A lot's mean is the reference's mean, plus the lot's shift, plus the offset its make-up
implies: ``sum_k p_k (c_k - mu)`` over the reference's populations ``k`` (centroids ``c_k``,
mean ``mu``). Both unknowns are estimated together, per lot, by expectation-maximisation of a
Gaussian mixture in the reference PCA whose components are the reference's populations
(their centroids and pooled within-population covariance, fixed) with the lot's own
mixing weights ``p`` and one translation of the lot: the cells of a lot centred on its own
mean sit at the reference's centroids after adding ``sum_k p_k C_k`` (``C_k`` the centroids
in the PCA), so each step computes the cells' population responsibilities at that offset,
their mean as the new ``p``, and the new offset (Saerens et al. 2002, Neural Computation
14:21, for the weights; the translation is the mixture's location). A shift of every
cell (donor, tissue) moves every mode of the mixture, which a change of weights cannot
mimic; a change of make-up changes the modes' weights, which a shift cannot.

The likelihood has local maxima (a lot of two populations can sit, translated, on two
others), so EM starts from the reference's make-up (offset zero: centring on the lot's own
mean) and from each population making up 90% of the lot. A lot of one population fits any
population once translated onto it: among the fits within :data:`AMBIGUOUS` nats per cell
of the best, the one needing the smallest shift is taken, and the lot is marked ambiguous.
The make-up is estimated from at most :data:`MAX_CELLS` cells of a lot.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy import linalg, sparse, special

from ..._frozen import ReferenceModel
from ._cache import BoundedCache
from ._project import CentredMatrix, csr_rdot

#: EM steps at most, and the change of every lot's weights (largest absolute) that stops it.
MAX_STEPS = 200
TOLERANCE = 1e-4
#: Cells of a lot the make-up is estimated from, at most (a random subset above: the shares
#: of 5,000 cells are within a point of the lot's; the cost stays that of 5,000 cells).
MAX_CELLS = 5_000


def population_centroids(
    embedding: np.ndarray, labels: np.ndarray, n_labels: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each population's centroid in the reference PCA, the pooled covariance's Cholesky factor.

    Returns the centroids ``(n_labels, n_comps)`` (rows of absent labels are zero), whether
    each label has cells, and the lower Cholesky factor of the pooled within-population
    covariance (a ridge of 1e-6 of its mean variance keeps it positive definite).
    """
    counts = np.bincount(labels, minlength=n_labels)
    present = counts > 0
    sums = np.zeros((n_labels, embedding.shape[1]))
    np.add.at(sums, labels, embedding)
    centroids = np.divide(sums, np.maximum(counts, 1)[:, None])
    residual = embedding - centroids[labels]
    covariance = residual.T @ residual / max(labels.size - int(present.sum()), 1)
    ridge = 1e-6 * max(float(np.trace(covariance)) / covariance.shape[0], 1e-12)
    factor = linalg.cholesky(covariance + ridge * np.eye(covariance.shape[0]), lower=True)
    return centroids, present, factor


@dataclass(frozen=True)
class MakeUp:
    """Each lot's make-up and shift, as estimated (rows: lot codes ``0 .. n_lots - 1``)."""

    shares: np.ndarray  # (n_lots, n_labels) share of every reference population, rows sum to 1
    shift: np.ndarray  # (n_lots,) the lot's shift from the reference, in within-population SDs
    ambiguous: np.ndarray  # (n_lots,) bool: another make-up fits about as well (see AMBIGUOUS)
    unusual: np.ndarray | None = None  # (n_lots,) bool: beyond the reference lots' (UNUSUAL)


#: A lot's make-up is unusual when some population's share in it exceeds the largest share
#: that population has in any reference lot by more than this. The novelty calibration's
#: held-out reference lots never had such a make-up, and known cells of a lot made mostly
#: of one population are flagged novel above the rate (study preset, lots of 150 cells
#: mapped alone: 0-3% at alpha 0.01 up to 50% potency cells, 4-12% at 80-100%); the query
#: lots of the presets, new populations in them included, stay within 0.02-0.13 of the
#: reference lots' largest shares.
UNUSUAL = 0.25

#: Fits whose log-likelihood is within this many nats per cell of the best explain the lot's
#: cells about as well; the one needing the smallest shift is taken. On the study and
#: cross-technology presets, lots of 300 cells of one population fitted every population
#: but the low-quality cluster within 0.01-0.15 nats per cell (a lot's location cannot tell
#: them apart, only the shift each needs: 0.7-3.8 within-population SDs for the true one,
#: 6.5-10 for the others); lots with 5% of other populations fitted their true make-up best
#: by 0.8-1.1.
AMBIGUOUS = 0.25


def lot_make_up(
    projected: np.ndarray,
    groups: np.ndarray,
    lot_means: np.ndarray,
    embedding: np.ndarray,
    labels: np.ndarray,
    n_labels: int,
) -> MakeUp:
    """Each lot's share of every reference population, estimated with its shift.

    EM runs from several starts (:func:`_starts`); among the fits within :data:`AMBIGUOUS`
    nats per cell of the best, the one whose shift is smallest is taken (a lot made of one
    population fits any population once translated onto it).

    Parameters
    ----------
    projected
        ``(n, n_comps)`` the query in the reference PCA, each lot centred on its own mean.
    groups
        ``(n,)`` each cell's lot code (``0 .. n_lots - 1``).
    lot_means
        ``(n_lots, n_comps)`` each lot's mean in the reference PCA.
    embedding, labels
        The reference cells in the PCA and their label codes.
    n_labels
        Number of labels (absent ones get a share of 0).
    """
    centroids, present, factor = population_centroids(embedding, labels, n_labels)
    prior = np.bincount(labels, minlength=n_labels)[present] / labels.size
    white_centroids = _whitened(factor, centroids[present])
    white_means = _whitened(factor, lot_means)
    n_groups = lot_means.shape[0]
    shares, shift = np.zeros((n_groups, n_labels)), np.zeros(n_groups)
    ambiguous = np.zeros(n_groups, dtype=bool)
    for group in range(n_groups):
        white = _whitened(factor, _at_most(projected[groups == group], MAX_CELLS, group))
        fits = [_em(white, white_centroids, start) for start in _starts(prior)]
        weights = np.array([fit[0] for fit in fits])
        per_cell = np.array([fit[1] for fit in fits]) / max(white.shape[0], 1)
        shifts = np.linalg.norm(white_means[group] - weights @ white_centroids, axis=1)
        close = per_cell >= per_cell.max() - AMBIGUOUS
        chosen = np.flatnonzero(close)[np.argmin(shifts[close])]  # ties: the first
        shares[group, present], shift[group] = weights[chosen], shifts[chosen]
        differ = np.abs(weights[close] - weights[chosen]).max(axis=1) > 0.1
        ambiguous[group] = bool(differ.any())
    return MakeUp(shares, shift, ambiguous)


def _at_most(cells: np.ndarray, n_max: int, seed: int) -> np.ndarray:
    """``cells``, or ``n_max`` of them drawn at random (seeded) when there are more."""
    if cells.shape[0] <= n_max:
        return cells
    return cells[np.sort(np.random.default_rng([seed, 11]).choice(cells.shape[0], n_max, False))]


def _whitened(factor: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Rows of ``points`` in units of the pooled within-population covariance (``L^-1 x``)."""
    return linalg.solve_triangular(factor, np.atleast_2d(points).T, lower=True).T


def _starts(prior: np.ndarray) -> list[np.ndarray]:
    """Where EM starts: the reference's make-up, then each population making up 90% of the lot."""
    starts = [prior]
    for k in range(prior.size):
        rest = np.delete(prior, k)
        start = np.insert(0.1 * rest / max(rest.sum(), 1e-12), k, 0.9)
        starts.append(start / start.sum())
    return starts


def _em(cells: np.ndarray, centroids: np.ndarray, start: np.ndarray) -> tuple[np.ndarray, float]:
    """The mixing weights of ``cells`` (whitened, centred on their mean) over ``centroids``.

    Returns the weights and the mixture's log-likelihood at them (up to a constant). With
    the offset ``w @ C``, ``(x + w C) . c_k = x . c_k + (w C C^T)_k``: the cells' products
    with the centroids are formed once, each step is cells x populations.
    """
    weights = start.copy()
    products = cells @ centroids.T  # (n, k)
    gram = centroids @ centroids.T  # (k, k)
    half_squared = 0.5 * np.diag(gram)
    for _ in range(MAX_STEPS):
        joint = _log_joint(products, gram, half_squared, weights)
        joint -= joint.max(axis=1, keepdims=True)
        responsibility = np.exp(joint)
        responsibility /= responsibility.sum(axis=1, keepdims=True)
        new = responsibility.mean(axis=0)
        done = np.abs(new - weights).max() < TOLERANCE
        weights = new
        if done:
            break
    joint = _log_joint(products, gram, half_squared, weights)
    shifted = cells + weights @ centroids
    log_likelihood = special.logsumexp(joint, axis=1) - 0.5 * (shifted**2).sum(axis=1)
    return weights, float(log_likelihood.sum())


def _log_joint(
    products: np.ndarray, gram: np.ndarray, half_squared: np.ndarray, weights: np.ndarray
) -> np.ndarray:
    """``log p_k + log N(x + offset; c_k, I)`` up to a per-cell term, at the offset of ``weights``."""
    log_density = products + (weights @ gram - half_squared)[None, :]
    return np.log(np.maximum(weights, 1e-300))[None, :] + log_density


def gene_offsets(
    expression: sparse.csr_matrix,
    labels: np.ndarray,
    n_labels: int,
    reference_mean: np.ndarray,
    rows: np.ndarray | None = None,
) -> np.ndarray:
    """Each population's centroid minus the reference's mean, on every gene: ``(n_labels, genes)``.

    Over the cells ``rows`` (``None``: all), in double precision without a copy of the
    expression (:func:`._project.csr_rdot`); a label without cells gets zeros.
    """
    labels = labels if rows is None else labels[rows]
    counts = np.bincount(labels, minlength=n_labels)
    indicator = np.zeros((n_labels, labels.size))
    indicator[labels, np.arange(labels.size)] = 1.0 / np.maximum(counts, 1)[labels]
    centroids = csr_rdot(expression, indicator, rows)
    return np.where(counts[:, None] > 0, centroids - reference_mean[None, :], 0.0)


def make_up_centred(
    by_lot: CentredMatrix, shares: np.ndarray, offsets: np.ndarray
) -> CentredMatrix:
    """``by_lot`` with each lot moved by the offset its make-up implies (``shares @ offsets``)."""
    return CentredMatrix(by_lot.X, by_lot.groups, by_lot.means - shares @ offsets, by_lot.rows)


@dataclass(frozen=True)
class Populations:
    """The reference's populations in one PCA: what a lot's make-up is estimated against."""

    pca_mean: np.ndarray  # (genes,) the mean the PCA's coordinates are relative to
    loadings: np.ndarray  # (genes, n_comps)
    embedding: np.ndarray  # (n, n_comps) the reference cells in that PCA
    labels: np.ndarray  # (n,) their label codes
    offsets: np.ndarray  # (n_labels, genes) each population's centroid minus ``pca_mean``
    largest_shares: np.ndarray  # (n_labels,) each population's largest share in a reference lot


#: Every reference cell's populations, by reference (``data_hash``): each mapping onto one
#: reference in this process needs the same.
_POPULATIONS: BoundedCache[Populations] = BoundedCache(4)


def reference_populations(model: ReferenceModel, rows: np.ndarray | None = None) -> Populations:
    """The populations of the reference cells ``rows`` (``None``: all, cached) in its PCA."""
    if rows is None:
        return _POPULATIONS.get(model.data_hash, lambda: _populations(model, None))
    return _populations(model, rows)


def _populations(model: ReferenceModel, rows: np.ndarray | None) -> Populations:
    embedding, labels = model.embedding, model.labels
    if rows is not None:
        embedding, labels = embedding[rows], labels[rows]
    n_labels = len(model.categories)
    offsets = gene_offsets(model.expression, model.labels, n_labels, model.pca_mean, rows)
    lots = np.zeros(labels.size, dtype=np.int64)
    if model.lots is not None:
        lots = np.unique(model.lots if rows is None else model.lots[rows], return_inverse=True)[1]
    counts = np.zeros((int(lots.max(initial=0)) + 1, n_labels))
    np.add.at(counts, (lots, labels), 1.0)
    largest = (counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)).max(axis=0)
    return Populations(model.pca_mean, model.loadings, embedding, labels, offsets, largest)


def estimated_make_up(
    by_lot: CentredMatrix, projected: np.ndarray, populations: Populations
) -> MakeUp:
    """Each lot's estimated make-up and shift, and whether the make-up is unusual (:data:`UNUSUAL`).

    ``by_lot`` are the cells centred on each lot's own mean (its groups are the lots) and
    ``projected`` their coordinates in the populations' PCA.
    """
    lot_means = (by_lot.means - populations.pca_mean) @ populations.loadings
    make_up = lot_make_up(
        projected,
        by_lot.groups,
        lot_means,
        populations.embedding,
        populations.labels,
        populations.offsets.shape[0],
    )
    unusual = (make_up.shares > populations.largest_shares[None, :] + UNUSUAL).any(axis=1)
    return replace(make_up, unusual=unusual)


def net_of_make_up(
    by_lot: CentredMatrix, projected: np.ndarray, populations: Populations
) -> tuple[CentredMatrix, np.ndarray, MakeUp]:
    """The cells centred on each lot's shift net of its make-up (rather than on its mean).

    ``by_lot`` are the cells centred on each lot's own mean and ``projected`` their
    coordinates in the populations' PCA. Returns the recentred cells, their coordinates
    and the lots' make-up (:func:`estimated_make_up`).
    """
    make_up = estimated_make_up(by_lot, projected, populations)
    cells = make_up_centred(by_lot, make_up.shares, populations.offsets)
    return (
        cells,
        projected + make_up.shares[by_lot.groups] @ (populations.offsets @ populations.loadings),
        make_up,
    )
