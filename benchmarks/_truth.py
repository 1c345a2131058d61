"""Scoring a called set of cells against the simulator's truth, one definition for every script."""

from __future__ import annotations

import numpy as np


def population_f1(called: np.ndarray, truth: np.ndarray, digits: int | None = None) -> float:
    """F1 of the cells ``called`` (boolean mask) against the ``truth`` (boolean mask).

    ``2 |called & truth| / (|called| + |truth|)``; 0.0 when both are empty. Rounded to
    ``digits`` where given (as the results tables print it).
    """
    called, truth = np.asarray(called, dtype=bool), np.asarray(truth, dtype=bool)
    total = int(called.sum() + truth.sum())
    score = float(2 * (called & truth).sum() / total) if total else 0.0
    return score if digits is None else round(score, digits)
