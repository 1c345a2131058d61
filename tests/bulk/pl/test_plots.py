"""Plots of the iPS line analysis: what they draw, what they return, what they demand first."""

from __future__ import annotations

import warnings

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.figure import Figure

import mscpotency as mp

LINEAGES = ["ectoderm", "mesoderm", "endoderm"]
NEURAL = ["neural_suspension", "neural_adhesion"]


@pytest.fixture(scope="module")
def study():
    data = mp.bulk.datasets.ips_lines()
    panels = data["panels"]["train"]
    eb = panels["embryoid_body"]
    for lineage in LINEAGES:
        mp.bulk.tl.fit_propensity(
            eb, markers=eb.var_names[eb.var["lineage"] == lineage].tolist(), key_added=lineage
        )
    for method in NEURAL:
        mp.bulk.tl.fit_propensity(panels[method], key_added=method)
    propensity = pd.concat([eb.obs[LINEAGES]] + [panels[m].obs[[m]] for m in NEURAL], axis=1)
    with warnings.catch_warnings():
        # constant (undetected) miRNAs are reported; tested in tests/tl
        warnings.filterwarnings("ignore", "rank_association: .* could not be ranked", UserWarning)
        for adata in data["train"].values():
            mp.bulk.tl.rank_association(adata, propensity)
    test_eb = data["panels"]["test"]["embryoid_body"]
    mp.bulk.tl.apply_propensity(test_eb, eb, key_added="mesoderm")
    consensus = mp.bulk.tl.consensus(
        data["train"],
        rules={"mesoderm": {"mesoderm": 1}},
        platforms=["mrna", "cage"],
        match_on="gene",
    )
    candidates = mp.bulk.get.consensus(consensus, rule="mesoderm", outcome="mesoderm")
    test = data["test"]["mrna"]
    mp.bulk.tl.validate_markers(test, candidates, outcome=test_eb.obs["mesoderm"])
    return {
        "data": data,
        "eb": eb,
        "test": test,
        "candidates": candidates,
        "consensus": consensus,
    }


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_fit_propensity_bars_ranked(study):
    ax = mp.bulk.pl.fit_propensity(study["eb"], key="ectoderm", show=False)
    assert isinstance(ax, Axes)
    widths = [patch.get_width() for patch in ax.patches]
    assert len(widths) == 10 and widths == sorted(widths)  # least differentiated at the bottom
    top = ax.get_yticklabels()[-1].get_text()
    best = mp.bulk.get.fit_propensity(study["eb"], key="ectoderm")["score"].idxmax()
    assert top == f"{best} (#1)"
    assert "of panel variance" in ax.get_title()
    assert isinstance(
        mp.bulk.pl.fit_propensity(study["eb"], key="ectoderm", return_fig=True), Figure
    )


def test_rank_association_counts_and_highlights(study):
    mrna = study["data"]["train"]["mrna"]
    ax = mp.bulk.pl.rank_association(mrna, outcome="ectoderm", highlight=["SALL3"], show=False)
    counts = mp.bulk.get.marker_counts({"mrna": mrna}).loc[("mrna", "ectoderm")]
    assert (
        f"{counts['P<0.05 positive']} positive, {counts['P<0.05 negative']} negative of 2000"
        in ax.get_title()
    )
    assert "SALL3" in [t.get_text() for t in ax.texts]
    assert ax.get_title().startswith("mrna · ectoderm")
    offsets = ax.collections[0].get_offsets()
    assert len(offsets) == mrna.n_vars
    with pytest.raises(ValueError, match="holds several outcomes"):
        mp.bulk.pl.rank_association(mrna, show=False)
    with pytest.raises(KeyError, match=r"highlight features \['NOPE'\]"):
        mp.bulk.pl.rank_association(mrna, outcome="ectoderm", highlight=["NOPE"], show=False)


