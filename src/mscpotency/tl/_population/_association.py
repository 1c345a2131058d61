"""Which cluster's share of each lot tracks the lot's potency."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import numpy as np
import pandas as pd
from anndata import AnnData

from ... import _keys, _registry, _stats
from ..._provenance import record
from ..._validate import finite_outcome, lot_level_values, match_lots, require_min_lots, require_uns


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
    ci_level: float = 0.95,
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
        Cells with ``uns[fractions_key]`` from :func:`mscpotency.tl.lot_fractions`.
    potency
        obs column with one value per lot (e.g. ``"vegf"``), or a lot -> value mapping/Series.
        Every lot with cells needs a finite value and every value a lot with cells.
    fractions_key
        Key of the lot fractions.
    transform
        ``"fraction"`` (as in the study) or ``"clr"`` (centred log-ratio of counts with a
        pseudocount of 0.5, which removes the sum-to-one constraint).
    method
        ``"auto"``, ``"exact"`` or ``"permutation"``.
    alternative
        ``"two-sided"``, ``"greater"`` or ``"less"``.
    n_permutations
        Monte-Carlo permutations when not exact.
    exact_max_n
        Largest number of lots that ``"auto"`` enumerates exactly.
    n_bootstrap
        Bootstrap resamples of lots for the CI of rho (0 to skip).
    ci_level
        Coverage of the CI.
    alpha
        Level at which a cluster is called significantly associated.
    random_state
        Seed of permutations and bootstrap.
    key_added
        ``adata.uns`` key of the result.
    copy
        Return a copy instead of writing in place.

    Returns
    -------
    ``None``, or the copy when ``copy=True``. Writes ``adata.uns[key_added]`` with
    ``'table'`` : DataFrame (one row per cluster: rho, pvalue, pvalue_method,
    pvalue_asymptotic, fdr, ci_low, ci_high, ci_valid_share, loo_min, loo_max,
    loo_most_influential_lot, mean_fraction, n_lots), ``'lots'`` : DataFrame (lots x
    [potency, fraction of every cluster]), ``'potency_cluster'`` (the cluster with the
    largest positive rho), ``'note'`` (what the lot count allows) and ``'params'``.
    """
    stored = require_uns(adata, fractions_key, tool="tl.lot_fractions")
    counts: pd.DataFrame = stored["counts"]
    fractions: pd.DataFrame = stored["fractions"]
    lot_key = stored["params"]["lot_key"]
    require_min_lots(len(fractions))
    outcome, potency_name = lot_outcome(
        adata, potency, pd.Index(fractions.index.astype(str)), lot_key
    )
    if transform == "fraction":
        features = fractions.to_numpy(dtype=float)
    elif transform == "clr":
        features = _stats.clr(fractions.to_numpy(dtype=float), counts=counts.to_numpy(dtype=float))
    else:
        msg = f"transform must be 'fraction' or 'clr', got {transform!r}"
        raise ValueError(msg)
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
    table = pd.DataFrame(
        {
            "rho": result.rho,
            "pvalue": result.pvalue,
            "pvalue_method": result.pvalue_method,
            "pvalue_asymptotic": result.pvalue_asymptotic,
            "fdr": result.fdr,
        },
        index=pd.Index(fractions.columns.astype(str), name="cluster"),
    )
    if n_bootstrap > 0:
        low, high, valid = _stats.bootstrap_ci(
            features, y, n_bootstrap=n_bootstrap, level=ci_level, random_state=random_state
        )
        table["ci_low"], table["ci_high"], table["ci_valid_share"] = low, high, valid
    loo = _stats.leave_one_out(features, y)
    table["loo_min"] = np.nanmin(loo, axis=0) if np.isfinite(loo).any() else np.nan
    table["loo_max"] = np.nanmax(loo, axis=0) if np.isfinite(loo).any() else np.nan
    shift = np.abs(loo - result.rho)
    shift[~np.isfinite(shift)] = -1
    table["loo_most_influential_lot"] = fractions.index.astype(str).to_numpy()[shift.argmax(axis=0)]
    table["mean_fraction"] = fractions.mean(axis=0).to_numpy()
    table["n_lots"] = result.n_lots
    table["significant"] = table["pvalue"] < alpha
    lots = fractions.copy()
    lots.columns = lots.columns.astype(str)
    lots.insert(0, potency_name, y)
    lots.index = lots.index.astype(str)
    positive = table["rho"].where(table["rho"] > 0)
    potency_cluster = str(positive.idxmax()) if positive.notna().any() else ""
    adata = adata.copy() if copy else adata
    adata.uns[key_added] = {
        "table": table,
        "lots": lots,
        "potency_cluster": potency_cluster,
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
            "ci_level": ci_level,
            "alpha": alpha,
            "random_state": random_state,
            "lot_key": lot_key,
        },
    }
    return adata if copy else None


def _small_n_note(n_lots: int, alternative: str, alpha: float) -> str:
    floor = _stats.minimum_attainable_pvalue(n_lots, alternative)  # type: ignore[arg-type]
    if floor >= alpha:
        return (
            f"With {n_lots} lots no Spearman test can reach p < {alpha} (smallest attainable "
            f"p = {floor:.3g}); judge these lots by pooled evidence across sets or by prediction error."
        )
    return f"{n_lots} lots; smallest attainable exact p = {floor:.3g}."
