"""Smoke tests of the decision plots: each returns Figure/Axes, reads stored results, names the tool."""

from __future__ import annotations

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.axes import Axes
from matplotlib.figure import Figure

import mscpotency as mp

REFERENCE = ["BM01", "BM02", "BM03", "BM04", "BM05", "BM06"]


@pytest.fixture(scope="module")
def decided(tiny_ref):
    adata = tiny_ref.copy()
    mp.tl.association_stability(adata, resolutions=[1.0, 2.0, 4.0], n_subsamples=3)
    mp.tl.influential_lots(adata)
    mp.tl.count_association(adata)
    mp.tl.neighbourhood_association(adata)
    mp.tl.method_agreement(adata)
    mp.tl.fit_potency_model(adata, interval="t")
    mp.tl.predict_potency(adata, potency="vegf")
    mp.tl.comparability(adata, REFERENCE)
    return adata


@pytest.mark.parametrize(
    "plot",
    [
        mp.pl.association_stability,
        mp.pl.influential_lots,
        mp.pl.neighbourhood_association,
        mp.pl.method_agreement,
        mp.pl.fit_potency_model,
        mp.pl.predict_potency,
        mp.pl.comparability,
    ],
)
def test_plots_return_figure_or_axes(decided, plot):
    fig = plot(decided, return_fig=True)
    assert isinstance(fig, Figure)
    plt.close(fig)
    fig, ax = plt.subplots()
    returned = plot(decided, ax=ax, show=False)
    assert returned is ax and isinstance(returned, Axes) and ax.has_data()
    plt.close(fig)


def test_stability_plot_shows_every_resolution(decided):
    ax = mp.pl.association_stability(decided, show=False)
    table = mp.get.association_stability(decided)
    offsets = np.vstack([c.get_offsets() for c in ax.collections if len(c.get_offsets())])
    assert {round(r, 6) for r in table["resolution"]} <= {round(x, 6) for x in offsets[:, 0]}
    assert ax.get_xscale() == "log"
    plt.close(ax.figure)


def test_comparability_chart_colours_the_new_lots(decided):
    ax = mp.pl.comparability(decided, show=False)
    assert ax.get_yscale() == "logit"
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels[:6] == REFERENCE and labels[6:] == ["BM07", "BM08"]
    plt.close(ax.figure)
    ax = mp.pl.comparability(decided, "composition_distance", show=False)
    assert ax.get_yscale() == "log"
    plt.close(ax.figure)
    with pytest.raises(ValueError, match="unknown attribute"):
        mp.pl.comparability(decided, "CLX", show=False)


def test_model_plot_draws_every_reference_lot_against_its_loo_prediction(decided):
    ax = mp.pl.fit_potency_model(decided, show=False)
    lots = mp.get.fit_potency_model(decided)
    names = {t.get_text() for t in ax.texts}
    assert set(lots.index.astype(str)) <= names
    assert "RMSE" in ax.get_title() and "leave-one-lot-out" in ax.get_ylabel()
    plt.close(ax.figure)


def test_prediction_plot_with_a_gene_model_and_a_separate_model(decided, tiny_ref):
    adata = decided.copy()
    mp.tl.fit_potency_model(adata, genes=["LRRC75A"], interval="t", key_added="gene_model")
    mp.tl.predict_potency(
        adata, model_key="gene_model", potency="vegf", key_added="gene_prediction"
    )
    ax = mp.pl.predict_potency(adata, key="gene_prediction", model_key="gene_model", show=False)
    assert "predicted" in ax.get_ylabel()
    plt.close(ax.figure)
    query = ad.AnnData(obs=tiny_ref.obs[["lot", "cluster"]].copy())
    query.uns["lot_fractions"] = tiny_ref.uns["lot_fractions"]
    mp.tl.predict_potency(query, decided)
    ax = mp.pl.predict_potency(query, decided, show=False)
    assert ax.has_data()
    plt.close(ax.figure)


def test_plots_name_the_tool_to_run_first(tiny_ref):
    for plot, tool in [
        (mp.pl.association_stability, "tl.association_stability"),
        (mp.pl.influential_lots, "tl.influential_lots"),
        (mp.pl.fit_potency_model, "tl.fit_potency_model"),
        (mp.pl.predict_potency, "tl.predict_potency"),
        (mp.pl.comparability, "tl.comparability"),
        (mp.pl.neighbourhood_association, "tl.neighbourhood_association"),
        (mp.pl.method_agreement, "tl.method_agreement"),
    ]:
        with pytest.raises(KeyError, match=tool):
            plot(tiny_ref, show=False)


def _overlapping_pairs(texts, renderer) -> list[tuple[str, str]]:
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in texts]
    return [
        (a, b)
        for i, (a, box_a) in enumerate(boxes)
        for b, box_b in boxes[i + 1 :]
        if box_a.overlaps(box_b)
    ]


def test_crowded_lot_labels_do_not_overlap():
    """Six lots predicted within a few pixels of each other: every name stays readable."""
    from mscpotency.pl._utils import _label_points

    fig, ax = plt.subplots(figsize=(4, 3), layout="constrained")
    x = np.array([1.0, 1.01, 1.02, 1.0, 1.01, 3.0])
    y = np.array([5.0, 5.02, 4.98, 5.05, 5.0, 1.0])
    ax.scatter(x, y)
    naive = [
        ax.annotate(f"BM{i:02d}", xy, xytext=(5, 3), textcoords="offset points", fontsize="x-small")
        for i, xy in enumerate(np.column_stack([x, y]))
    ]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    assert _overlapping_pairs(naive, renderer)  # one fixed offset: the names collide
    for text in naive:
        text.remove()
    labels = _label_points(ax, x, y, [f"BM{i:02d}" for i in range(len(x))])
    fig.canvas.draw()
    assert [t.get_text() for t in labels] == [f"BM{i:02d}" for i in range(len(x))]
    assert _overlapping_pairs(labels, renderer) == []
    plt.close(fig)


def test_decision_plots_name_every_lot_without_overlaps(decided):
    for plot in (mp.pl.fit_potency_model, mp.pl.predict_potency):
        fig = plot(decided, return_fig=True)
        fig.canvas.draw()
        ax = fig.axes[0]
        assert _overlapping_pairs(ax.texts, fig.canvas.get_renderer()) == [], plot.__name__
        plt.close(fig)