def test_consensus_counts_shared_candidates(study):
    train = study["data"]["train"]
    fig = mp.bulk.pl.consensus(
        study["consensus"], outcomes=NEURAL, platforms=["mrna", "cage"], return_fig=True
    )
    ax = fig.axes[0]
    matrix = ax.images[0].get_array()
    assert matrix.shape == (4, 4) and np.array_equal(matrix, matrix.T)
    counts = mp.bulk.get.marker_counts(train)
    row = counts.loc[("mrna", "neural_suspension")]
    assert matrix[0, 0] == row["P<0.05 positive"] + row["P<0.05 negative"]
    assert (np.diag(matrix)[:, None] >= matrix).all()
    opposite = mp.bulk.pl.consensus(
        study["consensus"], outcomes={"ectoderm": 1, "mesoderm": -1}, platforms=["mrna"], show=False
    )
    shared = opposite.images[0].get_array()[0, 1]
    table = mp.bulk.get.rank_association(train["mrna"], sort=False).pivot(
        index="feature", columns="outcome", values="rho"
    )
    p = mp.bulk.get.rank_association(train["mrna"], sort=False).pivot(
        index="feature", columns="outcome", values="pvalue"
    )
    expected = (
        (p["ectoderm"] < 0.05)
        & (p["mesoderm"] < 0.05)
        & (np.sign(table["ectoderm"]) == -np.sign(table["mesoderm"]))
    ).sum()
    assert shared == expected
    with pytest.raises(ValueError, match="outcomes must be a non-empty list"):
        mp.bulk.pl.consensus(study["consensus"], outcomes={"ectoderm": 3}, show=False)
    rule = mp.bulk.pl.consensus(study["consensus"], show=False).images[0].get_array()
    assert rule.shape == (2, 2)  # the one rule: mesoderm on mRNA and CAGE


def test_validate_markers_and_validation_scatter(study):
    test = study["test"]
    ax = mp.bulk.pl.validate_markers(test, show=False)
    table = mp.bulk.get.validate_markers(test)
    assert (
        f"{int(table['validated'].sum())} of {len(table)} candidates validated on 13 held-out lines"
        == ax.get_title()
    )
    np.testing.assert_allclose(ax.collections[0].get_offsets()[:, 0], table["rho_train"])
    ax = mp.bulk.pl.validation_scatter(test, "PF4", show=False)
    assert len(ax.collections[0].get_offsets()) == 13
    assert ax.get_title().startswith("PF4: \N{GREEK SMALL LETTER RHO} = ") and (
        "validated" in ax.get_title()
    )
    with pytest.raises(KeyError, match="'ROR2' was not among the validated candidates"):
        mp.bulk.pl.validation_scatter(test, "ROR2", show=False)


def test_validate_markers_without_training_rho(study):
    test = study["test"].copy()
    mp.bulk.tl.validate_markers(
        test,
        study["candidates"]["sign"],
        outcome=study["data"]["panels"]["test"]["embryoid_body"].obs["mesoderm"],
    )
    ax = mp.bulk.pl.validate_markers(test, show=False)
    assert ax.get_xlabel() == "expected sign"


def test_plots_name_the_tool_to_run_first():
    bare = AnnData(np.zeros((3, 2)))
    with pytest.raises(KeyError, match="Run `bulk.tl.fit_propensity` first"):
        mp.bulk.pl.fit_propensity(bare, show=False)
    with pytest.raises(KeyError, match="Run `bulk.tl.rank_association` first"):
        mp.bulk.pl.rank_association(bare, show=False)
    with pytest.raises(KeyError, match="Run `bulk.tl.validate_markers` first"):
        mp.bulk.pl.validate_markers(bare, show=False)
    with pytest.raises(KeyError, match="Run `bulk.tl.rank_association` first"):
        mp.bulk.pl.consensus(
            mp.bulk.tl.consensus({"bare": bare}, rules={"r": {"x": 1}}), show=False
        )


def test_existing_axes_are_used(study):
    _, axes = plt.subplots(1, 2)
    out = mp.bulk.pl.rank_association(
        study["data"]["train"]["cage"], outcome="mesoderm", ax=axes[1], show=False
    )
    assert out is axes[1]
