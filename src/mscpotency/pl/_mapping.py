"""Plots of reference mapping: where query cells land, how sure the mapping is, what it shows.

- :func:`map_to_reference`: query cells on the reference UMAP, coloured by label or score;
- :func:`mapping_confidence`: per lot, how many cells the reference represents well;
- :func:`mapping_calibration`: does a prediction score of 0.8 mean 80% right?
- :func:`validate_potency`: does the potency-like share still track potency in each set?
- :func:`marker_by_set`: does the marker differ between sets (tissues) in potency-like cells?
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .. import get
from .._docs import doc_params
from .._registry import MAPPING, MARKER_BY_SET, VALIDATE_POTENCY
from .._stored import stored
from ._utils import (
    RHO,
    _axes,
    _category_colors,
    _finish,
    _fixed_palette,
    _outside_legend,
    format_pvalue,
    potency_label,
)

__all__ = [
    "map_to_reference",
    "mapping_calibration",
    "mapping_confidence",
    "marker_by_set",
    "validate_potency",
]

#: Colour-bar title of each score ``pl.map_to_reference`` can colour by.
_SCORE_TITLES = {
    "score": "prediction score",
    "mapping_score": "mapping score (low = off-reference)",
}


#: Colour of query cells whose label is none of the reference's (e.g. "Unassigned").
_NOT_A_REFERENCE_LABEL = "#000000"


@doc_params
def map_to_reference(
    adata: AnnData,
    reference: AnnData,
    *,
    key: str = MAPPING.key,
    color: Literal["label", "score", "mapping_score"] = "label",
    size: float | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
    **kwargs,
) -> Axes | Figure | None:
    """Query cells placed on the reference UMAP (reference cells in grey underneath).

    Parameters
    ----------
    adata
        {adata}
        Query mapped with :func:`mscpotency.tl.map_to_reference` onto a reference that had a
        UMAP (``obsm['X_umap']``).
    reference
        The reference it was mapped onto (processed or frozen).
    color
        ``"label"`` (transferred label, in the reference's colours), ``"score"`` (prediction
        score) or ``"mapping_score"`` (low = not represented by the reference).
    size
        Point size (default scales with the number of cells).
    **kwargs
        Passed to ``Axes.scatter`` of the query cells.

    Returns
    -------
    The Axes, the Figure (``return_fig=True``) or ``None`` once shown.
    """
    if color not in ("label", "score", "mapping_score"):
        msg = f"color must be 'label', 'score' or 'mapping_score', got {color!r}"
        raise ValueError(msg)
    mapping = stored(adata, MAPPING, key)
    placement_key = f"{key}_umap"
    if placement_key not in adata.obsm:
        msg = (
            f"adata.obsm has no {placement_key!r}: the reference had no UMAP when the query was mapped. "
            "Run `sc.tl.umap` on the reference (before `tl.freeze_reference`) and map again."
        )
        raise KeyError(msg)
    if "X_umap" not in reference.obsm:
        msg = "the reference has no obsm['X_umap']; pass the reference the query was mapped onto."
        raise KeyError(msg)
    fig, ax = _axes(ax, (6.2, 5.0))
    background = np.asarray(reference.obsm["X_umap"])[:, :2]
    placed = np.asarray(adata.obsm[placement_key])
    size = (
        size
        if size is not None
        else max(1.0, 60000 / max(placed.shape[0] + background.shape[0], 1))
    )
    _cells(ax, background, size, "#dddddd", "reference")
    if color == "label":
        _draw_labels(ax, adata, reference, mapping, key, placed, size, **kwargs)
    else:
        values = adata.obs[f"{key}_{color}"].to_numpy(dtype=float)
        _draw_scores(fig, ax, values, placed, size, _SCORE_TITLES[color], **kwargs)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel("UMAP 1")
    ax.set_ylabel("UMAP 2")
    ax.set_title(
        f"query on the reference ({mapping['params']['method']} backend)", fontsize="medium"
    )
    return _finish(fig, ax, show, return_fig)


def _cells(ax: Axes, xy: np.ndarray, size: float, color: str, label: str, **kwargs) -> None:
    """Cells at ``xy`` (their first two columns) in one colour, without edges, rasterised."""
    ax.scatter(
        xy[:, 0],
        xy[:, 1],
        s=size,
        color=color,
        linewidths=0,
        rasterized=True,
        label=label,
        **kwargs,
    )


def _draw_labels(
    ax: Axes,
    adata: AnnData,
    reference: AnnData,
    mapping: dict,
    key: str,
    placed: np.ndarray,
    size: float,
    **kwargs,
) -> None:
    """Query cells in the colour of their transferred label (the reference's colours).

    Cells with a label the reference does not have ("Unassigned": novel, or an empty
    prediction set) are drawn too, in black, last (on top), so no cell is left out.
    """
    cluster_key = str(mapping["params"]["cluster_key"])
    categories = [str(c) for c in mapping["reference_labels"]]
    colors = _category_colors(reference, cluster_key, categories)
    labels = adata.obs[key].astype(str).to_numpy()
    others = sorted(set(labels) - set(categories))
    for category in [*categories, *others]:
        chosen = labels == category
        if chosen.any():
            color = colors.get(category, _NOT_A_REFERENCE_LABEL)
            _cells(ax, placed[chosen], size, color, category, **kwargs)
    _outside_legend(ax, markerscale=max(1.0, 6 / np.sqrt(size)), title="transferred label")


def _draw_scores(
    fig: Figure,
    ax: Axes,
    values: np.ndarray,
    placed: np.ndarray,
    size: float,
    title: str,
    **kwargs,
) -> None:
    """Query cells coloured by a score in [0, 1], the lowest drawn last (on top)."""
    order = np.argsort(-values)  # low scores on top, where they are seen
    points = ax.scatter(
        placed[order, 0],
        placed[order, 1],
        c=values[order],
        s=size,
        cmap="viridis",
        vmin=0,
        vmax=1,
        linewidths=0,
        rasterized=True,
        **kwargs,
    )
    fig.colorbar(points, ax=ax, label=title)


@doc_params
def mapping_confidence(
    adata: AnnData,
    *,
    key: str = MAPPING.key,
    lot_key: str | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
    **kwargs,
) -> Axes | Figure | None:
    """Per lot: the distribution of mapping scores and the share of low-confidence cells.

    A box per lot of the mapping score with the off-reference threshold drawn; above each
    box the share of cells that are low-confidence (low prediction score or off-reference).
    A lot with many off-reference cells holds something the reference does not know.

    Parameters
    ----------
    adata
        {adata}
        Query mapped with :func:`mscpotency.tl.map_to_reference`.
    lot_key
        {lot_key}
        ``None``: the one the mapping used.
    **kwargs
        Passed to ``Axes.boxplot``.

    Returns
    -------
    The Axes, the Figure (``return_fig=True``) or ``None`` once shown.
    """
    mapping = stored(adata, MAPPING, key)
    per_lot = get.map_to_reference(adata, key=key, kind="per_lot")
    lot_key = lot_key or mapping["params"]["lot_key"]
    scores = adata.obs[f"{key}_mapping_score"].to_numpy(dtype=float)
    lots = (
        adata.obs[lot_key].astype(str).to_numpy()
        if lot_key is not None and lot_key in adata.obs
        else np.full(adata.n_obs, "all")
    )
    names = [str(n) for n in per_lot.index]
    fig, ax = _axes(ax, (max(4.0, 0.45 * len(names) + 1.5), 3.8))
    data = [scores[lots == name] for name in names]
    kwargs = {"showfliers": False, "widths": 0.6, "patch_artist": True, **kwargs}
    boxes = ax.boxplot(data, tick_labels=names, **kwargs)
    for patch in boxes["boxes"]:
        patch.set_facecolor("#a6cee3")
    threshold, label = _off_reference_line(mapping)
    ax.axhline(threshold, color="#d62728", ls="--", lw=1, label=label)
    for i, name in enumerate(names, start=1):
        share = per_lot.loc[name, "share_low_confidence"] if name in per_lot.index else np.nan
        ax.annotate(
            f"{100 * share:.1f}%",
            (i, 1.0),
            xytext=(0, 2),
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontsize="x-small",
        )
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("mapping score")
    ax.set_xlabel("lot  (above: % low-confidence cells)")
    ax.tick_params(axis="x", rotation=90)
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(loc="lower left", frameon=False, fontsize="small")
    return _finish(fig, ax, show, return_fig)


def _off_reference_line(mapping: dict) -> tuple[float, str]:
    """Where off-reference starts on the mapping-score axis, and the line's legend."""
    fixed = mapping["params"].get("min_mapping_score")
    if fixed is not None:
        return float(fixed), f"off-reference below {float(fixed):g}"
    novelty = mapping.get("novelty", {})
    alpha = float(novelty.get("novelty_alpha", np.nan))
    return float(novelty.get("score_at_alpha", np.nan)), f"novel below (p <= {alpha:g})"


@doc_params
def mapping_calibration(
    adata: AnnData,
    *,
    key: str = MAPPING.key,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
    **kwargs,
) -> Axes | Figure | None:
    """Reliability diagram of the prediction score on held-out reference lots, before and after scaling.

    Parameters
    ----------
    adata
        {adata}
        Query mapped with :func:`mscpotency.tl.map_to_reference` (``calibrate=True``).
    **kwargs
        Passed to ``Axes.plot``.

    Returns
    -------
    The Axes, the Figure (``return_fig=True``) or ``None`` once shown.
    """
    calibration = stored(adata, MAPPING, key).get("calibration", {})
    if not calibration.get("fitted"):
        msg = f"adata.uns[{key!r}] has no fitted calibration; map with `tl.map_to_reference(..., calibrate=True)`."
        raise KeyError(msg)
    fig, ax = _axes(ax, (4.2, 4.0))
    ax.plot([0, 1], [0, 1], color="#888888", ls=":", lw=1, label="perfect calibration")
    for which, colour in (("before", "#ff7f0e"), ("after", "#1f77b4")):
        table = get.map_to_reference(adata, key=key, kind=f"reliability_{which}")
        table = table[table["n_cells"] > 0]
        ece = calibration[f"ece_{which}"]
        ax.plot(
            table["mean_score"],
            table["accuracy"],
            marker="o",
            color=colour,
            label=f"{which} scaling (ECE {ece:.3f})",
            **kwargs,
        )
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("prediction score")
    ax.set_ylabel("share correct (held-out reference lots)")
    ax.set_title(f"temperature {calibration['temperature']:.2f}", fontsize="medium")
    ax.legend(loc="upper left", frameon=False, fontsize="small")
    ax.spines[["top", "right"]].set_visible(False)
    return _finish(fig, ax, show, return_fig)


@doc_params
def validate_potency(
    adata: AnnData,
    *,
    key: str = VALIDATE_POTENCY.key,
    label_lots: bool = False,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
    **kwargs,
) -> Axes | Figure | None:
    """Potency against each lot's potency-like share, one colour per set, with the share's interval.

    The legend gives Spearman's rho and its exact p-value per set; the title the pooled,
    stratified exact test across sets.

    Parameters
    ----------
    adata
        {adata}
        Query after :func:`mscpotency.tl.validate_potency`.
    label_lots
        Write each lot's name next to its point.
    **kwargs
        Passed to ``Axes.errorbar``.

    Returns
    -------
    The Axes, the Figure (``return_fig=True``) or ``None`` once shown.
    """
    validation = stored(adata, VALIDATE_POTENCY, key)
    lots = get.validate_potency(adata, key=key, kind="lots")
    per_set = get.validate_potency(adata, key=key, kind="per_set")
    combined = get.validate_potency(adata, key=key, kind="combined")
    assay = str(validation["params"]["potency"])
    fig, ax = _axes(ax, (6.0, 4.2))
    palette = _fixed_palette(len(per_set))
    kwargs = {
        "fmt": "o",
        "capsize": 2,
        "markeredgecolor": "black",
        "markeredgewidth": 0.5,
        **kwargs,
    }
    for colour, (name, row) in zip(palette, per_set.iterrows(), strict=True):
        members = lots[lots["set"].astype(str) == str(name)]
        x = 100 * members["fraction"].to_numpy()
        error = 100 * np.vstack(
            [members["fraction"] - members["ci_low"], members["ci_high"] - members["fraction"]]
        )
        statistic = (
            f"{RHO} = {row['rho']:.2f}, p = {format_pvalue(row['pvalue'])}"
            if np.isfinite(row["rho"])
            else "too few lots"
        )
        ax.errorbar(
            x,
            members[assay],
            xerr=np.clip(error, 0, None),
            color=colour,
            label=f"{name} (n = {int(row['n_lots'])}): {statistic}",
            **kwargs,
        )
        if label_lots:
            for xi, yi, lot in zip(x, members[assay], members.index, strict=True):
                ax.annotate(
                    str(lot),
                    (xi, yi),
                    xytext=(4, 3),
                    textcoords="offset points",
                    fontsize="x-small",
                )
    title = f"{validation['potency_cluster']}-like cells (mapped)"
    if "stratified_exact" in combined.index:
        title += f"; pooled over sets: p = {format_pvalue(combined.loc['stratified_exact', 'pvalue'])} (stratified exact)"
    ax.set_title(title, fontsize="medium")
    ax.set_xlabel(f"{validation['potency_cluster']}-like cells (% of the lot's cells)")
    ax.set_ylabel(potency_label(assay))
    ax.spines[["top", "right"]].set_visible(False)
    _outside_legend(ax, fontsize="small")
    return _finish(fig, ax, show, return_fig)


@doc_params
def marker_by_set(
    adata: AnnData,
    *,
    key: str = MARKER_BY_SET.key,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
    **kwargs,
) -> Axes | Figure | None:
    """Mean expression of the marker in each lot's potency-like cells, grouped by set.

    One point per lot (the replicates of the tests), a bar at each set's mean; the title
    gives the test across sets, the x labels each set's test against the reference set.

    Parameters
    ----------
    adata
        {adata}
        Query after :func:`mscpotency.tl.marker_by_set`.
    **kwargs
        Passed to ``Axes.scatter``.

    Returns
    -------
    The Axes, the Figure (``return_fig=True``) or ``None`` once shown.
    """
    result = stored(adata, MARKER_BY_SET, key)
    lots = get.marker_by_set(adata, key=key, kind="lots")
    sets = get.marker_by_set(adata, key=key, kind="sets")
    tests = get.marker_by_set(adata, key=key, kind="tests")
    reference_set = str(result["params"]["reference_set"])
    names = [str(s) for s in sets.index]
    fig, ax = _axes(ax, (max(3.5, 1.3 * len(names) + 1.5), 4.0))
    palette = _fixed_palette(len(names))
    rng = np.random.default_rng(0)
    kwargs = {"s": 36, "edgecolor": "black", "linewidth": 0.5, "zorder": 3, **kwargs}
    tick_labels = []
    for i, (name, colour) in enumerate(zip(names, palette, strict=True)):
        members = lots[(lots["set"].astype(str) == name) & lots["tested"]]
        ax.scatter(
            i + rng.uniform(-0.12, 0.12, len(members)),
            members["mean_expression"],
            color=colour,
            **kwargs,
        )
        mean = sets.loc[name, "mean_of_lots"]
        if np.isfinite(mean):
            ax.hlines(mean, i - 0.3, i + 0.3, color="black", lw=2, zorder=4)
        comparison = f"{name} vs {reference_set}"
        if comparison in tests.index:
            tick_labels.append(f"{name}\np = {format_pvalue(tests.loc[comparison, 'pvalue'])}")
        else:
            tick_labels.append(f"{name}\n(reference)" if name == reference_set else name)
    ax.set_xticks(range(len(names)), tick_labels)
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.set_ylabel(
        f"{result['gene']} in {result['potency_cluster']}-like cells\n(mean log-normalised, per lot)"
    )
    title = result["gene"]
    if "all sets" in tests.index:
        row = tests.loc["all sets"]
        title += f": {row['test']} p = {format_pvalue(row['pvalue'])}"
    ax.set_title(title, fontsize="medium")
    ax.spines[["top", "right"]].set_visible(False)
    return _finish(fig, ax, show, return_fig)
