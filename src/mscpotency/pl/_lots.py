"""Which clusters are one or a few lots' cells? The lot-specificity diagnostics per cluster."""

from __future__ import annotations

import numpy as np
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from .. import _registry, get
from .._docs import doc_params
from .._stored import params
from ._utils import _axes, _finish, _outside_legend

__all__ = ["integrate", "lot_specificity"]

#: Flagged clusters dark, the others light, so that no bar reads as a cluster colour.
FLAGGED, MIXED = "#b2182b", "#bdbdbd"


@doc_params
def lot_specificity(
    adata: AnnData,
    *,
    key: str = _registry.LOT_SPECIFICITY.key,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
    **kwargs,
) -> Axes | Figure | None:
    """The largest lot's share of every cluster, lot-dominated clusters marked.

    One bar per cluster: the share of its cells that its largest lot holds (the lot and the
    number of contributing lots written beside it), a tick at that lot's share of all cells
    (what an evenly mixed cluster would show) and a dashed line at the flag's
    ``max_top_share``. Red bars are flagged ``lot_dominated``.

    Parameters
    ----------
    adata
        {adata}
        Needs ``uns[key]`` from :func:`mscpotency.tl.lot_fractions` (or
        :func:`mscpotency.tl.lot_specificity`).
    **kwargs
        Passed to :meth:`matplotlib.axes.Axes.barh`.
    """
    table = get.lot_specificity(adata, key=key)
    settings = params(adata, _registry.LOT_SPECIFICITY, key)
    fig, ax = _axes(ax, (5.5, 0.35 * len(table) + 1.2))
    y = np.arange(len(table))
    colours = np.where(table["lot_dominated"].to_numpy(dtype=bool), FLAGGED, MIXED)
    ax.barh(y, table["top_lot_share"], color=colours, **kwargs)
    ax.scatter(table["top_lot_expected"], y, marker="|", color="black", s=120, zorder=3)
    ax.axvline(float(settings["max_top_share"]), color="black", linestyle="--", linewidth=0.8)
    for i, (_, row) in enumerate(table.iterrows()):
        ax.text(
            min(float(row["top_lot_share"]) + 0.01, 0.8),
            i,
            f"{row['top_lot']} ({int(row['n_lots_contributing'])} lots)",
            va="center",
            fontsize=8,
        )
    ax.set_yticks(y, [str(c) for c in table.index])
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("Largest lot's share of the cluster's cells")
    ax.set_ylabel("Cluster")
    handles = [
        Patch(color=FLAGGED, label="lot-dominated"),
        Patch(color=MIXED, label="mixed"),
    ]
    _outside_legend(ax, handles=handles)
    return _finish(fig, ax, show, return_fig)


@doc_params
def integrate(
    adata: AnnData,
    *,
    key: str = _registry.INTEGRATE.key,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
    **kwargs,
) -> Axes | Figure | None:
    """Lot mixing and label purity before and after lot-effect correction.

    Grouped bars of the scaled median iLISI (lots mixed among each cell's neighbours: 1 =
    as mixed as possible) and, when :func:`mscpotency.pp.integrate` was given labels, the
    scaled median cLISI (neighbourhoods pure in the labels: 1 = pure) of the uncorrected
    representation and of the corrected one. Correction helped when iLISI rises and cLISI
    stays; a falling cLISI means biology was mixed away with the lots.

    Parameters
    ----------
    adata
        {adata}
        Needs ``uns[key]`` from :func:`mscpotency.pp.integrate`.
    **kwargs
        Passed to :meth:`matplotlib.axes.Axes.bar`.
    """
    metrics = get.integrate(adata, key=key)
    columns = [c for c in ("ilisi_norm", "clisi_norm") if c in metrics]
    names = {
        "ilisi_norm": "lot mixing\n(iLISI, scaled)",
        "clisi_norm": "label purity\n(cLISI, scaled)",
    }
    fig, ax = _axes(ax, (4.5, 3.2))
    width = 0.8 / len(metrics)
    x = np.arange(len(columns))
    for i, (run, row) in enumerate(metrics.iterrows()):
        values = row[columns].to_numpy(dtype=float)
        ax.bar(x + (i - (len(metrics) - 1) / 2) * width, values, width, label=str(run), **kwargs)
    ax.set_xticks(x, [names[c] for c in columns])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("Median over cells")
    _outside_legend(ax)
    return _finish(fig, ax, show, return_fig)
