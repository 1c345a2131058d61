"""Plots of the reference analysis: what they draw, what they return, what they demand first."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import scanpy as sc
from matplotlib import colors as mcolors
from matplotlib.axes import Axes
from matplotlib.container import BarContainer
from matplotlib.figure import Figure

import mscpotency as mp
from mscpotency.pl._composition import MARKED, UNMARKED
from mscpotency.pl._qc import KEPT, REMOVED

RHO = "\N{GREEK SMALL LETTER RHO}"


@pytest.fixture(scope="session")
def ref():
    """The tiny preset's 8 BM-train lots, run through the reference pipeline."""
    adata = mp.datasets.tiny()
    ref = adata[adata.obs["set"] == "BM-train"].copy()
    mp.pp.qc(ref)
    mp.pp.preprocess(ref)
    mp.tl.cluster(ref, n_clusters=6)
    mp.tl.lot_fractions(ref)
    mp.tl.composition_deviation(ref)
    mp.tl.potency_association(ref, "vegf")
    mp.tl.potency_markers(ref)
    sc.tl.umap(ref, neighbors_key="cluster_neighbors")
    return ref


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _save(fig: Figure, path) -> None:
    fig.savefig(path, dpi=60)
    assert path.stat().st_size > 1000


def _potency_cluster(adata) -> str:
    return adata.uns["potency_association"]["potency_cluster"]


# every plot, with the tool whose result it reads and a call that draws on one Axes
PLOTS = {
    "lot_fractions": (mp.pl.lot_fractions, {}, "tl.lot_fractions", "lot_fractions"),
    "composition_deviation": (
        mp.pl.composition_deviation,
        {},
        "tl.composition_deviation",
        "composition_deviation",
    ),
    "potency_scatter": (mp.pl.potency_scatter, {}, "tl.potency_association", "potency_association"),
    "potency_association": (
        mp.pl.potency_association,
        {},
        "tl.potency_association",
        "potency_association",
    ),
    "potency_markers": (mp.pl.potency_markers, {}, "tl.potency_markers", "potency_markers"),
    "umap": (mp.pl.umap, {"color": "cluster"}, None, None),
    "qc": (mp.pl.qc, {}, "pp.qc", "qc"),
}


@pytest.mark.parametrize("name", list(PLOTS))
def test_return_conventions(ref, name, tmp_path, monkeypatch):
    plot, kwargs, _, _ = PLOTS[name]
    _, ax = plt.subplots()
    returned = plot(ref, ax=ax, show=False, **kwargs)
    assert returned is ax
    figure = plot(ref, return_fig=True, **kwargs)
    assert isinstance(figure, Figure)
    _save(figure, tmp_path / f"{name}.png")
    axes = plot(ref, show=False, **kwargs)
    assert isinstance(axes, Axes)
    shown = []
    monkeypatch.setattr(plt, "show", lambda *a, **k: shown.append(True))
    assert plot(ref, show=True, **kwargs) is None
    assert shown == [True]
    autoshow = sc.settings.autoshow
    try:
        sc.settings.autoshow = False
        assert isinstance(plot(ref, **kwargs), Axes)  # show=None follows scanpy's autoshow
        sc.settings.autoshow = True
        assert plot(ref, **kwargs) is None
    finally:
        sc.settings.autoshow = autoshow
    assert shown == [True, True]


@pytest.mark.parametrize("name", [n for n, spec in PLOTS.items() if spec[2] is not None])
def test_missing_result_names_the_tool(ref, name):
    plot, kwargs, tool, key = PLOTS[name]
    bare = ref.copy()
    del bare.uns[key]
    with pytest.raises(KeyError, match=tool.replace(".", r"\.")):
        plot(bare, show=False, **kwargs)


