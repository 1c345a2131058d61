"""Calibration of transferred label probabilities: reliability, ECE and temperature scaling.

A prediction score is calibrated when, among cells predicted with score ``s``, a share ``s``
is right. The expected calibration error (ECE) is the cell-weighted mean gap between score
and accuracy over score bins. Probabilities are recalibrated by temperature scaling
(Guo et al. 2017) fitted on the reference itself: lots of the reference are held out in
turn, mapped onto the remaining lots with the same backend, and the temperature that
minimises the held-out negative log-likelihood is kept.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

#: Probability floor before temperature scaling: a class no neighbour voted for keeps a
#: little mass, so a wrong, unanimous vote costs a finite log-likelihood.
FLOOR = 1e-3


def reliability_table(
    confidence: np.ndarray, correct: np.ndarray, *, n_bins: int = 10
) -> pd.DataFrame:
    """Cells, mean score and accuracy per equal-width score bin.

    Parameters
    ----------
    confidence
        The score of each prediction (max probability).
    correct
        Whether each prediction was right.
    n_bins
        Number of bins over [0, 1].
    """
    confidence = np.asarray(confidence, dtype=float)
    correct = np.asarray(correct, dtype=float)
    if confidence.shape != correct.shape or confidence.ndim != 1:
        msg = f"confidence and correct must be 1-d and of equal length, got {confidence.shape} and {correct.shape}"
        raise ValueError(msg)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, n_bins - 1)
    frame = pd.DataFrame({"bin": bins, "confidence": confidence, "correct": correct})
    grouped = frame.groupby("bin")
    table = pd.DataFrame(
        {
            "low": edges[:-1],
            "high": edges[1:],
            "n_cells": grouped.size().reindex(range(n_bins), fill_value=0).to_numpy(),
            "mean_score": grouped["confidence"].mean().reindex(range(n_bins)).to_numpy(),
            "accuracy": grouped["correct"].mean().reindex(range(n_bins)).to_numpy(),
        }
    )
    table.index.name = "bin"
    return table


def expected_calibration_error(
    confidence: np.ndarray, correct: np.ndarray, *, n_bins: int = 10
) -> float:
    """Cell-weighted mean ``|accuracy - mean score|`` over equal-width score bins."""
    table = reliability_table(confidence, correct, n_bins=n_bins)
    filled = table[table["n_cells"] > 0]
    if filled.empty:
        return float("nan")
    gaps = (filled["accuracy"] - filled["mean_score"]).abs()
    return float((gaps * filled["n_cells"]).sum() / filled["n_cells"].sum())


def apply_temperature(
    probabilities: np.ndarray, temperature: float, *, floor: float = FLOOR
) -> np.ndarray:
    """``(p + floor)^(1/T)`` renormalised: T > 1 softens, T < 1 sharpens; argmax unchanged."""
    logits = np.log(np.asarray(probabilities, dtype=float) + floor) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    scaled = np.exp(logits)
    return scaled / scaled.sum(axis=1, keepdims=True)


def negative_log_likelihood(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Mean ``-log p(true label)``."""
    picked = probabilities[np.arange(labels.size), labels]
    return float(-np.log(np.clip(picked, 1e-12, None)).mean())


def fit_temperature(
    probabilities: np.ndarray, labels: np.ndarray, *, bounds: tuple[float, float] = (0.05, 20.0)
) -> float:
    """The temperature that minimises the negative log-likelihood of the true labels.

    A log-spaced grid followed by golden-section refinement; deterministic.
    """
    low, high = np.log(bounds[0]), np.log(bounds[1])
    grid = np.linspace(low, high, 61)
    losses = [
        negative_log_likelihood(apply_temperature(probabilities, np.exp(t)), labels) for t in grid
    ]
    best = int(np.argmin(losses))
    a, b = grid[max(best - 1, 0)], grid[min(best + 1, grid.size - 1)]
    ratio = (np.sqrt(5) - 1) / 2
    for _ in range(40):
        c, d = b - ratio * (b - a), a + ratio * (b - a)
        fc = negative_log_likelihood(apply_temperature(probabilities, np.exp(c)), labels)
        fd = negative_log_likelihood(apply_temperature(probabilities, np.exp(d)), labels)
        if fc <= fd:
            b = d
        else:
            a = c
    return float(np.exp((a + b) / 2))


def lot_folds(
    lots: np.ndarray | None, n_cells: int, n_folds: int, random_state: int
) -> list[np.ndarray]:
    """Held-out masks: whole lots per fold when there are enough lots, random cells otherwise."""
    rng = np.random.default_rng(random_state)
    if lots is not None:
        unique = np.unique(lots)
        if unique.size >= n_folds:
            order = rng.permutation(unique)
            assignment = {lot: i % n_folds for i, lot in enumerate(order)}
            fold_of = np.array([assignment[lot] for lot in lots])
            return [fold_of == f for f in range(n_folds)]
    fold_of = rng.permutation(n_cells) % n_folds
    return [fold_of == f for f in range(n_folds)]


def calibration_summary(probabilities: np.ndarray, labels: np.ndarray) -> dict:
    """Fit the temperature on held-out reference cells and describe the fit.

    Returns the temperature, the held-out cells' accuracy, the expected calibration error
    before and after scaling, the reliability tables (``reliability_before``,
    ``reliability_after``), and for the conformal prediction sets the held-out cells'
    scaled probability of their true label (``held_out_true_probability``) and their label
    (``held_out_labels``).
    """
    temperature = fit_temperature(probabilities, labels)
    scaled = apply_temperature(probabilities, temperature)
    correct_before = probabilities.argmax(axis=1) == labels
    correct_after = scaled.argmax(axis=1) == labels
    return {
        "temperature": temperature,
        "fitted": True,
        "n_cells": int(labels.size),
        "accuracy": float(correct_before.mean()),
        "ece_before": expected_calibration_error(probabilities.max(axis=1), correct_before),
        "ece_after": expected_calibration_error(scaled.max(axis=1), correct_after),
        "reliability_before": reliability_table(probabilities.max(axis=1), correct_before),
        "reliability_after": reliability_table(scaled.max(axis=1), correct_after),
        "held_out_true_probability": scaled[np.arange(labels.size), labels],
        "held_out_labels": np.asarray(labels),
    }
