"""Check on mapped query lots that the potency-like share still tracks potency, per set and pooled.

After :func:`mscpotency.tl.map_to_reference`, every query lot has a share of cells labelled
like the reference's potency cluster. :func:`validate_potency` asks, in each study arm
(held-out lots, another tissue ...), whether that share ranks the lots by potency —
Spearman's rho with an exact p-value — says plainly when an arm has too few lots for any
test to reach significance, and pools the arms with a stratified exact permutation test
(lots permuted within arms only, all orderings enumerated). Fisher's and Stouffer's
combinations of the per-arm exact p-values are reported beside it. Each lot's share carries
a bootstrap interval over its cells, drawing each cell's label from its probabilities, so
the uncertainty of transferred labels reaches the shares and rho.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import stats

from ... import _keys, _stats
from ..._docs import doc_params
from ..._provenance import record
from ..._registry import MAPPING, VALIDATE_POTENCY
from ..._validate import lots_of
from .._population._association import lot_outcome
from ._mapped import (
    mapped_cluster,
    mapped_labels,
    mapped_probability,
    on_reference,
    set_order,
    sets_of_lots,
)

#: Columns of the per-set table, in order.
_PER_SET_COLUMNS = [
    "n_lots",
    "rho",
    "pvalue",
    "min_attainable_p",
    "can_reach_alpha",
    "rho_ci_low",
    "rho_ci_high",
    "note",
]


# --------------------------------------------------------------------------- kernels
def spearman_null(
    fraction: np.ndarray, outcome: np.ndarray
) -> tuple[float, np.ndarray, np.ndarray]:
    """Spearman's rho and its exact permutation distribution (values, probabilities).

    The distribution is counted over all n! orderings by :func:`mscpotency._stats.permutation_distribution`
    (ties handled exactly). Constant inputs give ``nan`` and an empty distribution.
    """
    a = np.rint(2 * _stats.midranks(np.asarray(fraction, dtype=float))).astype(np.int64)
    b = np.rint(2 * _stats.midranks(np.asarray(outcome, dtype=float))).astype(np.int64)
    n = a.size
    denominator = math.sqrt(float(n * (a @ a) - a.sum() ** 2) * float(n * (b @ b) - b.sum() ** 2))
    if denominator == 0:
        return float("nan"), np.array([]), np.array([])
    values, counts = _stats.permutation_distribution(tuple(np.sort(a).tolist()), tuple(b.tolist()))
    rho_values = (n * values - a.sum() * b.sum()) / denominator
    observed = float((n * (a @ b) - a.sum() * b.sum()) / denominator)
    return observed, rho_values, counts / counts.sum()


def _tail(
    values: np.ndarray, probabilities: np.ndarray, observed: float, alternative: str
) -> float:
    tolerance = 1e-9
    if alternative == "greater":
        return float(probabilities[values >= observed - tolerance].sum())
    if alternative == "less":
        return float(probabilities[values <= observed + tolerance].sum())
    return float(probabilities[np.abs(values) >= abs(observed) - tolerance].sum())


def stratified_exact_test(
    strata: list[tuple[np.ndarray, np.ndarray]], *, alternative: str = "greater"
) -> tuple[float, float]:
    """Exact test of ``T = sum_s sqrt(n_s - 1) rho_s`` with lots permuted within strata only.

    Each stratum (study arm) contributes its exact Spearman distribution; the distribution of
    ``T`` is their convolution, i.e. all ``prod_s n_s!`` within-arm orderings. The weights make
    every term roughly unit-variance under the null, so a 4-lot arm counts less than an
    11-lot one. Strata without variation are skipped.

    Returns
    -------
    statistic, pvalue
    """
    support, mass = np.array([0.0]), np.array([1.0])
    observed = 0.0
    for fraction, outcome in strata:
        rho, values, probabilities = spearman_null(fraction, outcome)
        if not np.isfinite(rho):
            continue
        weight = math.sqrt(len(fraction) - 1)
        observed += weight * rho
        combined = (support[:, None] + weight * values[None, :]).ravel()
        joint = (mass[:, None] * probabilities[None, :]).ravel()
        rounded = np.round(combined, 9)
        support, inverse = np.unique(rounded, return_inverse=True)
        mass = np.bincount(inverse, weights=joint)
    if support.size == 1:
        return float("nan"), float("nan")
    return observed, _tail(support, mass, observed, alternative)


def fraction_intervals(
    n_cells: np.ndarray,
    estimate: np.ndarray,
    *,
    n_bootstrap: int,
    level: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bootstrap replicates and percentile intervals of per-lot fractions.

    Resampling a lot's cells with replacement and drawing each resampled cell's label from its
    probabilities gives independent draws with success probability equal to the lot's mean
    probability, so each replicate is exactly ``Binomial(n, estimate) / n``; it is drawn so.

    Returns
    -------
    replicates
        ``(n_bootstrap, n_lots)``.
    low, high
        Percentile interval per lot.
    """
    replicates = (
        rng.binomial(
            n_cells[None, :].astype(np.int64),
            np.clip(estimate, 0, 1)[None, :],
            size=(n_bootstrap, n_cells.size),
        )
        / n_cells[None, :]
    )
    alpha = (1 - level) / 2
    low, high = np.quantile(replicates, [alpha, 1 - alpha], axis=0)
    return replicates, low, high