def test_lot_fractions_draws_every_lot_and_cluster(ref, tmp_path):
    fractions = mp.get.lot_fractions(ref)
    lots, clusters = [str(i) for i in fractions.index], [str(c) for c in fractions.columns]
    potency_cluster = _potency_cluster(ref)
    ax = mp.pl.lot_fractions(ref, show=False)
    _save(ax.figure, tmp_path / "composition.png")
    containers = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert len(containers) == len(clusters)
    assert sum(len(c.patches) for c in containers) == len(lots) * len(clusters) == len(ax.patches)
    assert [t.get_text() for t in ax.get_xticklabels()] == lots
    # the potency cluster is the bottom of each stack, its heights are its fractions
    bottom = containers[0]
    assert bottom.get_label() == f"{potency_cluster} (potency)"
    np.testing.assert_allclose([p.get_height() for p in bottom.patches], fractions[potency_cluster])
    np.testing.assert_allclose([p.get_y() for p in bottom.patches], 0)
    tops = np.sum([[p.get_height() for p in c.patches] for c in containers], axis=0)
    np.testing.assert_allclose(tops, 1.0)
    # colours are the ones stored the scanpy way, per cluster
    stored = dict(zip(ref.obs["cluster"].cat.categories, ref.uns["cluster_colors"], strict=True))
    for container in containers:
        name = container.get_label().split(" ")[0]
        assert mcolors.to_hex(container.patches[0].get_facecolor()) == mcolors.to_hex(stored[name])
    # the legend sits outside the bars
    legend = ax.get_legend()
    assert legend.get_bbox_to_anchor().x0 >= ax.get_window_extent().x1 - 1
    # the potency of every lot is written above its bar, with its unit in the title
    potency = mp.get.potency_association(ref, kind="lots")["vegf"]
    texts = [t.get_text() for t in ax.texts]
    assert texts == [f"{v:.0f}" for v in potency.loc[lots]]
    assert "VEGF (pg/mL)" in ax.get_title()


def test_lot_fractions_orders(ref):
    lots = mp.get.potency_association(ref, kind="lots")
    ax = mp.pl.lot_fractions(ref, order="potency", show=False)
    assert [t.get_text() for t in ax.get_xticklabels()] == list(lots["vegf"].sort_values().index)
    assert "ordered by VEGF" in ax.get_title()
    ax = mp.pl.lot_fractions(ref, order="potency_cluster", show=False)
    assert [t.get_text() for t in ax.get_xticklabels()] == list(
        lots[_potency_cluster(ref)].sort_values().index
    )
    chosen = list(reversed(lots.index))
    ax = mp.pl.lot_fractions(ref, order=chosen, show=False)
    assert [t.get_text() for t in ax.get_xticklabels()] == chosen
    with pytest.raises(ValueError, match="order must be"):
        mp.pl.lot_fractions(ref, order="size", show=False)
    with pytest.raises(ValueError, match=r"missing \['BM01'\]"):
        mp.pl.lot_fractions(ref, order=chosen[:-1], show=False)
    with pytest.raises(ValueError, match=r"repeated \['BM02'\]"):
        mp.pl.lot_fractions(ref, order=[*chosen[:-1], "BM02"], show=False)
    fewer = ref[ref.obs["lot"] != "BM08"].copy()
    mp.tl.lot_fractions(fewer)  # the stored association still covers 8 lots
    assert len(mp.pl.lot_fractions(fewer, show=False).texts) == 0
    with pytest.raises(ValueError, match="was computed on lots"):
        mp.pl.lot_fractions(fewer, order="potency", show=False)
    only_fractions = ref.copy()
    del only_fractions.uns["potency_association"]
    ax = mp.pl.lot_fractions(only_fractions, show=False)  # no potency: no annotation, no error
    assert len(ax.texts) == 0
    with pytest.raises(KeyError, match=r"tl\.potency_association"):
        mp.pl.lot_fractions(only_fractions, order="potency", show=False)


def test_cluster_colours_are_created_once_and_respected(ref):
    fresh = ref.copy()
    fresh.uns.pop("cluster_colors", None)
    mp.pl.potency_association(fresh, show=False)
    n = fresh.obs["cluster"].cat.categories.size
    assert list(fresh.uns["cluster_colors"]) == list(sc.pl.palettes.default_20[:n])
    custom = ["#000000", "#111111", "#222222", "#333333", "#444444", "#555555"][:n]
    fresh.uns["cluster_colors"] = custom
    ax = mp.pl.potency_scatter(fresh, show=False)
    index = list(fresh.obs["cluster"].cat.categories).index(_potency_cluster(fresh))
    face = ax.collections[0].get_facecolors()[0]
    assert mcolors.to_hex(face) == custom[index]
    axes = mp.pl.umap(fresh, color="cluster", show=False)
    in_cluster = (fresh.obs["cluster"] == _potency_cluster(fresh)).to_numpy()
    colours = np.array([mcolors.to_hex(c) for c in axes.collections[0].get_facecolors()])
    assert set(colours[in_cluster]) == {custom[index]}
    assert custom[index] not in set(colours[~in_cluster])


