"""Pure statistical kernels for lot-level association (no AnnData).

One kernel serves every lot-level question in the package: a ``lots x features`` matrix
(cluster fractions, pseudobulk expression, bulk microarray/CAGE profiles) against one
lot-level outcome (potency, differentiation propensity). At n ≈ 10 lots p-values are exact:
the permutation distribution of Spearman's statistic is counted over all n! orderings by a
dynamic programme over subsets (so ties are handled exactly), and Monte-Carlo permutation
takes over above ``exact_max_n``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import stats

Alternative = Literal["two-sided", "greater", "less"]
PvalueMethod = Literal["auto", "exact", "permutation"]

#: Largest number of lots for which ``method="auto"`` enumerates all n! orderings.
#: The subset DP costs O(2^n n L) memory-light operations: 12 lots take ~0.1 s.
EXACT_MAX_N = 12


def midranks(values: np.ndarray) -> np.ndarray:
    """Ranks along axis 0 with ties given their average rank (1-based)."""
    return stats.rankdata(values, axis=0, method="average")


def spearman_rho(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's rho of every column of ``X`` (n x F) against ``y`` (n,).

    Columns (or an outcome) without variation get ``nan``.
    """
    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float)
    rx = midranks(X)
    ry = midranks(y)
    return _pearson_columns(rx, ry)


