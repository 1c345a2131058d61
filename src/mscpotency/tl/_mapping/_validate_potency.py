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

:func:`marker_by_set` compares one gene's expression in the potency-like cells between arms
(lots are the replicates: a permutation Kruskal-Wallis test across arms, exact Mann-Whitney
tests of each arm against a reference arm).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse, stats

from ... import _keys, _stats
from ..._provenance import record
from ..._validate import lot_level_values, lots_of, require_obs_column, require_uns
from .._population._association import lot_outcome
from ._api import MAPPING
from ._harmonise import query_counts

#: Default ``key_added`` of the tools in this module.
VALIDATE_POTENCY = "validate_potency"
MARKER_BY_SET = "marker_by_set"


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


# --------------------------------------------------------------------------- helpers
def _potency_label(adata: AnnData, key: str, potency_label: str | None) -> str:
    stored = require_uns(adata, key, tool="tl.map_to_reference")
    labels = [str(c) for c in stored.get("reference_labels", [])]
    if potency_label is None:
        potency_label = str(stored.get("potency_label", "")) or None
        if potency_label is None:
            msg = (
                f"adata.uns[{key!r}] names no potency label (the reference had no "
                "`tl.potency_association` result on these labels); pass potency_label=."
            )
            raise KeyError(msg)
    if labels and potency_label not in labels:
        msg = f"potency_label {potency_label!r} is not a reference label; labels are {labels}"
        raise ValueError(msg)
    return potency_label


def _sets_of_lots(adata: AnnData, set_key: str | None, lot_key: str, lots: pd.Index) -> pd.Series:
    if set_key is None:
        return pd.Series("all", index=lots)
    values = lot_level_values(adata, set_key, lot_key).astype(str)
    values.index = values.index.astype(str)
    return values.reindex(lots)


def _set_order(adata: AnnData, set_key: str | None, sets: pd.Series) -> list[str]:
    """Sets in the order of obs[set_key]'s categories (or of first appearance)."""
    present = set(sets.astype(str))
    if set_key is not None and isinstance(adata.obs[set_key].dtype, pd.CategoricalDtype):
        order = [str(c) for c in adata.obs[set_key].cat.categories]
    else:
        order = (
            [str(v) for v in pd.unique(adata.obs[set_key].astype(str))]
            if set_key is not None
            else ["all"]
        )
    return [s for s in order if s in present]


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


