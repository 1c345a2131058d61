"""Candidate markers that agree across platforms, differentiation methods and lineages."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from anndata import AnnData

from ..._provenance import record
from ..._validate import require_uns
from ._rank_association import RANK_ASSOCIATION


@dataclass(frozen=True)
class SignRule:
    """A sign pattern a feature must follow to be a consensus marker.

    Parameters
    ----------
    pattern
        outcome -> +1 or -1: the relative direction of the feature's association with each
        outcome. ``{"neural_suspension": 1, "neural_adhesion": 1}`` asks for the same sign
        under both induction methods; ``{"ectoderm": 1, "mesoderm": -1, "endoderm": -1}`` for
        opposite signs between ectoderm and meso/endoderm (the SALL3 pattern). A feature
        passes in either overall direction (all signs as given, or all flipped).
    platforms
        Platforms on which the pattern must hold (default: those given to :func:`consensus`).
    min_significant
        How many of the platform x outcome cells must be significant (default: all of
        them); the signs must agree in every cell regardless.
    """

    pattern: Mapping[str, int]
    platforms: Sequence[str] | None = None
    min_significant: int | None = None


def _as_rule(name: str, rule) -> SignRule:
    if isinstance(rule, SignRule):
        pattern = dict(rule.pattern)
        platforms, min_significant = rule.platforms, rule.min_significant
    elif isinstance(rule, Mapping):
        pattern, platforms, min_significant = dict(rule), None, None
    else:
        msg = f"rule {name!r} must be an outcome -> sign mapping or a SignRule, got {type(rule).__name__}"
        raise TypeError(msg)
    if not pattern:
        msg = f"rule {name!r} has an empty pattern; map at least one outcome to +1 or -1"
        raise ValueError(msg)
    bad = {k: v for k, v in pattern.items() if v not in (1, -1)}
    if bad:
        msg = f"rule {name!r}: signs must be +1 or -1, got {bad}"
        raise ValueError(msg)
    return SignRule(
        pattern={str(k): int(v) for k, v in pattern.items()},
        platforms=None if platforms is None else [str(p) for p in platforms],
        min_significant=min_significant,
    )


def association_tables(
    results: Mapping[str, AnnData], *, key: str = RANK_ASSOCIATION, match_on: str | None = None
) -> dict[str, pd.DataFrame]:
    """The stored :func:`rank_association` table of every platform, with a ``match`` column.

    ``match`` is the feature name, or ``var[match_on]`` (e.g. the gene a CAGE promoter
    belongs to) so features can be matched across platforms.
    """
    if not isinstance(results, Mapping) or not results:
        msg = "results must be a non-empty mapping of platform name -> AnnData with tl.rank_association results"
        raise ValueError(msg)
    tables = {}
    for platform, adata in results.items():
        if not isinstance(adata, AnnData):
            msg = f"results[{platform!r}] must be an AnnData, got {type(adata).__name__}"
            raise TypeError(msg)
        stored = require_uns(adata, key, tool="tl.rank_association")
        if not isinstance(stored, dict) or "table" not in stored:
            msg = f"results[{platform!r}].uns[{key!r}] is not a rank association; run `tl.rank_association`"
            raise KeyError(msg)
        table = pd.DataFrame(stored["table"]).copy()
        if match_on is None:
            table["match"] = table["feature"].astype(str)
        else:
            if match_on not in adata.var.columns:
                msg = (
                    f"results[{platform!r}].var has no column {match_on!r} to match features across "
                    f"platforms; columns are {list(adata.var.columns)[:12]}"
                )
                raise KeyError(msg)
            mapping = adata.var[match_on].astype(str)
            mapping.index = mapping.index.astype(str)
            table["match"] = mapping.reindex(table["feature"].astype(str)).to_numpy()
        tables[str(platform)] = table
    return tables


def _cell(table: pd.DataFrame, platform: str, outcome: str, use: str) -> pd.DataFrame:
    """One platform x outcome: per match key, the feature with the smallest p (then largest |rho|)."""
    part = table[table["outcome"].astype(str) == outcome]
    if part.empty:
        outcomes = sorted(table["outcome"].astype(str).unique())
        msg = (
            f"platform {platform!r} has no rank association for outcome {outcome!r}; its outcomes "
            f"are {outcomes}. Run `tl.rank_association` with that outcome."
        )
        raise KeyError(msg)
    part = part.assign(_abs=part["rho"].abs()).sort_values(
        [use, "_abs"], ascending=[True, False], kind="stable"
    )
    part = part.drop_duplicates("match", keep="first").set_index("match")
    return part[["feature", "rho", use]]


@record("tl.consensus")
def consensus(
    results: Mapping[str, AnnData],
    *,
    rules: Mapping[str, Mapping[str, int] | SignRule],
    platforms: Sequence[str] | None = None,
    key: str = RANK_ASSOCIATION,
    alpha: float = 0.05,
    use: Literal["pvalue", "fdr"] = "pvalue",
    min_significant: int | None = None,
    match_on: str | None = None,
) -> pd.DataFrame:
    """Features whose association follows a sign rule on every platform and outcome asked.

    Each rule is a sign pattern over outcomes (see :class:`SignRule`). A feature is a
    consensus marker of a rule when, on every platform of the rule and for every outcome of
    its pattern, the sign of its rho follows the pattern (in one overall direction) and
    enough of these platform x outcome cells are significant (all of them by default).
    This removes the false candidates of one platform (measurement noise, platform
    artefacts), of one differentiation method, and those without the expected opposite
    behaviour between lineages; held-out lines (:func:`validate_markers`) remove the rest.

    Parameters
    ----------
    results
        platform name -> AnnData with :func:`rank_association` results under ``key``.
    rules
        rule name -> pattern (outcome -> +1/-1) or :class:`SignRule`.
    platforms
        Platforms every rule must hold on unless it names its own (default: all results).
    key
        ``uns`` key of the rank associations.
    alpha
        Significance level of one cell.
    use
        Compare ``"pvalue"`` (as in the reference work) or the BH ``"fdr"`` with ``alpha``.
    min_significant
        Default for rules without their own: cells that must be significant (default: all).
    match_on
        var column that names the same entity across platforms (``"gene"`` for CAGE
        promoters and array probes); default: feature names. Where a platform has several
        features per entity, the one with the smallest p in that cell speaks for it.

    Returns
    -------
    DataFrame, one row per rule and consensus feature: rule, feature (the feature name or
    the ``match_on`` entity), direction (+1 when the signs are as in the pattern, -1 when all
    flipped), ``sign:<outcome>`` (the sign of the association with each outcome),
    n_cells, n_significant, max_pvalue (the largest p, or FDR, over the cells), min_abs_rho,
    and per cell ``rho:<platform>:<outcome>``, ``<use>:<platform>:<outcome>`` and, with
    ``match_on``, ``feature:<platform>:<outcome>``. ``DataFrame.attrs['n_tested']`` holds,
    per rule, how many features were measured in every cell; ``attrs['n_lines']`` the number
    of lines behind each ``platform:outcome`` (different where a line was not profiled on
    every platform and :func:`rank_association` used ``on_missing="intersect"``).
    """
    if not 0 < alpha < 1:
        msg = f"alpha must be between 0 and 1, got {alpha}"
        raise ValueError(msg)
    if use not in ("pvalue", "fdr"):
        msg = f"use must be 'pvalue' or 'fdr', got {use!r}"
        raise ValueError(msg)
    if not isinstance(rules, Mapping) or not rules:
        msg = "rules must be a non-empty mapping of rule name -> {outcome: +1/-1} (or SignRule)"
        raise ValueError(msg)
    tables = association_tables(results, key=key, match_on=match_on)
    default_platforms = list(tables) if platforms is None else [str(p) for p in platforms]
    frames, n_tested, patterns = [], {}, {}
    for name, raw in rules.items():
        rule = _as_rule(str(name), raw)
        rule_platforms = list(rule.platforms) if rule.platforms is not None else default_platforms
        unknown = [p for p in rule_platforms if p not in tables]
        if unknown or not rule_platforms:
            msg = f"rule {name!r}: platforms {unknown or rule_platforms} are not among the results {list(tables)}"
            raise KeyError(msg)
        cells = [(p, o) for p in rule_platforms for o in rule.pattern]
        required = rule.min_significant if rule.min_significant is not None else min_significant
        required = len(cells) if required is None else int(required)
        if not 1 <= required <= len(cells):
            msg = f"rule {name!r}: min_significant must be between 1 and {len(cells)} cells, got {required}"
            raise ValueError(msg)
        parts = [_cell(tables[p], p, o, use) for p, o in cells]
        common = parts[0].index
        for part in parts[1:]:
            common = common.intersection(part.index, sort=False)
        n_tested[str(name)] = len(common)
        patterns[str(name)] = dict(rule.pattern)
        rho = np.column_stack([part.loc[common, "rho"].to_numpy(dtype=float) for part in parts])
        pvalue = np.column_stack([part.loc[common, use].to_numpy(dtype=float) for part in parts])
        expected = np.array([rule.pattern[o] for _, o in cells])
        relative = np.sign(rho) * expected
        direction = relative[:, 0] if len(common) else np.zeros(0)
        agree = (relative == direction[:, None]).all(axis=1) & (direction != 0)
        n_significant = (pvalue < alpha).sum(axis=1)
        passed = agree & (n_significant >= required)
        out = pd.DataFrame(
            {
                "rule": str(name),
                "feature": common[passed].astype(str),
                "direction": direction[passed].astype(int),
            }
        )
        for outcome, sign in rule.pattern.items():
            out[f"sign:{outcome}"] = out["direction"] * sign
        out["n_cells"] = len(cells)
        out["n_significant"] = n_significant[passed]
        out["max_pvalue"] = pvalue[passed].max(axis=1) if passed.any() else np.zeros(0)
        out["min_abs_rho"] = np.abs(rho[passed]).min(axis=1) if passed.any() else np.zeros(0)
        for j, (p, o) in enumerate(cells):
            out[f"rho:{p}:{o}"] = rho[passed, j]
            out[f"{use}:{p}:{o}"] = pvalue[passed, j]
            if match_on is not None:
                out[f"feature:{p}:{o}"] = (
                    parts[j].loc[common[passed], "feature"].astype(str).to_numpy()
                )
        out = out.sort_values(
            ["n_significant", "max_pvalue"], ascending=[False, True], kind="stable"
        )
        frames.append(out)
    columns = list(dict.fromkeys(c for frame in frames for c in frame.columns))
    filled = [frame for frame in frames if len(frame)]
    table = pd.concat(filled, ignore_index=True) if filled else pd.DataFrame(columns=columns)
    table = table.reindex(columns=columns)
    table.attrs["n_tested"] = n_tested
    table.attrs["patterns"] = patterns
    # lines behind each platform x outcome (they differ where a line is missing on a platform)
    table.attrs["n_lines"] = {
        f"{platform}:{outcome}": int(part["n_lines"].max())
        for platform, frame in tables.items()
        for outcome, part in frame.groupby(frame["outcome"].astype(str), sort=False)
    }
    table.attrs["params"] = {"alpha": alpha, "use": use, "match_on": match_on, "key": key}
    return table
