"""What marks the potency cluster, and does it hold in every lot? A dot plot of its top genes."""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from scipy import sparse

from .. import _keys, _registry, get
from .._docs import doc_params
from .._stored import stored
from .._validate import require_obs_column
from ._utils import _axes, _category_colors, _finish

__all__ = ["potency_markers"]

#: Dot area (points^2) of a gene every cell of a cluster expresses.
_MAX_DOT_SIZE = 220.0


def _dot_table(
    adata: AnnData, genes: list[str], labels: pd.Series, layer: str | None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Mean expression and share of expressing cells, clusters x genes."""
    columns = adata.var_names.get_indexer(genes)
    missing = [g for g, c in zip(genes, columns, strict=True) if c < 0]
    if missing:
        msg = f"marker genes {missing} are not in adata.var_names; plot the AnnData the markers were found on"
        raise ValueError(msg)
    if layer is not None and layer not in adata.layers:
        msg = f"adata.layers has no {layer!r}; layers are {list(adata.layers)}"
        raise KeyError(msg)
    X = adata.layers[layer] if layer is not None else adata.X
    X = X[:, columns]
    X = X.toarray() if sparse.issparse(X) else np.asarray(X, dtype=float)
    labels = labels.astype("category")
    codes = labels.cat.codes.to_numpy()
    categories = [str(c) for c in labels.cat.categories]
    mean = np.zeros((len(categories), len(genes)))
    share = np.zeros_like(mean)
    for i in range(len(categories)):
        rows = X[codes == i]
        if len(rows):
            mean[i] = rows.mean(axis=0)
            share[i] = (rows > 0).mean(axis=0)
    return (
        pd.DataFrame(mean, index=categories, columns=genes),
        pd.DataFrame(share, index=categories, columns=genes),
    )


@doc_params
def potency_markers(
    adata: AnnData,
    *,
    key: str = _registry.POTENCY_MARKERS.key,
    n_genes: int = 10,
    standard_scale: Literal["var"] | None = "var",
    layer: str | None = None,
    cmap: str = "Reds",
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
    **kwargs,
) -> Axes | Figure | None:
    """Dot plot of the potency cluster's top marker genes across all clusters, with lot consistency.

    Dot size is the share of a cluster's cells that express the gene, colour its mean
    expression. The bars above count the lots in which the gene is higher in the cluster
    than in the rest of the lot (``n_lots_up`` of ``n_lots_tested`` from
    :func:`mscpotency.tl.potency_markers`): a marker of the cluster should be up in every lot.

    Parameters
    ----------
    adata
        {adata}
        Needs ``uns[key]`` from :func:`mscpotency.tl.potency_markers` and the cluster labels.
    n_genes
        How many top genes to show (at most those stored).
    standard_scale
        ``"var"``: scale each gene's mean expression to 0-1 across clusters; ``None``: mean
        log-expression as is.
    layer
        {layer}
        It holds log-normalised expression; default: the one the markers were found on.
    cmap
        Colour map of the mean expression.
    ax
        {ax}
        The lot bars go in an inset above it.
    **kwargs
        Passed to :meth:`matplotlib.axes.Axes.scatter`.

    Returns
    -------
    The Figure when ``return_fig=True``, the Axes of the dots when not shown, else ``None``.
    """
    if n_genes < 1:
        msg = f"n_genes must be at least 1, got {n_genes!r}"
        raise ValueError(msg)
    if standard_scale not in ("var", None):
        msg = f"standard_scale must be 'var' or None, got {standard_scale!r}"
        raise ValueError(msg)
    markers = stored(adata, _registry.POTENCY_MARKERS, key)
    params = markers["params"]
    table = get.potency_markers(adata, key=key).head(n_genes)
    genes = [str(g) for g in table["gene"]]
    cluster_key = str(params.get("cluster_key", _keys.CLUSTER))
    potency_cluster = str(markers.get("cluster", ""))
    labels = require_obs_column(
        adata, cluster_key, what="cluster labels", hint="Run `tl.cluster` first."
    )
    mean, share = _dot_table(
        adata, genes, labels, layer if layer is not None else params.get("layer")
    )
    clusters = list(mean.index)
    colors = _category_colors(adata, cluster_key, clusters)
    if standard_scale == "var":
        low, high = mean.min(axis=0), mean.max(axis=0)
        mean = (mean - low) / (high - low).replace(0, 1)
    fig, ax = _axes(ax, (0.45 * len(genes) + 3.2, 0.42 * len(clusters) + 3.0))
    xx, yy = np.meshgrid(np.arange(len(genes)), np.arange(len(clusters)))
    kwargs = {"edgecolor": "#606060", "linewidth": 0.4, **kwargs}
    dots = ax.scatter(
        xx.ravel(),
        yy.ravel(),
        s=_MAX_DOT_SIZE * share.to_numpy().ravel(),
        c=mean.to_numpy().ravel(),
        cmap=cmap,
        vmin=0 if standard_scale else None,
        **kwargs,
    )
    _gene_and_cluster_ticks(ax, genes, clusters, colors, potency_cluster, cluster_key)
    colorbar = fig.colorbar(dots, ax=ax, shrink=0.5, anchor=(0.0, 0.0), pad=0.02)
    colorbar.set_label(
        "mean expression\n(scaled per gene)" if standard_scale else "mean log expression"
    )
    _dot_size_legend(ax)
    _lots_up_inset(ax, table, colors.get(potency_cluster, "#777777"), potency_cluster)
    return _finish(fig, ax, show, return_fig)


def _gene_and_cluster_ticks(
    ax: Axes,
    genes: list[str],
    clusters: list[str],
    colors: dict[str, str],
    potency_cluster: str,
    cluster_key: str,
) -> None:
    """Genes along x, clusters (in their colours, the potency cluster bold) down y."""
    ax.set_xticks(np.arange(len(genes)), genes, rotation=90)
    ax.set_yticks(np.arange(len(clusters)), clusters)
    for tick, name in zip(ax.get_yticklabels(), clusters, strict=True):
        tick.set_color(colors[name])
        if name == potency_cluster:
            tick.set_fontweight("bold")
    ax.set_xlim(-0.6, len(genes) - 0.4)
    ax.set_ylim(len(clusters) - 0.5, -0.5)
    ax.set_ylabel(cluster_key)
    ax.set_xlabel(f"top marker genes of {potency_cluster}")


def _dot_size_legend(ax: Axes) -> None:
    """Legend of dot sizes (share of cells expressing), outside the axes."""
    for size in (0.25, 0.5, 1.0):
        ax.scatter(
            [],
            [],
            s=_MAX_DOT_SIZE * size,
            color="#bbbbbb",
            edgecolor="#606060",
            label=f"{size:.0%}",
        )
    ax.legend(
        title="cells\nexpressing",
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        frameon=False,
        labelspacing=1.1,
        borderaxespad=0.0,
        fontsize="small",
        title_fontsize="small",
    )


def _lots_up_inset(ax: Axes, table: pd.DataFrame, color: str, potency_cluster: str) -> None:
    """Bars above the dots: in how many lots each gene is up in the cluster."""
    bars = ax.inset_axes((0.0, 1.03, 1.0, 0.28), sharex=ax)
    up = table["n_lots_up"].to_numpy(dtype=float)
    tested = table["n_lots_tested"].to_numpy(dtype=float)
    bars.bar(np.arange(len(table)), up, width=0.7, color=color)
    n_tested = int(np.nanmax(tested)) if len(tested) else 0
    bars.set_ylim(0, max(n_tested, 1))
    bars.set_yticks([0, max(n_tested, 1)])
    bars.set_ylabel(f"lots up\n(of {n_tested})", fontsize="small")
    bars.tick_params(axis="x", labelbottom=False)
    bars.spines[["top", "right"]].set_visible(False)
    bars.set_title(f"Markers of the potency cluster {potency_cluster}", fontsize="medium")
