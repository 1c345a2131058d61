"""Plots of the iPS line analysis: propensity per line, rho volcano, consensus overlap, validation."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ... import _registry
from ..._docs import doc_params
from ..._stored import stored
from ...pl._utils import _axes, _finish, _outside_legend, format_pvalue
from .. import get
from .._lines import dense_matrix, line_rows
from .._types import Consensus

POSITIVE = "#b2182b"
NEGATIVE = "#2166ac"
NEUTRAL = "#bdbdbd"
VALIDATED = "#1a9850"
NOT_VALIDATED = "#969696"


@doc_params
def fit_propensity(
    adata: AnnData,
    *,
    key: str = _registry.PROPENSITY.key,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
    **kwargs,
) -> Axes | Figure | None:
    """Each line's propensity score (PC1 of its marker panel), lines ranked.

    Which lines differentiate most readily into this lineage? Bars run from the most
    differentiated line (top) to the least; the title gives the share of the panel's
    variance PC1 carries.

    Parameters
    ----------
    adata
        {adata}
        Here a panel scored by :func:`mscpotency.bulk.tl.fit_propensity` (or
        :func:`mscpotency.bulk.tl.apply_propensity`).
    **kwargs
        Passed to :meth:`matplotlib.axes.Axes.barh`.

    Returns
    -------
    The Figure when ``return_fig=True``, the Axes when not shown, else ``None``.
    """
    result = stored(adata, _registry.PROPENSITY, key)
    scores = get.fit_propensity(adata, key=key).sort_values("score", ascending=True, kind="stable")
    values = scores["score"].to_numpy(dtype=float)
    fig, ax = _axes(ax, (4.6, max(2.5, 0.28 * len(scores) + 1.2)))
    colors = np.where(values >= 0, POSITIVE, NEGATIVE)
    ax.barh(
        np.arange(len(scores)),
        values,
        color=colors,
        **{"edgecolor": "black", "linewidth": 0.4, **kwargs},
    )
    ax.set_yticks(
        np.arange(len(scores)),
        [f"{name} (#{rank})" for name, rank in zip(scores.index, scores["rank"], strict=True)],
    )
    ax.axvline(0, color="#555555", lw=0.8)
    ax.set_xlabel("propensity score (PC1; higher = more differentiated)")
    kind = " (reference loadings)" if result["params"].get("reference") else ""
    ax.set_title(
        f"{key}: PC1 = {float(result['pc1_variance_ratio']):.0%} of panel variance{kind}",
        fontsize="medium",
    )
    ax.spines[["top", "right"]].set_visible(False)
    return _finish(fig, ax, show, return_fig)


def _one_outcome(table: pd.DataFrame, outcome: str | None, key: str) -> tuple[str, pd.DataFrame]:
    outcomes = list(dict.fromkeys(table["outcome"].astype(str)))
    if outcome is None:
        if len(outcomes) > 1:
            msg = f"adata.uns[{key!r}] holds several outcomes {outcomes}; pass outcome= to pick one"
            raise ValueError(msg)
        outcome = outcomes[0]
    if outcome not in outcomes:
        msg = f"adata.uns[{key!r}] has no outcome {outcome!r}; it has {outcomes}"
        raise KeyError(msg)
    return outcome, table[table["outcome"].astype(str) == outcome]


def _check_use(use: str) -> None:
    if use not in ("pvalue", "fdr"):
        msg = f"use must be 'pvalue' or 'fdr', got {use!r}"
        raise ValueError(msg)


def _ring_highlights(ax: Axes, rho, y, features, highlight, outcome: str) -> None:
    """Circle the ``highlight`` features (each must be in the table)."""
    missing = [h for h in highlight if h not in set(features)]
    if missing:
        msg = f"highlight features {missing} are not in the table for outcome {outcome!r}"
        raise KeyError(msg)
    mask = np.isin(features, list(highlight))
    ax.scatter(
        rho[mask], y[mask], s=60, facecolors="none", edgecolors="black", linewidths=1.0, zorder=3
    )


def _name_points(ax: Axes, rho, y, features, labelled: list[str]) -> None:
    """Write each labelled feature's name by its point; tied features' names are stacked."""
    position = {f: i for i, f in enumerate(features)}
    stacked: dict[tuple[float, float], int] = {}
    for name in labelled:
        i = position[name]
        spot = (round(float(rho[i]), 6), round(float(y[i]), 6))
        k = stacked[spot] = stacked.get(spot, -1) + 1
        ax.annotate(
            name,
            (rho[i], y[i]),
            xytext=(3, 3 + 8 * k),
            textcoords="offset points",
            fontsize="x-small",
        )


@doc_params
def rank_association(
    adata: AnnData,
    *,
    outcome: str | None = None,
    key: str = _registry.RANK_ASSOCIATION.key,
    alpha: float = 0.05,
    use: Literal["pvalue", "fdr"] = "pvalue",
    highlight: Sequence[str] | None = None,
    n_labels: int = 5,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
    **kwargs,
) -> Axes | Figure | None:
    """Spearman rho against -log10 p for every feature of one platform and outcome (a volcano).

    How many features track this propensity, in which direction, and how strongly? Features
    below ``alpha`` are coloured by the sign of rho; the strongest and any ``highlight``
    features are named. With ~10 lines exact p-values take few distinct values, so points
    line up in rows.

    Parameters
    ----------
    adata
        {adata}
        Here one platform with :func:`mscpotency.bulk.tl.rank_association` results.
    outcome
        {outcome}
        Here the one outcome to show (needed when several are stored).
    alpha
        {alpha}
        Here the threshold of ``use`` (dashed line).
    use
        Plot and threshold ``"pvalue"`` or ``"fdr"``.
    highlight
        Features to ring and name (e.g. known markers).
    n_labels
        Name this many of the most significant features.
    **kwargs
        Passed to :meth:`matplotlib.axes.Axes.scatter`.

    Returns
    -------
    The Figure when ``return_fig=True``, the Axes when not shown, else ``None``.
    """
    _check_use(use)
    result = stored(adata, _registry.RANK_ASSOCIATION, key)
    outcome, table = _one_outcome(
        get.rank_association(adata, key=key, sort=True).reset_index(), outcome, key
    )
    rho = table["rho"].to_numpy(dtype=float)
    p = table[use].to_numpy(dtype=float)
    y = -np.log10(np.clip(p, 1e-300, 1))
    significant = p < alpha
    colors = np.where(
        significant & (rho > 0), POSITIVE, np.where(significant & (rho < 0), NEGATIVE, NEUTRAL)
    )
    fig, ax = _axes(ax, (4.8, 4.2))
    ax.scatter(rho, y, c=colors, **{"s": 10, "linewidths": 0, "alpha": 0.8, **kwargs})
    ax.axhline(-np.log10(alpha), color="#555555", ls="--", lw=0.8)
    ax.axvline(0, color="#888888", lw=0.6)
    features = table["feature"].astype(str).to_numpy()
    labelled = list(features[significant][: max(0, n_labels)])
    if highlight:
        _ring_highlights(ax, rho, y, features, highlight, outcome)
        labelled += [h for h in highlight if h not in labelled]
    _name_points(ax, rho, y, features, labelled)
    n_pos, n_neg = int((significant & (rho > 0)).sum()), int((significant & (rho < 0)).sum())
    label = "P" if use == "pvalue" else "FDR"
    ax.set_xlim(-1.05, 1.05)
    ax.set_xlabel("Spearman \N{GREEK SMALL LETTER RHO}")
    ax.set_ylabel(f"-log10 {'p' if use == 'pvalue' else 'FDR'}")
    platform = str(result["params"].get("platform") or "")
    n_lines = int(table["n_lines"].max())
    ax.set_title(
        f"{platform + ' · ' if platform else ''}{outcome} ({n_lines} lines)\n"
        f"{label} < {alpha:g}: {n_pos} positive, {n_neg} negative of {len(table)} features",
        fontsize="medium",
    )
    ax.spines[["top", "right"]].set_visible(False)
    return _finish(fig, ax, show, return_fig)


def _cells_to_compare(
    result: Consensus,
    rule: str | None,
    outcomes: Sequence[str] | Mapping[str, int] | None,
    platforms: Sequence[str] | None,
) -> tuple[dict[str, int], list[str]]:
    """The sign of each outcome and the platforms to compare: the rule's, unless given."""
    if rule is None and outcomes is None:
        if len(result.rules) != 1:
            msg = f"the consensus has rules {list(result.rules)}; pass rule= or outcomes="
            raise ValueError(msg)
        rule = next(iter(result.rules))
    if rule is not None:
        if rule not in result.rules:
            msg = f"the consensus has no rule {rule!r}; its rules are {list(result.rules)}"
            raise KeyError(msg)
        outcomes = result.rules[rule].pattern if outcomes is None else outcomes
        platforms = result.rules[rule].platforms if platforms is None else platforms
    signs = dict(outcomes) if isinstance(outcomes, Mapping) else {str(o): 1 for o in outcomes}
    if not signs or any(v not in (1, -1) for v in signs.values()):
        msg = f"outcomes must be a non-empty list or an outcome -> +1/-1 mapping, got {outcomes!r}"
        raise ValueError(msg)
    known = list(result.associations)
    platforms = known if platforms is None else [str(p) for p in platforms]
    unknown = [p for p in platforms if p not in known]
    if unknown:
        msg = f"platforms {unknown} are not among the results {known}"
        raise KeyError(msg)
    return signs, platforms


