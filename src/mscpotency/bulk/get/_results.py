"""Tidy DataFrames of the bulk (iPS line) results: propensity, rank association, validation."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import pandas as pd
from anndata import AnnData

from ... import _registry
from ..._docs import doc_params
from ..._stored import stored_table
from .._platforms import association_tables
from .._types import Consensus


@doc_params
def fit_propensity(
    adata: AnnData,
    *,
    kind: Literal["scores", "loadings"] = "scores",
    key: str = _registry.PROPENSITY.key,
) -> pd.DataFrame:
    """The propensity of each line, or the panel's loadings, from :func:`mscpotency.bulk.tl.fit_propensity`.

    Also reads what :func:`mscpotency.bulk.tl.apply_propensity` wrote.

    Parameters
    ----------
    kind
        {kind}
        ``"scores"``: lines x [score, rank] (rank 1 = most differentiated);
        ``"loadings"``: panel genes x [loading, mean, sd, orient] of PC1, largest loading first.

    Returns
    -------
    The table, a copy.
    """
    table = stored_table(adata, _registry.PROPENSITY, kind, key)
    if kind == "loadings":
        table = table.sort_values("loading", ascending=False)
    return table


@doc_params
def rank_association(
    adata: AnnData,
    *,
    key: str = _registry.RANK_ASSOCIATION.key,
    outcome: str | None = None,
    sort: bool = True,
) -> pd.DataFrame:
    """Per feature: rho, exact/permutation p and FDR against an outcome, from :func:`mscpotency.bulk.tl.rank_association`.

    Parameters
    ----------
    sort
        Sort by p-value (then by decreasing ``abs(rho)``).

    Returns
    -------
    With one outcome stored (or ``outcome`` given) the table indexed by feature; with
    several and ``outcome=None`` the long table (outcome, feature, ...).
    """
    table = stored_table(adata, _registry.RANK_ASSOCIATION, "table", key)
    outcomes = list(dict.fromkeys(table["outcome"].astype(str)))
    if outcome is not None:
        if outcome not in outcomes:
            msg = f"adata.uns[{key!r}] has no outcome {outcome!r}; it has {outcomes}"
            raise KeyError(msg)
        table = table[table["outcome"].astype(str) == outcome]
    if sort:
        order = np.lexsort((-table["rho"].abs().to_numpy(), table["pvalue"].to_numpy()))
        table = table.iloc[order]
    if outcome is not None or len(outcomes) == 1:
        table = table.set_index("feature")
    return table


@doc_params
def validate_markers(
    adata: AnnData,
    *,
    kind: Literal["table", "summary"] = "table",
    key: str = _registry.MARKER_VALIDATION.key,
) -> pd.DataFrame:
    """The held-out test of each candidate, from :func:`mscpotency.bulk.tl.validate_markers`.

    Parameters
    ----------
    kind
        {kind}
        ``"table"``: one row per candidate (expected sign, held-out rho and p, validated or
        not); ``"summary"``: candidates, validated and their share, per outcome.

    Returns
    -------
    The table, a copy.
    """
    return stored_table(adata, _registry.MARKER_VALIDATION, kind, key)


@doc_params
def marker_counts(
    results: Mapping[str, AnnData],
    *,
    key: str = _registry.RANK_ASSOCIATION.key,
    thresholds: Sequence[float] = (0.05, 0.01),
    use: Literal["pvalue", "fdr"] = "pvalue",
) -> pd.DataFrame:
    """Positive and negative candidate counts per platform and outcome at each threshold.

    The summary table of the reference work: how many features of each platform correlate
    positively or negatively with each lineage's propensity at P < 0.05 and P < 0.01.

    Parameters
    ----------
    results
        platform name -> AnnData with :func:`mscpotency.bulk.tl.rank_association` results.
    key
        {key}
        Here the key of the rank associations in every platform's ``uns``.
    thresholds
        Levels to count at.
    use
        Count by ``"pvalue"`` or by ``"fdr"``.

    Returns
    -------
    DataFrame indexed by (platform, outcome) with n_lines, n_features and, per threshold,
    ``'P<0.05 positive'``, ``'P<0.05 negative'`` (``'FDR<...'`` with ``use="fdr"``).
    """
    if use not in ("pvalue", "fdr"):
        msg = f"use must be 'pvalue' or 'fdr', got {use!r}"
        raise ValueError(msg)
    thresholds = [float(t) for t in thresholds]
    if not thresholds or not all(0 < t < 1 for t in thresholds):
        msg = f"thresholds must be levels between 0 and 1, got {thresholds}"
        raise ValueError(msg)
    label = "P" if use == "pvalue" else "FDR"
    rows = []
    for platform, table in association_tables(results, key=key).items():
        for outcome, part in table.groupby(table["outcome"].astype(str), sort=False):
            row = {
                "platform": platform,
                "outcome": outcome,
                "n_lines": int(part["n_lines"].max()),
                "n_features": len(part),
            }
            for t in thresholds:
                hit = part[use] < t
                row[f"{label}<{t:g} positive"] = int((hit & (part["rho"] > 0)).sum())
                row[f"{label}<{t:g} negative"] = int((hit & (part["rho"] < 0)).sum())
            rows.append(row)
    return pd.DataFrame(rows).set_index(["platform", "outcome"])


@doc_params
def consensus(result: Consensus, *, rule: str, outcome: str | None = None) -> pd.DataFrame:
    """The markers of one consensus rule with their sign for one outcome, ready to validate.

    Parameters
    ----------
    result
        What :func:`mscpotency.bulk.tl.consensus` returned.
    rule
        Rule name.
    outcome
        One outcome of the rule's pattern; ``None``: every outcome's direction.

    Returns
    -------
    DataFrame indexed by feature with ``sign`` (+1/-1, the expected direction of the
    association with ``outcome``) and ``rho`` (the mean training rho over the rule's
    platforms), as :func:`mscpotency.bulk.tl.validate_markers` takes it; with
    ``combine="stouffer"`` also ``statistic``, ``qvalue`` and ``expected_false`` (false
    calls expected by chance down to this marker). With ``outcome=None``: per outcome of
    the pattern ``sign:<outcome>`` and ``rho:<outcome>`` instead of sign and rho.
    """
    if rule not in result.rules:
        msg = f"the consensus has no rule {rule!r}; its rules are {list(result.rules)}"
        raise KeyError(msg)
    pattern = result.rules[rule].pattern
    if outcome is None:
        return _every_direction(result, rule)
    if outcome not in pattern:
        msg = f"rule {rule!r} has no outcome {outcome!r}; its outcomes are {list(pattern)}"
        raise KeyError(msg)
    part = result.table[result.table["rule"].astype(str) == rule]
    rho = part[[f"rho:{p}:{outcome}" for p in result.rules[rule].platforms]]
    out = pd.DataFrame(
        {
            "sign": part[f"sign:{outcome}"].astype(int).to_numpy()
            if len(part)
            else np.zeros(0, dtype=int),
            "rho": rho.mean(axis=1).to_numpy(),
        },
        index=pd.Index(part["feature"].astype(str), name="feature"),
    )
    for column in _COMBINED_COLUMNS:
        if column in part.columns:
            out[column] = part[column].to_numpy()
    return out


_COMBINED_COLUMNS = ("statistic", "qvalue", "expected_false")


def _every_direction(result: Consensus, rule: str) -> pd.DataFrame:
    """One rule's markers with their sign and mean training rho for every outcome."""
    part = result.table[result.table["rule"].astype(str) == rule]
    out = pd.DataFrame(index=pd.Index(part["feature"].astype(str), name="feature"))
    for outcome in result.rules[rule].pattern:
        out[f"sign:{outcome}"] = part[f"sign:{outcome}"].astype(int).to_numpy()
        columns = [f"rho:{p}:{outcome}" for p in result.rules[rule].platforms]
        out[f"rho:{outcome}"] = part[columns].mean(axis=1).to_numpy()
    for column in _COMBINED_COLUMNS:
        if column in part.columns:
            out[column] = part[column].to_numpy()
    return out
