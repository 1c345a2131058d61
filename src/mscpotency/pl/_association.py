"""Which cluster's share tracks potency? Every cluster's rho, one cluster's lots, the search."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib import colors as mcolors
from matplotlib import ticker as mticker
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from .. import _registry, get
from .._docs import doc_params
from .._stored import potency_cluster as named_potency_cluster
from .._stored import stored
from ._utils import (
    RHO,
    _axes,
    _category_colors,
    _cluster_key,
    _finish,
    _potency_cluster_or_none,
    format_association,
    potency_label,
    potency_name,
)

__all__ = ["potency_association", "potency_population", "potency_scatter"]


def _association(adata: AnnData, key: str) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """Read the stored association, its per-cluster table and its lots table (string labels)."""
    association = stored(adata, _registry.POTENCY_ASSOCIATION, key)
    table = get.potency_association(adata, key=key, sort=False)
    table.index = table.index.astype(str)
    lots = get.potency_association(adata, key=key, kind="lots")
    lots.index = lots.index.astype(str)
    lots.columns = lots.columns.astype(str)
    return association, table, lots


def _fractions_cluster_key(adata: AnnData, association: dict) -> str:
    """The obs column of the clusters whose fractions the association was computed on."""
    return _cluster_key(
        adata, str(association["params"].get("fractions_key", _registry.LOT_FRACTIONS.key))
    )


def _scatter_one(
    ax: Axes,
    share: pd.Series,
    row: pd.Series,
    *,
    y: np.ndarray,
    lot_names: list[str],
    color: str,
    assay: str,
    on_clr: bool,
    potency_cluster: str,
    line: bool,
    label_lots: bool,
    kwargs: dict,
) -> None:
    """Potency against one cluster's share (in %) of each lot, titled with its statistic."""
    cluster = str(share.name)
    is_potency = cluster == potency_cluster
    x = 100 * share.to_numpy(dtype=float)
    kwargs = {"s": 45, "edgecolor": "black", "linewidth": 0.6, "zorder": 3, **kwargs}
    ax.scatter(x, y, color=color, **kwargs)
    if line and np.ptp(x) > 0:
        slope, intercept = np.polyfit(x, y, 1)
        grid = np.linspace(x.min(), x.max(), 50)
        ax.plot(
            grid,
            intercept + slope * grid,
            ls="--",
            color="#555555",
            lw=1,
            zorder=2,
            label="least-squares line",
        )
    if label_lots:
        for xi, yi, name in zip(x, y, lot_names, strict=True):
            ax.annotate(
                name, (xi, yi), xytext=(4, 3), textcoords="offset points", fontsize="x-small"
            )
    ax.set_xlabel(f"{cluster} (% of the lot's cells)")
    ax.set_ylabel(potency_label(assay))
    statistic = format_association(row) + (" on CLR of shares" if on_clr else "")
    title = f"{cluster}{' (potency cluster)' if is_potency else ''}\n{statistic}, n = {int(row['n_lots'])} lots"
    ax.set_title(title, fontweight="bold" if is_potency else "normal", fontsize="medium")
    ax.spines[["top", "right"]].set_visible(False)


