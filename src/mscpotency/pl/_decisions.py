"""Plots of the decisions a QC lab defends about new lots.

How well the potency model predicts a lot it has not seen, the predicted potency of new
lots, and their comparability with the reference lots; one plot, one question.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from .. import _registry, get
from .._docs import doc_params
from .._stored import stored
from ._utils import _axes, _finish, _label_points, _outside_legend, potency_label, potency_name

__all__ = ["comparability", "fit_potency_model", "predict_potency"]

_PASS, _FAIL, _REFERENCE = "#1a9850", "#d73027", "#8c8c8c"


def _training_points(ax: Axes, x, y, label: str) -> None:
    """The training lots as grey points with a black edge."""
    ax.scatter(
        x, y, color=_REFERENCE, edgecolor="black", linewidth=0.5, s=35, zorder=3, label=label
    )


def _training_by_fraction(
    ax: Axes, training: pd.DataFrame, table: pd.DataFrame, fitted: dict, feature: str, potency: str
) -> np.ndarray:
    """Training lots against the cluster's fraction, with the fitted line; the query's x."""
    x_train = training[feature].to_numpy(dtype=float)
    _training_points(ax, x_train, training[potency], "training lots")
    coef = np.asarray(fitted["model"]["coef"], dtype=float)
    grid = np.linspace(
        min(x_train.min(), table[feature].min()), max(x_train.max(), table[feature].max()), 50
    )
    ax.plot(grid, coef[0] + coef[1] * grid, color="#555555", lw=1, ls="--", zorder=2, label="model")
    ax.axvspan(x_train.min(), x_train.max(), color="#eeeeee", zorder=0, label="training range")
    ax.set_xlabel(f"{feature.split(':', 1)[-1]} (share of the lot's cells)")
    ax.set_ylabel(potency_label(potency))
    return table[feature].to_numpy(dtype=float)


def _training_by_loo_prediction(
    ax: Axes, training: pd.DataFrame, table: pd.DataFrame, potency: str
) -> np.ndarray:
    """Training lots' leave-one-out prediction against their measured potency; the query's x."""
    _training_points(
        ax, training[potency], training["loo_prediction"], "training lots (leave-one-out)"
    )
    measured = "observed" in table
    low = min(training[potency].min(), training["loo_prediction"].min())
    high = max(training[potency].max(), training["loo_prediction"].max())
    ax.plot([low, high], [low, high], color="#555555", lw=1, ls="--", zorder=2)
    ax.set_xlabel(f"measured {potency_label(potency)}" if measured else "query lot")
    ax.set_ylabel(f"predicted {potency_label(potency)}")
    return table["observed"].to_numpy(dtype=float) if measured else np.arange(len(table))


def _intervals(
    ax: Axes, x: np.ndarray, prediction: np.ndarray, low, high, colors, *, zorder: int = 4
) -> None:
    """One point per lot at its prediction, with its interval as error bar."""
    below = prediction - np.asarray(low, dtype=float)
    above = np.asarray(high, dtype=float) - prediction
    for xi, yi, lo, hi, color in zip(x, prediction, below, above, colors, strict=True):
        ax.errorbar(
            xi,
            yi,
            yerr=[[lo], [hi]],
            fmt="o",
            color=color,
            ecolor=color,
            capsize=3,
            ms=6,
            zorder=zorder,
        )


@doc_params
def predict_potency(
    adata: AnnData,
    model: AnnData | None = None,
    *,
    key: str = _registry.POTENCY_PREDICTION.key,
    model_key: str = _registry.POTENCY_MODEL.key,
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
        {adata}
        Query lots with ``uns[key]`` from :func:`mscpotency.tl.predict_potency`.
    model
        AnnData holding the model (default: ``adata``).
    model_key
        Key of the model in ``model.uns`` (from :func:`mscpotency.tl.fit_potency_model`).

    Returns
    -------
    The Axes (``show=False``), the Figure (``return_fig=True``) or ``None``.
    """
    result = stored(adata, _registry.POTENCY_PREDICTION, key)
    source = adata if model is None else model
    fitted = stored(source, _registry.POTENCY_MODEL, model_key)
    training = get.fit_potency_model(source, key=model_key, kind="lots")
    table = get.predict_potency(adata, key=key)
    features = [str(f) for f in fitted["model"]["features"]]
    potency = str(fitted["params"]["potency"])
    fig, ax = _axes(ax, (5.6, 4.0))
    by_fraction = len(features) == 1
    if by_fraction:
        x_query = _training_by_fraction(ax, training, table, fitted, features[0], potency)
    else:
        x_query = _training_by_loo_prediction(ax, training, table, potency)
    colors = np.where(table["outside_range"].to_numpy(dtype=bool), _FAIL, "#4575b4")
    _intervals(
        ax,
        x_query,
        table["prediction"].to_numpy(dtype=float),
        table["low"],
        table["high"],
        colors,
    )
    if by_fraction and "observed" in table:
        ax.scatter(
            x_query, table["observed"], marker="x", color="black", s=40, zorder=5, label="measured"
        )
    handles, labels = ax.get_legend_handles_labels()
    handles += [
        Line2D([], [], marker="o", color="#4575b4", ls="-"),
        Line2D([], [], marker="o", color=_FAIL, ls="-"),
    ]
    level, interval = float(result["params"]["level"]), str(result["params"]["interval"])
    labels += [f"query lot, {level:.0%} {interval} interval", "query lot outside training range"]
    ax.legend(handles, labels, fontsize="x-small", frameon=False, loc="upper left")
    ax.set_title("Predicted potency of new lots", fontsize="medium")
    ax.spines[["top", "right"]].set_visible(False)
    _label_points(ax, x_query, table["prediction"].to_numpy(dtype=float), table.index.astype(str))
    return _finish(fig, ax, show, return_fig)


