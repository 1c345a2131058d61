"""Every public call is recorded, and a recorded analysis replays to the same result."""

from __future__ import annotations

import hashlib
import inspect
import json
import re
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

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


# -- views and backed AnnData: refused (or handled) by @record, for every writing tool --------


def _tools():
    namespaces = {"pp": mp.pp, "tl": mp.tl, "bulk.tl": mp.bulk.tl}
    tools = []
    for prefix, module in namespaces.items():
        for name in module.__all__:
            func = getattr(module, name)
            params = inspect.signature(func).parameters
            if inspect.isfunction(func) and next(iter(params)) == "adata":
                tools.append((f"{prefix}.{name}", func))
    return tools


TOOLS = _tools()
WRITERS = [(n, f) for n, f in TOOLS if "copy" in inspect.signature(f).parameters]


def _placeholders(func) -> dict:
    """None for every required argument after ``adata``: the guard runs before any of them."""
    params = list(inspect.signature(func).parameters.values())[1:]
    return {p.name: None for p in params if p.default is inspect.Parameter.empty}


@pytest.fixture(scope="module")
def h5ad_file(tiny_ref, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("backed") / "ref.h5ad"
    tiny_ref.write_h5ad(path)
    return path


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(("name", "func"), WRITERS, ids=[n for n, _ in WRITERS])
def test_a_view_is_refused_or_made_actual_by_every_writing_tool(name, func, tiny_ref):
    parent = tiny_ref.copy()
    view = parent[parent.obs["lot"] != "BM01"]
    before = parent.n_obs, parent.obs.copy(), parent.X.copy()
    if getattr(func, _provenance.VIEWS) == "actualise":
        return  # such a tool is run on a view in test_qc_on_a_view_writes_into_the_view
    with pytest.raises(ValueError, match=rf"{re.escape(name)}: adata is a view .*\.copy\(\)"):
        func(view, **_placeholders(func))
    assert view.is_view and view.n_obs == before[0] - (parent.obs["lot"] == "BM01").sum()
    assert parent.n_obs == before[0] and (parent.X != before[2]).nnz == 0
    pd.testing.assert_frame_equal(parent.obs, before[1])
    assert "mscpotency" not in view.uns or view.uns["mscpotency"] == parent.uns["mscpotency"]


@pytest.mark.parametrize(("name", "func"), TOOLS, ids=[n for n, _ in TOOLS])
@pytest.mark.parametrize("mode", ["r", "r+"])
def test_a_backed_anndata_is_refused_and_its_file_untouched(name, func, mode, h5ad_file):
    digest = _digest(h5ad_file)
    backed = ad.read_h5ad(h5ad_file, backed=mode)
    try:
        with pytest.raises(ValueError, match=r"is backed by the file .*adata\.to_memory\(\)"):
            func(backed, **_placeholders(func))
        if "copy" in inspect.signature(func).parameters:
            with pytest.raises(ValueError, match=r"never writes into your file"):
                func(backed, **_placeholders(func), copy=True)
    finally:
        backed.file.close()
    assert _digest(h5ad_file) == digest


def test_preprocess_on_a_view_is_refused_not_half_done(tiny_train):
    """Issue 14 item 2: X stayed raw counts while uns said normalised."""
    parent = tiny_train.copy()
    view = parent[:300]
    with pytest.raises(ValueError, match=r"pp\.preprocess: adata is a view"):
        mp.pp.preprocess(view)
    assert "preprocess" not in view.uns and "preprocess" not in parent.uns
    done = mp.pp.preprocess(view, copy=True)  # copy=True on a view works as before
    assert done.uns["preprocess"] and not done.is_view and view.is_view


def test_qc_on_a_view_writes_into_the_view(tiny_train):
    """pp.qc handles views (record(views="actualise")): the result lands in the view's object."""
    assert getattr(mp.pp.qc, _provenance.VIEWS) == "actualise", (
        'pp.qc must be decorated with @record("pp.qc", views="actualise")'
    )
    parent = tiny_train.copy()
    view = parent[parent.obs["lot"] != "BM01"]
    n_before = parent.n_obs
    mp.pp.qc(view)  # no ImplicitModificationWarning either (warnings are errors here)
    assert not view.is_view and "qc" in view.uns
    assert list(mp.get.provenance(view)["function"]) == ["pp.qc"]
    assert parent.n_obs == n_before and "qc" not in parent.uns


def test_a_view_with_copy_true_is_computed_and_left_alone(tiny_ref):
    view = tiny_ref[tiny_ref.obs["lot"] != "BM01"]
    out = mp.tl.lot_fractions(view, copy=True)
    assert "BM01" not in mp.get.lot_fractions(out).index
    assert view.is_view


def test_every_tool_is_marked_as_recorded():
    for name, func in TOOLS:
        assert getattr(func, _provenance.RECORDED, None) == name, name


# -- replay runs only the package's own tools ----------------------------------------------


def test_replay_refuses_a_log_naming_a_writer(tiny_train, tiny_ref, tmp_path):
    """Issue 14 item 8: a hand-edited log made io.write_reference write a file."""
    target = tmp_path / "evil.h5ad"
    log = _provenance.read_log(tiny_ref)
    log.append({**log[-1], "function": "io.write_reference", "params": {"path": str(target)}})
    with pytest.raises(ValueError, match=r"replay runs only the package's own tools"):
        mp.replay(tiny_train, log)
    assert not target.exists()


@pytest.mark.parametrize("name", ["pp.qc", "tl.cluster", "bulk.tl.rank_association"])
def test_replayable_names_the_package_tool(name):
    assert getattr(_provenance.replayable(name), _provenance.RECORDED) == name


@pytest.mark.parametrize(
    "name", ["io.read_reference", "get.provenance", "pl.umap", "tl.np", "mscpotency.tl.cluster"]
)
def test_replayable_refuses_anything_else(name):
    with pytest.raises(ValueError, match=re.escape(repr(name))):
        _provenance.replayable(name)
