"""Plots of the decisions a QC lab defends.

Stability, influence, prediction, comparability, neighbourhoods and method agreement;
one plot, one question.
"""

from __future__ import annotations

import numpy as np
from anndata import AnnData
from matplotlib import colors as mcolors
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from .. import get
from ..tl._decisions._comparability import COMPARABILITY, COMPOSITION_DISTANCE
from ..tl._decisions._prediction import POTENCY_MODEL, POTENCY_PREDICTION
from ..tl._robustness._second_opinion import METHOD_AGREEMENT, NEIGHBOURHOOD_ASSOCIATION
from ..tl._robustness._stability import ASSOCIATION_STABILITY, INFLUENTIAL_LOTS
from ._utils import RHO, _axes, _finish, _outside_legend, _stored, potency_label

__all__ = [
    "association_stability",
    "comparability",
    "influential_lots",
    "method_agreement",
    "neighbourhood_association",
    "potency_prediction",
]


_PASS, _FAIL, _REFERENCE = "#1a9850", "#d73027", "#8c8c8c"


def association_stability(
    adata: AnnData,
    *,
    key: str = ASSOCIATION_STABILITY,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> Axes | Figure | None:
    """Show whether the potency cluster's association survives other resolutions and subsamples.

    One point per resolution of the sweep: the rho of the cluster that best matches the
    potency cluster, coloured by that match's Jaccard index and hollow where the
    association is not recovered (a weaker match, another cluster with a larger rho, or
    p above alpha); the number of clusters is written above each point. At the reference
    resolution (dotted line) a box shows the rhos over the cell subsamples.

    Parameters
    ----------
    adata
        Cells with ``uns[key]`` from :func:`mscpotency.tl.association_stability`.
    key
        Key of the stored result.
    ax
        Axes to draw on; a new figure when ``None``.
    show
        Show the figure (default: scanpy's ``settings.autoshow``).
    return_fig
        Return the Figure instead of the Axes.

    Returns
    -------
    The Axes (``show=False``), the Figure (``return_fig=True``) or ``None``.
    """
    stored = _stored(adata, key, tool="tl.association_stability")
    table = get.association_stability(adata, key=key, kind="resolutions")
    subsamples = get.association_stability(adata, key=key, kind="subsamples")
    summary = stored["summary"]
    fig, ax = _axes(ax, (6.0, 3.8))
    cmap = mcolors.LinearSegmentedColormap.from_list("jaccard", ["#d73027", "#fee08b", "#1a9850"])
    norm = mcolors.Normalize(0, 1)
    ax.plot(table["resolution"], table["rho"], color="#999999", lw=1, zorder=1)
    recovered = table["recovered"].to_numpy(dtype=bool)
    colors = cmap(norm(table["jaccard"].to_numpy(dtype=float)))
    ax.scatter(
        table["resolution"][recovered],
        table["rho"][recovered],
        c=colors[recovered],
        s=60,
        edgecolor="black",
        linewidth=0.6,
        zorder=3,
    )
    ax.scatter(
        table["resolution"][~recovered],
        table["rho"][~recovered],
        facecolor="white",
        edgecolor=colors[~recovered],
        linewidth=1.8,
        s=60,
        zorder=3,
    )
    for _, row in table.iterrows():
        ax.annotate(
            f"{int(row['n_clusters'])}",
            (row["resolution"], row["rho"]),
            xytext=(0, 7),
            textcoords="offset points",
            ha="center",
            fontsize="x-small",
        )
    reference = float(summary["reference_resolution"])
    ax.axvline(reference, ls=":", color="black", lw=1)
    if len(subsamples):
        width = reference * 0.12
        ax.boxplot(
            subsamples["rho"].to_numpy(dtype=float),
            positions=[reference],
            widths=width,
            manage_ticks=False,
            showfliers=True,
            zorder=2,
            boxprops={"color": "#4575b4"},
            medianprops={"color": "#4575b4"},
            whiskerprops={"color": "#4575b4"},
            capprops={"color": "#4575b4"},
        )
    ax.set_xscale("log")
    ax.axhline(0, color="#cccccc", lw=0.8, zorder=0)
    ax.set_xlabel("Leiden resolution (numbers: clusters found)")
    ax.set_ylabel(f"Spearman {RHO} of the matched cluster")
    ax.set_ylim(min(-0.1, float(np.nanmin(table["rho"])) - 0.1), 1.08)
    colorbar = ax.figure.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, pad=0.02)
    colorbar.set_label(f"Jaccard with {summary['cluster']}")
    ax.set_title(
        f"{summary['cluster']}: recovered at {summary['share_resolutions_recovered']:.0%} of resolutions"
        + (
            f", {summary['share_subsamples_recovered']:.0%} of subsamples"
            if len(subsamples)
            else ""
        ),
        fontsize="medium",
    )
    ax.spines[["top", "right"]].set_visible(False)
    return _finish(fig, ax, show, return_fig)


