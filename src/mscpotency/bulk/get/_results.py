"""Tidy DataFrames of the bulk (iPS line) results: propensity, rank association, validation."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import pandas as pd
from anndata import AnnData

from ...get._population import stored_table
from ..tl._consensus import association_tables
from ..tl._propensity import PROPENSITY
from ..tl._rank_association import RANK_ASSOCIATION
from ..tl._validation import MARKER_VALIDATION


def propensity(adata: AnnData, *, key: str = PROPENSITY) -> pd.DataFrame:
    """Lines x [score, rank] from :func:`mscpotency.bulk.tl.propensity_score` (rank 1 = most differentiated)."""
    return stored_table(adata, key, "scores", tool="tl.propensity_score")


def propensity_loadings(adata: AnnData, *, key: str = PROPENSITY) -> pd.DataFrame:
    """Panel genes x [loading, mean, sd, orient] of the propensity's PC1, largest loading first."""
    table = stored_table(adata, key, "loadings", tool="tl.propensity_score")
    return table.sort_values("loading", ascending=False)


def rank_association(
    adata: AnnData, *, key: str = RANK_ASSOCIATION, outcome: str | None = None, sort: bool = True
) -> pd.DataFrame:
    """Per feature: rho, exact/permutation p and FDR against an outcome, from :func:`mscpotency.bulk.tl.rank_association`.

    With one outcome stored (or ``outcome`` given) the table is indexed by feature; with
    several and ``outcome=None`` it is the long table (outcome, feature, ...). Sorted by
    p-value (then |rho|) unless ``sort=False``.
    """
    table = stored_table(adata, key, "table", tool="tl.rank_association")
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


def marker_validation(adata: AnnData, *, key: str = MARKER_VALIDATION) -> pd.DataFrame:
    """One row per candidate: expected sign, held-out rho and p, validated or not."""
    return stored_table(adata, key, "table", tool="tl.validate_markers")


def marker_counts(
    results: Mapping[str, AnnData],
    *,
    key: str = RANK_ASSOCIATION,
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
        ``uns`` key of the rank associations.
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


def consensus_candidates(consensus: pd.DataFrame, *, rule: str, outcome: str) -> pd.DataFrame:
    """The markers of one consensus rule with their sign for one outcome, ready to validate.

    Parameters
    ----------
    consensus
        The table returned by :func:`mscpotency.bulk.tl.consensus`.
    rule
        Rule name.
    outcome
        One outcome of the rule's pattern.

    Returns
    -------
    DataFrame indexed by feature with ``sign`` (+1/-1, the expected direction of the
    association with ``outcome``) and ``rho`` (the mean training rho over the rule's platforms).
    """
    rules = list(consensus.attrs.get("n_tested", {}))
    rules += (
        [r for r in dict.fromkeys(consensus["rule"].astype(str)) if r not in rules]
        if "rule" in consensus
        else []
    )
    if rule not in rules:
        msg = f"the consensus table has no rule {rule!r}; its rules are {rules}"
        raise KeyError(msg)
    part = consensus[consensus["rule"].astype(str) == rule]
    sign_column = f"sign:{outcome}"
    patterns = consensus.attrs.get("patterns", {})
    known = (
        outcome in patterns[rule]
        if rule in patterns
        else sign_column in part.columns and part[sign_column].notna().any()
    )
    if not known:
        outcomes = list(patterns.get(rule, {})) or sorted(
            c.split(":", 1)[1]
            for c in part.columns
            if c.startswith("sign:") and part[c].notna().any()
        )
        msg = f"rule {rule!r} has no outcome {outcome!r}; its outcomes are {outcomes}"
        raise KeyError(msg)
    rho_columns = [c for c in part.columns if c.startswith("rho:") and c.endswith(f":{outcome}")]
    out = pd.DataFrame(
        {
            "sign": part[sign_column].astype(int).to_numpy()
            if len(part)
            else np.zeros(0, dtype=int),
            "rho": part[rho_columns].mean(axis=1).to_numpy() if rho_columns else np.nan,
        },
        index=pd.Index(part["feature"].astype(str), name="feature"),
    )
    return out
