"""Calibrated novelty: the mapping score as a split-conformal p-value, and per-lot excess tests.

A fixed cut-off on the mapping score does not carry over between data sets: on real data
cells of a population the reference lacks scored 0.63-0.93 where known cells scored
0.92-0.99 (issue 16). So the score is calibrated on reference cells the reference model
did not see, cross-fitted by lot (split-conformal prediction, Vovk et al. 2005; Bates et
al. 2023 for conformal novelty detection):

1. the reference lots are split into folds; for each fold, the PCA is refitted on the other
   lots (so the held-out cells are new to the embedding, as query cells are), and the
   held-out cells are scored exactly as a query is (centred per lot, their own axes, the
   same smoothing), giving one calibration score per held-out cell;
2. a query cell's novelty p-value is ``(1 + #{calibration scores <= its score}) / (n + 1)``:
   for a cell exchangeable with the reference's cells (a known population, measured alike),
   ``P(p <= alpha) <= alpha``, whatever the score's scale;
3. cells with ``p <= novelty_alpha`` are flagged novel, and per lot the number flagged is
   compared with ``novelty_alpha`` times its cells by a one-sided binomial test (a lot with
   many novel cells is a finding, not noise).

The guarantee holds for known cells exchangeable with the reference's held-out cells. A
query from another technology is not: its known cells can score lower, and the flagged
share of known cells can exceed the rate; the per-lot table and the benchmark
(``benchmarks/mapping_crosstech.py``) say by how much.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from ..._frozen import ReferenceModel
from ..._settings import progress
from ._calibration import lot_folds
from ._project import centred, own_axes
from ._scoring import mapping_score

logger = logging.getLogger("mscpotency")

#: Held-out reference cells scored per fold, at most (a random subset above).
NOVELTY_MAX_CELLS = 10_000
#: Folds of reference lots held out in turn.
NOVELTY_FOLDS = 3
#: Family-wise level of the per-lot excess test (Bonferroni over lots).
LOT_LEVEL = 0.05

_CACHE: dict[tuple, np.ndarray] = {}
_CACHE_MAX = 16


def held_out_mapping_scores(
    model: ReferenceModel,
    *,
    n_comps_own: int,
    knn_method: str,
    random_state: int,
    lot_size: int | None = None,
    n_folds: int = NOVELTY_FOLDS,
) -> np.ndarray:
    """Mapping scores of reference cells scored with their lots held out (sorted; cached).

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
    """
    key = (model.hash, n_comps_own, knn_method, random_state, lot_size, n_folds)
    if key not in _CACHE:
        if len(_CACHE) >= _CACHE_MAX:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = _score_held_out_folds(
            model, n_comps_own, knn_method, random_state, lot_size, n_folds
        )
    return _CACHE[key].copy()


def _score_held_out_folds(
    model: ReferenceModel,
    n_comps_own: int,
    knn_method: str,
    random_state: int,
    lot_size: int | None,
    n_folds: int,
) -> np.ndarray:
    n = model.expression.shape[0]
    rng = np.random.default_rng([random_state, 3])
    scores = []
    folds = lot_folds(model.lots, n, n_folds, random_state)
    for held_out in progress(folds, desc="novelty calibration (held-out reference lots)"):
        rest = np.flatnonzero(~held_out)
        loadings = _refitted_loadings(model, rest, random_state)
        cells = np.flatnonzero(held_out)
        if cells.size > NOVELTY_MAX_CELLS:
            cells = np.sort(rng.choice(cells, NOVELTY_MAX_CELLS, replace=False))
        lots = _parts(
            model.lots[cells] if model.lots is not None else None, cells.size, lot_size, rng
        )
        by_lot = centred(
            model.expression[cells], centre="lot", reference_mean=model.pca_mean, lots=lots
        )
        score, _, _ = mapping_score(
            by_lot, loadings, n_comps=n_comps_own, knn_method=knn_method, random_state=random_state
        )
        scores.append(score[np.isfinite(score)])
    calibration = np.sort(np.concatenate(scores))
    logger.info("novelty calibration: %d held-out reference cells", calibration.size)
    return calibration


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
    """The reference PCA refitted on ``rows`` (as many components as the reference's)."""
    rest = centred(model.expression[rows], centre="query", reference_mean=model.pca_mean, lots=None)
    n_comps = int(min(model.loadings.shape[1], rows.size - 2, rest.X.shape[1] - 1))
    axes, _ = own_axes(rest, max(1, n_comps), random_state=random_state)
    return axes


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


def novelty_summary(calibration: np.ndarray, novel: np.ndarray, alpha: float) -> dict[str, Any]:
    """What the stored result says about the novelty calibration.

    ``score_at_alpha``: cells scoring below it are flagged (NaN when ``alpha`` is too small
    for the calibration cells to flag anything: ``alpha < 1 / (n + 1)``).
    """
    rank = int(np.floor(alpha * (calibration.size + 1) - 1))
    return {
        "n_calibration_cells": int(calibration.size),
        "novelty_alpha": alpha,
        "score_at_alpha": float(calibration[rank]) if rank >= 0 else np.nan,
        "share_novel": float(novel.mean()) if novel.size else np.nan,
    }
