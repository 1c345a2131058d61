"""The optional scvi backend (skipped without scvi-tools): same schema, right labels on the tiny preset."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

import mscpotency as mp

from .test_mapping import truth_labels

scvi = pytest.importorskip("scvi")

# scvi-tools and lightning warn about their own settings (workers, logging, accelerators) on
# every training run; none of it concerns the result checked here
pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning:lightning.*"),
    pytest.mark.filterwarnings("ignore::UserWarning:pytorch_lightning.*"),
    pytest.mark.filterwarnings("ignore::UserWarning:scvi.*"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]


@pytest.fixture(scope="module")
def mapped(tiny_all, tiny_ref):
    query = tiny_all[tiny_all.obs["set"] != "BM-train"].copy()
    mp.pp.qc(query)
    mp.tl.map_to_reference(
        query,
        tiny_ref,
        method="scvi",
        # no calibration folds here: the processed-reference path trains one model, then
        # surgery; the calibration on held-out lots is checked in test_scvi_frozen.py
        options=mp.tl.ScviOptions(
            max_epochs=100,
            scanvi_epochs=30,
            query_epochs=50,
            n_calibration_folds=0,
            accelerator="cpu",
        ),
    )
    return query


def test_scvi_backend_schema_and_truth(mapped, tiny_ref):
    probabilities = mapped.obsm["predicted_probabilities"]
    assert list(probabilities.columns) == list(tiny_ref.obs["cluster"].cat.categories)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-6)
    assert isinstance(mapped.obs["predicted"].dtype, pd.CategoricalDtype)
    assert mapped.uns["predicted"]["params"]["method"] == "scvi"
    assert not mapped.uns["predicted"]["calibration"]["fitted"]  # n_calibration_folds=0
    truth = truth_labels(tiny_ref, mapped)
    known = truth != ""
    assert (mapped.obs["predicted"].astype(str).to_numpy()[known] == truth[known]).mean() > 0.85


def test_scvi_backend_needs_reference_counts(mapped, tiny_ref):
    processed = tiny_ref.copy()
    del processed.layers["counts"]
    with pytest.raises(ValueError, match="raw counts"):
        mp.tl.map_to_reference(mapped, processed, method="scvi", copy=True)


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("MSCPOTENCY_SCVI_STUDY") != "1",
    reason="four scVI/scANVI trainings on 16,500 cells take about 20 min on 2 CPU cores; "
    "set MSCPOTENCY_SCVI_STUDY=1 to run (benchmarks/scvi_frozen.py measures the same)",
)
def test_scvi_backend_on_the_study_preset(study_all, study_ref):
    from scipy import stats

    from mscpotency.tl._mapping import expected_calibration_error

    query = study_all[study_all.obs["set"] != "BM-train"].copy()
    mp.pp.qc(query)
    mp.tl.map_to_reference(query, study_ref, method="scvi")
    potency = study_ref.uns["potency_association"]["potency_cluster"]
    truth = truth_labels(study_ref, query)
    labels = query.obs["predicted"].astype(str).to_numpy()
    correct = labels == truth
    assert expected_calibration_error(query.obs["predicted_score"].to_numpy(), correct) <= 0.1
    for name, minimum in (("BM-test", 0.9), ("AD", 0.8), ("UC", 0.8)):
        in_set = (query.obs["set"] == name).to_numpy()
        predicted, true = labels[in_set] == potency, truth[in_set] == potency
        assert 2 * (predicted & true).sum() / (predicted.sum() + true.sum()) >= minimum, name
        lots = query.obs.loc[in_set, "lot"].astype(str).to_numpy()
        share = pd.Series(predicted).groupby(lots).mean()
        true_share = (
            pd.Series(query.obs["true_potency_cell"].to_numpy()[in_set]).groupby(lots).mean()
        )
        assert stats.spearmanr(share, true_share.loc[share.index])[0] >= 0.9, name