def influential_lots(
    adata: AnnData,
    *,
    key: str = INFLUENTIAL_LOTS,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> Axes | Figure | None:
    """Show which lot, left out, moves the association most: one bar per lot.

    Bars show rho without the lot minus rho with all lots; lots flagged by
    :func:`mscpotency.tl.influential_lots` are red.

    Parameters
    ----------
    adata
        Cells with ``uns[key]`` from :func:`mscpotency.tl.influential_lots`.
    key
        Key of the stored result.
    ax
        Axes to draw on; a new figure when ``None``.
    show
        Show the figure (default: scanpy's ``settings.autoshow``).
    return_fig
        Return the Figure instead of the Axes.

    Returns
    -------
    The Axes (``show=False``), the Figure (``return_fig=True``) or ``None``.
    """
    stored = _stored(adata, key, tool="tl.influential_lots")
    table = get.influential_lots(adata, key=key)
    fig, ax = _axes(ax, (5.0, 0.3 * len(table) + 1.5))
    colors = np.where(table["influential"].to_numpy(dtype=bool), _FAIL, _REFERENCE)
    positions = np.arange(len(table))
    ax.barh(positions, table["shift"].to_numpy(dtype=float), color=colors)
    ax.set_yticks(positions, table.index.astype(str))
    ax.invert_yaxis()
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel(f"{RHO} without the lot - {RHO} with all lots")
    ax.set_title(
        f"{stored['cluster']}: {RHO} = {stored['rho']:.2f}; red = influential lot",
        fontsize="medium",
    )
    ax.spines[["top", "right"]].set_visible(False)
    return _finish(fig, ax, show, return_fig)


def potency_prediction(
    adata: AnnData,
    model: AnnData | None = None,
    *,
    key: str = POTENCY_PREDICTION,
    model_key: str = POTENCY_MODEL,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> Axes | Figure | None:
    """Show each new lot's predicted potency with its interval.

    With a model on the potency-cluster fraction alone: training lots (grey) against their
    fraction with the fitted line, and each query lot's prediction with its interval at its
    fraction (red when outside the training range; a cross marks the measured potency when
    known). With marker genes in the model: predicted against measured potency instead
    (training lots by their leave-one-out prediction).

    Parameters
    ----------
    adata
        Query cells with ``uns[key]`` from :func:`mscpotency.tl.predict_potency`.
    model
        AnnData holding the model (default: ``adata``).
    key
        Key of the predictions.
    model_key
        Key of the model.
    ax
        Axes to draw on; a new figure when ``None``.
    show
        Show the figure (default: scanpy's ``settings.autoshow``).
    return_fig
        Return the Figure instead of the Axes.

    Returns
    -------
    The Axes (``show=False``), the Figure (``return_fig=True``) or ``None``.
    """
    stored = _stored(adata, key, tool="tl.predict_potency")
    source = adata if model is None else model
    model_stored = _stored(source, model_key, tool="tl.fit_potency_model")
    training = get.potency_model(source, key=model_key, kind="lots")
    table = get.potency_prediction(adata, key=key)
    features = [str(f) for f in model_stored["model"]["features"]]
    potency = str(model_stored["params"]["potency"])
    level = float(stored["params"]["level"])
    interval = str(stored["params"]["interval"])
    fig, ax = _axes(ax, (5.6, 4.0))
    colors = np.where(table["outside_range"].to_numpy(dtype=bool), _FAIL, "#4575b4")
    if len(features) == 1:
        feature = features[0]
        x_train = training[feature].to_numpy(dtype=float)
        ax.scatter(
            x_train,
            training[potency],
            color=_REFERENCE,
            edgecolor="black",
            linewidth=0.5,
            s=35,
            zorder=3,
            label="training lots",
        )
        coef = np.asarray(model_stored["model"]["coef"], dtype=float)
        grid = np.linspace(
            min(x_train.min(), table[feature].min()), max(x_train.max(), table[feature].max()), 50
        )
        ax.plot(
            grid, coef[0] + coef[1] * grid, color="#555555", lw=1, ls="--", zorder=2, label="model"
        )
        ax.axvspan(x_train.min(), x_train.max(), color="#eeeeee", zorder=0, label="training range")
        x_query = table[feature].to_numpy(dtype=float)
        ax.set_xlabel(f"{feature.split(':', 1)[-1]} (share of the lot's cells)")
        ax.set_ylabel(potency_label(potency))
    else:
        ax.scatter(
            training[potency],
            training["loo_prediction"],
            color=_REFERENCE,
            edgecolor="black",
            linewidth=0.5,
            s=35,
            zorder=3,
            label="training lots (leave-one-out)",
        )
        x_query = (
            table["observed"].to_numpy(dtype=float)
            if "observed" in table
            else np.arange(len(table))
        )
        low = min(training[potency].min(), training["loo_prediction"].min())
        high = max(training[potency].max(), training["loo_prediction"].max())
        ax.plot([low, high], [low, high], color="#555555", lw=1, ls="--", zorder=2)
        ax.set_xlabel(f"measured {potency_label(potency)}" if "observed" in table else "query lot")
        ax.set_ylabel(f"predicted {potency_label(potency)}")
    prediction = table["prediction"].to_numpy(dtype=float)
    errors = np.vstack(
        [
            prediction - table["low"].to_numpy(dtype=float),
            table["high"].to_numpy(dtype=float) - prediction,
        ]
    )
    for xi, yi, lo, hi, color in zip(
        x_query, prediction, errors[0], errors[1], colors, strict=True
    ):
        ax.errorbar(
            xi, yi, yerr=[[lo], [hi]], fmt="o", color=color, ecolor=color, capsize=3, ms=6, zorder=4
        )
    if len(features) == 1 and "observed" in table:
        ax.scatter(
            x_query, table["observed"], marker="x", color="black", s=40, zorder=5, label="measured"
        )
    for xi, yi, name in zip(x_query, prediction, table.index.astype(str), strict=True):
        ax.annotate(name, (xi, yi), xytext=(5, 3), textcoords="offset points", fontsize="x-small")
    handles, labels = ax.get_legend_handles_labels()
    handles += [
        Line2D([], [], marker="o", color="#4575b4", ls="-"),
        Line2D([], [], marker="o", color=_FAIL, ls="-"),
    ]
    labels += [f"query lot, {level:.0%} {interval} interval", "query lot outside training range"]
    ax.legend(handles, labels, fontsize="x-small", frameon=False, loc="upper left")
    ax.set_title("Predicted potency of new lots", fontsize="medium")
    ax.spines[["top", "right"]].set_visible(False)
    return _finish(fig, ax, show, return_fig)


def comparability(
    adata: AnnData,
    attribute: str | None = None,
    *,
    key: str = COMPARABILITY,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> Axes | Figure | None:
    """Control chart of each new lot against the reference lots' tolerance range.

    Reference lots (grey) and new lots (green inside, red outside) in order, with the
    reference centre line and the tolerance limits of :func:`mscpotency.tl.comparability`.
    Fractions are drawn on a logit axis when the limits were computed on that scale.

    Parameters
    ----------
    adata
        Cells with ``uns[key]`` from :func:`mscpotency.tl.comparability`.
    attribute
        A cluster name or ``"composition_distance"``; default: the potency cluster.
    key
        Key of the stored result.
    ax
        Axes to draw on; a new figure when ``None``.
    show
        Show the figure (default: scanpy's ``settings.autoshow``).
    return_fig
        Return the Figure instead of the Axes.

    Returns
    -------
    The Axes (``show=False``), the Figure (``return_fig=True``) or ``None``.
    """
    stored = _stored(adata, key, tool="tl.comparability")
    attribute = str(stored["cluster"]) if attribute is None else str(attribute)
    values = get.comparability(adata, key=key, kind="values")
    limits = get.comparability(adata, key=key, kind="limits")
    if attribute not in limits.index:
        msg = f"unknown attribute {attribute!r}; choose one of {list(limits.index)}"
        raise ValueError(msg)
    row = limits.loc[attribute]
    y = values[attribute].to_numpy(dtype=float)
    is_new = (values["group"] == "new").to_numpy()
    low, high = float(row["low_value"]), float(row["high_value"])
    within = (y >= low) & (y <= high)
    colors = np.where(~is_new, _REFERENCE, np.where(within, _PASS, _FAIL))
    fig, ax = _axes(ax, (max(5.0, 0.35 * len(values) + 2), 3.6))
    positions = np.arange(len(values))
    ax.plot(positions[~is_new], y[~is_new], color=_REFERENCE, lw=0.8, zorder=1)
    ax.scatter(positions, y, c=colors, s=45, edgecolor="black", linewidth=0.5, zorder=3)
    scale = str(row["scale"])
    if scale == "logit":
        centre = 1 / (1 + np.exp(-float(row["mean"])))
    elif scale == "log":
        centre = float(np.exp(row["mean"]))
    else:
        centre = float(row["mean"])
    ax.axhline(centre, color="black", lw=1, label="reference centre")
    if attribute != COMPOSITION_DISTANCE:
        ax.axhline(low, color="#4575b4", ls="--", lw=1, label="tolerance limits")
    ax.axhline(
        high,
        color="#4575b4",
        ls="--",
        lw=1,
        label=None if attribute != COMPOSITION_DISTANCE else "upper tolerance limit",
    )
    if is_new.any() and (~is_new).any():
        ax.axvline(positions[~is_new].max() + 0.5, color="#bbbbbb", lw=1, ls=":")
    ax.set_xticks(positions, values.index.astype(str), rotation=90, fontsize="x-small")
    if attribute == COMPOSITION_DISTANCE:
        ax.set_ylabel("composition distance from reference (Aitchison)")
        ax.set_yscale("log")
    else:
        ax.set_ylabel(f"{attribute} (share of the lot's cells)")
        if scale == "logit":
            ax.set_yscale("logit")
    coverage = float(stored["params"]["coverage"])
    confidence = float(stored["params"]["confidence"])
    ax.set_title(
        f"{attribute}: {coverage:.0%}/{confidence:.0%} tolerance limits from {int(row['n_reference'])} reference lots",
        fontsize="medium",
    )
    _outside_legend(ax, fontsize="x-small")
    ax.spines[["top", "right"]].set_visible(False)
    return _finish(fig, ax, show, return_fig)


def neighbourhood_association(
    adata: AnnData,
    *,
    key: str = NEIGHBOURHOOD_ASSOCIATION,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> Axes | Figure | None:
    """Show which neighbourhoods track potency, grouped by majority cluster (Milo's beeswarm).

    One point per neighbourhood of :func:`mscpotency.tl.neighbourhood_association`: its
    Spearman rho with potency, coloured when significant at the stored FDR level.

    Parameters
    ----------
    adata
        Cells with ``uns[key]``.
    key
        Key of the stored result.
    ax
        Axes to draw on; a new figure when ``None``.
    show
        Show the figure (default: scanpy's ``settings.autoshow``).
    return_fig
        Return the Figure instead of the Axes.

    Returns
    -------
    The Axes (``show=False``), the Figure (``return_fig=True``) or ``None``.
    """
    stored = _stored(adata, key, tool="tl.neighbourhood_association")
    nhoods = get.neighbourhood_association(adata, key=key, kind="nhoods")
    clusters = get.neighbourhood_association(adata, key=key, kind="clusters")
    order = [
        c
        for c in clusters.sort_values("median_rho", ascending=False).index.astype(str)
        if (nhoods["cluster"] == c).any()
    ]
    fig, ax = _axes(ax, (5.5, 0.45 * len(order) + 1.5))
    rng = np.random.default_rng(0)
    for i, name in enumerate(order):
        part = nhoods[nhoods["cluster"] == name]
        jitter = rng.uniform(-0.25, 0.25, len(part))
        significant = part["significant"].to_numpy(dtype=bool)
        rho = part["rho"].to_numpy(dtype=float)
        color = np.where(significant, np.where(rho > 0, _FAIL, "#4575b4"), "#bbbbbb")
        ax.scatter(rho, i + jitter, c=color, s=10, linewidth=0)
    ax.set_yticks(np.arange(len(order)), order)
    ax.invert_yaxis()
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlim(-1.05, 1.05)
    ax.set_xlabel(f"Spearman {RHO} of the neighbourhood's share of each lot with potency")
    ax.set_ylabel("majority cluster")
    level = float(stored["params"]["fdr_level"])
    ax.set_title(
        f"{len(nhoods)} neighbourhoods; coloured: {stored['params']['fdr']} FDR < {level:g}",
        fontsize="medium",
    )
    ax.spines[["top", "right"]].set_visible(False)
    return _finish(fig, ax, show, return_fig)


def method_agreement(
    adata: AnnData,
    *,
    key: str = METHOD_AGREEMENT,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> Axes | Figure | None:
    """Show whether the methods agree: clusters x methods, coloured by each call.

    Red: significant positive association with potency; blue: negative; grey: none.
    Cells show the method's p-value (neighbourhoods: the share of significant ones).

    Parameters
    ----------
    adata
        Cells with ``uns[key]`` from :func:`mscpotency.tl.method_agreement`.
    key
        Key of the stored result.
    ax
        Axes to draw on; a new figure when ``None``.
    show
        Show the figure (default: scanpy's ``settings.autoshow``).
    return_fig
        Return the Figure instead of the Axes.

    Returns
    -------
    The Axes (``show=False``), the Figure (``return_fig=True``) or ``None``.
    """
    _stored(adata, key, tool="tl.method_agreement")
    table = get.method_agreement(adata, key=key)
    methods = [c.removeprefix("call_") for c in table.columns if c.startswith("call_")]
    text_of = {
        "fraction": lambda r: f"{r['p_fraction']:.2g}",
        "clr": lambda r: f"{r['p_clr']:.2g}",
        "count": lambda r: f"{r['p_count']:.2g}",
        "neighbourhood": lambda r: (
            f"{max(r['nhood_share_positive'], r['nhood_share_negative']):.0%}"
        ),
    }
    codes = {"+": 2, "0": 1, "-": 0}
    grid = np.array([[codes[str(table.loc[c, f"call_{m}"])] for m in methods] for c in table.index])
    fig, ax = _axes(ax, (1.1 * len(methods) + 2, 0.4 * len(table) + 1.4))
    cmap = mcolors.ListedColormap(["#4575b4", "#eeeeee", _FAIL])
    ax.imshow(grid, cmap=cmap, vmin=0, vmax=2, aspect="auto")
    for i, cluster in enumerate(table.index):
        for j, m in enumerate(methods):
            ax.text(
                j,
                i,
                text_of[m](table.loc[cluster]),
                ha="center",
                va="center",
                fontsize="x-small",
                color="white" if grid[i, j] != 1 else "black",
            )
    ax.set_xticks(np.arange(len(methods)), methods)
    ax.set_yticks(
        np.arange(len(table)),
        [f"{c}{'' if a else ' *'}" for c, a in zip(table.index, table["agree"], strict=True)],
    )
    ax.set_title("Calls per method (* = methods disagree)", fontsize="medium")
    return _finish(fig, ax, show, return_fig)
