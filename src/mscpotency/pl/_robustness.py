"""Plots of how sure the potency association is: stability, influence, second opinions.

One plot, one question.
"""

from __future__ import annotations

import numpy as np
from anndata import AnnData
from matplotlib import colors as mcolors
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.figure import Figure

from .. import _registry, get
from .._docs import doc_params
from .._stored import stored
from ._utils import RHO, _axes, _finish

__all__ = [
    "association_stability",
    "influential_lots",
    "method_agreement",
    "neighbourhood_association",
]

_FAIL, _REFERENCE = "#d73027", "#8c8c8c"


@doc_params
def association_stability(
    adata: AnnData,
    *,
    key: str = _registry.ASSOCIATION_STABILITY.key,
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
        {adata}
        With ``uns[key]`` from :func:`mscpotency.tl.association_stability`.

    Returns
    -------
    The Axes (``show=False``), the Figure (``return_fig=True``) or ``None``.
    """
    result = stored(adata, _registry.ASSOCIATION_STABILITY, key)
    table = get.association_stability(adata, key=key, kind="resolutions")
    subsamples = get.association_stability(adata, key=key, kind="subsamples")
    summary = result["summary"]
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


@doc_params
def influential_lots(
    adata: AnnData,
    *,
    key: str = _registry.INFLUENTIAL_LOTS.key,
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
        {adata}
        With ``uns[key]`` from :func:`mscpotency.tl.influential_lots`.

    Returns
    -------
    The Axes (``show=False``), the Figure (``return_fig=True``) or ``None``.
    """
    result = stored(adata, _registry.INFLUENTIAL_LOTS, key)
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
        f"{result['cluster']}: {RHO} = {result['rho']:.2f}; red = influential lot",
        fontsize="medium",
    )
    ax.spines[["top", "right"]].set_visible(False)
    return _finish(fig, ax, show, return_fig)


@doc_params
def neighbourhood_association(
    adata: AnnData,
    *,
    key: str = _registry.NEIGHBOURHOOD_ASSOCIATION.key,
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
        {adata}
        With ``uns[key]``.

    Returns
    -------
    The Axes (``show=False``), the Figure (``return_fig=True``) or ``None``.
    """
    result = stored(adata, _registry.NEIGHBOURHOOD_ASSOCIATION, key)
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
    level = float(result["params"]["alpha"])
    ax.set_title(
        f"{len(nhoods)} neighbourhoods; coloured: {result['params']['fdr']} FDR < {level:g}",
        fontsize="medium",
    )
    ax.spines[["top", "right"]].set_visible(False)
    return _finish(fig, ax, show, return_fig)


@doc_params
def method_agreement(
    adata: AnnData,
    *,
    key: str = _registry.METHOD_AGREEMENT.key,
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
        {adata}
        With ``uns[key]`` from :func:`mscpotency.tl.method_agreement`.

    Returns
    -------
    The Axes (``show=False``), the Figure (``return_fig=True``) or ``None``.
    """
    stored(adata, _registry.METHOD_AGREEMENT, key)
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
