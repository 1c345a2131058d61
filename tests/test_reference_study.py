"""Acceptance on the study-shaped preset: the reference analysis finds the planted truth."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

import mscpotency as mp

pytestmark = pytest.mark.slow


def test_clusters_recover_the_subpopulations(study_ref):
    assert study_ref.obs["cluster"].nunique() == 8
    assert adjusted_rand_score(study_ref.obs["true_subpopulation"], study_ref.obs["cluster"]) >= 0.8


def test_strongest_positive_cluster_is_the_potency_population(study_ref):
    table = mp.get.potency_association(study_ref)
    top = table.index[0]
    assert table.loc[top, "rho"] > 0
    truth = study_ref.obs["true_potency_cell"].to_numpy()
    found = (study_ref.obs["cluster"] == top).to_numpy()
    f1 = 2 * (truth & found).sum() / (truth.sum() + found.sum())
    assert f1 >= 0.9
    assert table.loc[top, "pvalue_method"] == "exact"
    assert table.loc[top, "pvalue"] < 0.05
    assert table.loc[top, "n_lots"] == 11
    # the other clusters are not called at FDR 5%
    assert (table.drop(index=top)["fdr"] > 0.05).all()


def test_planted_marker_in_top_five(study_ref):
    genes = list(mp.get.potency_markers(study_ref)["gene"].head(5))
    assert "LRRC75A" in genes


def test_fraction_of_the_potency_cluster_tracks_the_true_fraction(study_ref):
    cluster = study_ref.uns["potency_association"]["potency_cluster"]
    found = mp.get.lot_fractions(study_ref)[cluster]
    truth = (
        study_ref.obs.groupby("lot", observed=True)["true_potency_cell"].mean().reindex(found.index)
    )
    np.testing.assert_allclose(found.to_numpy(), truth.to_numpy(), atol=0.01)
