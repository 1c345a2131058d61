"""The lot-specificity kernel: is a cluster made of one or a few lots' cells? (no AnnData).

:func:`lot_specificity_table` works on a lots x clusters count table only. The tool
``tl.lot_specificity`` and ``pp.integrate`` (which holds lot-specific states out of the
correction) both use it, so it lives below both.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

#: Default thresholds of the ``lot_dominated`` flag (see :func:`lot_specificity_table`).
MIN_SHARE = 0.01
MAX_TOP_SHARE = 0.5
MIN_ENTROPY = 0.5
ALPHA = 0.01
N_PERMUTATIONS = 999
#: Smallest expected count under which the G-test's chi-square reference is replaced.
MIN_EXPECTED = 5.0


def lot_specificity_table(
    counts: pd.DataFrame,
    *,
    min_share: float = MIN_SHARE,
    max_top_share: float = MAX_TOP_SHARE,
    min_entropy: float = MIN_ENTROPY,
    alpha: float = ALPHA,
    n_permutations: int = N_PERMUTATIONS,
    random_state: int = 0,
) -> pd.DataFrame:
    """Per cluster: how many lots contribute, how unevenly, and whether one or a few dominate.

    Parameters
    ----------
    counts
        Lots x clusters cell counts (weighted counts are rounded for the test only).
    min_share
        A lot *contributes* to a cluster when it holds at least this share of its cells.
    max_top_share, min_entropy, alpha
        Thresholds of the flag (below).
    n_permutations
        Monte-Carlo draws where the chi-square reference is not trusted.
    random_state
        Seed of the Monte-Carlo draws.

    Returns
    -------
    One row per cluster: ``n_cells``; ``n_lots_contributing``; ``top_lot`` and
    ``top_lot_share`` (the largest lot's share of the cluster's cells) beside
    ``top_lot_expected`` (that lot's share of all cells); ``entropy_ratio`` (Shannon entropy
    of the cluster's lot mix divided by that of the pooled lot mix: 1 = mixed as all cells,
    0 = one lot); ``g_statistic``, ``pvalue`` and ``pvalue_method`` of the G-test of the
    cluster's lot mix against the rest of the cells' (a 2 x lots table, df = lots - 1):
    the chi-square reference when every expected count is at least 5, otherwise a
    Monte-Carlo p-value (``n_permutations`` draws of the cluster's size from all cells
    without replacement, a multivariate hypergeometric; ``(1 + hits) / (1 + draws)``);
    and ``lot_dominated``: ``pvalue < alpha`` and either ``entropy_ratio < min_entropy``
    or the largest lot holds at least ``max_top_share`` of the cells *and* at least twice its
    share of all cells. Lots differing in composition is the signal, so the test alone
    (which rejects for any real composition difference) never flags a cluster.
    """
    matrix = np.asarray(counts, dtype=float)
    if matrix.ndim != 2 or not np.isfinite(matrix).all() or (matrix < 0).any():
        msg = "counts must be a lots x clusters table of finite, non-negative numbers"
        raise ValueError(msg)
    totals = matrix.sum(axis=1)
    pooled = totals / totals.sum()
    lots = np.asarray(counts.index.astype(str))
    rng = np.random.default_rng(random_state)
    rows = [
        _cluster_row(matrix[:, j], totals, pooled, lots, min_share, n_permutations, rng)
        for j in range(matrix.shape[1])
    ]
    table = pd.DataFrame(rows, index=pd.Index(counts.columns.astype(str), name="cluster"))
    uneven = (table["top_lot_share"] >= max_top_share) & (
        table["top_lot_share"] >= 2 * table["top_lot_expected"]
    )
    table["lot_dominated"] = (table["pvalue"] < alpha) & (
        (table["entropy_ratio"] < min_entropy) | uneven
    )
    return table


def _entropy(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def _cluster_row(
    x: np.ndarray,
    totals: np.ndarray,
    pooled: np.ndarray,
    lots: np.ndarray,
    min_share: float,
    n_permutations: int,
    rng: np.random.Generator,
) -> dict:
    n = float(x.sum())
    share = x / n if n > 0 else np.zeros_like(x)
    top = int(share.argmax())
    h_pooled = _entropy(pooled)
    g, pvalue, method = _g_test(x, totals, n_permutations, rng)
    return {
        "n_cells": n,
        "n_lots_contributing": int((share >= min_share).sum()) if n > 0 else 0,
        "top_lot": str(lots[top]) if n > 0 else "",
        "top_lot_share": float(share[top]),
        "top_lot_expected": float(pooled[top]),
        "entropy_ratio": _entropy(share) / h_pooled if h_pooled > 0 and n > 0 else np.nan,
        "g_statistic": g,
        "pvalue": pvalue,
        "pvalue_method": method,
    }


def _g(x: np.ndarray, totals: np.ndarray) -> np.ndarray:
    """G statistic of 2 x lots tables [x; totals - x]; ``x`` is (lots,) or (draws, lots)."""
    x = np.atleast_2d(x)
    n = x.sum(axis=1, keepdims=True)
    big_n = totals.sum()
    p = totals / big_n
    observed = np.stack([x, totals - x])
    expected = np.stack([n * p, (big_n - n) * p])
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(observed > 0, observed * np.log(observed / expected), 0.0)
    return 2 * terms.sum(axis=(0, 2))


def _g_test(
    x: np.ndarray, totals: np.ndarray, n_permutations: int, rng: np.random.Generator
) -> tuple[float, float, str]:
    """G-test of one cluster's lot mix against the rest; chi-square or Monte-Carlo reference."""
    keep = totals > 0
    x, totals = np.rint(x[keep]), np.rint(totals[keep])
    n, big_n = x.sum(), totals.sum()
    if keep.sum() < 2 or n == 0 or n == big_n:
        return np.nan, np.nan, "none (one lot, or the cluster holds all or no cells)"
    g = float(_g(x, totals)[0])
    smallest = min((n * totals / big_n).min(), ((big_n - n) * totals / big_n).min())
    if smallest >= MIN_EXPECTED:
        return g, float(stats.chi2.sf(g, df=keep.sum() - 1)), "chi-square"
    draws = rng.multivariate_hypergeometric(totals.astype(np.int64), int(n), size=n_permutations)
    hits = int((_g(draws.astype(float), totals) >= g - 1e-9 * max(1.0, g)).sum())
    return g, (1 + hits) / (1 + n_permutations), f"monte-carlo ({n_permutations} draws)"
