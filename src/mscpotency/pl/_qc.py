"""Did QC treat the lots alike? Cells kept and removed per lot, and which filter removed them."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib import colors as mcolors
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .. import _keys, _registry
from .._docs import doc_params
from .._stored import stored, stored_table
from ._utils import _axes, _finish, _outside_legend

__all__ = ["qc"]


#: Neutral colours (no cluster colour), kept light and removed dark.
KEPT, REMOVED = "#c6cdd6", "#3b3b3b"
_NOT_REASONS = ("cells_before", "cells_removed", "cells_after")
_REASON_LABELS = {
    "cells_below_min_genes": "too few genes",
    "cells_below_min_counts": "too few counts",
    "cells_above_max_pct_mito": "too much mitochondrial RNA",
    "cells_below_mad_counts": "low counts for the lot (MAD)",
    "cells_below_mad_log_counts": "low counts for the lot (MADs)",
    "cells_below_mad_log_genes": "few genes for the lot (MADs)",
    "cells_above_mad_pct_mito": "much mitochondrial RNA for the lot (MADs)",
    "cells_in_small_lot": "lot below the minimum size",
}


@doc_params
def qc(
    adata: AnnData,
    *,
    key: str = _registry.QC.key,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
    **kwargs,
) -> Axes | Figure | None:
    """Stacked bars per lot: cells kept and cells removed, with the cells failing each filter.

    The main bars stack kept and removed cells (their sum is the lot's cells before QC),
    with the share removed written above. A cell can fail several filters, so the per-filter
    counts (the small grouped bars above) can add up to more than the cells removed.

    Parameters
    ----------
    adata
        Cells with ``uns[key]`` from :func:`mscpotency.pp.qc`.
    ax
        {ax}
        The per-filter bars go in an inset above it.
    **kwargs
        Passed to :meth:`matplotlib.axes.Axes.bar` of the kept/removed bars.

    Returns
    -------
    The Figure when ``return_fig=True``, the Axes of the kept/removed bars when not shown,
    else ``None``.
    """
    lot_key = stored(adata, _registry.QC, key)["params"].get("lot_key", _keys.LOT)
    report = stored_table(adata, _registry.QC, "per_lot", key)
    lots = [str(lot) for lot in report.index]
    fig, ax = _axes(ax, (max(5.5, 0.7 * len(lots) + 3.5), 4.6))
    _kept_removed_bars(ax, report, kwargs)
    ax.set_xlabel(str(lot_key).capitalize())
    reasons = [c for c in report.columns if c not in _NOT_REASONS]
    if reasons:
        _reason_bars(ax, report, reasons).set_title("QC per lot", fontsize="medium")
    else:
        ax.set_title("QC per lot", fontsize="medium")
    return _finish(fig, ax, show, return_fig)


def _kept_removed_bars(ax: Axes, report: pd.DataFrame, kwargs: dict) -> None:
    """One stacked bar per lot (kept below, removed above) with the share removed on top."""
    lots = [str(lot) for lot in report.index]
    kept = report["cells_after"].to_numpy(dtype=float)
    removed = report["cells_removed"].to_numpy(dtype=float)
    before = report["cells_before"].to_numpy(dtype=float)
    x = np.arange(len(lots))
    kwargs = {"width": 0.75, "edgecolor": "white", "linewidth": 0.5, **kwargs}
    ax.bar(x, kept, color=KEPT, label="kept", **kwargs)
    ax.bar(x, removed, bottom=kept, color=REMOVED, label="removed", **kwargs)
    for xi, total, n_removed in zip(x, before, removed, strict=True):
        share = n_removed / total if total else 0.0
        ax.text(xi, total, f"{share:.1%}", ha="center", va="bottom", fontsize="x-small")
    ax.set_ylim(0, before.max() * 1.1 if len(before) else 1)
    ax.set_xticks(
        x, lots, rotation=45 if len(lots) > 8 else 0, ha="right" if len(lots) > 8 else "center"
    )
    ax.set_xlim(-0.6, len(lots) - 0.4)
    ax.set_ylabel("Cells")
    ax.spines[["top", "right"]].set_visible(False)
    _outside_legend(ax, title="cells (% removed above)")


def _reason_bars(ax: Axes, report: pd.DataFrame, reasons: list[str]) -> Axes:
    """Grouped bars of the cells failing each filter, in an inset above ``ax``; returns it."""
    x = np.arange(len(report))
    inset = ax.inset_axes((0.0, 1.04, 1.0, 0.3), sharex=ax)
    width = 0.8 / len(reasons)
    palette = [mcolors.to_hex(c) for c in plt.get_cmap("Set2").colors]
    for i, reason in enumerate(reasons):
        inset.bar(
            x - 0.4 + width * (i + 0.5),
            report[reason].to_numpy(dtype=float),
            width=width,
            color=palette[i % len(palette)],
            label=_REASON_LABELS.get(reason, reason),
        )
    inset.set_ylabel("cells failing", fontsize="small")
    inset.tick_params(axis="x", labelbottom=False)
    inset.spines[["top", "right"]].set_visible(False)
    _outside_legend(
        inset, title="filter (a cell can fail several)", fontsize="small", title_fontsize="small"
    )
    return inset