def test_composition_deviation_marks_lots_by_sampling_p(ref, tmp_path):
    per_lot = mp.get.composition_deviation(ref)
    ax = mp.pl.composition_deviation(ref, alpha=0.05, show=False)
    _save(ax.figure, tmp_path / "deviation.png")
    assert len(ax.patches) == len(per_lot)
    np.testing.assert_allclose([p.get_height() for p in ax.patches], per_lot["distance"])
    expected = np.where(
        per_lot["sampling_p"] < 0.05, mcolors.to_hex(MARKED), mcolors.to_hex(UNMARKED)
    )
    assert [mcolors.to_hex(p.get_facecolor()) for p in ax.patches] == list(expected)
    assert [t.get_text() for t in ax.get_xticklabels()] == list(per_lot.index.astype(str))
    assert "Jensen-Shannon" in ax.get_ylabel()
    with pytest.raises(ValueError, match="alpha must lie between 0 and 1"):
        mp.pl.composition_deviation(ref, alpha=5, show=False)


def test_potency_scatter_reports_the_stored_statistics(ref, tmp_path):
    table = mp.get.potency_association(ref)
    lots = mp.get.potency_association(ref, kind="lots")
    cluster = _potency_cluster(ref)
    # truth: the potency cluster is the simulated potency population SP3
    purity = (ref.obs.loc[ref.obs["cluster"] == cluster, "true_subpopulation"] == "SP3").mean()
    assert purity > 0.9
    ax = mp.pl.potency_scatter(ref, show=False)
    _save(ax.figure, tmp_path / "scatter.png")
    row = table.loc[cluster]
    title = ax.get_title()
    assert f"{RHO} = {row['rho']:.2f}" in title
    assert f"p = {row['pvalue']:.2g}" in title
    assert "(exact)" in title and "potency cluster" in title
    assert row["rho"] > 0.8
    np.testing.assert_allclose(
        ax.collections[0].get_offsets(), np.c_[100 * lots[cluster], lots["vegf"]]
    )
    assert ax.get_ylabel() == "VEGF (pg/mL)"
    assert ax.get_xlabel().startswith(cluster)
    assert len(ax.lines) == 1  # the fitted line
    assert len(mp.pl.potency_scatter(ref, line=False, show=False).lines) == 0
    other = table.index[-1]
    ax = mp.pl.potency_scatter(ref, other, show=False)
    assert f"{RHO} = {table.loc[other, 'rho']:.2f}" in ax.get_title()


def test_potency_scatter_grid(ref, tmp_path):
    table = mp.get.potency_association(ref, sort=False)
    axes = mp.pl.potency_scatter(ref, "all", ncols=4, show=False)
    assert len(axes) == len(table)
    titles = {ax.get_title().split("\n")[0].split(" ")[0]: ax.get_title() for ax in axes}
    assert set(titles) == set(table.index)
    for cluster, title in titles.items():
        assert f"{RHO} = {table.loc[cluster, 'rho']:.2f}" in title
    fig = mp.pl.potency_scatter(ref, "all", return_fig=True)
    assert len(fig.axes) == len(table)
    _save(fig, tmp_path / "grid.png")
    with pytest.raises(ValueError, match="cannot use a single ax"):
        mp.pl.potency_scatter(ref, "all", ax=plt.subplots()[1], show=False)
    with pytest.raises(ValueError, match="unknown cluster 'CL99'"):
        mp.pl.potency_scatter(ref, "CL99", show=False)
    with pytest.raises(ValueError, match="ncols must be at least 1"):
        mp.pl.potency_scatter(ref, "all", ncols=0, show=False)


def test_potency_association_highlights_the_potency_cluster(ref, tmp_path):
    table = mp.get.potency_association(ref)
    cluster = _potency_cluster(ref)
    ax = mp.pl.potency_association(ref, show=False)
    _save(ax.figure, tmp_path / "overview.png")
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks == list(table.index)  # strongest positive rho first
    bold = [t.get_text() for t in ax.get_xticklabels() if t.get_fontweight() == "bold"]
    assert bold == [cluster]
    ring = next(c for c in ax.collections if c.get_gid() == "potency_cluster")
    np.testing.assert_allclose(
        ring.get_offsets(), [[ticks.index(cluster), table.loc[cluster, "rho"]]]
    )
    dots = [c for c in ax.collections if c.get_array() is not None]
    assert len(dots) == 1
    np.testing.assert_allclose(dots[0].get_offsets()[:, 1], table["rho"])
    np.testing.assert_allclose(dots[0].get_array(), np.clip(table["fdr"], dots[0].norm.vmin, 1))
    # the bootstrap CI is drawn for every cluster
    segments = next(
        c for c in ax.collections if c.get_array() is None and c.get_gid() is None
    ).get_segments()
    np.testing.assert_allclose([s[:, 1].min() for s in segments], table["ci_low"])
    np.testing.assert_allclose([s[:, 1].max() for s in segments], table["ci_high"])
    assert "VEGF" in ax.get_title()


