"""Candidate markers that agree across platforms, differentiation methods and lineages."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import pandas as pd
from anndata import AnnData

from ... import _registry
from ..._docs import doc_params
from ..._provenance import record
from .._platforms import association_tables
from .._types import Consensus, SignRule
from . import _combined

Combine = Literal["all_significant", "stouffer"]


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


def _resolved(
    name: str, raw, platforms: list[str], min_significant: int | None, known: list[str]
) -> SignRule:
    """The rule with its platforms (default: ``platforms``) and ``min_significant`` filled in."""
    rule = _as_rule(name, raw)
    rule_platforms = list(rule.platforms) if rule.platforms is not None else platforms
    unknown = [p for p in rule_platforms if p not in known]
    if unknown or not rule_platforms:
        msg = f"rule {name!r}: platforms {unknown or rule_platforms} are not among the results {known}"
        raise KeyError(msg)
    n_cells = len(rule_platforms) * len(rule.pattern)
    required = rule.min_significant if rule.min_significant is not None else min_significant
    required = n_cells if required is None else int(required)
    if not 1 <= required <= n_cells:
        msg = (
            f"rule {name!r}: min_significant must be between 1 and {n_cells} cells, got {required}"
        )
        raise ValueError(msg)
    return SignRule(pattern=rule.pattern, platforms=rule_platforms, min_significant=required)


def _cell(table: pd.DataFrame, platform: str, outcome: str, use: str) -> pd.DataFrame:
    """One platform x outcome: per match key, the feature with the smallest p (then largest ``abs(rho)``)."""
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


def _rule_frame(
    name: str,
    rule: SignRule,
    cells: list[tuple[str, str]],
    features: pd.Index,
    direction: np.ndarray,
    rho: np.ndarray,
    pvalue: np.ndarray,
    n_significant: np.ndarray,
    use: str,
    cell_features: list[pd.DataFrame] | None,
) -> pd.DataFrame:
    """One row per passing feature: signs, counts, extremes and the value of every cell.

    ``cell_features``: per cell, the table whose ``feature`` speaks for each matched entity.
    """
    out = pd.DataFrame(
        {"rule": name, "feature": features.astype(str), "direction": direction.astype(int)}
    )
    for outcome, sign in rule.pattern.items():
        out[f"sign:{outcome}"] = out["direction"] * sign
    out["n_cells"] = len(cells)
    out["n_significant"] = n_significant
    out["max_pvalue"] = pvalue.max(axis=1) if len(out) else np.zeros(0)
    out["min_abs_rho"] = np.abs(rho).min(axis=1) if len(out) else np.zeros(0)
    for j, (p, o) in enumerate(cells):
        out[f"rho:{p}:{o}"] = rho[:, j]
        out[f"{use}:{p}:{o}"] = pvalue[:, j]
        if cell_features is not None:
            out[f"feature:{p}:{o}"] = (
                cell_features[j].loc[features, "feature"].astype(str).to_numpy()
            )
    return out


def _apply_rule(
    name: str,
    rule: SignRule,
    tables: dict[str, pd.DataFrame],
    *,
    alpha: float,
    use: str,
    match_on: str | None,
) -> tuple[pd.DataFrame, int]:
    """The consensus markers of one rule, and how many features were measured in every cell."""
    cells = [(p, o) for p in rule.platforms for o in rule.pattern]
    parts = [_cell(tables[p], p, o, use) for p, o in cells]
    common = parts[0].index
    for part in parts[1:]:
        common = common.intersection(part.index, sort=False)
    rho = np.column_stack([part.loc[common, "rho"].to_numpy(dtype=float) for part in parts])
    pvalue = np.column_stack([part.loc[common, use].to_numpy(dtype=float) for part in parts])
    relative = np.sign(rho) * np.array([rule.pattern[o] for _, o in cells])
    direction = relative[:, 0] if len(common) else np.zeros(0)
    agree = (relative == direction[:, None]).all(axis=1) & (direction != 0)
    n_significant = (pvalue < alpha).sum(axis=1)
    passed = agree & (n_significant >= rule.min_significant)
    out = _rule_frame(
        name,
        rule,
        cells,
        common[passed],
        direction[passed],
        rho[passed],
        pvalue[passed],
        n_significant[passed],
        use,
        parts if match_on is not None else None,
    )
    out = out.sort_values(["n_significant", "max_pvalue"], ascending=[False, True], kind="stable")
    return out, len(common)


def _stacked(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """The rules' tables one under the other, with every column of any of them."""
    columns = list(dict.fromkeys(c for frame in frames for c in frame.columns))
    filled = [frame for frame in frames if len(frame)]
    table = pd.concat(filled, ignore_index=True) if filled else pd.DataFrame(columns=columns)
    return table.reindex(columns=columns)


