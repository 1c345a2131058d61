"""Which clusters are made of one or a few lots' cells (a donor artefact, not a quality attribute).

A cluster whose cells come from one lot trivially "tracks" that lot's potency. The kernel
:func:`lot_specificity_table` works on a lots x clusters count table only; the tool
:func:`lot_specificity` reads the counts :func:`mscpotency.tl.lot_fractions` stored (which
also computes these diagnostics itself, see its ``specificity_key``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import stats

from ... import _registry
from ..._docs import doc_params
from ..._provenance import record
from ..._stored import stored

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


def lot_cluster_ari(counts: pd.DataFrame) -> float:
    """Adjusted Rand index between lot and cluster labels, from their contingency table.

    Near 0: clusters cut across lots; 1: every cluster is one lot's cells.
    """
    table = np.rint(np.asarray(counts, dtype=float))

    def pairs(v: np.ndarray) -> float:
        return float((v * (v - 1) / 2).sum())

    n = table.sum()
    index = pairs(table)
    rows, cols = pairs(table.sum(axis=1)), pairs(table.sum(axis=0))
    expected = rows * cols / (n * (n - 1) / 2)
    top = (rows + cols) / 2
    return float((index - expected) / (top - expected)) if top != expected else 0.0


def specificity_result(counts: pd.DataFrame, settings: dict) -> dict:
    """The stored form: ``'table'``, ``'summary'`` and ``'params'`` (``settings`` included)."""
    kernel = {k: settings[k] for k in _KERNEL_PARAMS}
    table = lot_specificity_table(counts, **kernel)
    summary = {
        "n_clusters": len(table),
        "n_lot_dominated": int(table["lot_dominated"].sum()),
        "lot_dominated": ",".join(table.index[table["lot_dominated"]]),
        "ari_cluster_lot": lot_cluster_ari(counts),
        "n_lots": int(counts.shape[0]),
    }
    return {"table": table, "summary": summary, "params": dict(settings)}


_KERNEL_PARAMS = (
    "min_share",
    "max_top_share",
    "min_entropy",
    "alpha",
    "n_permutations",
    "random_state",
)


def default_settings() -> dict:
    """The thresholds used when nothing else is asked for."""
    return {
        "min_share": MIN_SHARE,
        "max_top_share": MAX_TOP_SHARE,
        "min_entropy": MIN_ENTROPY,
        "alpha": ALPHA,
        "n_permutations": N_PERMUTATIONS,
        "random_state": 0,
    }


@doc_params
@record("tl.lot_specificity")
def lot_specificity(
    adata: AnnData,
    *,
    fractions_key: str = _registry.LOT_FRACTIONS.key,
    min_share: float = MIN_SHARE,
    max_top_share: float = MAX_TOP_SHARE,
    min_entropy: float = MIN_ENTROPY,
    alpha: float = ALPHA,
    n_permutations: int = N_PERMUTATIONS,
    random_state: int = 0,
    key_added: str = _registry.LOT_SPECIFICITY.key,
    copy: bool = False,
) -> AnnData | None:
    """Flag clusters made of one or a few lots' cells (donor artefacts, not quality attributes).

    :func:`mscpotency.tl.lot_fractions` already runs this with the default thresholds;
    call it to change them. :func:`mscpotency.tl.potency_association` carries the flag
    and warns when its potency cluster is lot-dominated.

    Parameters
    ----------
    adata
        {adata}
        Needs ``uns[fractions_key]`` from :func:`mscpotency.tl.lot_fractions`.
    min_share
        A lot *contributes* to a cluster when it holds at least this share of the cluster's
        cells (``n_lots_contributing``).
    max_top_share
        Flag a (significant) cluster whose largest lot holds at least this share of its
        cells and at least twice its share of all cells.
    min_entropy
        Flag a (significant) cluster whose lot-mix entropy is below this share of the
        pooled lot mix's entropy (0.5: about 5 of 24 equal lots).
    alpha
        {alpha}
        A cluster is flagged only when the G-test rejects the pooled lot mix at this level.
    n_permutations
        {n_permutations}
        Used where an expected count is below 5 (then ``pvalue_method`` says
        ``monte-carlo``).

    Returns
    -------
    ``None``, or the copy when ``copy=True``. Writes ``adata.uns[key_added]`` with
    ``'table'`` : DataFrame (one row per cluster, see :func:`lot_specificity_table`:
    n_cells, n_lots_contributing, top_lot, top_lot_share, top_lot_expected,
    entropy_ratio, g_statistic, pvalue, pvalue_method, lot_dominated), ``'summary'``
    (n_clusters, n_lot_dominated, the flagged clusters, ``ari_cluster_lot``: the
    adjusted Rand index between cluster and lot labels, n_lots) and ``'params'``.
    """
    fractions = stored(adata, _registry.LOT_FRACTIONS, fractions_key)
    settings = {
        "min_share": min_share,
        "max_top_share": max_top_share,
        "min_entropy": min_entropy,
        "alpha": alpha,
        "n_permutations": n_permutations,
        "random_state": random_state,
    }
    result = specificity_result(fractions["counts"], settings)
    result["params"]["fractions_key"] = fractions_key
    result["params"]["lot_key"] = fractions["params"]["lot_key"]
    result["params"]["cluster_key"] = fractions["params"]["cluster_key"]
    adata = adata.copy() if copy else adata
    adata.uns[key_added] = result
    return adata if copy else None