@doc_params
def potency_scatter(
    adata: AnnData,
    cluster: str | None = None,
    *,
    key: str = _registry.POTENCY_ASSOCIATION.key,
    line: bool = True,
    label_lots: bool = True,
    ncols: int = 3,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
    **kwargs,
) -> Axes | np.ndarray | Figure | None:
    """Lot potency against the share of one cluster (or of every cluster), one point per lot.

    The title gives Spearman's rho, its p-value and how that p-value was obtained (exact
    enumeration or permutations), as stored by :func:`mscpotency.tl.potency_association`.
    The dashed least-squares line is a guide to the eye; the statistic is rank-based.

    Parameters
    ----------
    adata
        {adata}
        Needs ``uns[key]`` from :func:`mscpotency.tl.potency_association`.
    cluster
        {cluster}
        ``"all"``: a grid with every cluster.
    line
        Draw the least-squares line.
    label_lots
        Write each lot's name next to its point.
    ncols
        Columns of the grid when ``cluster="all"``.
    ax
        {ax}
        One cluster only.
    **kwargs
        Passed to :meth:`matplotlib.axes.Axes.scatter`.

    Returns
    -------
    The Figure when ``return_fig=True``; when not shown, the Axes (one cluster) or an array
    of Axes (``cluster="all"``); else ``None``.
    """
    association, table, lots = _association(adata, key)
    clusters = list(table.index)
    if cluster is None:
        cluster = named_potency_cluster(adata, association_key=key, if_not_significant="ignore")
    if cluster != "all" and str(cluster) not in clusters:
        msg = f"unknown cluster {cluster!r}; clusters are {clusters} or 'all'"
        raise ValueError(msg)
    if ncols < 1:
        msg = f"ncols must be at least 1, got {ncols!r}"
        raise ValueError(msg)
    assay = str(association["params"]["potency"])
    colors = _category_colors(adata, _fractions_cluster_key(adata, association), clusters)
    draw = {
        "y": lots[assay].to_numpy(dtype=float),
        "lot_names": list(lots.index),
        "assay": assay,
        "on_clr": association["params"].get("transform") == "clr",
        "potency_cluster": str(association.get("potency_cluster", "")),
        "line": line,
        "label_lots": label_lots,
        "kwargs": kwargs,
    }
    if cluster != "all":
        fig, ax = _axes(ax, (4.6, 4.0))
        cluster = str(cluster)
        _scatter_one(ax, lots[cluster], table.loc[cluster], color=colors[cluster], **draw)
        return _finish(fig, ax, show, return_fig)
    if ax is not None:
        msg = "cluster='all' draws one panel per cluster and cannot use a single ax; leave ax=None"
        raise ValueError(msg)
    fig, axes = _scatter_grid(lots, table, colors, ncols, draw)
    return _finish(fig, axes, show, return_fig)


def _scatter_grid(
    lots: pd.DataFrame, table: pd.DataFrame, colors: dict[str, str], ncols: int, draw: dict
) -> tuple[Figure, np.ndarray]:
    """One scatter panel per cluster on a new figure; returns it and the used Axes."""
    clusters = list(table.index)
    ncols = min(ncols, len(clusters))
    nrows = int(np.ceil(len(clusters) / ncols))
    fig, grid = plt.subplots(
        nrows,
        ncols,
        figsize=(3.9 * ncols, 3.5 * nrows),
        sharey=True,
        layout="constrained",
        squeeze=False,
    )
    axes = grid.ravel()
    for panel, name in zip(axes, clusters, strict=False):
        _scatter_one(panel, lots[name], table.loc[name], color=colors[name], **draw)
    for panel in axes[len(clusters) :]:
        panel.remove()
    fig.suptitle(f"{potency_label(draw['assay'])} against each cluster's share of the lot")
    return fig, axes[: len(clusters)]


