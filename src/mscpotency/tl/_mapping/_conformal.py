"""Conformal prediction sets for transferred labels (class-conditional LAC, on numpy).

Each cell gets the set of reference labels that cannot be excluded at level ``set_alpha``:
label ``y`` is in the set when its calibrated probability reaches ``t_y``, the
``floor((n_y + 1) * set_alpha)``-th smallest calibrated probability of the true label
among the ``n_y`` held-out reference cells of label ``y`` (cells of the reference's lots
held out in turn and mapped onto the others, the cells the temperature is fitted on).

This is the least-ambiguous set-valued classifier (LAC, Sadinle, Lei & Wasserman 2019)
made class-conditional ("Mondrian"): for a new cell of label ``y`` exchangeable with the
held-out cells of ``y``, ``P(y in set) >= 1 - set_alpha`` for every label separately, so a
small population (the potency population is 3-22% of a lot) is covered as well as a large
one, which marginal coverage does not promise. LAC rather than APS: LAC gives the smallest
sets on average and an empty set when no label is plausible, which is exactly the cell to
leave "Unassigned"; APS (adaptive prediction sets) never returns an empty set and its sets
are larger. A label with fewer than ``1 / set_alpha - 1`` held-out cells cannot be
excluded at that level and is always in the set (``t_y = 0``).

Why numpy and not ``crepes`` or ``mapie``: the whole method is a per-label order statistic
and a comparison (a dozen lines), the calibration cells come from the package's own
cross-fitting by lot (which neither library does: both expect an estimator with ``fit`` and
a held-out split they draw), and a dependency would add nothing but an install.
"""

from __future__ import annotations

import numpy as np


def class_thresholds(
    true_probability: np.ndarray, labels: np.ndarray, n_labels: int, alpha: float
) -> np.ndarray:
    """Per label, the smallest calibrated probability that keeps it in a cell's set.

    Parameters
    ----------
    true_probability
        Held-out reference cells' calibrated probability of their true label.
    labels
        Their true label (integer codes).
    n_labels
        Number of labels.
    alpha
        Level: each label's coverage is at least ``1 - alpha``.
    """
    thresholds = np.zeros(n_labels)
    for label in range(n_labels):
        values = np.sort(true_probability[labels == label])
        rank = int(np.floor((values.size + 1) * alpha))
        if rank >= 1:
            thresholds[label] = values[rank - 1]
    return thresholds


def prediction_sets(probabilities: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """``(cells, labels)`` booleans: the labels each cell's set holds."""
    return np.asarray(probabilities) >= thresholds[None, :]


def set_labels(probabilities: np.ndarray, in_set: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each cell's most probable label (code), ``-1`` for an empty set, and the sets with it.

    A non-empty set that lacks the cell's most probable label gains it (a larger set keeps
    its coverage): taking the most probable label *within* the set instead handed cells
    whose top label's threshold they missed to the label with the lowest threshold (the
    potency population's, the fuzziest), 1-11 false potency cells per seed on the hard preset.
    """
    best = np.asarray(probabilities).argmax(axis=1)
    empty = ~in_set.any(axis=1)
    grown = in_set.copy()
    grown[np.flatnonzero(~empty), best[~empty]] = True
    return np.where(empty, -1, best), grown
