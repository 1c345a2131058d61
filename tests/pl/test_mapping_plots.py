"""Plots of reference mapping: they draw what was stored, return what was asked, name the tool to run."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.axes import Axes
from matplotlib.figure import Figure

import mscpotency as mp


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def reference(tiny_ref):
    reference = tiny_ref.copy()
    # a cheap stand-in for sc.tl.umap (no numba compile in a unit test): clusters on a circle
    codes = reference.obs["cluster"].cat.codes.to_numpy()
    angle = 2 * np.pi * codes / (codes.max() + 1)
    jitter = np.random.default_rng(0).normal(scale=0.4, size=(reference.n_obs, 2))
    reference.obsm["X_umap"] = 10 * np.column_stack([np.cos(angle), np.sin(angle)]) + jitter
    return reference


@pytest.fixture(scope="module")
def query(tiny_all, reference):
    query = tiny_all[tiny_all.obs["set"] != "BM-train"].copy()
    mp.pp.qc(query)
    mp.tl.map_to_reference(query, reference, method="fast")
    mp.tl.validate_potency(query, "vegf", n_bootstrap=200)
    mp.tl.marker_by_set(query, "LRRC75A", n_permutations=199)
    return query


@pytest.mark.parametrize("color", ["label", "score", "mapping_score"])
def test_map_to_reference(query, reference, color):
    ax = mp.pl.map_to_reference(query, reference, color=color, show=False)
    assert isinstance(ax, Axes)
    # reference cells underneath, then the query cells
    offsets = [c.get_offsets() for c in ax.collections]
    assert len(offsets[0]) == reference.n_obs
    assert sum(len(o) for o in offsets[1:]) == query.n_obs
    if color == "label":
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        assert legend[0] == "reference"
        labels = set(reference.obs["cluster"].cat.categories)
        assert set(legend[1:]) <= labels | {"Unassigned"}
        assert set(query.obs["predicted"].astype(str)) <= set(legend[1:])  # none left out
        # the reference's colours are used for its labels
        colours = dict(
            zip(
                reference.obs["cluster"].cat.categories,
                reference.uns["cluster_colors"],
                strict=True,
            )
        )
        first = query.obs["predicted"].astype(str).iloc[0]
        drawn = {
            t.get_text(): h
            for t, h in zip(
                ax.get_legend().get_texts(), ax.get_legend().legend_handles, strict=True
            )
        }
        np.testing.assert_allclose(
            drawn[first].get_facecolor()[0][:3], matplotlib.colors.to_rgb(colours[first])
        )
    fig = mp.pl.map_to_reference(query, reference, color=color, return_fig=True)
    assert isinstance(fig, Figure)


def test_map_to_reference_needs_a_placement(query, tiny_ref):
    unplaced = mp.tl.map_to_reference(query, tiny_ref, method="fast", calibrate=False, copy=True)
    with pytest.raises(KeyError, match=r"sc.tl.umap.*map again"):
        mp.pl.map_to_reference(unplaced, tiny_ref, show=False)
    with pytest.raises(ValueError, match="color must be"):
        mp.pl.map_to_reference(query, query, color="lot", show=False)


def test_mapping_confidence_and_calibration(query, reference):
    ax = mp.pl.mapping_confidence(query, show=False)
    lots = mp.get.map_to_reference(query).index.tolist()
    assert [t.get_text() for t in ax.get_xticklabels()] == lots
    assert len(ax.texts) == len(lots)
    ax = mp.pl.mapping_calibration(query, show=False)
    assert len(ax.lines) == 3
    assert "ECE" in ax.get_legend().get_texts()[1].get_text()
    assert isinstance(mp.pl.mapping_calibration(query, return_fig=True), Figure)
    uncalibrated = mp.tl.map_to_reference(
        query, reference, method="fast", calibrate=False, copy=True
    )
    with pytest.raises(KeyError, match="no fitted calibration"):
        mp.pl.mapping_calibration(uncalibrated, show=False)


def test_validate_potency_and_marker_by_set(query):
    ax = mp.pl.validate_potency(query, label_lots=True, show=False)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert [entry.split(" ")[0] for entry in legend] == ["BM-test", "AD", "UC"]
    assert "stratified exact" in ax.get_title()
    ax = mp.pl.marker_by_set(query, show=False)
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks[0].startswith("BM-test") and "p =" in ticks[-1]
    assert "LRRC75A" in ax.get_title()
    fig = mp.pl.marker_by_set(query, return_fig=True)
    assert isinstance(fig, Figure)


def test_plots_name_the_tool_to_run_first(tiny_ref):
    bare = tiny_ref.copy()
    with pytest.raises(KeyError, match="tl.map_to_reference"):
        mp.pl.mapping_confidence(bare, show=False)
    with pytest.raises(KeyError, match="tl.validate_potency"):
        mp.pl.validate_potency(bare, show=False)
    with pytest.raises(KeyError, match="tl.marker_by_set"):
        mp.pl.marker_by_set(bare, show=False)