def _candidate_sets(
    tables: Mapping[str, pd.DataFrame],
    signs: dict[str, int],
    platforms: list[str],
    *,
    alpha: float,
    use: str,
) -> tuple[list[str], list[set[tuple[str, int]]]]:
    """Per platform x outcome: its label and its candidates as (entity, sign after flipping)."""
    labels, sets = [], []
    for platform in platforms:
        table = tables[platform]
        for outcome, sign in signs.items():
            part = table[table["outcome"].astype(str) == outcome]
            if part.empty:
                msg = f"platform {platform!r} has no rank association for outcome {outcome!r}"
                raise KeyError(msg)
            hit = part[part[use] < alpha]
            sets.append(
                {(m, int(np.sign(r)) * sign) for m, r in zip(hit["match"], hit["rho"], strict=True)}
            )
            labels.append(f"{platform}\n{outcome}" + ("" if sign > 0 else " (-)"))
    return labels, sets


def _count_heatmap(ax: Axes, counts: np.ndarray, labels: list[str], cmap: str):
    """Counts as a heatmap with each number written in its cell (the diagonal in bold)."""
    image = ax.imshow(counts, cmap=cmap)
    top = counts.max() if counts.size else 0
    k = len(labels)
    for i in range(k):
        for j in range(k):
            ax.text(
                j,
                i,
                str(counts[i, j]),
                ha="center",
                va="center",
                fontsize="small",
                color="white" if top and counts[i, j] > 0.6 * top else "black",
                fontweight="bold" if i == j else "normal",
            )
    ax.set_xticks(np.arange(k), labels, fontsize="x-small")
    ax.set_yticks(np.arange(k), labels, fontsize="x-small")
    return image


