"""Which lots differ in composition? Cluster shares per lot and each lot's distance from the pool."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from .. import _keys, _registry, get
from .._docs import doc_params
from .._stored import stored
from ._utils import (
    _axes,
    _category_colors,
    _finish,
    _outside_legend,
    _potency_cluster_or_none,
    format_value,
    potency_label,
    potency_name,
)

__all__ = ["composition_deviation", "lot_fractions"]


#: Neutral colours, so that no bar reads as a cluster.
MARKED, UNMARKED = "#404040", "#d0d0d0"

_METRIC_LABELS = {
    "jsd": "Distance from pooled\n(Jensen-Shannon, bits)",
    "tvd": "Distance from pooled\n(total variation)",
    "aitchison": "Distance from pooled\n(Aitchison)",
}


def _potency_info(
    adata: AnnData, association_key: str, *, required: bool
) -> tuple[pd.Series, str, str] | None:
    """Potency per lot, its name and the potency cluster; ``None`` if absent and not required."""
    try:
        association = stored(adata, _registry.POTENCY_ASSOCIATION, association_key)
    except KeyError:
        if required:
            raise
        return None
    name = str(association["params"]["potency"])
    lots = get.potency_association(adata, key=association_key, kind="lots")
    return lots[name], name, _potency_cluster_or_none(adata, association_key)


def _lot_order(
    fractions: pd.DataFrame,
    order: str | Sequence[str] | None,
    info: tuple[pd.Series, str, str] | None,
) -> tuple[list[str], str]:
    """Lots in plotting order and a few words saying how they were ordered."""
    lots = [str(lot) for lot in fractions.index]
    if order is None:
        return lots, ""
    if isinstance(order, str):
        if order not in ("potency", "potency_cluster"):
            msg = (
                f"order must be 'potency', 'potency_cluster', a list of lots or None, got {order!r}"
            )
            raise ValueError(msg)
        if info is None:  # pragma: no cover - _potency_info(required=True) raises first
            msg = f"order={order!r} needs `tl.potency_association` to have been run"
            raise KeyError(msg)
        potency, name, cluster = info
        if order == "potency":
            values = potency.reindex(lots)
            return list(
                values.sort_values(kind="stable").index
            ), f"lots ordered by {potency_name(name)}"
        if not cluster:
            msg = "no cluster's share rises with potency, so order='potency_cluster' is undefined; use order='potency'"
            raise ValueError(msg)
        values = pd.Series(fractions[cluster].to_numpy(), index=lots)
        return list(
            values.sort_values(kind="stable").index
        ), f"lots ordered by the share of {cluster}"
    wanted = [str(lot) for lot in order]
    if sorted(wanted) != sorted(lots):
        missing = sorted(set(lots) - set(wanted))
        unknown = sorted(set(wanted) - set(lots))
        repeated = sorted({lot for lot in wanted if wanted.count(lot) > 1})
        msg = f"order must name every lot once; missing {missing}, unknown {unknown}, repeated {repeated}"
        raise ValueError(msg)
    return wanted, ""


@doc_params
def lot_fractions(
    adata: AnnData,
    *,
    key: str = _registry.LOT_FRACTIONS.key,
    order: str | Sequence[str] | None = None,
    association_key: str = _registry.POTENCY_ASSOCIATION.key,
    annotate_potency: bool | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
    **kwargs,
) -> Axes | Figure | None:
    """Stacked bars of the cluster shares of every lot.

    The potency cluster (from :func:`mscpotency.tl.potency_association`, when run) sits at
    the bottom of each stack so its share reads off the axis, and each lot's potency is
    written above its bar.

    Parameters
    ----------
    adata
        {adata}
        Needs ``uns[key]`` from :func:`mscpotency.tl.lot_fractions`.
    order
        ``None`` (stored order), ``"potency"`` (increasing lot potency),
        ``"potency_cluster"`` (increasing share of the potency cluster) or a list of every lot.
        The first two need :func:`mscpotency.tl.potency_association`.
    association_key
        {association_key}
        It gives the potency cluster and the potency values.
    annotate_potency
        Write each lot's potency above its bar; ``None``: when the association is stored.
    **kwargs
        Passed to :meth:`matplotlib.axes.Axes.bar` (e.g. ``width``, ``edgecolor``).

    Returns
    -------
    The Figure when ``return_fig=True``, the Axes when not shown, else ``None``.
    """
    fractions_params = stored(adata, _registry.LOT_FRACTIONS, key)["params"]
    fractions = get.lot_fractions(adata, key=key)
    fractions.index = fractions.index.astype(str)
    fractions.columns = fractions.columns.astype(str)
    required = (isinstance(order, str) and order in ("potency", "potency_cluster")) or bool(
        annotate_potency
    )
    info = _matching_potency_info(adata, association_key, key, fractions, required=required)
    lots, how = _lot_order(fractions, order, info)
    fractions = fractions.loc[lots]
    cluster_key = str(fractions_params.get("cluster_key", _keys.CLUSTER))
    potency_cluster = info[2] if info is not None else ""
    fig, ax = _axes(ax, (max(5.5, 0.7 * len(lots) + 3.0), 4.2))
    colors = _category_colors(adata, cluster_key, list(fractions.columns))
    _stacked_bars(ax, fractions, colors, potency_cluster, kwargs)
    handles, labels = ax.get_legend_handles_labels()
    _outside_legend(ax, handles=handles[::-1], labels=labels[::-1], title=cluster_key)
    title = "Cluster composition per lot"
    annotate = info is not None if annotate_potency is None else annotate_potency
    if annotate and info is not None:
        potency, name, _ = info
        _write_potency_above_bars(ax, potency.reindex(lots).to_numpy(dtype=float))
        title += f"\nabove bars: {potency_label(name)}"
    if how:
        title += f"; {how}" if "\n" in title else f"\n{how}"
    ax.set_title(title)
    return _finish(fig, ax, show, return_fig)


def _matching_potency_info(
    adata: AnnData, association_key: str, key: str, fractions: pd.DataFrame, *, required: bool
) -> tuple[pd.Series, str, str] | None:
    """The potency info when the association covers the plotted lots; else ``None`` (or an error)."""
    info = _potency_info(adata, association_key, required=required)
    if info is None or set(info[0].index.astype(str)) == set(fractions.index):
        return info
    if required:
        msg = (
            f"adata.uns[{association_key!r}] was computed on lots {sorted(info[0].index.astype(str))}, "
            f"but adata.uns[{key!r}] holds lots {sorted(fractions.index)}; run `tl.potency_association` "
            "on these fractions or leave order/annotate_potency unset."
        )
        raise ValueError(msg)
    return None  # an association of other lots says nothing about these bars


def _stacked_bars(
    ax: Axes,
    fractions: pd.DataFrame,
    colors: dict[str, str],
    potency_cluster: str,
    kwargs: dict,
) -> None:
    """One stack per lot (rows of ``fractions``), the potency cluster at the bottom."""
    lots = list(fractions.index)
    stack = list(fractions.columns)
    if potency_cluster in stack:
        stack.remove(potency_cluster)
        stack.insert(0, potency_cluster)
    kwargs = {"width": 0.8, "edgecolor": "white", "linewidth": 0.5, **kwargs}
    x = np.arange(len(lots))
    bottom = np.zeros(len(lots))
    for cluster in stack:
        label = f"{cluster} (potency)" if cluster == potency_cluster else cluster
        values = fractions[cluster].to_numpy(dtype=float)
        ax.bar(x, values, bottom=bottom, color=colors[cluster], label=label, **kwargs)
        bottom += values
    _lot_ticks(ax, lots)
    ax.set_ylabel("Fraction of cells")
    ax.spines[["top", "right"]].set_visible(False)


def _lot_ticks(ax: Axes, lots: list[str]) -> None:
    """One tick per lot (slanted when there are many) and the lot axis label."""
    x = np.arange(len(lots))
    ax.set_xticks(
        x, lots, rotation=45 if len(lots) > 8 else 0, ha="right" if len(lots) > 8 else "center"
    )
    ax.set_xlim(-0.6, len(lots) - 0.4)
    ax.set_xlabel("Lot")


def _write_potency_above_bars(ax: Axes, values: np.ndarray) -> None:
    """Each lot's potency written just above its (full-height) bar."""
    ax.set_ylim(0, 1.09)
    ax.set_yticks(np.linspace(0, 1, 6))
    for xi, value in enumerate(values):
        ax.text(xi, 1.02, format_value(value), ha="center", va="bottom", fontsize="small")