def _lines_per_cell(tables: dict[str, pd.DataFrame]) -> dict[str, int]:
    """Lines behind each platform x outcome (they differ where a line is missing on a platform)."""
    return {
        f"{platform}:{outcome}": int(part["n_lines"].max())
        for platform, frame in tables.items()
        for outcome, part in frame.groupby(frame["outcome"].astype(str), sort=False)
    }


def _kept(statistic: np.ndarray, q: np.ndarray, alpha: float, n_top: int | None) -> np.ndarray:
    """The list: ``q <= alpha``, or the ``n_top`` largest ``|T|`` (ties at the edge kept)."""
    if n_top is None:
        return q <= alpha
    magnitude = np.abs(statistic)
    if n_top >= len(magnitude):
        return magnitude > 0
    edge = np.sort(magnitude)[::-1][n_top - 1]
    return (magnitude >= edge) & (magnitude > 0)


def _combined_frame(
    name: str, rule: SignRule, where, statistic, cell_z, expected, q, *, keep, n: int
) -> pd.DataFrame:
    """One row per kept feature: direction, signs, statistic, q, platforms, cells' rho."""
    direction = np.sign(statistic[keep]).astype(int)
    out = pd.DataFrame(
        {"rule": name, "feature": where.entities[keep].astype(str), "direction": direction}
    )
    for outcome, sign in rule.pattern.items():
        out[f"sign:{outcome}"] = direction * sign
    out["n_cells"] = len(where.cells)
    out["statistic"] = np.abs(statistic[keep])
    out["qvalue"] = q[keep]
    out["expected_false"] = expected[keep]
    z = cell_z[keep]
    out["n_agree"] = (np.sign(z) == direction[:, None]).sum(axis=1)
    out["n_platforms"] = _measured(z, len(where.rows))
    with np.errstate(invalid="ignore"):
        smallest = np.nanmin(np.abs(z), axis=1) if len(out) else np.zeros(0)
    out["min_abs_rho"] = smallest / np.sqrt(n - 1)
    outcomes = list(rule.pattern)
    for j, (p, _, sign) in enumerate(where.cells):
        out[f"rho:{p}:{outcomes[j % len(outcomes)]}"] = z[:, j] * sign / np.sqrt(n - 1)
    return out.sort_values(["statistic"], ascending=False, kind="stable")


def _measured(cell_z: np.ndarray, n_platforms: int) -> np.ndarray:
    """Per entity, the platforms that measure it (cells are platform-major)."""
    if cell_z.size == 0:
        return np.zeros(len(cell_z), dtype=int)
    per_platform = np.isfinite(cell_z).reshape(len(cell_z), n_platforms, -1)
    return per_platform.all(axis=2).sum(axis=1)