@doc_params
def consensus(
    result: Consensus,
    rule: str | None = None,
    *,
    outcomes: Sequence[str] | Mapping[str, int] | None = None,
    platforms: Sequence[str] | None = None,
    alpha: float | None = None,
    use: Literal["pvalue", "fdr"] | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
    cmap: str = "Blues",
) -> Axes | Figure | None:
    """How many candidates two platforms (or methods, or lineages) share, pair by pair.

    Each platform x outcome of a consensus gives a candidate list (features with p below
    ``alpha``, with their sign). A cell counts the features significant in both lists with
    agreeing signs; the diagonal is each list's size. Signs are compared after flipping by
    the rule's pattern, so ``{"ectoderm": 1, "mesoderm": -1}`` counts features positive for
    ectoderm and negative for mesoderm (the SALL3 pattern). Features are matched across
    platforms as the consensus matched them (its ``match_on``).

    Parameters
    ----------
    result
        What :func:`mscpotency.bulk.tl.consensus` returned.
    rule
        The rule whose platforms and outcomes (with their signs) to compare; may be left
        out when the consensus has one rule or ``outcomes`` is given.
    outcomes
        Outcomes to compare instead (each with sign +1), or outcome -> expected relative sign.
    platforms
        Platforms to compare instead (default: the rule's; with ``outcomes`` and no rule, all).
    alpha
        {alpha}
        Here the level of a candidate (default: the consensus's).
    use
        ``"pvalue"`` or ``"fdr"`` (default: the consensus's).
    cmap
        Colour map of the counts.

    Returns
    -------
    The Figure when ``return_fig=True``, the Axes when not shown, else ``None``.
    """
    alpha = result.params["alpha"] if alpha is None else alpha
    use = result.params["use"] if use is None else use
    _check_use(use)
    signs, platforms = _cells_to_compare(result, rule, outcomes, platforms)
    labels, sets = _candidate_sets(result.associations, signs, platforms, alpha=alpha, use=use)
    k = len(sets)
    counts = np.array([[len(sets[i] & sets[j]) for j in range(k)] for i in range(k)])
    fig, ax = _axes(ax, (1.0 * k + 2.2, 0.9 * k + 1.6))
    image = _count_heatmap(ax, counts, labels, cmap)
    fig.colorbar(image, ax=ax, shrink=0.7, label="shared candidates (same sign)")
    label = "P" if use == "pvalue" else "FDR"
    ax.set_title(f"Candidates at {label} < {alpha:g} shared between lists", fontsize="medium")
    return _finish(fig, ax, show, return_fig)


