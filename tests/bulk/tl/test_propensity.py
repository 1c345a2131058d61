"""bulk.tl.fit_propensity / apply_propensity: PC1 of a marker panel, oriented, against the simulator's true propensity."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData

import mscpotency as mp

LINEAGES = ["ectoderm", "mesoderm", "endoderm"]


@pytest.fixture(scope="module")
def data():
    return mp.bulk.datasets.ips_lines()


@pytest.fixture
def eb(data) -> AnnData:
    return data["panels"]["train"]["embryoid_body"].copy()


def genes_of(panel: AnnData, lineage: str) -> list[str]:
    return panel.var_names[panel.var["lineage"] == lineage].tolist()


@pytest.mark.parametrize("lineage", LINEAGES)
def test_score_recovers_true_propensity_with_the_right_sign(eb, lineage):
    mp.bulk.tl.fit_propensity(eb, markers=genes_of(eb, lineage), key_added=lineage)
    r = np.corrcoef(eb.obs[lineage], eb.obs[f"true_{lineage}"])[0, 1]
    assert r > 0.95  # oriented: higher score = more differentiated
    stored = eb.uns[lineage]
    assert 0.3 < stored["pc1_variance_ratio"] <= 1
    loadings = mp.bulk.get.fit_propensity(eb, key=lineage, kind="loadings")
    assert list(loadings.columns) == ["loading", "mean", "sd", "orient"]
    assert len(loadings) == len(genes_of(eb, lineage)) and loadings["loading"].mean() > 0
    scores = mp.bulk.get.fit_propensity(eb, key=lineage)
    assert sorted(scores["rank"]) == list(range(1, eb.n_obs + 1))
    assert scores["rank"].idxmin() == scores["score"].idxmax()
    np.testing.assert_allclose(scores["score"], eb.obs[lineage])


def test_neural_panels_score_each_method(data):
    for method in ("neural_suspension", "neural_adhesion"):
        panel = data["panels"]["train"][method].copy()
        mp.bulk.tl.fit_propensity(panel, key_added=method)
        assert np.corrcoef(panel.obs[method], panel.obs[f"true_{method}"])[0, 1] > 0.75


def test_orientation_follows_orient_by(eb):
    """Ectoderm and mesoderm genes load with opposite signs on one PC1 (the lineages trade off)."""
    markers = genes_of(eb, "ectoderm") + genes_of(eb, "mesoderm")
    mp.bulk.tl.fit_propensity(
        eb, markers=markers, orient_by=genes_of(eb, "ectoderm"), key_added="ecto"
    )
    mp.bulk.tl.fit_propensity(
        eb, markers=markers, orient_by=genes_of(eb, "mesoderm"), key_added="meso"
    )
    np.testing.assert_allclose(eb.obs["ecto"], -eb.obs["meso"])
    assert np.corrcoef(eb.obs["ecto"], eb.obs["true_ectoderm"])[0, 1] > 0.9
    assert np.corrcoef(eb.obs["meso"], eb.obs["true_mesoderm"])[0, 1] > 0.9


def test_score_does_not_depend_on_gene_order(eb):
    """PC1's sign from the SVD is arbitrary; the orientation rule fixes it whatever the order."""
    genes = genes_of(eb, "mesoderm")
    mp.bulk.tl.fit_propensity(eb, markers=genes, key_added="a")
    for seed in range(3):
        shuffled = list(np.random.default_rng(seed).permutation(genes))
        mp.bulk.tl.fit_propensity(eb, markers=shuffled, key_added="b")
        np.testing.assert_allclose(eb.obs["a"], eb.obs["b"], atol=1e-10)


def test_reference_scores_new_lines_on_the_training_scale(data, eb):
    test_eb = data["panels"]["test"]["embryoid_body"].copy()
    mp.bulk.tl.fit_propensity(eb, markers=genes_of(eb, "ectoderm"), key_added="ectoderm")
    mp.bulk.tl.apply_propensity(test_eb, eb, key_added="ectoderm")
    assert np.corrcoef(test_eb.obs["ectoderm"], test_eb.obs["true_ectoderm"])[0, 1] > 0.95
    assert test_eb.uns["ectoderm"]["params"]["reference"] is True
    again = eb.copy()
    mp.bulk.tl.apply_propensity(again, eb, key_added="ectoderm")
    np.testing.assert_allclose(again.obs["ectoderm"], eb.obs["ectoderm"], atol=1e-10)