def _combined_consensus(
    results: Mapping[str, AnnData],
    tables: dict[str, pd.DataFrame],
    resolved: dict[str, SignRule],
    *,
    key: str,
    alpha: float,
    n_permutations: int,
    random_state: int,
    n_top: int | None = None,
    correlation: _combined.Correlation = "spearman",
    agreement: _combined.Agreement = "weakest",
) -> tuple[list[pd.DataFrame], dict[str, int], pd.DataFrame]:
    """The Stouffer consensus of every rule with its permutation FDR (see ``_combined``)."""
    used = list(dict.fromkeys(p for rule in resolved.values() for p in rule.platforms))
    outcomes = list(dict.fromkeys(o for rule in resolved.values() for o in rule.pattern))
    frame = _combined.common_lines({p: results[p] for p in used}, key, outcomes)
    lines, n = frame.index.astype(str).tolist(), len(frame)
    matches = {p: tables[p].drop_duplicates("feature").set_index("feature")["match"] for p in used}
    data = {
        p: _combined.platform_data(results[p], lines, key, matches[p], correlation) for p in used
    }
    Y = _combined.standardized(frame.to_numpy(dtype=float), correlation)
    where = {
        r: _combined.rule_cells(rule.pattern, list(rule.platforms), data, outcomes, agreement)
        for r, rule in resolved.items()
    }
    scores = _combined.all_scores(data, Y, n)
    observed = {r: _combined.rule_statistic(scores, w) for r, w in where.items()}
    expected = _combined.permutation_counts(
        {r: s for r, (s, _) in observed.items()},
        data,
        where,
        Y,
        n_permutations=n_permutations,
        random_state=random_state,
    )
    frames, n_tested, rows = [], {}, []
    for r, rule in resolved.items():
        statistic, cell_z = observed[r]
        q = _combined.qvalues(statistic, expected[r])
        keep = _kept(statistic, q, alpha, n_top)
        out = _combined_frame(r, rule, where[r], statistic, cell_z, expected[r], q, keep=keep, n=n)
        frames.append(out)
        n_tested[r] = len(where[r].entities)
        rows.append(_rule_summary(r, out, n_tested[r], alpha, n, n_permutations, n_top))
    return frames, n_tested, pd.DataFrame(rows).set_index("rule")


def _rule_summary(
    rule: str,
    out: pd.DataFrame,
    n_tested: int,
    alpha: float,
    n: int,
    n_permutations: int,
    n_top: int | None = None,
) -> dict:
    """The list's size, the false calls expected by chance and its estimated FDR."""
    expected = float(out["expected_false"].max()) if len(out) else 0.0
    return {
        "rule": rule,
        "n_tested": n_tested,
        "n_called": len(out),
        "expected_false": expected,
        "fdr": min(1.0, expected / len(out)) if len(out) else 0.0,
        "fdr_level": alpha if n_top is None else np.nan,
        "n_top": n_top,
        "n_lines": n,
        "n_permutations": n_permutations,
    }


#: ``correlation`` and ``agreement`` of ``combine="stouffer"`` when the call names none.
COMBINED_DEFAULTS = {"correlation": "winsorized", "agreement": "mean"}


def _combined_options(correlation: str | None, agreement: str | None, combine: str):
    """The options in force: the defaults of ``combine="stouffer"`` where none is named.

    With ``combine="all_significant"`` neither applies (its cells are the rank associations
    as stored), so naming one is an error.
    """
    given = {"correlation": correlation, "agreement": agreement}
    if combine != "stouffer":
        for name, value in given.items():
            if value is not None:
                msg = f"{name}={value!r} needs combine='stouffer', got combine={combine!r}"
                raise ValueError(msg)
        return None, None
    return tuple(COMBINED_DEFAULTS[k] if v is None else v for k, v in given.items())


def _check_n_top(n_top, combine: str) -> None:
    if n_top is None:
        return
    if combine != "stouffer":
        msg = f"n_top (a list of a chosen size) needs combine='stouffer', got combine={combine!r}"
        raise ValueError(msg)
    if isinstance(n_top, bool) or not isinstance(n_top, int | np.integer) or n_top < 1:
        msg = f"n_top must be a positive integer (features per rule) or None, got {n_top!r}"
        raise ValueError(msg)


