"""Every public call is recorded, and a recorded analysis replays to the same result."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

import mscpotency as mp
from mscpotency import _provenance


def test_every_step_of_the_reference_analysis_is_logged(tiny_ref):
    log = mp.get.provenance(tiny_ref)
    assert list(log["function"]) == [
        "pp.qc",
        "pp.preprocess",
        "tl.cluster",
        "tl.lot_fractions",
        "tl.composition_deviation",
        "tl.potency_association",
        "tl.potency_markers",
    ]
    first = log.iloc[0]
    assert first["versions"]["scanpy"] and first["versions"]["mscpotency"]
    assert len(first["input_fingerprint"]) == 24
    cluster = log.set_index("function").loc["tl.cluster"]
    assert cluster["params"]["n_clusters"] == 8 and cluster["random_state"] == 0
    assert all(s >= 0 for s in log["seconds"])


def test_fingerprint_sees_changed_values_and_names(tiny_train):
    a = tiny_train.copy()
    base = _provenance.fingerprint(a)
    assert _provenance.fingerprint(a.copy()) == base
    a.X = a.X.copy()
    a.X.data[0] += 1
    assert _provenance.fingerprint(a) != base
    b = tiny_train.copy()
    b.obs_names = [f"x{i}" for i in range(b.n_obs)]
    assert _provenance.fingerprint(b) != base


def test_nested_calls_are_logged_once(tiny_train):
    parts = {lot: tiny_train[tiny_train.obs["lot"] == lot].copy() for lot in ["BM01", "BM02"]}
    pooled = mp.pp.pool_lots(parts)
    assert list(mp.get.provenance(pooled)["function"]) == ["pp.pool_lots"]


def test_log_survives_h5ad_round_trip(tiny_ref, tmp_path: Path):
    path = tmp_path / "ref.h5ad"
    tiny_ref.write_h5ad(path)
    import anndata as ad

    back = ad.read_h5ad(path)
    pd.testing.assert_series_equal(
        mp.get.provenance(back)["function"], mp.get.provenance(tiny_ref)["function"]
    )
    assert isinstance(back.uns["potency_association"]["table"], pd.DataFrame)


def test_replay_reproduces_the_analysis_bit_for_bit(tiny_train, tiny_ref):
    replayed = mp.replay(tiny_train, tiny_ref)
    assert (replayed.obs["cluster"] == tiny_ref.obs["cluster"]).all()
    pd.testing.assert_frame_equal(
        mp.get.potency_association(replayed), mp.get.potency_association(tiny_ref)
    )
    pd.testing.assert_frame_equal(
        mp.get.potency_markers(replayed), mp.get.potency_markers(tiny_ref)
    )


def test_replay_refuses_other_data(tiny_train, tiny_ref):
    import pytest

    other = tiny_train[:-1].copy()
    with pytest.raises(ValueError, match="fingerprint"):
        mp.replay(other, tiny_ref)


def test_parameters_are_json(tiny_ref):
    for entry in tiny_ref.uns["mscpotency"]["log"]:
        parsed = json.loads(str(entry))
        assert set(parsed) >= {"function", "params", "versions", "input_fingerprint", "time"}
    assert _provenance.to_jsonable(Path("/tmp/x")) == "/tmp/x"
    assert _provenance.to_jsonable(np.float32(0.5)) == 0.5