@doc_params
def validate_markers(
    adata: AnnData,
    *,
    key: str = _registry.MARKER_VALIDATION.key,
    label: bool = True,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
    **kwargs,
) -> Axes | Figure | None:
    """Training rho against held-out rho of every candidate, validated ones in colour.

    Which candidates hold on new lines? Points in the upper-right and lower-left quadrants
    kept their sign; green ones are also significant on the held-out lines. Without a
    training rho (candidates given as signs only) the x axis is the expected sign.

    Parameters
    ----------
    adata
        {adata}
        Here held-out lines with :func:`mscpotency.bulk.tl.validate_markers` results.
    label
        Name the validated candidates.
    **kwargs
        Passed to :meth:`matplotlib.axes.Axes.scatter`.

    Returns
    -------
    The Figure when ``return_fig=True``, the Axes when not shown, else ``None``.
    """
    params = stored(adata, _registry.MARKER_VALIDATION, key)["params"]
    table = get.validate_markers(adata, key=key)
    has_train = "rho_train" in table.columns and table["rho_train"].notna().any()
    if has_train:
        x = table["rho_train"].to_numpy(dtype=float)
        xlabel = "training \N{GREEK SMALL LETTER RHO}"
    else:
        offsets = np.linspace(-0.25, 0.25, len(table)) if len(table) > 1 else np.zeros(len(table))
        x = table["expected_sign"].to_numpy(dtype=float) + offsets
        xlabel = "expected sign"
    y = table["rho"].to_numpy(dtype=float)
    validated = table["validated"].to_numpy(dtype=bool)
    fig, ax = _axes(ax, (4.6, 4.2))
    ax.axhline(0, color="#888888", lw=0.6)
    ax.axvline(0, color="#888888", lw=0.6)
    ax.scatter(
        x,
        y,
        c=np.where(validated, VALIDATED, NOT_VALIDATED),
        **{"s": 30, "edgecolor": "black", "linewidth": 0.4, "zorder": 3, **kwargs},
    )
    if label:
        for xi, yi, name in zip(x[validated], y[validated], table.index[validated], strict=True):
            ax.annotate(
                str(name), (xi, yi), xytext=(3, 3), textcoords="offset points", fontsize="x-small"
            )
    n_lines = int(table["n_lines"].max()) if len(table) else 0
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"held-out \N{GREEK SMALL LETTER RHO} ({params['outcome']})")
    ax.set_ylim(-1.05, 1.05)
    if has_train:
        ax.set_xlim(-1.05, 1.05)
    ax.set_title(
        f"{int(validated.sum())} of {len(table)} candidates validated on {n_lines} held-out lines",
        fontsize="medium",
    )
    handles = [
        Line2D(
            [], [], marker="o", ls="", color=VALIDATED, label=f"same sign, p < {params['alpha']:g}"
        ),
        Line2D([], [], marker="o", ls="", color=NOT_VALIDATED, label="not validated"),
    ]
    _outside_legend(ax, handles=handles, fontsize="small")
    ax.spines[["top", "right"]].set_visible(False)
    return _finish(fig, ax, show, return_fig)