def test_copy_leaves_input_untouched_and_matches_in_place(eb):
    before = eb.copy()
    out = mp.bulk.tl.fit_propensity(eb, markers=genes_of(eb, "endoderm"), copy=True)
    assert "propensity" not in eb.obs and "propensity" not in eb.uns
    np.testing.assert_array_equal(eb.X, before.X)
    mp.bulk.tl.fit_propensity(eb, markers=genes_of(eb, "endoderm"))
    pd.testing.assert_series_equal(out.obs["propensity"], eb.obs["propensity"])
    assert mp.get.provenance(eb)["function"].tolist() == ["bulk.tl.fit_propensity"]


def test_absent_marker_genes_are_listed(eb):
    with pytest.raises(
        KeyError, match=r"2 of the 4 marker genes are absent from the panel: \['NOPE1', 'NOPE2'\]"
    ):
        mp.bulk.tl.fit_propensity(eb, markers=["PAX6", "NOPE1", "SOX1", "NOPE2"])


def test_orient_by_must_be_among_markers(eb):
    with pytest.raises(ValueError, match=r"orient_by genes \['TBXT'\] are not among the markers"):
        mp.bulk.tl.fit_propensity(eb, markers=["PAX6", "SOX1"], orient_by=["TBXT"])


def test_fewer_than_three_lines(eb):
    with pytest.raises(ValueError, match="needs at least 3 lines, got 2"):
        mp.bulk.tl.fit_propensity(eb[:2].copy(), markers=["PAX6", "SOX1"])


def test_missing_values_are_an_error(eb):
    eb.X[1, eb.var_names.get_loc("SOX1")] = np.nan
    with pytest.raises(
        ValueError, match=r"1 missing or infinite values \(line, gene: \[\('iPS02', 'SOX1'\)\]"
    ):
        mp.bulk.tl.fit_propensity(eb, markers=["PAX6", "SOX1", "NES"])


def test_constant_gene_is_left_out_with_a_warning(eb):
    eb.X[:, eb.var_names.get_loc("SOX1")] = 1.0
    with pytest.warns(UserWarning, match=r"panel genes \['SOX1'\] are constant"):
        mp.bulk.tl.fit_propensity(eb, markers=genes_of(eb, "ectoderm"), key_added="ectoderm")
    assert eb.uns["ectoderm"]["excluded"] == ["SOX1"]
    assert eb.uns["ectoderm"]["loadings"].loc["SOX1", "loading"] == 0
    assert np.corrcoef(eb.obs["ectoderm"], eb.obs["true_ectoderm"])[0, 1] > 0.95


def test_all_constant_is_an_error(eb):
    eb.X[:, :] = 2.0
    with (
        pytest.warns(UserWarning, match="constant"),
        pytest.raises(ValueError, match="every marker gene is constant"),
    ):
        mp.bulk.tl.fit_propensity(eb, markers=["PAX6", "SOX1"])


def test_reference_without_a_score_names_the_tool(data, eb):
    with pytest.raises(KeyError, match="Run `bulk.tl.fit_propensity` first"):
        mp.bulk.tl.apply_propensity(eb, data["panels"]["test"]["embryoid_body"])


def test_a_fit_replays_from_its_log(eb):
    """Bulk tools are logged under their full name (bulk.tl.X), which replay resolves."""
    bare = eb.copy()
    mp.bulk.tl.fit_propensity(eb, markers=genes_of(eb, "mesoderm"), key_added="mesoderm")
    again = mp.replay(bare, eb)
    np.testing.assert_array_equal(again.obs["mesoderm"], eb.obs["mesoderm"])
    assert mp.get.provenance(again)["function"].tolist() == ["bulk.tl.fit_propensity"]
