"""Which cluster's share of each lot tracks the lot's potency."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Literal

import numpy as np
import pandas as pd
from anndata import AnnData

from ... import _keys, _registry, _stats
from ..._docs import doc_params
from ..._provenance import record
from ..._stored import (
    LotDominatedWarning,
    LowQualityClusterWarning,
    NotSignificantWarning,
    stored,
)
from ..._validate import finite_outcome, lot_level_values, match_lots, require_min_lots
from ._lot_specificity import default_settings, specificity_result

#: Columns of the lot-specificity diagnostics the association table carries.
_SPECIFICITY_COLUMNS = ("n_lots_contributing", "top_lot", "top_lot_share", "lot_dominated")


def lot_outcome(
    adata: AnnData, potency: str | Mapping | pd.Series, lots: pd.Index, lot_key: str
) -> tuple[pd.Series, str]:
    """The potency of each lot in ``lots``, from an obs column or a lot -> value table."""
    if isinstance(potency, str):
        values = lot_level_values(adata, potency, lot_key)
        name = potency
    else:
        values = pd.Series(potency)
        name = str(values.name) if values.name is not None else "potency"
    values = match_lots(values, lots, name=name)
    values = finite_outcome(values, name=name)
    if values.nunique() < 2:
        msg = (
            f"{name} is the same for every lot ({values.iloc[0]!r}); nothing can correlate with it."
        )
        raise ValueError(msg)
    return values, name


@doc_params
@record("tl.potency_association")
def potency_association(
    adata: AnnData,
    potency: str | Mapping | pd.Series = _keys.POTENCY,
    *,
    fractions_key: str = _registry.LOT_FRACTIONS.key,
    transform: Literal["fraction", "clr"] = "fraction",
    method: _stats.PvalueMethod = "auto",
    alternative: _stats.Alternative = "two-sided",
    n_permutations: int = 9999,
    exact_max_n: int = _stats.EXACT_MAX_N,
    n_bootstrap: int = 2000,
    level: float = 0.95,
    alpha: float = 0.05,
    random_state: int = 0,
    key_added: str = _registry.POTENCY_ASSOCIATION.key,
    copy: bool = False,
) -> AnnData | None:
    """Spearman association of every cluster's lot fraction with lot potency.

    For each cluster: Spearman's rho across lots, an exact p-value (all n! orderings,
    ties handled exactly) up to ``exact_max_n`` lots or a Monte-Carlo permutation p-value
    above, the asymptotic p-value beside it, Benjamini-Hochberg FDR across clusters, a
    bootstrap CI of rho over lots and the leave-one-lot-out range of rho with the lot whose
    removal moves rho most.

    Parameters
    ----------
    adata
        {adata}
        Needs ``uns[fractions_key]`` from :func:`mscpotency.tl.lot_fractions`.
    potency
        {potency}
        Here the default is ``'vegf'``, and a lot -> value mapping or Series is accepted
        too. Every lot with cells needs a finite value and every value a lot with cells.
    transform
        ``"fraction"`` (as in the study) or ``"clr"`` (centred log-ratio of counts with a
        pseudocount of 0.5, which removes the sum-to-one constraint).
    alpha
        {alpha}
        A cluster whose p-value is below it is marked ``significant``.

    Returns
    -------
    ``None``, or the copy when ``copy=True``. Writes ``adata.uns[key_added]`` with
    ``'table'`` : DataFrame (one row per cluster: rho, pvalue, pvalue_method,
    pvalue_asymptotic, fdr, ci_low, ci_high, ci_valid_share, loo_min, loo_max,
    loo_most_influential_lot, mean_fraction, n_lots, significant), ``'lots'`` : DataFrame
    (lots x [potency, fraction of every cluster]), ``'potency_cluster'`` (the cluster with
    the largest positive rho, a candidate until ``'found'`` says it is significant),
    ``'found'`` (whether its FDR is at most ``alpha``), ``'lot_dominated'`` (whether it is
    made of one or a few lots' cells; the table carries n_lots_contributing, top_lot,
    top_lot_share and lot_dominated for every cluster, from
    :func:`mscpotency.tl.lot_specificity`), ``'low_quality'`` (whether
    :func:`mscpotency.tl.cluster_quality`, run on the same labels before, flagged it as a
    cluster of damaged cells), ``'message'`` (a plain sentence:
    the potency cluster found, or that no cluster's share tracks potency at that FDR and
    which candidate came closest), ``'note'`` (what the lot count allows) and ``'params'``.

    Warns
    -----
    NotSignificantWarning
        A ``UserWarning``, when no cluster's share tracks potency at FDR <= ``alpha`` although the lots could
        reach it (with 4 lots or fewer no test can; ``'note'`` says so instead). Tools
        that look the potency cluster up (markers, validation, prediction) warn again.
    LotDominatedWarning
        A ``UserWarning``, when the potency cluster is lot-dominated (its cells come from one
        or a few lots); tools that look it up warn again.
    LowQualityClusterWarning
        A ``UserWarning``, when :func:`mscpotency.tl.cluster_quality` flagged the potency
        cluster as a cluster of damaged cells.

    Notes
    -----
    On clusters of a lot-corrected representation (:func:`mscpotency.pp.integrate`, then
    ``tl.cluster(adata, use_rep="X_pca_harmony")`` and ``tl.lot_fractions``) nothing
    changes here: the association reads the fractions, whatever made the labels.
    """
    fractions_result = stored(adata, _registry.LOT_FRACTIONS, fractions_key)
    fractions: pd.DataFrame = fractions_result["fractions"]
    lot_key = fractions_result["params"]["lot_key"]
    require_min_lots(len(fractions))
    outcome, potency_name = lot_outcome(
        adata, potency, pd.Index(fractions.index.astype(str)), lot_key
    )
    features = _features(fractions, fractions_result["counts"], transform)
    y = outcome.to_numpy()
    result = _stats.spearman_test(
        features,
        y,
        method=method,
        alternative=alternative,
        n_permutations=n_permutations,
        exact_max_n=exact_max_n,
        random_state=random_state,
    )
    table = _association_table(result, fractions)
    if n_bootstrap > 0:
        low, high, valid = _stats.bootstrap_ci(
            features, y, n_bootstrap=n_bootstrap, level=level, random_state=random_state
        )
        table["ci_low"], table["ci_high"], table["ci_valid_share"] = low, high, valid
    table = table.join(_leave_one_lot_out(features, y, result.rho, table.index, fractions.index))
    table["mean_fraction"] = fractions.mean(axis=0).to_numpy()
    table["n_lots"] = result.n_lots
    table["significant"] = table["pvalue"] < alpha
    table = table.join(_lot_flags(adata, fractions_result, fractions_key))
    named = _strongest_positive(table["rho"])
    found, message = _honesty(table, named, potency_name, alpha, result.n_lots, alternative)
    dominated = bool(named != "" and table.loc[named, "lot_dominated"])
    if dominated:
        message = f"{message} {_dominated_sentence(table, named)}"
    damaged = _damaged_sentence(adata, fractions_result["params"]["cluster_key"], named)
    if damaged:
        message = f"{message} {damaged}"
    adata = adata.copy() if copy else adata
    adata.uns[key_added] = {
        "table": table,
        "lots": _lots_table(fractions, potency_name, y),
        "potency_cluster": named,
        "found": found,
        "lot_dominated": dominated,
        "low_quality": bool(damaged),
        "message": message,
        "note": _small_n_note(result.n_lots, alternative, alpha),
        "params": {
            "potency": potency_name,
            "fractions_key": fractions_key,
            "transform": transform,
            "method": result.pvalue_method,
            "alternative": alternative,
            "n_permutations": n_permutations,
            "exact_max_n": exact_max_n,
            "n_bootstrap": n_bootstrap,
            "level": level,
            "alpha": alpha,
            "random_state": random_state,
            "lot_key": lot_key,
        },
    }
    if not found and _stats.minimum_attainable_pvalue(result.n_lots, alternative) < alpha:
        warnings.warn(message, NotSignificantWarning, stacklevel=3)
    if dominated:
        warnings.warn(_dominated_sentence(table, named), LotDominatedWarning, stacklevel=3)
    if damaged:
        warnings.warn(damaged, LowQualityClusterWarning, stacklevel=3)
    return adata if copy else None


def _damaged_sentence(adata: AnnData, cluster_key: str, named: str) -> str:
    """Why the named cluster is no quality attribute, if ``tl.cluster_quality`` flagged it.

    Read from ``uns['cluster_quality']`` when it was computed on the same labels; ``""``
    when it was not, or did not flag the named cluster.
    """
    quality = adata.uns.get(_registry.CLUSTER_QUALITY.key)
    if (
        named == ""
        or not isinstance(quality, Mapping)
        or quality.get("params", {}).get("cluster_key") != cluster_key
        or named not in [str(c) for c in quality.get("summary", {}).get("low_quality", [])]
    ):
        return ""
    return (
        f"The potency cluster {named!r} is a cluster of damaged cells (tl.cluster_quality): "
        "its share tracks lot quality (viability, handling), not a cell state. Remove its "
        "cells or QC with thresholds='mad', and cluster again."
    )


def _lot_flags(adata: AnnData, fractions_result: Mapping, fractions_key: str) -> pd.DataFrame:
    """Per cluster: the lot-specificity columns the association carries.

    Read from ``uns[specificity_key]`` when :func:`tl.lot_fractions` (or
    :func:`tl.lot_specificity`) wrote them for these fractions; otherwise computed from the
    stored counts with the default thresholds.
    """
    counts: pd.DataFrame = fractions_result["counts"]
    clusters = pd.Index(counts.columns.astype(str), name="cluster")
    key = fractions_result["params"].get("specificity_key")
    found = adata.uns.get(key) if key is not None else None
    if (
        isinstance(found, Mapping)
        and isinstance(found.get("table"), pd.DataFrame)
        and found.get("params", {}).get("fractions_key") == fractions_key
        and found["table"].index.astype(str).equals(clusters)
    ):
        table = found["table"]
    else:
        table = specificity_result(counts, default_settings())["table"]
    flags = table.loc[:, list(_SPECIFICITY_COLUMNS)].copy()
    flags.index = clusters
    flags["lot_dominated"] = flags["lot_dominated"].astype(bool)
    return flags


def _dominated_sentence(table: pd.DataFrame, named: str) -> str:
    """Why the named potency cluster is not to be reported as a quality attribute."""
    row = table.loc[named]
    return (
        f"The potency cluster {named!r} is lot-dominated: {row['top_lot_share']:.0%} of its "
        f"cells come from lot {row['top_lot']} and {int(row['n_lots_contributing'])} lot(s) "
        "contribute, so its share can track potency through one lot (a donor artefact, not a "
        "quality attribute). See get.lot_specificity; correct lot effects with pp.integrate "
        "and cluster again, or pass cluster= to choose one explicitly."
    )


def _features(fractions: pd.DataFrame, counts: pd.DataFrame, transform: str) -> np.ndarray:
    """Lots x clusters matrix the association is computed on: fractions or their CLR."""
    if transform == "fraction":
        return fractions.to_numpy(dtype=float)
    if transform == "clr":
        return _stats.clr(fractions.to_numpy(dtype=float), counts=counts.to_numpy(dtype=float))
    msg = f"transform must be 'fraction' or 'clr', got {transform!r}"
    raise ValueError(msg)


def _association_table(result: _stats.AssociationResult, fractions: pd.DataFrame) -> pd.DataFrame:
    """One row per cluster: rho, its p-values and their FDR."""
    return pd.DataFrame(
        {
            "rho": result.rho,
            "pvalue": result.pvalue,
            "pvalue_method": result.pvalue_method,
            "pvalue_asymptotic": result.pvalue_asymptotic,
            "fdr": result.fdr,
        },
        index=pd.Index(fractions.columns.astype(str), name="cluster"),
    )


def _leave_one_lot_out(
    features: np.ndarray, y: np.ndarray, rho: np.ndarray, clusters: pd.Index, lots: pd.Index
) -> pd.DataFrame:
    """Per cluster: the range of rho with one lot left out, and the lot that moves it most."""
    loo = _stats.leave_one_out(features, y)
    finite = np.isfinite(loo)
    has_value = finite.any(axis=0)
    # masked min/max: a cluster with no finite rho left (e.g. absent from all but one of
    # 4 lots) gets NaN without numpy's "All-NaN slice" RuntimeWarning
    loo_min = np.where(has_value, np.where(finite, loo, np.inf).min(axis=0), np.nan)
    loo_max = np.where(has_value, np.where(finite, loo, -np.inf).max(axis=0), np.nan)
    shift = np.abs(loo - rho)
    shift[~np.isfinite(shift)] = -1
    return pd.DataFrame(
        {
            "loo_min": loo_min,
            "loo_max": loo_max,
            "loo_most_influential_lot": lots.astype(str).to_numpy()[shift.argmax(axis=0)],
        },
        index=clusters,
    )


def _lots_table(fractions: pd.DataFrame, potency_name: str, y: np.ndarray) -> pd.DataFrame:
    """Lots x (potency, fraction of every cluster), with string labels."""
    lots = fractions.copy()
    lots.columns = lots.columns.astype(str)
    lots.insert(0, potency_name, y)
    lots.index = lots.index.astype(str)
    return lots


def _strongest_positive(rho: pd.Series) -> str:
    """The cluster with the largest positive rho (the potency cluster), or ``""`` if none."""
    positive = rho.where(rho > 0)
    return str(positive.idxmax()) if positive.notna().any() else ""


def _honesty(
    table: pd.DataFrame,
    named: str,
    potency_name: str,
    alpha: float,
    n_lots: int,
    alternative: str,
) -> tuple[bool, str]:
    """Whether the potency cluster is significant (FDR <= alpha), and the sentence saying so."""
    if named == "":
        return False, (
            f"No cluster's share rises with {potency_name}; no potency cluster is named."
        )
    row = table.loc[named]
    found = bool(np.isfinite(row["fdr"]) and row["fdr"] <= alpha)
    stats = f"rho = {row['rho']:.2f}, p = {row['pvalue']:.3g}, FDR = {row['fdr']:.3g}"
    if found:
        return True, f"Potency cluster: {named} ({stats}, {n_lots} lots)."
    floor = _stats.minimum_attainable_pvalue(n_lots, alternative)  # type: ignore[arg-type]
    reach = f"; with {n_lots} lots no test can reach it" if floor >= alpha else ""
    return False, (
        f"No cluster's share tracks {potency_name} at FDR <= {alpha:g}{reach}: the best "
        f"candidate is {named} ({stats}); it is not a demonstrated potency cluster. "
        "Run tl.potency_population to search finer populations, or pass cluster= explicitly."
    )


def _small_n_note(n_lots: int, alternative: str, alpha: float) -> str:
    floor = _stats.minimum_attainable_pvalue(n_lots, alternative)  # type: ignore[arg-type]
    if floor >= alpha:
        return (
            f"With {n_lots} lots no Spearman test can reach p < {alpha} (smallest attainable "
            f"p = {floor:.3g}); judge these lots by pooled evidence across sets or by prediction error."
        )
    return f"{n_lots} lots; smallest attainable exact p = {floor:.3g}."
