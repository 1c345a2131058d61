"""Shared plumbing of the plots: figures, colours, labels, show/return.

Plots read stored results with ``mscpotency._stored.stored`` (its ``KeyError`` names the
tool to run first) and their tables through ``mscpotency.get``.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib import colors as mcolors
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .. import _keys, _registry
from .._stored import params, potency_cluster, stored

#: The Greek letter of Spearman's rank correlation.
RHO = "\N{GREEK SMALL LETTER RHO}"

#: Display name and unit of known lot-level potency assays; any other name is shown as is.
POTENCY_ASSAYS = {
    "vegf": ("VEGF", "pg/mL"),
}


def _potency_cluster_or_none(adata: AnnData, association_key: str) -> str:
    """The potency cluster the stored association names, or ``""`` when it names none.

    The association itself must be stored (else the ``KeyError`` names the tool to run).
    """
    stored(adata, _registry.POTENCY_ASSOCIATION, association_key)
    try:
        return potency_cluster(adata, association_key=association_key, if_not_significant="ignore")
    except KeyError:
        return ""


def _axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    """Return the figure and axes to draw on: a new figure only when ``ax`` is ``None``."""
    if ax is None:
        fig, ax = plt.subplots(figsize=figsize, layout="constrained")
        return fig, ax
    return ax.get_figure(), ax


def _finish(fig: Figure, ax, show: bool | None, return_fig: bool):
    """Return what the caller asked for: the Figure, the Axes, or ``None`` once shown.

    ``show=None`` follows ``scanpy.settings.autoshow``. ``return_fig=True`` wins over ``show``.
    """
    if return_fig:
        return fig
    if show is None:
        import scanpy as sc

        show = sc.settings.autoshow
    if show:
        plt.show()
        return None
    return ax


def _fixed_palette(n: int) -> list[str]:
    """Return scanpy's default categorical palettes (20, 28 or 102 colours), independent of rcParams."""
    from scanpy.pl import palettes

    for palette in (palettes.default_20, palettes.default_28, palettes.default_102):
        if n <= len(palette):
            return [mcolors.to_hex(c) for c in palette[:n]]
    return ["#808080"] * n


def _category_colors(adata: AnnData, key: str, categories: Sequence[str]) -> dict[str, str]:
    """Colour of each category of ``obs[key]``, the same in every plot (and in ``sc.pl.umap``).

    Uses ``adata.uns[f"{key}_colors"]`` when it has one colour per category of ``obs[key]``;
    otherwise builds a fixed palette and stores it there, as scanpy does.
    """
    categories = [str(c) for c in categories]
    colors_key = f"{key}_colors"
    obs_categories: list[str] | None = None
    if key in adata.obs.columns:
        column = adata.obs[key]
        if isinstance(column.dtype, pd.CategoricalDtype):
            obs_categories = [str(c) for c in column.cat.categories]
    if obs_categories is not None and set(categories) <= set(obs_categories):
        stored = adata.uns.get(colors_key)
        if (
            stored is None
            or len(stored) != len(obs_categories)
            or not all(map(mcolors.is_color_like, stored))
        ):
            stored = _fixed_palette(len(obs_categories))
            adata.uns[colors_key] = list(stored)
        mapping = {c: mcolors.to_hex(col) for c, col in zip(obs_categories, stored, strict=True)}
        return {c: mapping[c] for c in categories}
    # labels not in obs (e.g. only the lot table survives): a fixed palette by position
    return dict(zip(categories, _fixed_palette(len(categories)), strict=True))


def _cluster_key(adata: AnnData, fractions_key: str = _registry.LOT_FRACTIONS.key) -> str:
    """Return the obs column the lot fractions were counted from (default ``'cluster'``)."""
    try:
        return str(
            params(adata, _registry.LOT_FRACTIONS, fractions_key).get("cluster_key", _keys.CLUSTER)
        )
    except KeyError:
        return _keys.CLUSTER


def potency_name(name: str) -> str:
    """Display name of a potency assay (``'vegf'`` -> ``'VEGF'``)."""
    return POTENCY_ASSAYS.get(str(name).lower(), (str(name), ""))[0]


def potency_label(name: str) -> str:
    """Axis label of a potency assay, with its unit when known (``'vegf'`` -> ``'VEGF (pg/mL)'``)."""
    display, unit = POTENCY_ASSAYS.get(str(name).lower(), (str(name), ""))
    return f"{display} ({unit})" if unit else display


def format_value(value: float) -> str:
    """Format a measurement for a label: whole numbers from 100 up, else three significant digits."""
    if not np.isfinite(value):
        return "n/a"
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"


def format_pvalue(p: float) -> str:
    """Two significant digits: ``0.0022``, ``5e-05``; ``nan`` when not computed."""
    return "nan" if not np.isfinite(p) else f"{p:.2g}"


def format_association(row: pd.Series) -> str:
    """Format one row of ``get.potency_association`` as ``'rho = 0.93, p = 0.0022 (exact)'`` (Greek rho)."""
    return f"{RHO} = {row['rho']:.2f}, p = {format_pvalue(row['pvalue'])} ({row['pvalue_method']})"


#: Where a point's label may go (offset in points, alignment), in order of preference.
_LABEL_PLACES = [
    (dx * reach, dy * reach, ha, va)
    for reach in (1, 2.5)
    for dx, dy, ha, va in (
        (4, 2, "left", "bottom"),
        (4, -2, "left", "top"),
        (-4, 2, "right", "bottom"),
        (-4, -2, "right", "top"),
        (0, 5, "center", "bottom"),
        (0, -5, "center", "top"),
    )
]


def _label_points(ax: Axes, x, y, names: Sequence[str], *, fontsize: str = "x-small") -> list:
    """Name each point, each label where it overlaps no label already placed.

    Labels are placed in display units after a first draw has settled the layout, in the
    order given, each at the first place of :data:`_LABEL_PLACES` that overlaps no earlier
    label (the least overlapping place when none is free). They take no part in the layout,
    so later draws keep them where they were placed. Returns the annotations.
    """
    fig = ax.get_figure()
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    placed: list = []
    for xi, yi, name in zip(x, y, names, strict=True):
        if not (np.isfinite(xi) and np.isfinite(yi)):
            continue
        best = None
        for dx, dy, ha, va in _LABEL_PLACES:
            label = ax.annotate(str(name), (xi, yi), xytext=(dx, dy), textcoords="offset points",
                                fontsize=fontsize, ha=ha, va=va)  # fmt: skip
            label.set_in_layout(False)
            box = label.get_window_extent(renderer)
            overlap = sum(_overlap_area(box, other.get_window_extent(renderer)) for other in placed)
            if best is None or overlap < best[0]:
                if best is not None:
                    best[1].remove()
                best = (overlap, label)
            else:
                label.remove()
            if overlap == 0:
                break
        placed.append(best[1])
    return placed


def _overlap_area(a, b) -> float:
    """The area two display boxes share (0 when they do not overlap)."""
    width = min(a.x1, b.x1) - max(a.x0, b.x0)
    height = min(a.y1, b.y1) - max(a.y0, b.y0)
    return max(width, 0.0) * max(height, 0.0)


def _outside_legend(ax: Axes, **kwargs) -> None:
    """Draw the legend to the right of the axes, outside the data."""
    kwargs.setdefault("frameon", False)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, **kwargs)