# --------------------------------------------------------------------------- tools
@record("tl.validate_potency")
def validate_potency(
    adata: AnnData,
    potency: str | Mapping | pd.Series = _keys.POTENCY,
    *,
    key: str = MAPPING,
    potency_label: str | None = None,
    set_key: str | None = _keys.SET,
    lot_key: str = _keys.LOT,
    weighted: bool = True,
    exclude_off_reference: bool = False,
    alternative: _stats.Alternative = "two-sided",
    n_bootstrap: int = 2000,
    ci_level: float = 0.95,
    alpha: float = 0.05,
    random_state: int = 0,
    key_added: str = VALIDATE_POTENCY,
    copy: bool = False,
) -> AnnData | None:
    """Check, per set and pooled, that the mapped potency-like share of each lot tracks potency.

    Parameters
    ----------
    adata
        Query cells mapped with :func:`mscpotency.tl.map_to_reference`.
    potency
        obs column with one value per lot, or a lot -> value mapping/Series.
    key
        ``key_added`` of the mapping.
    potency_label
        The reference label of the potency-like cells; default: the reference's potency
        cluster recorded by the mapping.
    set_key
        obs column naming each lot's set (study arm); ``None`` treats all lots as one set.
    lot_key
        obs column with the lot of each cell.
    weighted
        Use the mean probability of the potency label per lot (label uncertainty enters the
        share) instead of the share of cells with that predicted label.
    exclude_off_reference
        Leave out cells whose mapping score is below the mapping's ``min_mapping_score``
        (their labels are not trustworthy); their share is reported per lot.
    alternative
        ``"two-sided"`` (default, as ``tl.potency_association``), or ``"greater"`` when the
        reference has fixed the direction in advance (more potency-like cells, more potency):
        a pre-specified one-sided test is legitimate and lets 4 lots reach p = 1/24.
    n_bootstrap
        Bootstrap replicates for the per-lot share intervals and the cell-level interval of rho.
    ci_level
        Coverage of the intervals.
    alpha
        Level the note on attainable p-values refers to.
    random_state
        Seed of the bootstrap.
    key_added
        ``adata.uns`` key of the result.
    copy
        Return a copy instead of writing in place.

    Returns
    -------
    ``None``, or the copy when ``copy=True``. Writes ``adata.uns[key_added]`` with
    ``'per_set'`` : DataFrame (one row per set: n_lots, rho, pvalue (exact), min_attainable_p,
    can_reach_alpha, rho_ci_low, rho_ci_high (over the cells' bootstrap), note),
    ``'combined'`` : DataFrame (rows ``stratified_exact``, ``fisher``, ``stouffer``: statistic,
    pvalue, n_sets, n_lots, note), ``'lots'`` : DataFrame (one row per lot: set, potency,
    n_cells, fraction, fraction_hard, fraction_weighted, ci_low, ci_high,
    share_off_reference), ``'potency_label'``, ``'note'`` and ``'params'``.
    """
    if alternative not in ("greater", "less", "two-sided"):
        msg = f"alternative must be 'greater', 'less' or 'two-sided', got {alternative!r}"
        raise ValueError(msg)
    if not 0 < ci_level < 1:
        msg = f"ci_level must lie in (0, 1), got {ci_level!r}"
        raise ValueError(msg)
    if n_bootstrap < 1:
        msg = f"n_bootstrap must be positive, got {n_bootstrap!r}"
        raise ValueError(msg)
    label = _potency_label(adata, key, potency_label)
    labels = require_obs_column(
        adata, key, what="transferred labels", hint="Run `tl.map_to_reference` first."
    )
    lots = lots_of(adata, lot_key)
    probabilities_key = f"{key}_probabilities"
    if probabilities_key not in adata.obsm:
        msg = f"adata.obsm has no {probabilities_key!r}. Run `tl.map_to_reference` first."
        raise KeyError(msg)
    probabilities = pd.DataFrame(adata.obsm[probabilities_key])
    p_label = (
        probabilities[label].to_numpy(dtype=float)
        if label in probabilities.columns
        else np.zeros(adata.n_obs)
    )
    keep = np.ones(adata.n_obs, dtype=bool)
    mapping_column = f"{key}_mapping_score"
    if exclude_off_reference:
        threshold = float(adata.uns[key]["params"]["min_mapping_score"])
        scores = require_obs_column(
            adata, mapping_column, what="mapping scores", hint="Run `tl.map_to_reference` first."
        )
        keep = scores.to_numpy(dtype=float) >= threshold
    frame = pd.DataFrame(
        {
            "lot": lots.astype(str).to_numpy(),
            "hard": labels.astype(str).to_numpy() == label,
            "weighted": p_label,
            "keep": keep,
        }
    )
    lot_index = pd.Index(sorted(frame["lot"].unique()), name=lot_key)
    kept = frame[frame["keep"]]
    grouped = kept.groupby("lot")
    n_cells = grouped.size().reindex(lot_index, fill_value=0)
    empty = n_cells.index[n_cells == 0].tolist()
    if empty:
        msg = f"lots {empty} have no cells left to compute a share from (all off-reference?)"
        raise ValueError(msg)
    fraction_hard = grouped["hard"].mean().reindex(lot_index)
    fraction_weighted = grouped["weighted"].mean().reindex(lot_index)
    fraction = fraction_weighted if weighted else fraction_hard
    share_off = 1 - frame.groupby("lot")["keep"].mean().reindex(lot_index)
    outcome, potency_name = lot_outcome(adata, potency, lot_index, lot_key)
    sets = _sets_of_lots(adata, set_key, lot_key, lot_index)
    rng = np.random.default_rng(random_state)
    replicates, ci_low, ci_high = fraction_intervals(
        n_cells.to_numpy(), fraction.to_numpy(), n_bootstrap=n_bootstrap, level=ci_level, rng=rng
    )
    lots_table = pd.DataFrame(
        {
            "set": sets.to_numpy(),
            potency_name: outcome.to_numpy(),
            "n_cells": n_cells.to_numpy(),
            "fraction": fraction.to_numpy(),
            "fraction_hard": fraction_hard.to_numpy(),
            "fraction_weighted": fraction_weighted.to_numpy(),
            "ci_low": ci_low,
            "ci_high": ci_high,
            "share_off_reference": share_off.to_numpy(),
        },
        index=lot_index,
    )
    per_set, strata, greater_p, weights = [], [], [], []
    alpha_ci = (1 - ci_level) / 2
    for set_name in _set_order(adata, set_key, sets):
        members = np.flatnonzero(sets.to_numpy() == set_name)
        x, y = fraction.to_numpy()[members], outcome.to_numpy()[members]
        row = {"set": set_name, "n_lots": members.size}
        if members.size >= 3:
            rho, values, mass = spearman_null(x, y)
            row["rho"] = rho
            row["pvalue"] = _tail(values, mass, rho, alternative) if np.isfinite(rho) else np.nan
            boot = np.array([_stats.spearman_rho(r[members][:, None], y)[0] for r in replicates])
            boot = boot[np.isfinite(boot)]
            row["rho_ci_low"], row["rho_ci_high"] = (
                np.quantile(boot, [alpha_ci, 1 - alpha_ci]) if boot.size else (np.nan, np.nan)
            )
            row["min_attainable_p"] = _stats.minimum_attainable_pvalue(members.size, alternative)
            if np.isfinite(rho):
                strata.append((x, y))
                greater_p.append(_tail(values, mass, rho, "greater"))
                weights.append(math.sqrt(members.size))
        else:
            row.update(
                rho=np.nan,
                pvalue=np.nan,
                rho_ci_low=np.nan,
                rho_ci_high=np.nan,
                min_attainable_p=np.nan,
            )
        row["can_reach_alpha"] = bool(
            np.isfinite(row["min_attainable_p"]) and row["min_attainable_p"] < alpha
        )
        row["note"] = _small_set_note(members.size, alternative, alpha)
        per_set.append(row)
    per_set_table = pd.DataFrame(per_set).set_index("set")
    per_set_table = per_set_table[
        [
            "n_lots",
            "rho",
            "pvalue",
            "min_attainable_p",
            "can_reach_alpha",
            "rho_ci_low",
            "rho_ci_high",
            "note",
        ]
    ]
    combined = _combine(strata, per_set_table, greater_p, weights, alternative)
    adata = adata.copy() if copy else adata
    adata.uns[key_added] = {
        "per_set": per_set_table,
        "combined": combined,
        "lots": lots_table,
        "potency_label": label,
        "note": _overall_note(per_set_table, combined, alpha),
        "params": {
            "potency": potency_name,
            "key": key,
            "set_key": set_key,
            "lot_key": lot_key,
            "weighted": weighted,
            "exclude_off_reference": exclude_off_reference,
            "alternative": alternative,
            "n_bootstrap": n_bootstrap,
            "ci_level": ci_level,
            "alpha": alpha,
            "random_state": random_state,
        },
    }
    return adata if copy else None