def fisher_combination(pvalues: np.ndarray) -> tuple[float, float]:
    """Fisher's ``-2 sum log p`` against chi-square with ``2k`` degrees of freedom."""
    pvalues = np.clip(np.asarray(pvalues, dtype=float), 1e-300, 1)
    statistic = float(-2 * np.log(pvalues).sum())
    return statistic, float(stats.chi2.sf(statistic, 2 * pvalues.size))


def stouffer_combination(
    pvalues_greater: np.ndarray, weights: np.ndarray, alternative: str
) -> tuple[float, float]:
    """Weighted Stouffer Z of one-sided ("greater") p-values; returns Z and the p of ``alternative``."""
    z = stats.norm.isf(np.clip(np.asarray(pvalues_greater, dtype=float), 1e-300, 1 - 1e-16))
    weights = np.asarray(weights, dtype=float)
    statistic = float((weights * z).sum() / np.sqrt((weights**2).sum()))
    if alternative == "greater":
        return statistic, float(stats.norm.sf(statistic))
    if alternative == "less":
        return statistic, float(stats.norm.cdf(statistic))
    return statistic, float(2 * stats.norm.sf(abs(statistic)))


def _small_set_note(n_lots: int, alternative: str, alpha: float) -> str:
    if n_lots < 3:
        return f"{n_lots} lots: too few for a rank correlation."
    floor = _stats.minimum_attainable_pvalue(n_lots, alternative)  # type: ignore[arg-type]
    if floor >= alpha:
        return (
            f"{n_lots} lots cannot reach p < {alpha} (smallest attainable exact p = {floor:.3g}); "
            "judge this set by its rho, the pooled test and prediction error, not by its p-value."
        )
    return f"{n_lots} lots; smallest attainable exact p = {floor:.3g}."