@doc_params
@record("bulk.tl.consensus")
def consensus(
    results: Mapping[str, AnnData],
    *,
    rules: Mapping[str, Mapping[str, int] | SignRule],
    platforms: Sequence[str] | None = None,
    key: str = _registry.RANK_ASSOCIATION.key,
    alpha: float = 0.05,
    use: Literal["pvalue", "fdr"] = "pvalue",
    min_significant: int | None = None,
    match_on: str | None = None,
    combine: Combine = "stouffer",
    n_permutations: int = 1000,
    random_state: int = 0,
    n_top: int | None = None,
    correlation: _combined.Correlation | None = None,
    agreement: _combined.Agreement | None = None,
) -> Consensus:
    """Features whose association follows a sign rule on every platform and outcome asked.

    Each rule is a sign pattern over outcomes (see :class:`SignRule`). By default
    (``combine="stouffer"``) every feature gets a combined statistic of its agreement with
    the pattern on every platform of the rule (a one-sided Stouffer score per platform over
    the pattern's outcomes; the platforms must agree), and the list of a rule is the
    features whose permutation q-value is at most ``alpha``, the FDR estimated by
    permuting the lines jointly across platforms and outcomes (or, with ``n_top``, the
    ``n_top`` strongest). With ``combine="all_significant"`` (the rule of the reference
    work) a feature is a consensus marker when, on every platform and for every outcome of
    the pattern, the sign of its rho follows the pattern (in one overall direction) and
    enough of these platform x outcome cells are significant (all of them by default).
    Either removes the false candidates of one platform (measurement noise, platform
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
        {key}
        Here the key of the rank associations in every platform's ``uns``.
    alpha
        {alpha}
        Here the FDR level of the list (``combine="stouffer"``), or the level a platform x
        outcome cell's p (or FDR, see ``use``) must be below (``"all_significant"``).
    use
        With ``combine="all_significant"``: compare ``"pvalue"`` (as in the reference work)
        or the BH ``"fdr"`` with ``alpha``.
    min_significant
        With ``combine="all_significant"``, the default for rules without their own: cells
        that must be significant (default: all).
    match_on
        var column that names the same entity across platforms (``"gene"`` for CAGE
        promoters and array probes); default: feature names. Where a platform has several
        features per entity, the one with the smallest p (largest ``|rho|``) in that cell
        speaks for it.
    combine
        ``"stouffer"`` (the default) or ``"all_significant"`` (the rule above: every cell's
        sign as in the pattern and ``min_significant`` cells with p below ``alpha``). With
        ``"stouffer"``: on each
        platform the Stouffer sum of the normal scores ``z = rho * sqrt(n - 1)`` over the
        rule's outcomes with their signs, ``S_p = sum(sign_o * z) / sqrt(outcomes)``; the
        weakest platform in the better overall direction is the statistic
        (``|T| = max(min_p S_p, min_p -S_p, 0)``: every platform must agree; with
        ``agreement="mean"``, the default, the mean where every platform passes a bar); features
        whose permutation q-value is at most ``alpha`` (the FDR level of the list) are kept. The
        FDR is estimated by permuting the lines' labels jointly across platforms and
        outcomes, which keeps the correlation between genes and platforms; every
        platform x outcome must then stand on the same lines. An entity that a platform
        does not measure (an unannotated probe, a gene without a CAGE promoter) is judged by
        the platforms that do; its score is put on the all-platform scale first, so one
        platform's word must be stronger than two platforms' agreement.
    n_permutations
        {n_permutations}
        Here the joint permutations of the lines behind ``combine="stouffer"``'s FDR.
    random_state
        {random_state}
    n_top
        With ``combine="stouffer"``: keep the ``n_top`` features with the largest ``|T|``
        per rule (ties at the edge kept) instead of those with ``q <= alpha``: a list of a
        chosen size, for a given recall or a follow-up budget, with its permutation FDR
        estimate in ``summary`` (``fdr``; ``fdr_level`` is then NaN).
    correlation
        With ``combine="stouffer"``: the correlation behind each cell's normal score
        (default ``"winsorized"``), ``"spearman"`` (the ranks, as
        :func:`rank_association` reports) or ``"pearson"`` (Pearson's r on the values as the platforms hold them, which should then be on a
        log scale, e.g. after :func:`~mscpotency.bulk.pp.collapse_probes` and
        :func:`~mscpotency.bulk.pp.normalize_cage`, and on the outcome values) or
        ``"winsorized"`` (Pearson's r after each feature's and each outcome's values are
        clipped to their median +/- 2 robust SDs, ``1.4826 * MAD``). At 10 lines
        Spearman's ranks give away power and tie; Pearson's r has the same permutation null
        variance, and the permutation FDR stays exact for it, but one outlying line weighs
        more; winsorised, that line weighs as one 2 SDs out, with most of Pearson's power
        kept (``benchmarks/results/bulk_consensus_options.md``).
    agreement
        With ``combine="stouffer"``: how the platforms' scores ``S_p`` combine (default
        ``"mean"``).
        ``"weakest"``: ``min_p S_p`` (every platform must agree, the weakest decides).
        ``"mean"``: features whose weakest platform passes a one-sided 5% bar
        (``S_p >= 1.645`` on every platform) rank by the mean of their platform scores,
        above every feature that fails it (ranked by its weakest platform): agreement is
        still required, so an artefact of one platform stays out, but a marker that is
        moderately weaker on one platform is not judged by that platform alone.

    Returns
    -------
    A :class:`Consensus`. Its ``table`` has one row per rule and consensus feature: rule,
    feature (the feature name or the ``match_on`` entity), direction (+1 when the signs are
    as in the pattern, -1 when all flipped), ``sign:<outcome>`` (the sign of the association
    with each outcome), n_cells and, with ``combine="all_significant"``, n_significant,
    max_pvalue (the largest p, or FDR, over the
    cells), min_abs_rho, and per cell ``rho:<platform>:<outcome>``,
    ``<use>:<platform>:<outcome>`` and, with ``match_on``, ``feature:<platform>:<outcome>``.
    Beside it: the rules applied, ``n_tested`` (per rule, the features measured in every
    cell), ``n_lines`` (the lines behind each ``platform:outcome``; different where a line
    was not profiled on every platform and :func:`rank_association` used
    ``on_missing="intersect"``), the platforms' association tables, the parameters and the
    record of the call (``provenance``, with the fingerprint of every input).

    With ``combine="stouffer"`` the table has, instead of n_significant and max_pvalue,
    ``statistic`` (``|T|``), ``qvalue``, ``expected_false`` (the false calls expected by
    chance in the list down to this feature), ``n_agree`` (cells whose sign follows the
    direction), ``n_platforms`` (platforms that measure the feature) and per cell
    ``rho:<platform>:<outcome>`` (NaN where the platform lacks it; Pearson's r with
    ``correlation="pearson"``, on the clipped values with ``"winsorized"``, as are
    ``min_abs_rho`` and the ``rho`` of :func:`~mscpotency.bulk.get.consensus`);
    ``summary`` gives per
    rule n_tested, n_called, expected_false, fdr (``expected_false / n_called``),
    fdr_level, n_top, n_lines and n_permutations.
    """
    if use not in ("pvalue", "fdr"):
        msg = f"use must be 'pvalue' or 'fdr', got {use!r}"
        raise ValueError(msg)
    _check_n_top(n_top, combine)
    correlation, agreement = _combined_options(correlation, agreement, combine)
    if not isinstance(rules, Mapping) or not rules:
        msg = "rules must be a non-empty mapping of rule name -> {outcome: +1/-1} (or SignRule)"
        raise ValueError(msg)
    tables = association_tables(results, key=key, match_on=match_on)
    default_platforms = list(tables) if platforms is None else [str(p) for p in platforms]
    resolved = {
        str(name): _resolved(str(name), raw, default_platforms, min_significant, list(tables))
        for name, raw in rules.items()
    }
    frames, n_tested, summary = [], {}, pd.DataFrame()
    if combine == "stouffer":
        frames, n_tested, summary = _combined_consensus(
            results,
            tables,
            resolved,
            key=key,
            alpha=alpha,
            n_permutations=n_permutations,
            random_state=random_state,
            n_top=n_top,
            correlation=correlation,
            agreement=agreement,
        )
    for name, rule in resolved.items() if combine == "all_significant" else ():
        frame, n_tested[name] = _apply_rule(
            name, rule, tables, alpha=alpha, use=use, match_on=match_on
        )
        frames.append(frame)
    return Consensus(
        table=_stacked(frames),
        rules=resolved,
        n_tested=n_tested,
        n_lines=_lines_per_cell(tables),
        associations=tables,
        params={
            "alpha": alpha,
            "use": use,
            "match_on": match_on,
            "key": key,
            "min_significant": min_significant,
            "combine": combine,
            "n_permutations": n_permutations,
            "random_state": random_state,
            "n_top": n_top,
            "correlation": correlation,
            "agreement": agreement,
        },
        summary=summary,
    )
