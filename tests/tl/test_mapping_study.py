"""Acceptance of tl.map_to_reference on the study preset (held-out BM, AD and UC lots).

Reference: the 11 BM-train lots after pp.qc, pp.preprocess and tl.cluster(n_clusters=8)
(the session fixture ``study_ref``). Truth: each query cell's true population mapped to
the reference cluster that holds most of that population's reference cells.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from scipy import stats
from sklearn.metrics import roc_auc_score

import mscpotency as mp
from mscpotency.tl._mapping import expected_calibration_error

from .test_mapping import truth_labels

pytestmark = pytest.mark.slow
SETS = ("BM-test", "AD", "UC")
F1_MIN = {"BM-test": 0.9, "AD": 0.8, "UC": 0.8}


@pytest.fixture(scope="module")
def study_query(study_all) -> AnnData:
    query = study_all[study_all.obs["set"] != "BM-train"].copy()
    mp.pp.qc(query)
    return query


@pytest.fixture(scope="module", params=["fast", "anchors"])
def study_mapped(request, study_query, study_ref) -> AnnData:
    return mp.tl.map_to_reference(study_query, study_ref, method=request.param, copy=True)


def f1(predicted: np.ndarray, true: np.ndarray) -> float:
    return float(2 * (predicted & true).sum() / (predicted.sum() + true.sum()))


def test_potency_like_cells_and_their_share_per_lot(study_mapped, study_ref):
    potency = study_ref.uns["potency_association"]["potency_cluster"]
    assert study_mapped.uns["predicted"]["potency_cluster"] == potency
    truth = truth_labels(study_ref, study_mapped)
    # the potency cluster is the true SP3
    assert (
        truth[study_mapped.obs["true_subpopulation"].to_numpy() == "SP3"] == potency
    ).mean() > 0.95
    labels = study_mapped.obs["predicted"].astype(str).to_numpy()
    probability = study_mapped.obsm["predicted_probabilities"][potency].to_numpy()
    for name in SETS:
        in_set = (study_mapped.obs["set"] == name).to_numpy()
        assert f1(labels[in_set] == potency, truth[in_set] == potency) >= F1_MIN[name], name
        lots = study_mapped.obs.loc[in_set, "lot"].astype(str).to_numpy()
        true_share = (
            pd.Series(study_mapped.obs["true_potency_cell"].to_numpy()[in_set]).groupby(lots).mean()
        )
        hard_share = pd.Series(labels[in_set] == potency).groupby(lots).mean()
        soft_share = pd.Series(probability[in_set]).groupby(lots).mean()
        assert stats.spearmanr(hard_share, true_share.loc[hard_share.index])[0] >= 0.9, name
        assert stats.spearmanr(soft_share, true_share.loc[soft_share.index])[0] >= 0.9, name
        assert np.abs(hard_share - true_share.loc[hard_share.index]).max() < 0.02, name
    assert (labels == truth).mean() > 0.97


def test_scores_are_calibrated(study_mapped, study_ref):
    truth = truth_labels(study_ref, study_mapped)
    correct = study_mapped.obs["predicted"].astype(str).to_numpy() == truth
    score = study_mapped.obs["predicted_score"].to_numpy()
    assert expected_calibration_error(score, correct) <= 0.1
    for name in SETS:
        in_set = (study_mapped.obs["set"] == name).to_numpy()
        assert expected_calibration_error(score[in_set], correct[in_set]) <= 0.1, name
    calibration = study_mapped.uns["predicted"]["calibration"]
    assert calibration["ece_after"] <= calibration["ece_before"]
    # nothing off-reference in a query made of known populations
    assert study_mapped.uns["predicted"]["summary"]["share_off_reference"] < 0.01


@pytest.fixture(scope="module")
def reference_without_sp3(study_all) -> AnnData:
    train = study_all[study_all.obs["set"] == "BM-train"]
    reference = train[train.obs["true_subpopulation"] != "SP3"].copy()
    mp.pp.qc(reference)
    mp.pp.preprocess(reference)
    mp.tl.cluster(reference, n_clusters=7)
    return reference


@pytest.mark.parametrize("method", ["fast", "anchors"])
def test_a_population_missing_from_the_reference_scores_low(
    method, study_query, reference_without_sp3
):
    # SP3 is new to the reference; a lot with ~20% SP3 cells also passes warn_off_reference
    with pytest.warns(UserWarning) as record:
        mapped = mp.tl.map_to_reference(
            study_query,
            reference_without_sp3,
            method=method,
            calibrate=False,
            novelty_alpha=0.05,
            copy=True,
        )
    assert any("flagged novel" in str(w.message) for w in record)
    novel = (mapped.obs["true_subpopulation"] == "SP3").to_numpy()
    score = mapped.obs["predicted_mapping_score"].to_numpy()
    assert roc_auc_score(novel, -score) >= 0.9
    for name in SETS:
        in_set = (mapped.obs["set"] == name).to_numpy()
        assert roc_auc_score(novel[in_set], -score[in_set]) >= 0.9, name
    # the calibrated flags (issue 16): >= 80% of the left-out population at alpha = 0.05,
    # known cells within 1.5 x alpha
    flagged = mapped.obs["predicted_novel"].to_numpy()
    assert flagged[novel].mean() >= 0.8
    assert flagged[~novel].mean() <= 1.5 * 0.05
    # the per-lot summary shows it: lots with more SP3 cells have more off-reference cells
    per_lot = mp.get.map_to_reference(mapped)
    true_share = mapped.obs.groupby("lot", observed=True)["true_potency_cell"].mean()
    assert stats.spearmanr(per_lot["share_off_reference"], true_share.loc[per_lot.index])[0] > 0.9
    assert per_lot.loc[true_share.loc[per_lot.index] >= 0.1, "excess_novel"].all()


def test_validate_potency_and_marker_by_set(study_query, study_ref):
    query = mp.tl.map_to_reference(study_query, study_ref, method="fast", copy=True)
    mp.tl.validate_potency(query, "vegf")
    per_set = mp.get.validate_potency(query)
    assert list(per_set.index) == list(SETS)
    assert (
        not per_set.loc["BM-test", "can_reach_alpha"]
        and "cannot reach" in per_set.loc["BM-test", "note"]
    )
    assert per_set.loc["UC", "can_reach_alpha"]
    assert (per_set["rho"] > 0.5).all()
    combined = mp.get.validate_potency(query, kind="combined")
    assert combined.loc["stratified_exact", "pvalue"] < 0.01
    assert combined.loc["stratified_exact", "n_lots"] == 13
    lots = mp.get.validate_potency(query, kind="lots")
    true_share = query.obs.groupby("lot", observed=True)["true_potency_cell"].mean().loc[lots.index]
    assert (
        (lots["ci_low"] <= true_share + 0.01) & (true_share - 0.01 <= lots["ci_high"])
    ).mean() > 0.8
    # the marker is weaker in UC potency-like cells (simulated at 55% of its BM effect)
    mp.tl.marker_by_set(query, "LRRC75A")
    tests = mp.get.marker_by_set(query)
    assert tests.loc["UC vs BM-test", "difference"] < -0.5
    assert tests.loc["UC vs BM-test", "pvalue"] < 0.05
    assert tests.loc["all sets", "pvalue"] < 0.05