# --------------------------------------------------------------------------- the tool
@doc_params
@record("tl.validate_potency")
def validate_potency(
    adata: AnnData,
    potency: str | Mapping | pd.Series = _keys.POTENCY,
    *,
    mapping_key: str = MAPPING.key,
    cluster: str | None = None,
    set_key: str | None = _keys.SET,
    lot_key: str = _keys.LOT,
    weighted: bool = True,
    exclude_off_reference: bool = False,
    alternative: _stats.Alternative = "two-sided",
    n_bootstrap: int = 2000,
    level: float = 0.95,
    alpha: float = 0.05,
    random_state: int = 0,
    key_added: str = VALIDATE_POTENCY.key,
    copy: bool = False,
) -> AnnData | None:
    """Check, per set and pooled, that the mapped potency-like share of each lot tracks potency.

    Parameters
    ----------
    adata
        {adata}
        Query cells mapped with :func:`mscpotency.tl.map_to_reference`.
    potency
        obs column with the lot-level potency assay (constant within lots), or a lot ->
        value mapping/Series.
    cluster
        {cluster}
        Here a reference label; ``None``: the reference's potency cluster, as the mapping
        recorded it.
    set_key
        {set_key}
        ``None`` treats all lots as one set.
    weighted
        Use the mean probability of ``cluster`` per lot (label uncertainty enters the share)
        instead of the share of cells with that predicted label.
    exclude_off_reference
        Leave out cells whose mapping score is below the mapping's ``min_mapping_score``
        (their labels are not trustworthy); their share is reported per lot.
    alternative
        {alternative}
        ``"two-sided"`` by default (as ``tl.potency_association``); ``"greater"`` when the
        reference has fixed the direction in advance: a pre-specified one-sided test is
        legitimate and lets 4 lots reach p = 1/24.
    n_bootstrap
        Bootstrap replicates of each lot's cells (each cell's label drawn from its
        probabilities) for the share intervals and the interval of rho; at least 1.
    alpha
        {alpha}
        Here the level the note on attainable p-values refers to.

    Returns
    -------
    ``None``, or the copy when ``copy=True``. Writes ``adata.uns[key_added]`` with
    ``'per_set'`` : DataFrame (one row per set: n_lots, rho, pvalue (exact), min_attainable_p,
    can_reach_alpha, rho_ci_low, rho_ci_high (over the cells' bootstrap), note),
    ``'combined'`` : DataFrame (rows ``stratified_exact``, ``fisher``, ``stouffer``: statistic,
    pvalue, n_sets, n_lots, note), ``'lots'`` : DataFrame (one row per lot: set, potency,
    n_cells, fraction, fraction_hard, fraction_weighted, ci_low, ci_high,
    share_off_reference), ``'potency_cluster'``, ``'note'`` and ``'params'``.
    """
    _check_options(alternative, level, n_bootstrap)
    cluster = mapped_cluster(adata, mapping_key, cluster)
    cells = _cells(adata, mapping_key, cluster, lot_key, exclude_off_reference)
    shares = _lot_shares(cells, lot_key)
    fraction = shares["fraction_weighted" if weighted else "fraction_hard"]
    outcome, potency_name = lot_outcome(adata, potency, shares.index, lot_key)
    sets = sets_of_lots(adata, set_key, lot_key, shares.index)
    rng = np.random.default_rng(random_state)
    replicates, ci_low, ci_high = fraction_intervals(
        shares["n_cells"].to_numpy(),
        fraction.to_numpy(),
        n_bootstrap=n_bootstrap,
        level=level,
        rng=rng,
    )
    lots_table = pd.DataFrame(
        {
            "set": sets.to_numpy(),
            potency_name: outcome.to_numpy(),
            "n_cells": shares["n_cells"].to_numpy(),
            "fraction": fraction.to_numpy(),
            "fraction_hard": shares["fraction_hard"].to_numpy(),
            "fraction_weighted": shares["fraction_weighted"].to_numpy(),
            "ci_low": ci_low,
            "ci_high": ci_high,
            "share_off_reference": shares["share_off_reference"].to_numpy(),
        },
        index=shares.index,
    )
    per_set, strata = _per_set(
        set_order(adata, set_key, sets),
        sets.to_numpy(),
        fraction.to_numpy(),
        outcome.to_numpy(),
        replicates,
        alternative=alternative,
        alpha=alpha,
        level=level,
    )
    combined = _combine(strata, per_set, alternative)
    adata = adata.copy() if copy else adata
    adata.uns[key_added] = {
        "per_set": per_set,
        "combined": combined,
        "lots": lots_table,
        "potency_cluster": cluster,
        "note": _overall_note(per_set, combined, alpha),
        "params": {
            "potency": potency_name,
            "mapping_key": mapping_key,
            "set_key": set_key,
            "lot_key": lot_key,
            "weighted": weighted,
            "exclude_off_reference": exclude_off_reference,
            "alternative": alternative,
            "n_bootstrap": n_bootstrap,
            "level": level,
            "alpha": alpha,
            "random_state": random_state,
        },
    }
    return adata if copy else None


def _check_options(alternative: str, level: float, n_bootstrap: int) -> None:
    if alternative not in ("greater", "less", "two-sided"):
        msg = f"alternative must be 'greater', 'less' or 'two-sided', got {alternative!r}"
        raise ValueError(msg)
    if not 0 < level < 1:
        msg = f"level must lie in (0, 1), got {level!r}"
        raise ValueError(msg)
    if n_bootstrap < 1:
        msg = f"n_bootstrap must be positive, got {n_bootstrap!r}"
        raise ValueError(msg)


def _cells(
    adata: AnnData, mapping_key: str, cluster: str, lot_key: str, exclude_off_reference: bool
) -> pd.DataFrame:
    """Per cell: its lot, whether it is labelled ``cluster``, its probability, whether it counts."""
    labels = mapped_labels(adata, mapping_key)
    lots = lots_of(adata, lot_key)
    probability = mapped_probability(adata, mapping_key, cluster)
    keep = np.ones(adata.n_obs, dtype=bool)
    if exclude_off_reference:
        keep = on_reference(adata, mapping_key)
    return pd.DataFrame(
        {
            "lot": lots.astype(str).to_numpy(),
            "hard": labels.astype(str).to_numpy() == cluster,
            "weighted": probability,
            "keep": keep,
        }
    )


def _lot_shares(cells: pd.DataFrame, lot_key: str) -> pd.DataFrame:
    """Per lot: cells counted, the hard and the weighted share, the share left out."""
    lot_index = pd.Index(sorted(cells["lot"].unique()), name=lot_key)
    grouped = cells[cells["keep"]].groupby("lot")
    n_cells = grouped.size().reindex(lot_index, fill_value=0)
    empty = n_cells.index[n_cells == 0].tolist()
    if empty:
        msg = f"lots {empty} have no cells left to compute a share from (all off-reference?)"
        raise ValueError(msg)
    return pd.DataFrame(
        {
            "n_cells": n_cells,
            "fraction_hard": grouped["hard"].mean().reindex(lot_index),
            "fraction_weighted": grouped["weighted"].mean().reindex(lot_index),
            "share_off_reference": 1 - cells.groupby("lot")["keep"].mean().reindex(lot_index),
        },
        index=lot_index,
    )


