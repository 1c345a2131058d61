"""The scvi backend from a frozen reference: trained once at freezing, mapped by surgery alone.

Runs in CI on the tiny preset with few epochs (CPU torch through constraints/cpu.txt), so
the backend cannot rot. Skipped without scvi-tools.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import mscpotency as mp

from .test_mapping import truth_labels

scvi = pytest.importorskip("scvi")

# scvi-tools and lightning warn about their own settings (workers, logging, accelerators) on
# every training run; none of it concerns the results checked here
pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning:lightning.*"),
    pytest.mark.filterwarnings("ignore::UserWarning:pytorch_lightning.*"),
    pytest.mark.filterwarnings("ignore::UserWarning:scvi.*"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]

#: Few epochs, so that freezing (a model and two calibration folds) and mapping stay short.
OPTIONS = mp.tl.ScviOptions(
    max_epochs=60, scanvi_epochs=15, query_epochs=20, n_calibration_folds=2, accelerator="cpu"
)
#: Accuracy against the simulator's truth these few epochs must reach on the tiny preset
#: (0.79 measured; the default epochs' accuracy is in benchmarks/results/scvi_frozen_*.md).
MIN_ACCURACY = 0.75


@pytest.fixture(scope="module")
def written(tiny_ref, tmp_path_factory):
    """The tiny reference frozen with an scVI model and written; its counts deleted after."""
    processed = tiny_ref.copy()
    frozen = mp.tl.freeze_reference(processed, scvi=OPTIONS)
    del processed.layers["counts"]  # nothing below can reach the reference's raw counts
    return mp.io.write_reference(frozen, tmp_path_factory.mktemp("scvi") / "reference.h5ad")


@pytest.fixture(scope="module")
def query(tiny_all):
    query = tiny_all[tiny_all.obs["set"] != "BM-train"].copy()
    mp.pp.qc(query)
    return query


@pytest.fixture(scope="module")
def mapped(written, query, monkeypatch_module):
    """Mapped from the file; training scVI or scANVI on a reference would fail the mapping."""

    def no_reference_training(*args, **kwargs):
        raise AssertionError("mapping trained a reference model")

    monkeypatch_module.setattr(mp.tl._mapping._scvi, "_train_scanvi", no_reference_training)
    return mp.tl.map_to_reference(query, written, method="scvi", options=OPTIONS, copy=True)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_the_model_is_stored_as_plain_arrays_and_hashed(written):
    reference = mp.io.read_reference(written)
    record = reference.uns["reference"]
    stored = record["scvi"]
    assert all(isinstance(w, np.ndarray) for w in stored["weights"].values())
    assert stored["latent"].shape == (reference.n_obs, OPTIONS.n_latent)
    assert stored["held_out"].shape == (reference.n_obs, len(record["labels"]))
    np.testing.assert_allclose(stored["held_out"].sum(axis=1), 1.0, atol=1e-5)
    assert record["hash_parts"]["scvi"] != mp._frozen.model_digest(None)


def test_the_rebuilt_model_is_the_trained_one(written):
    """Rebuilt from its arrays, the model puts the reference cells where training left them."""
    from mscpotency.tl._mapping import _scvi

    reference = mp.io.read_reference(written)
    model = mp._frozen.reference_model(reference, cluster_key="cluster")
    stored = _scvi.stored_model(reference)
    rebuilt = _scvi.rebuild(scvi, stored, model.genes)
    counts = mp._frozen.stored_counts(reference)
    cells = _scvi._reference_input(counts, model, np.arange(reference.n_obs))
    latent = rebuilt.get_latent_representation(cells)
    np.testing.assert_allclose(latent, stored["latent"], atol=1e-4)


def test_an_edited_weight_is_refused(tmp_path, written):
    edited = mp.io.read_reference(written)
    weights = edited.uns["reference"]["scvi"]["weights"]
    name = sorted(weights)[0]
    weights[name] = weights[name] * 1.01
    with pytest.raises(ValueError, match="scVI model"):
        mp.io.write_reference(edited, tmp_path / "edited.h5ad")


def test_mapping_from_the_file_is_right_and_has_the_shared_schema(mapped, query, tiny_ref, written):
    truth = truth_labels(tiny_ref, mapped)
    known = truth != ""
    accuracy = (mapped.obs["predicted"].astype(str).to_numpy()[known] == truth[known]).mean()
    assert accuracy >= MIN_ACCURACY
    probabilities = mapped.obsm["predicted_probabilities"]
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-6)
    assert isinstance(mapped.obs["predicted"].dtype, pd.CategoricalDtype)
    result = mapped.uns["predicted"]
    assert result["params"]["method"] == "scvi" and result["params"]["reference_frozen"]
    calibration = result["calibration"]
    assert calibration["fitted"] and calibration["n_cells"] == tiny_ref.n_obs  # held-out lots
    anchors = mp.tl.map_to_reference(query, written, method="anchors", copy=True)
    assert set(mapped.obs.columns) == set(anchors.obs.columns)
    assert set(mapped.obsm) == set(anchors.obsm)
    assert set(result) == set(anchors.uns["predicted"])
    assert list(result["per_lot"].columns) == list(anchors.uns["predicted"]["per_lot"].columns)


def test_mapping_again_gives_the_same_answer(mapped, query, written):
    again = mp.tl.map_to_reference(query, written, method="scvi", options=OPTIONS, copy=True)
    np.testing.assert_array_equal(
        again.obsm["predicted_probabilities"].to_numpy(),
        mapped.obsm["predicted_probabilities"].to_numpy(),
    )


def test_a_frozen_reference_without_a_model_says_how_to_store_one(tiny_ref, query):
    frozen = mp.tl.freeze_reference(tiny_ref)
    with pytest.raises(ValueError, match=r"carries no scVI model.*scvi=True"):
        mp.tl.map_to_reference(query, frozen, method="scvi", copy=True)
