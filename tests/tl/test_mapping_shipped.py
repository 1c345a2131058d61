"""Calibrations shipped in the frozen reference: used in a new process, bit for bit the same."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from anndata import AnnData

import mscpotency as mp
from mscpotency._frozen import reference_model
from mscpotency.tl._mapping import _cache, _novelty, _pca_backends, _shipped


@pytest.fixture(scope="module")
def frozen_pair(tiny_ref) -> tuple[AnnData, AnnData]:
    """The tiny reference frozen without and with the calibrations of both PCA backends."""
    plain = mp.tl.freeze_reference(tiny_ref, cluster_key="cluster")
    shipped = mp.tl.freeze_reference(
        tiny_ref, cluster_key="cluster", calibrations=("anchors", "fast")
    )
    return plain, shipped


@pytest.fixture(scope="module")
def query(tiny_all) -> AnnData:
    query = tiny_all[tiny_all.obs["set"] == "BM-test"].copy()
    mp.pp.qc(query)
    return query


@pytest.fixture
def computed(monkeypatch) -> list[str]:
    """Names of the reference-only calibrations computed from here on (a cold process)."""
    calls: list[str] = []
    for module, name in [
        (_pca_backends, "_mapped_held_out_lots"),
        (_novelty, "_score_held_out_folds"),
        (_novelty, "_refitted_loadings"),
    ]:
        original = getattr(module, name)
        monkeypatch.setattr(
            module, name, lambda *a, _o=original, _n=name, **k: calls.append(_n) or _o(*a, **k)
        )
    _cache.clear_caches()
    return calls


def _results(mapped: AnnData) -> dict[str, np.ndarray]:
    out = {c: mapped.obs[c].to_numpy() for c in mapped.obs.columns if c.startswith("predicted")}
    out |= {k: np.asarray(mapped.obsm[k]) for k in mapped.obsm if k.startswith("predicted")}
    record = mapped.uns["predicted"]
    out["temperature"] = np.asarray(record["calibration"]["temperature"])
    out["calibration_cells"] = np.asarray(record["novelty"]["n_calibration_cells"])
    out["score_at_alpha"] = np.asarray(record["novelty"]["score_at_alpha"])
    return out


def _assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


@pytest.mark.parametrize("method", ["anchors", "fast"])
def test_a_new_process_uses_what_the_reference_ships_and_gets_the_same_answer(
    frozen_pair, query, computed, method, tmp_path
):
    plain, shipped = frozen_pair
    mp.io.write_reference(shipped, tmp_path / "shipped.h5ad")
    first = mp.tl.map_to_reference(query, tmp_path / "shipped.h5ad", method=method, copy=True)
    assert computed == []  # nothing the reference ships was computed again
    _cache.clear_caches()
    fresh = mp.tl.map_to_reference(query, plain, method=method, copy=True)
    assert "_mapped_held_out_lots" in computed and "_score_held_out_folds" in computed
    _assert_same(_results(fresh), _results(first))


def test_shipped_calibrations_are_hashed_and_a_changed_one_is_refused(
    frozen_pair, tiny_ref, tmp_path
):
    plain, shipped = frozen_pair
    record = shipped.uns["reference"]
    assert "calibrations" not in plain.uns["reference"]["hash_parts"]  # processed = frozen
    assert plain.uns["reference"]["hash"] == reference_model(tiny_ref, cluster_key="cluster").hash
    assert (
        "calibrations" in record["hash_parts"] and record["hash"] != plain.uns["reference"]["hash"]
    )
    assert record["calibrations"]["owner"] == plain.uns["reference"]["hash"]
    assert record["params"]["calibrations"] == ["anchors", "fast"]
    mp.io.write_reference(shipped, tmp_path / "ok.h5ad")
    assert mp.io.read_reference(tmp_path / "ok.h5ad").uns["reference"]["hash"] == record["hash"]
    edited = shipped.copy()
    entries = edited.uns["reference"]["calibrations"]["entries"]["novelty_scores"]
    digest = next(iter(entries))
    entries[digest] = entries[digest] + 1e-9
    with pytest.raises(ValueError, match="changed: the shipped mapping calibrations"):
        reference_model(edited, cluster_key="cluster")


def test_calibrations_from_other_code_are_computed_again(frozen_pair, query, computed, monkeypatch):
    _, shipped = frozen_pair
    monkeypatch.setattr(_shipped, "code_stamp", lambda: "another version")
    mp.tl.map_to_reference(query, shipped, copy=True)
    assert "_mapped_held_out_lots" in computed


def test_what_ships_does_not_depend_on_what_the_process_mapped_before(tiny_ref, query):
    """The same file and hash whether the caches held other entries or none."""
    _cache.clear_caches()
    first = mp.tl.freeze_reference(tiny_ref, cluster_key="cluster", calibrations="anchors")
    small_lots = query.copy()
    small_lots.obs["lot"] = (np.arange(small_lots.n_obs) % 5).astype(str)
    with warnings.catch_warnings():  # lots made up here: their novelty is not the point
        warnings.simplefilter("ignore", UserWarning)
        mp.tl.map_to_reference(
            small_lots, tiny_ref, cluster_key="cluster", method="fast", copy=True
        )
    again = mp.tl.freeze_reference(tiny_ref, cluster_key="cluster", calibrations=["anchors"])
    assert again.uns["reference"]["hash"] == first.uns["reference"]["hash"]
    names = {
        name: sorted(values)
        for name, values in again.uns["reference"]["calibrations"]["entries"].items()
    }
    assert names == {
        name: sorted(values)
        for name, values in first.uns["reference"]["calibrations"]["entries"].items()
    }
    assert set(names) == {
        "held_out_predictions",
        "fold_loadings",
        "novelty_scores",
        "mean_counts",
        "reference_neighbours",
    }


@pytest.mark.parametrize("calibrations", [("scvi",), ("nope",), "anchor"])
def test_unknown_or_unshippable_backends_are_refused_before_any_work(tiny_ref, calibrations):
    with pytest.raises(ValueError, match="calibrations can be shipped|method must be one of"):
        mp.tl.freeze_reference(tiny_ref, cluster_key="cluster", calibrations=calibrations)


def test_shipped_entries_round_trip_as_arrays(frozen_pair, tmp_path):
    _, shipped = frozen_pair
    mp.io.write_reference(shipped, tmp_path / "r.h5ad")
    back = mp.io.read_reference(tmp_path / "r.h5ad").uns["reference"]["calibrations"]["entries"]
    before = shipped.uns["reference"]["calibrations"]["entries"]
    for name, values in before.items():
        for digest, value in values.items():
            pairs = value.items() if isinstance(value, dict) else [("", value)]
            for part, array in pairs:
                stored = back[name][digest][part] if part else back[name][digest]
                assert np.asarray(stored).dtype == np.asarray(array).dtype
                np.testing.assert_array_equal(stored, array)


def test_freezing_a_frozen_reference_ships_anew(frozen_pair):
    """Re-freezing drops what was shipped unless asked again, and then ships the same."""
    plain, shipped = frozen_pair
    bare = mp.tl.freeze_reference(shipped, cluster_key="cluster")
    assert "calibrations" not in bare.uns["reference"]
    assert bare.uns["reference"]["hash"] == plain.uns["reference"]["hash"]
    again = mp.tl.freeze_reference(shipped, cluster_key="cluster", calibrations=("anchors", "fast"))
    assert again.uns["reference"]["hash"] == shipped.uns["reference"]["hash"]