def _per_set(
    set_names: list[str],
    sets: np.ndarray,
    fraction: np.ndarray,
    outcome: np.ndarray,
    replicates: np.ndarray,
    *,
    alternative: str,
    alpha: float,
    level: float,
) -> tuple[pd.DataFrame, list[tuple[np.ndarray, np.ndarray, float]]]:
    """The per-set table, and each testable set's (shares, potency, one-sided p) for pooling."""
    rows, strata = [], []
    for name in set_names:
        members = np.flatnonzero(sets == name)
        x, y = fraction[members], outcome[members]
        row, greater_p = _set_test(
            x, y, replicates[:, members], alternative=alternative, alpha=alpha, level=level
        )
        rows.append({"set": name, **row})
        if greater_p is not None:
            strata.append((x, y, greater_p))
    table = pd.DataFrame(rows).set_index("set")
    return table[_PER_SET_COLUMNS], strata


def _set_test(
    x: np.ndarray,
    y: np.ndarray,
    replicates: np.ndarray,
    *,
    alternative: str,
    alpha: float,
    level: float,
) -> tuple[dict, float | None]:
    """One set's row: exact rho test, bootstrap interval of rho, what p it can reach.

    Also returns the one-sided ("greater") p for Stouffer's combination, or ``None`` when the
    set cannot be tested (fewer than 3 lots, or no variation).
    """
    n = x.size
    row = {"n_lots": n, "rho": np.nan, "pvalue": np.nan}
    row.update(rho_ci_low=np.nan, rho_ci_high=np.nan, min_attainable_p=np.nan)
    greater_p = None
    if n >= 3:
        rho, values, mass = spearman_null(x, y)
        row["rho"] = rho
        row["pvalue"] = _tail(values, mass, rho, alternative) if np.isfinite(rho) else np.nan
        boot = np.array([_stats.spearman_rho(r[:, None], y)[0] for r in replicates])
        boot = boot[np.isfinite(boot)]
        tail = (1 - level) / 2
        if boot.size:
            row["rho_ci_low"], row["rho_ci_high"] = np.quantile(boot, [tail, 1 - tail])
        row["min_attainable_p"] = _stats.minimum_attainable_pvalue(n, alternative)
        if np.isfinite(rho):
            greater_p = _tail(values, mass, rho, "greater")
    row["can_reach_alpha"] = bool(
        np.isfinite(row["min_attainable_p"]) and row["min_attainable_p"] < alpha
    )
    row["note"] = _small_set_note(n, alternative, alpha)
    return row, greater_p


def _combine(
    strata: list[tuple[np.ndarray, np.ndarray, float]], per_set: pd.DataFrame, alternative: str
) -> pd.DataFrame:
    """The sets pooled: stratified exact test, Fisher and Stouffer on the per-set p-values."""
    n_sets = len(strata)
    n_lots = int(sum(len(x) for x, _, _ in strata))
    rows = []
    if n_sets:
        statistic, pvalue = stratified_exact_test(
            [(x, y) for x, y, _ in strata], alternative=alternative
        )
        rows.append(
            {
                "method": "stratified_exact",
                "statistic": statistic,
                "pvalue": pvalue,
                "note": "sum of sqrt(n-1)-weighted rho; exact over all within-set orderings of the lots",
            }
        )
        fisher_stat, fisher_p = fisher_combination(per_set["pvalue"].dropna().to_numpy())
        rows.append(
            {
                "method": "fisher",
                "statistic": fisher_stat,
                "pvalue": fisher_p,
                "note": "Fisher on the per-set exact p-values (conservative: they are discrete)",
            }
        )
        stouffer_stat, stouffer_p = stouffer_combination(
            np.array([p for _, _, p in strata]),
            np.array([math.sqrt(len(x)) for x, _, _ in strata]),
            alternative,
        )
        rows.append(
            {
                "method": "stouffer",
                "statistic": stouffer_stat,
                "pvalue": stouffer_p,
                "note": "weighted (sqrt n) Stouffer Z of the per-set one-sided exact p-values",
            }
        )
    table = pd.DataFrame(rows, columns=["method", "statistic", "pvalue", "note"]).set_index(
        "method"
    )
    table.insert(2, "n_sets", n_sets)
    table.insert(3, "n_lots", n_lots)
    return table


def _overall_note(per_set: pd.DataFrame, combined: pd.DataFrame, alpha: float) -> str:
    small = per_set.index[~per_set["can_reach_alpha"]].tolist()
    parts = []
    if small:
        parts.append(f"sets {small} have too few lots to reach p < {alpha} on their own")
    if "stratified_exact" in combined.index:
        p = combined.loc["stratified_exact", "pvalue"]
        parts.append(f"pooled over sets (stratified exact test) p = {p:.3g}")
    return "; ".join(parts) + "." if parts else ""