@doc_params
def composition_deviation(
    adata: AnnData,
    *,
    key: str = _registry.COMPOSITION_DEVIATION.key,
    alpha: float = 0.05,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
    **kwargs,
) -> Axes | Figure | None:
    """One bar per lot: how far its composition lies from the pooled population.

    Lots whose ``sampling_p`` (chance that counting noise alone puts a lot this far away)
    is below ``alpha`` are filled dark and starred; above each bar stand the cluster that
    deviates most and the log2 ratio of its share in the lot over its pooled share.

    Parameters
    ----------
    adata
        {adata}
        Needs ``uns[key]`` from :func:`mscpotency.tl.composition_deviation`.
    alpha
        {alpha}
        Here the ``sampling_p`` below which a lot is marked.
    **kwargs
        Passed to :meth:`matplotlib.axes.Axes.bar`.

    Returns
    -------
    The Figure when ``return_fig=True``, the Axes when not shown, else ``None``.
    """
    if not 0 < alpha < 1:
        msg = f"alpha must lie between 0 and 1, got {alpha!r}"
        raise ValueError(msg)
    deviation = stored(adata, _registry.COMPOSITION_DEVIATION, key)
    metric = str(deviation["params"].get("metric", ""))
    per_lot = get.composition_deviation(adata, key=key)
    lots = [str(lot) for lot in per_lot.index]
    marked = per_lot["sampling_p"].to_numpy(dtype=float) < alpha

    fig, ax = _axes(ax, (max(5.5, 0.7 * len(lots) + 3.0), 3.8))
    kwargs.setdefault("width", 0.7)
    x = np.arange(len(lots))
    distance = per_lot["distance"].to_numpy(dtype=float)
    face = np.where(marked, MARKED, UNMARKED)
    ax.bar(x, distance, color=face, edgecolor="#404040", linewidth=0.6, **kwargs)
    top = np.nanmax(distance) if len(distance) and np.isfinite(distance).any() else 1.0
    for xi, d, is_marked, cluster, ratio in zip(
        x,
        distance,
        marked,
        per_lot["most_deviating_cluster"].astype(str),
        per_lot["log2_ratio_of_most_deviating"].to_numpy(dtype=float),
        strict=True,
    ):
        ax.text(
            xi,
            d + 0.01 * top,
            f"{'* ' if is_marked else ''}{cluster}\n{ratio:+.1f}",
            ha="center",
            va="bottom",
            fontsize="x-small",
            rotation=90 if len(lots) > 12 else 0,
        )
    ax.set_ylim(0, top * 1.22)
    _lot_ticks(ax, lots)
    ax.set_ylabel(_METRIC_LABELS.get(metric, f"{metric} distance from pooled"))
    ax.spines[["top", "right"]].set_visible(False)
    handles = [
        Patch(
            facecolor=MARKED,
            edgecolor="#404040",
            label=f"sampling p < {alpha:g} ({int(marked.sum())} lots)",
        ),
        Patch(
            facecolor=UNMARKED,
            edgecolor="#404040",
            label=f"sampling p ≥ {alpha:g} ({int((~marked).sum())} lots)",
        ),
    ]
    _outside_legend(ax, handles=handles)
    ax.set_title(
        "Lot composition vs the pooled population\n"
        "above bars: most deviating cluster, log2(lot / pooled)",
        fontsize="medium",
    )
    return _finish(fig, ax, show, return_fig)
