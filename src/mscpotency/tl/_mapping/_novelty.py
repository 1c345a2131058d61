"""Calibrated novelty: the mapping score as a split-conformal p-value, and per-lot excess tests.

A fixed cut-off on the mapping score does not carry over between data sets: on real data
cells of a population the reference lacks scored 0.63-0.93 where known cells scored
0.92-0.99 (issue 16). So the score is calibrated on reference cells the reference model
did not see, cross-fitted by lot (split-conformal prediction, Vovk et al. 2005; Bates et
al. 2023 for conformal novelty detection):

1. the reference lots are split into folds; for each fold, the PCA is refitted on the other
   lots (so the held-out cells are new to the embedding, as query cells are), and the
   held-out cells are scored exactly as a query is (centred per lot, their own axes, the
   same smoothing; a large query in sets of about a fold's size, :func:`scoring_sets`,
   and a query smaller than a fold matched by scoring the held-out cells in sets of its size,
   each beside as many cells of the fold's other lots as the query is scored beside
   reference cells, :func:`padding`), giving one calibration score per held-out cell;
2. a query cell's novelty p-value is ``(1 + #{calibration scores <= its score}) / (n + 1)``:
   for a cell exchangeable with the reference's cells (a known population, measured alike),
   ``P(p <= alpha) <= alpha``, whatever the score's scale;
3. cells with ``p <= novelty_alpha`` are flagged novel, and per lot the number flagged is
   compared with ``novelty_alpha`` times its cells by a one-sided binomial test (a lot with
   many novel cells is a finding, not noise).

The guarantee holds for known cells exchangeable with the reference's held-out cells. A
query from another technology is not: at lower depth its known cells score lower (more
noise per cell), and with calibration cells at the reference's depth the flagged share of
known cells exceeds the rate (on ``datasets.crosstech``, 40% depth: 9-14% flagged at 0.05).
So when the query captures clearly fewer molecules than the reference (its depth ratio,
below, under :data:`DEPTH_MATCH_BELOW`), the held-out reference cells are first measured
as the query's technology would measure them: each count is thinned binomially with a
per-gene capture efficiency ``e_g = min(1, mean query count / mean reference count)``
(Svensson 2020: UMI technologies differ by such thinning), and the cells are renormalised.
The p-values are then valid for known cells exchangeable with *thinned* held-out reference
cells: exact when the query's technology is binomial thinning of the reference's with
efficiencies the query's gene means reveal; approximate otherwise (composition differences
between query and reference enter ``e_g`` too; the benchmark says by how much). The depth
ratio, whether matching was applied, and the efficiencies' spread are recorded.

What calibration cannot do is make the score see a population it cannot see. On
``datasets.crosstech`` (40% depth) the ninth population's programme lies off the reference
PCs (7% of its mean shift spanned) but adds a variance of only ~0.97 along its direction in
a scoring set of ~1,180 cells, below the ~2.7 of the largest noise direction of the known
cells at that depth: the query's own axes do not find it (best single axis AUROC 0.74), and
11-25% of it is flagged at 0.05 where known cells are held at 2.1-4.8% (seeds 0-2). Label-free
alternatives tried on the same cells (kNN distance in the reference PCA, the residual after
reconstruction from reference neighbours, a PCA of the residual whitened by the thinned
reference) reach AUROC <= 0.8 against 0.98 for the population's true direction; scoring
each calibration fold inside the whole query (transductively, so both share the query's own
axes) flags 19-50% with known cells at 3.2-4.4% (``benchmarks/novelty_crosstech_diagnosis.py``).
Fewer genes lower the noise edge: on the 200 genes whose correlations in the query exceed
those of the thinned reference most, the leading axis of the covariance excess, fitted and
calibrated with cross-fitting on both sides, flags 56-96% of it on five seeds of six at known
0.4-3.0%, but 1% on the sixth, where its excess covariance stays in the noise
(``benchmarks/novelty_crosstech_genes.py``; not used here: it does not meet the issue either).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np
import pandas as pd
from scipy import sparse, stats

from ..._frozen import ReferenceModel
from ..._settings import progress
from ._cache import BoundedCache
from ._calibration import lot_folds
from ._project import centred, principal_axes
from ._scoring import mapping_score

logger = logging.getLogger("mscpotency")

#: Held-out reference cells scored per fold, at most (a random subset above).
NOVELTY_MAX_CELLS = 10_000
#: Folds of reference lots held out in turn.
NOVELTY_FOLDS = 3
#: Family-wise level of the per-lot excess test (Bonferroni over lots).
LOT_LEVEL = 0.05
#: Calibration cells are thinned to the query's depth when the query's total counts on the
#: embedding genes are below this share of the reference's (a clearly shallower technology;
#: the same technology varies by a few percent between lots).
DEPTH_MATCH_BELOW = 0.8

#: Largest smallest-count of a cell that :func:`_counts` recognises.
_MAX_SMALLEST = 8

_CACHE_MAX = 16
#: (A frozen reference can ship each of these three, :mod:`._shipped`.)
_CACHE: BoundedCache[np.ndarray] = BoundedCache(_CACHE_MAX, shipped_as="novelty_scores")
_MEANS: BoundedCache[np.ndarray] = BoundedCache(_CACHE_MAX, shipped_as="mean_counts")
#: The reference PCA refitted without each fold: it depends on the reference and the folds
#: only, not on the query (its depth or lot size), so later query sets reuse it.
_LOADINGS: BoundedCache[np.ndarray] = BoundedCache(
    _CACHE_MAX * NOVELTY_FOLDS, shipped_as="fold_loadings"
)


@dataclass(frozen=True)
class DepthModel:
    """How the query's technology captures the reference's molecules, per embedding gene."""

    depth_ratio: float  # the query's mean total count on its measured genes / the reference's
    efficiency: np.ndarray | None  # (genes,) capture efficiency; None: calibrate as they are
    key: str  # digest of the efficiencies (the calibration cache's key)
    matched: bool = False  # whether the measured genes are thinned to the query's depth


def depth_key(depth: DepthModel | None) -> str:
    """The part of a calibration cache's key the query's depth sets (``"unmatched"``: none)."""
    return "unmatched" if depth is None else depth.key


def depth_model(
    query_expression: sparse.csr_matrix,
    reference_expression: sparse.csr_matrix,
    *,
    measured: np.ndarray | None = None,
    reference_mean: np.ndarray | None = None,
    below: float = DEPTH_MATCH_BELOW,
) -> DepthModel:
    """The query's depth relative to the reference, and per-gene capture efficiencies.

    Counts are recovered exactly from the log-normalised expression of both (:func:`_counts`;
    nothing beyond what a frozen reference keeps is needed). The efficiency of gene ``g`` is
    ``min(1, mean query count / mean reference count)``, kept when the depth ratio (over
    the genes the query measures) is below ``below``. Genes the query does not measure
    (``measured`` False: zero-padded) get efficiency 0 whatever the depth: the calibration
    cells lose them as the query's cells did (on the tiny preset, a query lacking the 45%
    of genes with the smallest loadings had 3.6% of its known cells flagged at 0.01 when
    they were kept, 0.7% when dropped; the missing genes are reported by their own warning).
    """
    query_mean = mean_counts(query_expression)
    reference_mean = mean_counts(reference_expression) if reference_mean is None else reference_mean
    measured = np.ones(query_mean.size, dtype=bool) if measured is None else measured
    total = reference_mean[measured].sum()
    ratio = float(query_mean[measured].sum() / total) if total > 0 else 1.0
    matched = ratio < below
    if not matched and measured.all():
        return DepthModel(ratio, None, "unmatched")
    efficiency = np.ones_like(reference_mean)
    if matched:
        np.divide(query_mean, reference_mean, out=efficiency, where=reference_mean > 0)
    efficiency = np.where(measured, np.clip(efficiency, 0.0, 1.0), 0.0)
    key = hashlib.sha1(np.round(efficiency, 4).tobytes()).hexdigest()[:16]
    return DepthModel(ratio, efficiency, key, matched)


def reference_mean_counts(model: ReferenceModel) -> np.ndarray:
    """:func:`mean_counts` of the reference's cells (cached by the reference's hash)."""
    return _MEANS.get((model.data_hash,), lambda: mean_counts(model.expression))


def mean_counts(expression: sparse.csr_matrix) -> np.ndarray:
    """Each gene's mean count over the cells (counts recovered as :func:`_counts` recovers them).

    One compiled pass over the stored values, row chunks in parallel (:func:`_count_sums`),
    without the double-precision copy and temporaries of ``_counts(X)[0].mean(0)`` (+5.5 GiB
    and 15 CPU s on a 10^5-cell reference). The counts are summed as integers, so the mean
    (the exact sum over the number of cells) does not depend on the number of threads.
    """
    from ..._cell_stats import worker_threads

    X = sparse.csr_matrix(expression)
    if X.shape[0] == 0:
        return np.zeros(X.shape[1])
    n_parts = max(1, min(worker_threads(), X.shape[0]))
    sums = np.zeros((n_parts, X.shape[1]), dtype=np.int64)
    longest = int(np.diff(X.indptr).max())  # a row's stored values (duplicates included)
    _count_sums(X.data, X.indices, X.indptr, _MAX_SMALLEST, longest, sums)
    return sums.sum(axis=0) / X.shape[0]


@numba.njit(parallel=True, cache=True)
def _count_sums(data, indices, indptr, max_smallest, longest, sums):  # pragma: no cover
    """``sums[part, g]``: the counts of gene ``g`` in the rows of ``part`` (parts: row chunks).

    Each row's counts as :func:`_whole_counts` recovers them from ``expm1`` of its stored
    non-zero values (zeros stored explicitly are skipped, as ``eliminate_zeros`` drops them).
    """
    n_rows, n_parts = indptr.size - 1, sums.shape[0]
    for part in numba.prange(n_parts):
        values = np.empty(longest)
        columns = np.empty(longest, dtype=np.int64)
        bounds, scale = np.zeros(2, dtype=indptr.dtype), np.zeros(1)  # one row for _whole_counts
        for row in range(part * n_rows // n_parts, (part + 1) * n_rows // n_parts):
            n = 0
            for k in range(indptr[row], indptr[row + 1]):
                if data[k] != 0:
                    values[n] = np.expm1(np.float64(data[k]))
                    columns[n] = indices[k]
                    n += 1
            if n == 0:
                continue
            bounds[1] = n
            _whole_counts(values[:n], bounds, max_smallest, scale)
            for i in range(n):
                sums[part, columns[i]] += np.int64(values[i])


def _counts(expression: sparse.csr_matrix) -> tuple[sparse.csr_matrix, np.ndarray]:
    """Integer counts behind ``log1p(counts * scale)`` and each cell's ``scale`` (0 if empty).

    A cell's smallest value is ``m * scale`` for its smallest count ``m``: the smallest
    ``m`` (up to :data:`_MAX_SMALLEST`) that makes every value of the cell a whole multiple
    of ``scale`` is taken (a cell without integer multiples keeps ``m = 1``). The cells are
    read by a compiled kernel (:func:`_whole_counts`; serial: a parallel one ran 0.068 s
    instead of 0.096 s on 2 million values on 2 cores, but took 6.7 s instead of 1.0 s to
    compile into an empty cache, back to back under load).
    """
    X = sparse.csr_matrix(expression, dtype=np.float64, copy=True)
    X.eliminate_zeros()
    np.expm1(X.data, out=X.data)
    scale = np.zeros(X.shape[0])
    _whole_counts(X.data, X.indptr, _MAX_SMALLEST, scale)
    return X, scale


@numba.njit(nogil=True, cache=True)
def _whole_counts(data, indptr, max_smallest, scale):  # pragma: no cover - compiled
    """In place: each row's values divided by its ``scale``, rounded to whole counts >= 1.

    Row by row what :func:`_counts` documents: ``ratio = value / smallest``; the first
    ``m <= max_smallest`` whose multiples ``ratio * m`` are all within ``1e-3 * max(., 1)``
    of a whole number is the smallest count (``1`` if none), ``scale = smallest / m``.
    """
    for row in range(indptr.size - 1):
        start, stop = indptr[row], indptr[row + 1]
        if stop == start:
            continue
        smallest = data[start]
        for k in range(start + 1, stop):
            smallest = min(smallest, data[k])
        multiple = 1.0
        for m in range(1, max_smallest + 1):
            whole = True
            for k in range(start, stop):
                value = data[k] / smallest * m
                if abs(value - np.rint(value)) >= 1e-3 * max(value, 1.0):
                    whole = False
                    break
            if whole:
                multiple = float(m)
                break
        for k in range(start, stop):
            data[k] = max(np.rint(data[k] / smallest * multiple), 1.0)
        scale[row] = smallest / multiple


def thinned(
    expression: sparse.csr_matrix, efficiency: np.ndarray, rng: np.random.Generator
) -> sparse.csr_matrix:
    """Cells as a technology capturing each gene's molecules at ``efficiency`` records them.

    Each count is thinned binomially, and the cell renormalised: its library size shrinks
    by the share of its counts kept (the embedding genes standing in for all of its genes).
    """
    counts, scale = _counts(expression)
    kept = rng.binomial(counts.data.astype(np.int64), efficiency[counts.indices]).astype(float)
    rows = np.repeat(np.arange(counts.shape[0]), np.diff(counts.indptr))
    before = np.bincount(rows, weights=counts.data, minlength=counts.shape[0])
    after = np.bincount(rows, weights=kept, minlength=counts.shape[0])
    factor = np.divide(scale * before, after, out=np.zeros_like(after), where=after > 0)
    out = sparse.csr_matrix(
        (np.log1p(kept * factor[rows]).astype(np.float32), counts.indices, counts.indptr),
        shape=counts.shape,
    )
    out.eliminate_zeros()
    return out


def held_out_mapping_scores(
    model: ReferenceModel,
    *,
    n_comps_own: int,
    knn_method: str,
    random_state: int,
    lot_size: int | None = None,
    n_folds: int = NOVELTY_FOLDS,
    depth: DepthModel | None = None,
    set_size: int | None = None,
    n_beside: int = 0,
) -> np.ndarray:
    """Mapping scores of reference cells scored with their lots held out (sorted; cached).

    The cache is keyed by the cells scored and the lot (or part of a lot) each is centred
    in, not by ``lot_size`` itself: query sets whose lot sizes split the held-out lots alike
    (on the study preset, every set: its query lots are no smaller than the reference's)
    share one calibration, bit for bit the one each would compute.

    Parameters
    ----------
    model
        The reference.
    n_comps_own, knn_method, random_state
        As the query is scored (:func:`._scoring.mapping_score`).
    lot_size
        The query's typical cells per lot: held-out lots larger than it are split at random
        into parts of this size, each centred and smoothed as a lot of its own, since the
        score of a cell depends on the size of the lot it is smoothed within (a 50-cell lot
        averages each cell with 40% of its lot). ``None``: lots as they are.
    n_folds
        Folds of reference lots (random cells when the reference has fewer lots).
    depth
        The query's depth model (:func:`depth_model`): when it has efficiencies, the
        held-out cells are thinned to them (and lose the genes the query lacks) first.
    set_size
        The cells the query is scored with together, when clearly fewer than a fold's
        (:func:`padding`): each fold is then scored in sets of whole lots (or lot parts) of
        about this size (:func:`scoring_sets`), since a smaller set fits noisier axes of
        its own and scores lower (one lot released alone had 4-8% of its known cells
        flagged at alpha 1% against fold-size calibration). ``None``: each fold as one set.
    n_beside
        With ``set_size``: the reference cells the query set is scored beside
        (:func:`scored_as_a_query`); each calibration set is scored beside as many cells drawn
        from the fold's other lots (the cells its PCA is refitted on, as the query's
        background is the reference PCA's), thinned alike. 0: each set alone.
    """
    folds = held_out_sets(model, random_state, lot_size, n_folds)
    if set_size is not None and not padding(model, random_state, set_size, n_folds):
        set_size = None  # a fold is scored as one set, as the query is
    n_beside = 0 if set_size is None else n_beside
    key = (model.data_hash, n_comps_own, knn_method, random_state, n_folds, depth_key(depth))
    key += (_digest(folds),) if set_size is None else (_digest(folds), set_size, n_beside)
    return _CACHE.get(
        key,
        lambda: _score_held_out_folds(
            model,
            folds,
            n_comps_own,
            knn_method,
            random_state,
            n_folds,
            depth,
            set_size,
            n_beside,
        ),
    ).copy()


@dataclass(frozen=True, eq=False)
class HeldOutSet:
    """One fold's held-out reference cells and the lot (or part of a lot) each is centred in."""

    fold: int
    rest: np.ndarray  # the other cells, which the fold's PCA is refitted on
    cells: np.ndarray
    lots: np.ndarray | None


def held_out_sets(
    model: ReferenceModel, random_state: int, lot_size: int | None, n_folds: int
) -> list[HeldOutSet]:
    """The cells each fold scores and how they are grouped: all the scoring depends on.

    Cheap (random draws only), so the calibration cache is keyed by what is scored rather
    than by the query's lot size: lot sizes that split the held-out lots alike (e.g. every
    query lot at least as large as the reference's lots) share one calibration.
    """
    n = model.expression.shape[0]
    rng = np.random.default_rng([random_state, 3])
    out = []
    for fold, held_out in enumerate(lot_folds(model.lots, n, n_folds, random_state)):
        cells = np.flatnonzero(held_out)
        if cells.size > NOVELTY_MAX_CELLS:
            cells = np.sort(rng.choice(cells, NOVELTY_MAX_CELLS, replace=False))
        lots = _parts(
            model.lots[cells] if model.lots is not None else None, cells.size, lot_size, rng
        )
        out.append(HeldOutSet(fold, np.flatnonzero(~held_out), cells, lots))
    return out


def fold_loadings(
    model: ReferenceModel, held: HeldOutSet, n_folds: int, random_state: int
) -> np.ndarray:
    """The reference PCA refitted on the cells ``held`` leaves out of its fold (cached)."""
    return _LOADINGS.get(
        (model.data_hash, n_folds, random_state, held.fold, held.rest.size),
        lambda: _refitted_loadings(model, held.rest, random_state),
    )


def _digest(folds: list[HeldOutSet]) -> str:
    """A digest of every fold's cells and the lot (part) each is centred in."""
    sha = hashlib.sha1()
    for fold in folds:
        sha.update(fold.cells.astype(np.int64).tobytes())
        if fold.lots is not None:
            sha.update(np.asarray(fold.lots, dtype=str).tobytes())
        sha.update(b"|")
    return sha.hexdigest()


def _score_held_out_folds(
    model: ReferenceModel,
    folds: list[HeldOutSet],
    n_comps_own: int,
    knn_method: str,
    random_state: int,
    n_folds: int,
    depth: DepthModel | None,
    set_size: int | None = None,
    n_beside: int = 0,
) -> np.ndarray:
    thinning = np.random.default_rng([random_state, 4])
    draw = np.random.default_rng([random_state, 6])
    scores = []
    for held in progress(folds, desc="novelty calibration (held-out reference lots)"):
        loadings = fold_loadings(model, held, n_folds, random_state)
        expression = model.expression[held.cells]
        if depth is not None and depth.efficiency is not None:
            expression = thinned(expression, depth.efficiency, thinning)
        n = held.cells.size
        sets = (
            np.zeros(n, dtype=np.int64)
            if set_size is None
            else scoring_sets(held.lots, n, set_size, random_state, whole=False)
        )
        score = scored_in_sets(
            expression,
            held.lots,
            sets,
            model.pca_mean,
            loadings,
            n_comps_own,
            knn_method,
            random_state,
            beside=(
                (lambda rest=held.rest: background(model, rest, n_beside, depth, draw, thinning))
                if n_beside
                else None
            ),
        )
        scores.append(score[np.isfinite(score)])
    calibration = np.sort(np.concatenate(scores))
    logger.info("novelty calibration: %d held-out reference cells", calibration.size)
    return calibration


def scored_as_a_query(
    expression: sparse.csr_matrix,
    lots: np.ndarray | None,
    pca_mean: np.ndarray,
    loadings: np.ndarray,
    n_comps_own: int,
    knn_method: str,
    random_state: int,
    beside: Background | None = None,
) -> np.ndarray:
    """The mapping score of cells scored together as one query set (centred per lot).

    The one scoring both sides of the novelty p-value use: held-out reference cells here,
    and a query's scoring sets in :func:`mscpotency.tl.map_to_reference`. ``beside``:
    reference cells the set is scored together with (:func:`padding`), each of their lots a
    group of its own (centred and smoothed apart from the set's lots); only the set's own
    cells' scores are returned.
    """
    n = expression.shape[0]
    if beside is not None:
        own = np.zeros(n, dtype=np.int64)
        if lots is not None:
            own = np.unique(np.asarray(lots, dtype=str), return_inverse=True)[1]
        theirs = np.unique(beside.lots, return_inverse=True)[1] + own.max() + 1
        expression = sparse.vstack([expression, beside.expression], format="csr")
        lots = np.concatenate([own, theirs]).astype(str)
    by_lot = centred(expression, centre="lot", reference_mean=pca_mean, lots=lots)
    score, _, _ = mapping_score(
        by_lot, loadings, n_comps=n_comps_own, knn_method=knn_method, random_state=random_state
    )
    return score[:n]


def scored_in_sets(
    expression: sparse.csr_matrix,
    lots: np.ndarray | None,
    sets: np.ndarray,
    pca_mean: np.ndarray,
    loadings: np.ndarray,
    n_comps_own: int,
    knn_method: str,
    random_state: int,
    beside: Callable[[], Background] | None = None,
) -> np.ndarray:
    """Each cell's :func:`scored_as_a_query` score, the cells of each of ``sets`` scored together.

    ``beside``: draws the reference cells each set is scored beside (:func:`scored_as_a_query`);
    ``None``: each set alone.
    """
    score = np.empty(expression.shape[0])
    for part in np.unique(sets):
        cells = np.flatnonzero(sets == part)
        score[cells] = scored_as_a_query(
            expression[cells],
            lots[cells] if lots is not None else None,
            pca_mean,
            loadings,
            n_comps_own,
            knn_method,
            random_state,
            beside() if beside is not None else None,
        )
    return score


@dataclass(frozen=True)
class Background:
    """Reference cells a small query set is scored beside: they shape its own axes, unscored."""

    expression: sparse.csr_matrix
    lots: np.ndarray  # each cell's reference lot (one group for a reference without lots)


def background(
    model: ReferenceModel,
    pool: np.ndarray,
    n: int,
    depth: DepthModel | None,
    draw: np.random.Generator,
    thinning: np.random.Generator,
) -> Background:
    """``n`` cells drawn from the reference's cells ``pool``, measured as the query measures them.

    Thinned to the query's depth when its depth model thins the calibration cells, so that
    a set is of one technology, query and background alike.
    """
    cells = np.sort(draw.choice(pool, min(n, pool.size), replace=False))
    expression = model.expression[cells]
    if depth is not None and depth.efficiency is not None:
        expression = thinned(expression, depth.efficiency, thinning)
    lots = np.zeros(cells.size) if model.lots is None else np.asarray(model.lots)[cells]
    return Background(expression, np.asarray(lots, dtype=str))


def calibration_set_size(
    model: ReferenceModel, random_state: int, n_folds: int = NOVELTY_FOLDS
) -> int:
    """Cells scored together per fold of the calibration (the median fold, capped)."""
    folds = lot_folds(model.lots, model.expression.shape[0], n_folds, random_state)
    return int(min(NOVELTY_MAX_CELLS, np.median([fold.sum() for fold in folds])))


def padding(
    model: ReferenceModel, random_state: int, n_query: int, n_folds: int = NOVELTY_FOLDS
) -> int:
    """Reference cells that fill a query set of ``n_query`` cells up to a fold's (0: none).

    A query set more than 1.5 times smaller than a calibration fold's set
    (:func:`calibration_set_size`) can be scored beside reference cells that fill it up to
    that size (:func:`scored_as_a_query`; the calibration sets beside as many cells of the
    fold's other lots): the set's own axes are then fitted on as many cells as a fold's.
    Scored alone, a set of 300 cells fits noisier axes (known cells' median score 0.64
    against ~0.92 in a whole query), and in a lot of 300 study-preset cells with 10% of a
    population the reference lacks 7-17% of it were flagged at 0.05.
    """
    size = calibration_set_size(model, random_state, n_folds)
    return size - int(n_query) if 1.5 * n_query < size else 0


def scoring_sets(
    lots: np.ndarray | None, n: int, size: int, random_state: int, *, whole: bool = True
) -> np.ndarray:
    """Each query cell's scoring set: whole lots gathered into sets of about ``size`` cells.

    The mapping score depends on how many cells it is computed with (the query's own axes
    are fitted on them: fewer cells, noisier axes, lower scores), so a query scored as a
    whole and calibration folds scored as thirds of the reference are not exchangeable (on
    ``datasets.crosstech`` at the same technology, 0.2% of known cells were flagged at
    0.05). A query up to 1.5 times ``size`` is one set; a larger one is split into
    ``round(n / size)`` sets of whole lots, largest lots first into the smallest set (random
    cells when there are no lots). A lot larger than ``size`` stays whole. With
    ``whole=False`` (held-out reference cells scored like a small query) the 1.5 margin is
    dropped: any ``n`` that makes two or more sets of ``size`` is split.
    """
    n_sets = round(n / max(size, 1))
    if n_sets < 2 or (whole and n <= 1.5 * size):
        return np.zeros(n, dtype=np.int64)
    rng = np.random.default_rng([random_state, 5])
    if lots is None:
        return rng.permutation(n) % n_sets
    names, codes, counts = np.unique(lots, return_inverse=True, return_counts=True)
    order = np.lexsort((rng.random(names.size), -counts))
    filled = np.zeros(n_sets, dtype=np.int64)
    set_of_lot = np.zeros(names.size, dtype=np.int64)
    for lot in order:
        target = int(np.argmin(filled))
        set_of_lot[lot] = target
        filled[target] += counts[lot]
    return set_of_lot[codes]


def _parts(
    lots: np.ndarray | None, n: int, lot_size: int | None, rng: np.random.Generator
) -> np.ndarray | None:
    """Each cell's lot, lots larger than ``lot_size`` split at random into parts of about that size."""
    if lot_size is None:
        return lots
    lots = np.full(n, "all") if lots is None else np.asarray(lots, dtype=str)
    part = np.zeros(n, dtype=np.int64)
    for lot in np.unique(lots):
        members = np.flatnonzero(lots == lot)
        n_parts = max(1, members.size // max(lot_size, 1))
        part[members] = rng.permutation(members.size) % n_parts
    return np.char.add(np.char.add(lots, "/"), part.astype(str))


def _refitted_loadings(model: ReferenceModel, rows: np.ndarray, random_state: int) -> np.ndarray:
    """The reference PCA refitted on ``rows`` (as many components as the reference's).

    The rows are taken where they are (no copy of the fold); they are centred on their own
    mean by :func:`principal_axes`, so the reference's mean they start from shifts nothing.
    """
    every = centred(model.expression, centre="reference", reference_mean=model.pca_mean, lots=None)
    rest = every.take(rows)
    n_comps = int(min(model.loadings.shape[1], rows.size - 2, rest.shape[1] - 1))
    return principal_axes(rest, max(1, n_comps), random_state=random_state)


def novelty_pvalues(scores: np.ndarray, calibration: np.ndarray) -> np.ndarray:
    """Split-conformal p-values: ``(1 + #{calibration <= score}) / (n + 1)``; NaN stays NaN.

    Parameters
    ----------
    scores
        Query mapping scores (low = novel).
    calibration
        Sorted mapping scores of held-out reference cells.
    """
    scores = np.asarray(scores, dtype=float)
    if calibration.size == 0:
        msg = "no held-out reference cells to calibrate novelty on"
        raise ValueError(msg)
    counts = np.searchsorted(calibration, scores, side="right")
    p = (1.0 + counts) / (calibration.size + 1.0)
    p[~np.isfinite(scores)] = np.nan
    return p


def lot_novelty(lots: np.ndarray | None, novel: np.ndarray, alpha: float) -> pd.DataFrame:
    """Per lot: cells flagged novel, their share, the share expected at ``alpha`` and the excess test.

    ``novelty_pvalue`` is the one-sided binomial test of ``n_novel`` against
    ``Binomial(n_cells, alpha)``; ``excess_novel`` is set where it stays below
    :data:`LOT_LEVEL` after Bonferroni correction over lots. The test treats cells as
    independent given the calibration; cells sharing one calibration set are slightly
    dependent, so read it as a screen.
    """
    frame = pd.DataFrame(
        {"lot": lots if lots is not None else np.full(novel.size, "all"), "novel": novel}
    )
    grouped = frame.groupby("lot", sort=True)["novel"]
    n_cells, n_novel = grouped.size(), grouped.sum().astype(int)
    pvalue = np.array(
        [
            stats.binomtest(int(k), int(m), alpha, alternative="greater").pvalue if m else 1.0
            for k, m in zip(n_novel, n_cells, strict=True)
        ]
    )
    table = pd.DataFrame(
        {
            "n_novel": n_novel,
            "share_novel": n_novel / n_cells,
            "expected_share_novel": alpha,
            "novelty_pvalue": pvalue,
            "excess_novel": np.minimum(1.0, pvalue * len(pvalue)) < LOT_LEVEL,
        }
    )
    table.index.name = "lot"
    return table


def novelty_summary(
    calibration: np.ndarray,
    novel: np.ndarray,
    alpha: float,
    depth: DepthModel | None = None,
    groups: pd.DataFrame | None = None,
    n_beside: int = 0,
) -> dict[str, Any]:
    """What the stored result says about the novelty calibration.

    ``score_at_alpha``: cells scoring below it are flagged (NaN when ``alpha`` is too small
    for the calibration cells to flag anything: ``alpha < 1 / (n + 1)``). ``depth_ratio``:
    the query's depth relative to the reference's; ``depth_matched``: whether the
    calibration cells were thinned to it; ``median_capture_efficiency`` (NaN if not);
    ``n_scored_beside``: the reference cells a small query was scored beside (0: none).
    ``groups`` (only when the query's groups were tested, ``novelty_groups``): the table of
    :func:`._novel_groups.group_novelty`.
    """
    rank = int(np.floor(alpha * (calibration.size + 1) - 1))
    matched = depth is not None and depth.matched
    return {
        "n_calibration_cells": int(calibration.size),
        "novelty_alpha": alpha,
        "score_at_alpha": float(calibration[rank]) if rank >= 0 else np.nan,
        "share_novel": float(novel.mean()) if novel.size else np.nan,
        "depth_ratio": depth.depth_ratio if depth is not None else np.nan,
        "depth_matched": bool(matched),
        "median_capture_efficiency": float(np.median(depth.efficiency)) if matched else np.nan,
        "n_scored_beside": int(n_beside),
    } | ({} if groups is None else {"groups": groups})