@doc_params
def fit_potency_model(
    adata: AnnData,
    *,
    key: str = _registry.POTENCY_MODEL.key,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> Axes | Figure | None:
    """Show how well the model predicts a reference lot it was not fitted on.

    One point per reference lot: its measured potency against its leave-one-lot-out
    prediction (the model fitted without it), with that lot's leave-one-out interval
    where the lots left suffice for one (green when it covers the measured value, red
    when not). Points on the dashed diagonal are predicted exactly; the title gives the
    cross-validated error of :func:`mscpotency.tl.fit_potency_model`.

    Parameters
    ----------
    adata
        {adata}
        Reference lots with ``uns[key]`` from :func:`mscpotency.tl.fit_potency_model`.

    Returns
    -------
    The Axes (``show=False``), the Figure (``return_fig=True``) or ``None``.
    """
    result = stored(adata, _registry.POTENCY_MODEL, key)
    lots = get.fit_potency_model(adata, key=key, kind="lots")
    cv = get.fit_potency_model(adata, key=key, kind="cv").iloc[0]
    potency = str(result["params"]["potency"])
    measured = lots[potency].to_numpy(dtype=float)
    prediction = lots["loo_prediction"].to_numpy(dtype=float)
    fig, ax = _axes(ax, (4.8, 4.2))
    has_interval = np.isfinite(lots["loo_low"].to_numpy(dtype=float)).all()
    covered = lots["loo_covered"].to_numpy(dtype=bool)
    colors = np.where(covered, _PASS, _FAIL) if has_interval else np.full(len(lots), _REFERENCE)
    low = lots["loo_low"] if has_interval else prediction
    high = lots["loo_high"] if has_interval else prediction
    _intervals(ax, measured, prediction, low, high, colors)
    finite = np.concatenate([measured, prediction, np.asarray(low), np.asarray(high)])
    span = [float(np.nanmin(finite)), float(np.nanmax(finite))]
    ax.plot(span, span, color="#555555", lw=1, ls="--", zorder=2)
    ax.set_xlabel(f"measured {potency_label(potency)}")
    ax.set_ylabel(f"leave-one-lot-out prediction of {potency_name(potency)}")
    ax.set_title(
        f"{len(lots)} reference lots: RMSE = {cv['rmse']:.3g}, Q\N{SUPERSCRIPT TWO} = "
        f"{cv['q2']:.2f}",
        fontsize="medium",
    )
    if has_interval:
        level = float(result["params"]["level"])
        ax.legend(
            [Line2D([], [], marker="o", color=_PASS), Line2D([], [], marker="o", color=_FAIL)],
            [f"{level:.0%} interval covers the lot", "interval misses the lot"],
            fontsize="x-small",
            frameon=False,
            loc="upper left",
        )
    ax.spines[["top", "right"]].set_visible(False)
    _label_points(ax, measured, prediction, lots.index.astype(str))  # once the layout is set
    return _finish(fig, ax, show, return_fig)


@doc_params
def comparability(
    adata: AnnData,
    attribute: str | None = None,
    *,
    key: str = _registry.COMPARABILITY.key,
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
        {adata}
        With ``uns[key]`` from :func:`mscpotency.tl.comparability`.
    attribute
        A cluster name or ``"composition_distance"``; default: the potency cluster.

    Returns
    -------
    The Axes (``show=False``), the Figure (``return_fig=True``) or ``None``.
    """
    result = stored(adata, _registry.COMPARABILITY, key)
    attribute = str(result["cluster"]) if attribute is None else str(attribute)
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
    is_distance = scale == "log"  # the whole composition's distance; clusters are fractions
    if scale == "logit":
        centre = 1 / (1 + np.exp(-float(row["mean"])))
    elif scale == "log":
        centre = float(np.exp(row["mean"]))
    else:
        centre = float(row["mean"])
    ax.axhline(centre, color="black", lw=1, label="reference centre")
    if not is_distance:
        ax.axhline(low, color="#4575b4", ls="--", lw=1, label="tolerance limits")
    ax.axhline(
        high,
        color="#4575b4",
        ls="--",
        lw=1,
        label="upper tolerance limit" if is_distance else None,
    )
    if is_new.any() and (~is_new).any():
        ax.axvline(positions[~is_new].max() + 0.5, color="#bbbbbb", lw=1, ls=":")
    ax.set_xticks(positions, values.index.astype(str), rotation=90, fontsize="x-small")
    if is_distance:
        ax.set_ylabel("composition distance from reference (Aitchison)")
        ax.set_yscale("log")
    else:
        ax.set_ylabel(f"{attribute} (share of the lot's cells)")
        if scale == "logit":
            ax.set_yscale("logit")
    coverage = float(result["params"]["coverage"])
    level = float(result["params"]["level"])
    ax.set_title(
        f"{attribute}: {coverage:.0%}/{level:.0%} tolerance limits from {int(row['n_reference'])} reference lots",
        fontsize="medium",
    )
    _outside_legend(ax, fontsize="x-small")
    ax.spines[["top", "right"]].set_visible(False)
    return _finish(fig, ax, show, return_fig)