def _pearson_columns(A: np.ndarray, b: np.ndarray) -> np.ndarray:
    A = A - A.mean(axis=0)
    b = b - b.mean()
    denom = np.sqrt((A**2).sum(axis=0) * (b**2).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (A * b[:, None]).sum(axis=0) / denom
    r[denom == 0] = np.nan
    return np.clip(r, -1.0, 1.0)


def _integer_scores(values: np.ndarray) -> np.ndarray:
    """Twice the midranks: integers, so the statistic's distribution is counted exactly."""
    return np.rint(2 * midranks(values)).astype(np.int64)


@functools.lru_cache(maxsize=256)
def permutation_distribution(
    a: tuple[int, ...], b: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Exact distribution of ``T = sum_i a_i * b_pi(i)`` over all n! permutations ``pi``.

    A dynamic programme over the subsets of ``b`` already assigned: layer k holds, for
    every subset of size k, how many ways each partial sum arises. Non-negative integer
    scores only.

    Returns
    -------
    values
        Every attainable ``T`` (ascending).
    counts
        How many of the n! permutations give each value (sums to n!).
    """
    n = len(a)
    a_arr = np.sort(np.asarray(a, dtype=np.int64))
    b_arr = np.asarray(b, dtype=np.int64)
    if n != len(b_arr) or n == 0:
        msg = f"score vectors must have equal, non-zero length, got {n} and {len(b_arr)}"
        raise ValueError(msg)
    if (a_arr < 0).any() or (b_arr < 0).any():
        msg = "scores must be non-negative integers"
        raise ValueError(msg)
    max_sum = int(np.sort(a_arr) @ np.sort(b_arr))
    length = max_sum + 1
    popcount = np.array([bin(m).count("1") for m in range(1 << n)])
    position = np.full(1 << n, -1, dtype=np.int64)
    layers = [np.flatnonzero(popcount == k) for k in range(n + 1)]
    for masks in layers:
        position[masks] = np.arange(masks.size)
    current = np.zeros((1, length), dtype=np.int64)
    current[0, 0] = 1
    for k in range(n):
        masks = layers[k]
        following = np.zeros((layers[k + 1].size, length), dtype=np.int64)
        for j in range(n):
            free = (masks >> j) & 1 == 0
            sources = np.flatnonzero(free)
            targets = position[masks[free] | (1 << j)]
            shift = int(a_arr[k] * b_arr[j])
            if shift:
                following[targets, shift:] += current[sources, :-shift]
            else:
                following[targets] += current[sources]
        current = following
    counts = current[0]
    values = np.flatnonzero(counts)
    return values, counts[values]


def _tail_probability(
    null_centered: np.ndarray,
    weights: np.ndarray | None,
    observed_centered: np.ndarray,
    alternative: Alternative,
) -> np.ndarray:
    """P(null statistic at least as extreme as observed), for centred integer statistics."""
    null_centered = np.asarray(null_centered)
    order = np.argsort(null_centered, kind="stable")
    if alternative == "two-sided":
        magnitudes = np.abs(null_centered)
        order = np.argsort(magnitudes, kind="stable")
        sorted_stat = magnitudes[order]
        observed = np.abs(observed_centered)
    elif alternative == "greater":
        sorted_stat = null_centered[order]
        observed = observed_centered
    else:
        sorted_stat = -null_centered[order][::-1]
        order = order[::-1]
        observed = -observed_centered
    w = np.ones(null_centered.size, dtype=float) if weights is None else weights.astype(float)
    tail_mass = np.concatenate([np.cumsum(w[order][::-1])[::-1], [0.0]])
    first = np.searchsorted(sorted_stat, observed, side="left")
    return tail_mass[first] / w.sum()


def exact_pvalues(
    X: np.ndarray, y: np.ndarray, *, alternative: Alternative = "two-sided"
) -> np.ndarray:
    """Exact permutation p-values of Spearman's rho for every column of ``X``.

    The null distribution is counted over all n! orderings of ``y``; ties in either
    variable are handled exactly (midranks). Columns sharing a rank pattern share one
    distribution, so thousands of continuous features cost one enumeration.
    """
    X = np.asarray(X, dtype=float)
    n = X.shape[0]
    A = _integer_scores(X)
    b = _integer_scores(np.asarray(y, dtype=float))
    pvalues = np.full(X.shape[1], np.nan)
    observed = n * (A.T @ b) - A.sum(axis=0) * b.sum()
    patterns: dict[tuple[int, ...], list[int]] = {}
    for column in range(X.shape[1]):
        if np.ptp(A[:, column]) == 0:
            continue
        patterns.setdefault(tuple(np.sort(A[:, column]).tolist()), []).append(column)
    if np.ptp(b) == 0:
        return pvalues
    for pattern, columns in patterns.items():
        values, counts = permutation_distribution(pattern, tuple(np.sort(b).tolist()))
        centered = n * values - sum(pattern) * int(b.sum())
        pvalues[columns] = _tail_probability(centered, counts, observed[columns], alternative)
    return pvalues


def permutation_pvalues(
    X: np.ndarray,
    y: np.ndarray,
    *,
    n_permutations: int = 9999,
    alternative: Alternative = "two-sided",
    random_state: int | np.random.Generator = 0,
) -> np.ndarray:
    """Monte-Carlo permutation p-values ``(1 + #extreme) / (1 + n_permutations)``.

    The same permutations of ``y`` serve every column, so results are reproducible
    and comparable across features.
    """
    rng = np.random.default_rng(random_state)
    X = np.asarray(X, dtype=float)
    n = X.shape[0]
    A = _integer_scores(X).astype(float)
    b = _integer_scores(np.asarray(y, dtype=float)).astype(float)
    center = A.sum(axis=0) * b.sum()
    observed = np.rint(n * (A.T @ b) - center)
    extreme = np.zeros(X.shape[1])
    batch = max(1, min(n_permutations, 2_000_000 // max(1, X.shape[1] * 8) + 1))
    done = 0
    while done < n_permutations:
        size = min(batch, n_permutations - done)
        permuted = rng.permuted(np.tile(b, (size, 1)), axis=1)
        null = np.rint(n * (permuted @ A) - center)
        if alternative == "two-sided":
            extreme += (np.abs(null) >= np.abs(observed)).sum(axis=0)
        elif alternative == "greater":
            extreme += (null >= observed).sum(axis=0)
        else:
            extreme += (null <= observed).sum(axis=0)
        done += size
    pvalues = (1.0 + extreme) / (1.0 + n_permutations)
    constant = (np.ptp(A, axis=0) == 0) | (np.ptp(b) == 0)
    pvalues[constant] = np.nan
    return pvalues


def asymptotic_pvalues(
    rho: np.ndarray, n: int, alternative: Alternative = "two-sided"
) -> np.ndarray:
    """Student-t approximation of Spearman p-values (shown beside exact ones, never alone)."""
    rho = np.asarray(rho, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = rho * np.sqrt((n - 2) / np.clip(1 - rho**2, 1e-300, None))
    if alternative == "two-sided":
        return 2 * stats.t.sf(np.abs(t), n - 2)
    if alternative == "greater":
        return stats.t.sf(t, n - 2)
    return stats.t.cdf(t, n - 2)


def benjamini_hochberg(pvalues: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values; ``nan`` entries stay ``nan`` and are not counted.

    The adjustment is :func:`scipy.stats.false_discovery_control` (``method="bh"``) over the
    finite p-values only, so a feature without a p-value does not enlarge the family (a
    p-value a rounding error above 1 counts as 1, as the adjusted values are capped there).
    """
    pvalues = np.asarray(pvalues, dtype=float)
    adjusted = np.full(pvalues.shape, np.nan)
    finite = np.isfinite(pvalues)
    if finite.any():
        adjusted[finite] = stats.false_discovery_control(
            np.clip(pvalues[finite], 0.0, 1.0), method="bh"
        )
    return adjusted


def minimum_attainable_pvalue(n: int, alternative: Alternative = "two-sided") -> float:
    """Smallest exact p-value any Spearman test on ``n`` untied lots can reach."""
    p = math.exp(-math.lgamma(n + 1))  # 1 / n!, without overflow at hundreds of lots
    return 2 * p if alternative == "two-sided" else p


def bootstrap_ci(
    X: np.ndarray,
    y: np.ndarray,
    *,
    n_bootstrap: int = 2000,
    level: float = 0.95,
    random_state: int | np.random.Generator = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Percentile bootstrap CI of Spearman's rho, resampling lots with replacement.

    Resamples in which a column or the outcome has no variation give no rho and are left
    out of that column's interval; their share is returned so it can be reported.

    Returns
    -------
    low, high
        Interval bounds per column.
    valid_share
        Share of resamples that gave a rho, per column.
    """
    rng = np.random.default_rng(random_state)
    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float)
    n, n_features = X.shape
    draws = rng.integers(0, n, size=(n_bootstrap, n))
    rhos = np.empty((n_bootstrap, n_features))
    for i, idx in enumerate(draws):
        rhos[i] = spearman_rho(X[idx], y[idx])
    alpha = (1 - level) / 2
    valid = np.isfinite(rhos)
    low = np.full(n_features, np.nan)
    high = np.full(n_features, np.nan)
    for j in range(n_features):
        column = rhos[valid[:, j], j]
        if column.size:
            low[j], high[j] = np.quantile(column, [alpha, 1 - alpha])
    return low, high, valid.mean(axis=0)


def leave_one_out(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's rho with each lot left out in turn: an (n lots x features) matrix."""
    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float)
    n = X.shape[0]
    keep = ~np.eye(n, dtype=bool)
    return np.vstack([spearman_rho(X[keep[i]], y[keep[i]]) for i in range(n)])


def clr(
    fractions: np.ndarray, *, pseudocount: float = 0.5, counts: np.ndarray | None = None
) -> np.ndarray:
    """Centred log-ratio transform of compositions (rows are lots).

    With ``counts`` given, the pseudocount is added to the counts (the usual choice);
    otherwise to the fractions scaled by ``pseudocount`` times the smallest positive fraction.
    """
    if counts is not None:
        logged = np.log(np.asarray(counts, dtype=float) + pseudocount)
    else:
        fractions = np.asarray(fractions, dtype=float)
        positive = fractions[fractions > 0]
        floor = pseudocount * (positive.min() if positive.size else 1.0)
        logged = np.log(fractions + floor)
    return logged - logged.mean(axis=1, keepdims=True)


@dataclass(frozen=True)
class AssociationResult:
    """Per-feature association of a lot-level matrix with an outcome."""

    rho: np.ndarray
    pvalue: np.ndarray
    pvalue_method: str
    pvalue_asymptotic: np.ndarray
    fdr: np.ndarray
    n_lots: int


def spearman_test(
    X: np.ndarray,
    y: np.ndarray,
    *,
    method: PvalueMethod = "auto",
    alternative: Alternative = "two-sided",
    n_permutations: int = 9999,
    exact_max_n: int = EXACT_MAX_N,
    random_state: int | np.random.Generator = 0,
) -> AssociationResult:
    """Spearman's rho, exact or permutation p, asymptotic p and BH FDR for each column.

    Parameters
    ----------
    X
        Lots x features.
    y
        One outcome value per lot.
    method
        ``"exact"`` enumerates all orderings, ``"permutation"`` samples them,
        ``"auto"`` enumerates up to ``exact_max_n`` lots.
    alternative
        Direction of the test.
    n_permutations
        Monte-Carlo permutations when not exact.
    exact_max_n
        Largest n ``"auto"`` enumerates exactly.
    random_state
        Seed of the permutations.
    """
    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float)
    if X.ndim != 2 or y.ndim != 1 or X.shape[0] != y.shape[0]:
        msg = f"X must be lots x features and y one value per lot, got {X.shape} and {y.shape}"
        raise ValueError(msg)
    if not (np.isfinite(X).all() and np.isfinite(y).all()):
        msg = "X and y must be finite (no NaN or inf)"
        raise ValueError(msg)
    n = X.shape[0]
    if n < 3:
        msg = f"a rank correlation needs at least 3 lots, got {n}"
        raise ValueError(msg)
    if method == "auto":
        method = "exact" if n <= exact_max_n else "permutation"
    if method == "exact":
        if n > 16:
            msg = f"exact enumeration of {n}! orderings is not feasible; use method='permutation'"
            raise ValueError(msg)
        pvalue = exact_pvalues(X, y, alternative=alternative)
    elif method == "permutation":
        pvalue = permutation_pvalues(
            X, y, n_permutations=n_permutations, alternative=alternative, random_state=random_state
        )
    else:
        msg = f"method must be 'auto', 'exact' or 'permutation', got {method!r}"
        raise ValueError(msg)
    rho = spearman_rho(X, y)
    return AssociationResult(
        rho=rho,
        pvalue=pvalue,
        pvalue_method=method,
        pvalue_asymptotic=asymptotic_pvalues(rho, n, alternative),
        fdr=benjamini_hochberg(pvalue),
        n_lots=n,
    )