@doc_params
def potency_association(
    adata: AnnData,
    *,
    key: str = _registry.POTENCY_ASSOCIATION.key,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
    **kwargs,
) -> Axes | Figure | None:
    """Spearman rho of every cluster's share with potency, with its bootstrap CI, coloured by FDR.

    Clusters run from the strongest positive rho to the strongest negative; the potency
    cluster's tick label is bold and its point ringed.

    Parameters
    ----------
    adata
        {adata}
        Needs ``uns[key]`` from :func:`mscpotency.tl.potency_association`.
    **kwargs
        Passed to :meth:`matplotlib.axes.Axes.scatter`.

    Returns
    -------
    The Figure when ``return_fig=True``, the Axes when not shown, else ``None``.
    """
    association, table, _ = _association(adata, key)
    params = association["params"]
    potency_cluster = _potency_cluster_or_none(adata, key)
    table = table.sort_values("rho", ascending=False, kind="stable")
    clusters = list(table.index)
    x = np.arange(len(clusters))
    rho = table["rho"].to_numpy(dtype=float)
    fig, ax = _axes(ax, (max(4.8, 0.6 * len(clusters) + 2.8), 4.0))
    ax.axhline(0, color="#888888", lw=0.8, zorder=1)
    has_ci = {"ci_low", "ci_high"} <= set(table.columns)
    if has_ci:
        low, high = table["ci_low"].to_numpy(dtype=float), table["ci_high"].to_numpy(dtype=float)
        err = np.vstack([np.clip(rho - low, 0, None), np.clip(high - rho, 0, None)])
        ax.errorbar(
            x, rho, yerr=err, fmt="none", ecolor="#404040", elinewidth=1.2, capsize=4, zorder=2
        )
    _rho_points_by_fdr(fig, ax, x, rho, table["fdr"].to_numpy(dtype=float), kwargs)
    cluster_key = _fractions_cluster_key(adata, association)
    colors = _category_colors(adata, cluster_key, clusters)
    if potency_cluster in clusters:
        i = clusters.index(potency_cluster)
        _ring_potency_cluster(ax, x[i], rho[i], colors[potency_cluster])
    ax.set_xticks(x, clusters, rotation=45 if len(clusters) > 10 else 0)
    for tick, name in zip(ax.get_xticklabels(), clusters, strict=True):
        tick.set_color(colors[name])
        if name == potency_cluster:
            tick.set_fontweight("bold")
    ax.set_xlim(-0.6, len(clusters) - 0.4)
    ax.set_ylim(-1.08, 1.08)
    ax.set_xlabel(cluster_key)
    share = "CLR of share" if params.get("transform") == "clr" else "share"
    ax.set_ylabel(f"Spearman {RHO}, {share} vs {potency_label(str(params['potency']))}")
    ax.spines[["top", "right"]].set_visible(False)
    n_lots = int(table["n_lots"].max()) if len(table) else 0
    detail = f"n = {n_lots} lots, {params.get('method', '')} p"
    if has_ci:
        detail += f"; bars: {100 * float(params.get('level', 0.95)):g}% bootstrap CI over lots"
    ax.set_title(
        f"Which cluster's share tracks {potency_name(str(params['potency']))}?\n{detail}",
        fontsize="medium",
    )
    note = str(association.get("note", ""))
    if "no Spearman test can reach" in note:
        ax.text(0.0, -0.2, note, transform=ax.transAxes, fontsize="x-small", va="top", wrap=True)
    return _finish(fig, ax, show, return_fig)


def _rho_points_by_fdr(
    fig: Figure, ax: Axes, x: np.ndarray, rho: np.ndarray, fdr: np.ndarray, kwargs: dict
) -> None:
    """One point per cluster at its rho, shaded by FDR on a log scale, with a colour bar."""
    finite = fdr[np.isfinite(fdr) & (fdr > 0)]
    vmin = min(1e-3, float(finite.min())) if finite.size else 1e-3
    norm = mcolors.LogNorm(vmin=vmin, vmax=1.0)
    kwargs = {
        "s": 70,
        "edgecolor": "black",
        "linewidth": 0.6,
        "zorder": 3,
        "cmap": "Greys_r",
        **kwargs,
    }
    points = ax.scatter(
        x, rho, c=np.clip(np.nan_to_num(fdr, nan=1.0), vmin, 1.0), norm=norm, **kwargs
    )
    colorbar = fig.colorbar(points, ax=ax, pad=0.02, fraction=0.06)
    ticks = [t for t in (1e-4, 1e-3, 0.01, 0.05, 0.1, 1.0) if t >= vmin]
    colorbar.set_ticks(ticks, labels=[f"{t:g}" for t in ticks])
    colorbar.minorticks_off()
    colorbar.set_label("FDR (Benjamini-Hochberg)")


def _ring_potency_cluster(ax: Axes, xi: float, yi: float, ring: str) -> None:
    """Ring the potency cluster's point (at ``xi, yi``) and say so in a legend."""
    ax.scatter(
        [xi],
        [yi],
        s=300,
        facecolor="none",
        edgecolor=ring,
        linewidth=2.5,
        zorder=4,
        gid="potency_cluster",
    )
    handle = Line2D(
        [],
        [],
        marker="o",
        ls="none",
        markerfacecolor="none",
        markeredgecolor=ring,
        markeredgewidth=2.5,
        markersize=13,
        label="potency cluster",
    )
    ax.legend(handles=[handle], loc="lower left", frameon=False, fontsize="small")