def test_potency_markers_dot_plot(ref, tmp_path):
    table = mp.get.potency_markers(ref)
    ax = mp.pl.potency_markers(ref, n_genes=8, show=False)
    _save(ax.figure, tmp_path / "markers.png")
    genes = [t.get_text() for t in ax.get_xticklabels()]
    assert genes == list(table["gene"][:8])
    assert "LRRC75A" in genes[:3]  # truth: the simulated potency marker
    clusters = [t.get_text() for t in ax.get_yticklabels()]
    assert clusters == list(ref.obs["cluster"].cat.categories)
    assert [t.get_text() for t in ax.get_yticklabels() if t.get_fontweight() == "bold"] == [
        _potency_cluster(ref)
    ]
    dots = ax.collections[0]
    assert len(dots.get_offsets()) == len(genes) * len(clusters)
    # the potency cluster has the highest scaled mean for its top marker
    values = np.asarray(dots.get_array()).reshape(len(clusters), len(genes))
    assert values[:, 0].argmax() == clusters.index(_potency_cluster(ref))
    inset = ax.child_axes[0]
    np.testing.assert_allclose([p.get_height() for p in inset.patches], table["n_lots_up"][:8])
    with pytest.raises(ValueError, match="n_genes must be at least 1"):
        mp.pl.potency_markers(ref, n_genes=0, show=False)
    with pytest.raises(KeyError, match=r"adata\.layers has no 'nope'"):
        mp.pl.potency_markers(ref, layer="nope", show=False)
    with pytest.raises(ValueError, match="standard_scale must be"):
        mp.pl.potency_markers(ref, standard_scale="obs", show=False)
    with pytest.raises(ValueError, match=r"not in adata\.var_names"):
        mp.pl.potency_markers(
            ref[:, [g for g in ref.var_names if g != "LRRC75A"]].copy(), show=False
        )


def test_umap(ref, tmp_path):
    axes = mp.pl.umap(ref, color=["cluster", "lot", "vegf"], show=False)
    assert len(axes) == 3
    assert [ax.get_title() for ax in axes] == ["cluster", "lot", "VEGF (pg/mL)"]
    fig = mp.pl.umap(ref, color=["cluster", "lot"], return_fig=True)
    _save(fig, tmp_path / "umap.png")
    with pytest.raises(ValueError, match="cannot share one ax"):
        mp.pl.umap(ref, color=["cluster", "lot"], ax=plt.subplots()[1], show=False)
    with pytest.raises(KeyError, match="neither obs columns nor genes"):
        mp.pl.umap(ref, color="nope", show=False)
    bare = ref.copy()
    del bare.obsm["X_umap"]
    with pytest.raises(KeyError, match=r"sc\.tl\.umap\(adata, neighbors_key='cluster_neighbors'\)"):
        mp.pl.umap(bare, show=False)


def test_qc(ref, tmp_path):
    report = mp.get.qc(ref)
    ax = mp.pl.qc(ref, show=False)
    _save(ax.figure, tmp_path / "qc.png")
    assert len(ax.patches) == 2 * len(report)
    kept = [p for p in ax.patches if mcolors.to_hex(p.get_facecolor()) == KEPT]
    removed = [p for p in ax.patches if mcolors.to_hex(p.get_facecolor()) == REMOVED]
    np.testing.assert_allclose([p.get_height() for p in kept], report["cells_after"])
    np.testing.assert_allclose([p.get_height() for p in removed], report["cells_removed"])
    np.testing.assert_allclose(
        [p.get_y() + p.get_height() for p in removed], report["cells_before"]
    )
    assert [t.get_text() for t in ax.get_xticklabels()] == list(report.index.astype(str))
    inset = ax.child_axes[0]
    reasons = [
        c for c in report.columns if c not in ("cells_before", "cells_removed", "cells_after")
    ]
    assert len(inset.patches) == len(reasons) * len(report)
    np.testing.assert_allclose(
        [p.get_height() for p in inset.patches], report[reasons].T.to_numpy().ravel()
    )