def _combine(
    strata: list[tuple[np.ndarray, np.ndarray]],
    per_set: pd.DataFrame,
    greater_p: list[float],
    weights: list[float],
    alternative: str,
) -> pd.DataFrame:
    n_sets = len(strata)
    n_lots = int(sum(len(x) for x, _ in strata))
    rows = []
    if n_sets:
        statistic, pvalue = stratified_exact_test(strata, alternative=alternative)
        rows.append(
            {
                "method": "stratified_exact",
                "statistic": statistic,
                "pvalue": pvalue,
                "note": "sum of sqrt(n-1)-weighted rho; exact over all within-set orderings of the lots",
            }
        )
        set_p = per_set["pvalue"].dropna().to_numpy()
        fisher_stat, fisher_p = fisher_combination(set_p)
        rows.append(
            {
                "method": "fisher",
                "statistic": fisher_stat,
                "pvalue": fisher_p,
                "note": "Fisher on the per-set exact p-values (conservative: they are discrete)",
            }
        )
        stouffer_stat, stouffer_p = stouffer_combination(
            np.array(greater_p), np.array(weights), alternative
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


@record("tl.marker_by_set")
def marker_by_set(
    adata: AnnData,
    gene: str,
    *,
    key: str = MAPPING,
    potency_label: str | None = None,
    set_key: str = _keys.SET,
    lot_key: str = _keys.LOT,
    counts_layer: str | None = _keys.COUNTS_LAYER,
    reference_set: str | None = None,
    min_cells: int = 5,
    n_permutations: int = 9999,
    random_state: int = 0,
    key_added: str = MARKER_BY_SET,
    copy: bool = False,
) -> AnnData | None:
    """Expression of one gene in the potency-like cells, compared between sets (tissues).

    Cells are not replicates: each lot contributes the mean log-normalised expression of the
    gene in its potency-like cells (normalised from counts exactly as the mapping did), and
    sets are compared on these lot means — a Kruskal-Wallis test across all sets with a
    permutation p-value (lots shuffled between sets) and exact two-sided Mann-Whitney tests
    of every set against ``reference_set``. Cell-level summaries are reported beside them.

    Parameters
    ----------
    adata
        Query cells mapped with :func:`mscpotency.tl.map_to_reference`, raw counts in
        ``layers[counts_layer]`` (or ``X``).
    gene
        The gene to compare (e.g. the potency marker ``"LRRC75A"``).
    key
        ``key_added`` of the mapping.
    potency_label
        Reference label of the potency-like cells (default: the one the mapping recorded).
    set_key
        obs column with the set (tissue / study arm) of each lot.
    lot_key
        obs column with the lot of each cell.
    counts_layer
        Layer with raw counts (``X`` when absent).
    reference_set
        Set the others are compared against (default: the first set).
    min_cells
        Lots with fewer potency-like cells are left out of the lot-level tests (and listed).
    n_permutations
        Permutations of the Kruskal-Wallis test.
    random_state
        Seed of the permutations.
    key_added
        ``adata.uns`` key of the result.
    copy
        Return a copy instead of writing in place.

    Returns
    -------
    ``None``, or the copy when ``copy=True``. Writes ``adata.uns[key_added]`` with
    ``'lots'`` : DataFrame (one row per lot: set, n_cells, mean_expression, pct_expressing,
    tested), ``'sets'`` : DataFrame (one row per set: n_lots, mean_of_lots, sd_of_lots,
    n_cells, cell_mean, cell_pct_expressing), ``'tests'`` : DataFrame (Kruskal-Wallis across
    sets and each set vs ``reference_set``: statistic, pvalue, difference, log2_ratio),
    ``'gene'``, ``'potency_label'`` and ``'params'``.
    """
    label = _potency_label(adata, key, potency_label)
    if gene not in adata.var_names:
        msg = f"gene {gene!r} is not in adata.var_names"
        raise KeyError(msg)
    labels = require_obs_column(
        adata, key, what="transferred labels", hint="Run `tl.map_to_reference` first."
    )
    lots = lots_of(adata, lot_key)
    target_sum = float(adata.uns[key].get("target_sum", 1e4))
    counts = query_counts(adata, counts_layer)
    counts = counts.compute() if hasattr(counts, "compute") else counts
    totals = np.asarray(counts.sum(axis=1), dtype=float).ravel()
    column = counts[:, adata.var_names.get_loc(gene)]
    column = np.asarray(
        column.todense() if sparse.issparse(column) else column, dtype=float
    ).ravel()
    # normalised exactly as the mapping normalised the query (and pp.preprocess the reference)
    values = np.log1p(
        np.divide(column * target_sum, totals, out=np.zeros_like(column), where=totals > 0)
    )
    inside = labels.astype(str).to_numpy() == label
    if inside.sum() == 0:
        msg = f"no cell carries the label {label!r}; nothing to compare"
        raise ValueError(msg)
    frame = pd.DataFrame({"lot": lots.astype(str).to_numpy(), "value": values})[inside]
    lot_index = pd.Index(sorted(lots.astype(str).unique()), name=lot_key)
    sets = _sets_of_lots(adata, set_key, lot_key, lot_index)
    grouped = frame.groupby("lot")
    lots_table = pd.DataFrame(
        {
            "set": sets.to_numpy(),
            "n_cells": grouped.size().reindex(lot_index, fill_value=0).to_numpy(),
            "mean_expression": grouped["value"].mean().reindex(lot_index).to_numpy(),
            "pct_expressing": grouped["value"]
            .apply(lambda v: float((v > 0).mean()))
            .reindex(lot_index)
            .to_numpy(),
        },
        index=lot_index,
    )
    lots_table["tested"] = lots_table["n_cells"] >= min_cells
    set_names = _set_order(adata, set_key, sets)
    if reference_set is None:
        reference_set = set_names[0]
    if reference_set not in set_names:
        msg = f"reference_set {reference_set!r} is not a set; sets are {set_names}"
        raise ValueError(msg)
    cells_by_set = frame.assign(set=sets.reindex(frame["lot"]).to_numpy()).groupby("set")
    tested = lots_table[lots_table["tested"]]
    by_set = tested.groupby("set")["mean_expression"]
    sets_table = pd.DataFrame(
        {
            "n_lots": by_set.size(),
            "mean_of_lots": by_set.mean(),
            "sd_of_lots": by_set.std(),
            "n_cells": cells_by_set.size(),
            "cell_mean": cells_by_set["value"].mean(),
            "cell_pct_expressing": cells_by_set["value"].apply(lambda v: float((v > 0).mean())),
        }
    ).reindex(set_names)
    tests = _set_tests(tested, set_names, reference_set, n_permutations, random_state)
    adata = adata.copy() if copy else adata
    adata.uns[key_added] = {
        "lots": lots_table,
        "sets": sets_table,
        "tests": tests,
        "gene": gene,
        "potency_label": label,
        "params": {
            "key": key,
            "set_key": set_key,
            "lot_key": lot_key,
            "counts_layer": counts_layer,
            "reference_set": reference_set,
            "min_cells": min_cells,
            "n_permutations": n_permutations,
            "random_state": random_state,
            "target_sum": target_sum,
        },
    }
    return adata if copy else None


def kruskal_permutation(
    values: np.ndarray, groups: np.ndarray, *, n_permutations: int, random_state: int
) -> tuple[float, float, str]:
    """Kruskal-Wallis H with a permutation p-value: exact enumeration when feasible, else sampled."""
    values = np.asarray(values, dtype=float)
    _, codes = np.unique(groups, return_inverse=True)
    sizes = np.bincount(codes)
    ranks = _stats.midranks(values)

    def h_statistic(assignment: np.ndarray) -> float:
        sums = np.bincount(assignment, weights=ranks, minlength=sizes.size)
        n = values.size
        return float(12 / (n * (n + 1)) * (sums**2 / sizes).sum() - 3 * (n + 1))

    observed = h_statistic(codes)
    n_assignments = math.factorial(values.size) // math.prod(math.factorial(int(s)) for s in sizes)
    if n_assignments <= 200_000:
        null = np.array([h_statistic(a) for a in _assignments(sizes)])
        return observed, float((null >= observed - 1e-9).mean()), "exact"
    rng = np.random.default_rng(random_state)
    null = np.array([h_statistic(rng.permutation(codes)) for _ in range(n_permutations)])
    return (
        observed,
        float((1 + (null >= observed - 1e-9).sum()) / (1 + n_permutations)),
        "permutation",
    )


def _assignments(sizes: np.ndarray):
    """Every way to split ``sum(sizes)`` items into groups of the given sizes (as code arrays)."""
    n = int(sizes.sum())

    def fill(remaining: tuple[int, ...], group: int, assignment: np.ndarray):
        if group == sizes.size - 1:
            out = assignment.copy()
            out[list(remaining)] = group
            yield out
            return
        for chosen in itertools.combinations(remaining, int(sizes[group])):
            out = assignment.copy()
            out[list(chosen)] = group
            rest = tuple(i for i in remaining if i not in set(chosen))
            yield from fill(rest, group + 1, out)

    yield from fill(tuple(range(n)), 0, np.zeros(n, dtype=np.int64))


def _set_tests(
    tested: pd.DataFrame,
    set_names: list[str],
    reference_set: str,
    n_permutations: int,
    random_state: int,
) -> pd.DataFrame:
    rows = []
    present = [s for s in set_names if (tested["set"] == s).sum() >= 1]
    if len(present) >= 2:
        statistic, pvalue, how = kruskal_permutation(
            tested["mean_expression"].to_numpy(),
            tested["set"].to_numpy(),
            n_permutations=n_permutations,
            random_state=random_state,
        )
        rows.append(
            {
                "comparison": "all sets",
                "test": f"Kruskal-Wallis ({how} permutation)",
                "statistic": statistic,
                "pvalue": pvalue,
                "difference": np.nan,
                "log2_ratio": np.nan,
            }
        )
    base = tested.loc[tested["set"] == reference_set, "mean_expression"].to_numpy()
    for name in set_names:
        if name == reference_set:
            continue
        other = tested.loc[tested["set"] == name, "mean_expression"].to_numpy()
        if base.size == 0 or other.size == 0:
            continue
        result = stats.mannwhitneyu(other, base, alternative="two-sided", method="exact")
        difference = float(other.mean() - base.mean())
        # lot means are natural-log expression; the ratio of the expm1 means is on the linear scale
        ratio = (
            np.log2(np.expm1(other.mean()) / np.expm1(base.mean()))
            if base.mean() > 0 and other.mean() > 0
            else np.nan
        )
        rows.append(
            {
                "comparison": f"{name} vs {reference_set}",
                "test": "Mann-Whitney (exact, lots)",
                "statistic": float(result.statistic),
                "pvalue": float(result.pvalue),
                "difference": difference,
                "log2_ratio": float(ratio),
            }
        )
    columns = ["comparison", "test", "statistic", "pvalue", "difference", "log2_ratio"]
    return pd.DataFrame(rows, columns=columns).set_index("comparison")