@doc_params
def potency_population(
    adata: AnnData,
    *,
    key: str = _registry.POTENCY_POPULATION.key,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
    **kwargs,
) -> Axes | Figure | None:
    """Every candidate of the search by size and rho, the fixed-k clusters and the one found.

    Grey points are the candidate populations of :func:`mscpotency.tl.potency_population`
    (x: share of all cells, log scale; y: Spearman rho of their per-lot share with
    potency), coloured diamonds the fixed-k clusters, the ring the population found (or
    the best candidate, dashed, when nothing was found). The dashed line is the
    selection-aware threshold: the ``1 - alpha`` quantile of the best rho of the whole
    search on permuted potency; only a candidate above it is beyond what the search
    finds by chance.

    Parameters
    ----------
    adata
        {adata}
        Needs ``uns[key]`` from :func:`mscpotency.tl.potency_population`.
    **kwargs
        Passed to :meth:`matplotlib.axes.Axes.scatter` for the candidates.

    Returns
    -------
    The Figure when ``return_fig=True``, the Axes when not shown, else ``None``.
    """
    result = stored(adata, _registry.POTENCY_POPULATION, key)
    table = get.potency_population(adata, key=key)
    summary = result["summary"]
    share = table["n_cells"].to_numpy(dtype=float) / adata.n_obs
    rho = table["rho"].to_numpy(dtype=float)
    fig, ax = _axes(ax, (6.4, 4.4))
    kwargs = {"s": 14, "color": "#b0b0b0", "edgecolor": "none", "zorder": 2, **kwargs}
    ax.scatter(share, rho, label="candidates", **kwargs)
    fixed = (table["kind"] == "cluster").to_numpy()
    cluster_key = str(result["params"]["cluster_key"])
    names = [str(n) for n in table.index[fixed]]
    colors = _category_colors(adata, cluster_key, _cluster_categories(adata, cluster_key))
    for x_i, y_i, name in zip(share[fixed], rho[fixed], names, strict=True):
        ax.scatter([x_i], [y_i], marker="D", s=40, color=colors.get(name, "#404040"), zorder=3)
        ax.annotate(name, (x_i, y_i), xytext=(4, 3), textcoords="offset points", fontsize="x-small")
    chosen = table["chosen"].to_numpy(dtype=bool)
    if chosen.any():
        ax.scatter(
            share[chosen],
            rho[chosen],
            s=220,
            facecolor="none",
            edgecolor="black",
            linewidth=2.0,
            linestyle="-" if summary["found"] else "--",
            zorder=4,
            gid="population_found",
            label="population found" if summary["found"] else "best candidate (not significant)",
        )
    alpha = float(summary["alpha"])
    threshold = float(np.quantile(np.asarray(result["null_max"], dtype=float), 1 - alpha))
    ax.axhline(
        threshold, color="#c0392b", ls="--", lw=1.0, zorder=1, label=f"selection-aware {alpha:g}"
    )
    ax.axhline(0, color="#888888", lw=0.8, zorder=1)
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(mticker.NullFormatter())
    ax.set_ylim(-1.08, 1.08)
    ax.set_xlabel("candidate's share of all cells")
    potency = str(result["params"]["potency"])
    ax.set_ylabel(f"Spearman {RHO}, share vs {potency_label(potency)}")
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(loc="best", frameon=False, fontsize="x-small")
    ax.set_title(_population_title(summary), fontsize="small")
    return _finish(fig, ax, show, return_fig)


def _cluster_categories(adata: AnnData, cluster_key: str) -> list[str]:
    """The categories of the fixed-k clustering (for its colours), or none if it is gone."""
    if cluster_key not in adata.obs:
        return []
    return [str(c) for c in pd.Categorical(adata.obs[cluster_key]).categories]


def _population_title(summary: dict) -> str:
    """Two lines: what was found (or not), then the p-value and the fixed-k comparison."""
    p = f"selection-aware p = {summary['pvalue']:.3g} over {summary['n_candidates']} candidates"
    if not summary["found"]:
        return (
            f"No population found (best: {summary['population']}, "
            f"{RHO} = {summary['rho']:.2f})\n{p}"
        )
    if not summary["changed"]:
        return f"Found the fixed-k cluster {summary['population']}\n{p}; the search changed nothing"
    return (
        f"Found {summary['population']} ({RHO} = {summary['rho']:.2f}; fixed-k "
        f"{summary['fixed_k_cluster']}: {RHO} = {summary['fixed_k_rho']:.2f}, "
        f"Jaccard {summary['jaccard_with_fixed_k']:.2f})\n{p}"
    )