@doc_params
def validation_scatter(
    adata: AnnData,
    feature: str,
    *,
    key: str = _registry.MARKER_VALIDATION.key,
    layer: str | None = None,
    label_lines: bool = True,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
    **kwargs,
) -> Axes | Figure | None:
    """One candidate on the held-out lines: its baseline level against the lines' outcome.

    Does the marker measured in undifferentiated new lines predict how they differentiate?
    The title gives the held-out rho, p-value and whether the candidate was validated.

    Parameters
    ----------
    adata
        {adata}
        Here held-out lines with :func:`mscpotency.bulk.tl.validate_markers` results.
    feature
        A validated (or rejected) candidate.
    label_lines
        Write each line's name next to its point.
    **kwargs
        Passed to :meth:`matplotlib.axes.Axes.scatter`.

    Returns
    -------
    The Figure when ``return_fig=True``, the Axes when not shown, else ``None``.
    """
    result = stored(adata, _registry.MARKER_VALIDATION, key)
    table = get.validate_markers(adata, key=key)
    if feature not in table.index:
        msg = (
            f"{feature!r} was not among the validated candidates ({table.index[:10].tolist()} ...)"
        )
        raise KeyError(msg)
    row = table.loc[feature]
    outcome = pd.DataFrame(result["outcome"])
    name = str(outcome.columns[0])
    lines = outcome.index.astype(str)
    x = dense_matrix(adata[:, [feature]], layer)[line_rows(adata, lines), 0]
    y = outcome[name].to_numpy(dtype=float)
    color = VALIDATED if bool(row["validated"]) else NOT_VALIDATED
    fig, ax = _axes(ax, (4.4, 4.0))
    ax.scatter(
        x,
        y,
        color=color,
        **{"s": 45, "edgecolor": "black", "linewidth": 0.6, "zorder": 3, **kwargs},
    )
    if label_lines:
        for xi, yi, line in zip(x, y, lines, strict=True):
            ax.annotate(
                line, (xi, yi), xytext=(4, 3), textcoords="offset points", fontsize="x-small"
            )
    verdict = "validated" if bool(row["validated"]) else "not validated"
    alternative = result["params"]["alternative"]
    ax.set_title(
        f"{feature}: \N{GREEK SMALL LETTER RHO} = {row['rho']:.2f}, p = {format_pvalue(float(row['pvalue']))} "
        f"({alternative})\n{len(lines)} held-out lines, {verdict}",
        fontsize="medium",
    )
    ax.set_xlabel(f"{feature} (baseline, undifferentiated)")
    ax.set_ylabel(name)
    ax.spines[["top", "right"]].set_visible(False)
    return _finish(fig, ax, show, return_fig)
