"""Progress bars and log lines of the long steps (clustering search, simulation)."""

from __future__ import annotations

import logging

import pytest

import mscpotency as mp


@pytest.fixture
def shown():
    """Progress bars on at once (no delay); the previous settings restored afterwards."""
    before = (mp.settings.verbosity, mp.settings.progress, mp.settings.progress_delay)
    mp.settings.progress, mp.settings.progress_delay = True, 0
    yield mp.settings
    mp.settings.verbosity, mp.settings.progress, mp.settings.progress_delay = before


def test_resolution_search_shows_progress_when_on_and_not_when_off(tiny_ref, shown, capsys):
    mp.tl.cluster(tiny_ref, n_clusters=8, key_added="again", copy=True)
    assert "resolution search" in capsys.readouterr().err
    shown.progress = False
    quiet = mp.tl.cluster(tiny_ref, n_clusters=8, key_added="again", copy=True)
    assert "resolution search" not in capsys.readouterr().err
    # the setting never changes the result
    shown.progress = True
    again = mp.tl.cluster(tiny_ref, n_clusters=8, key_added="again", copy=True)
    assert (quiet.obs["again"] == again.obs["again"]).all()


def test_simulation_shows_progress_per_lot(shown, capsys):
    config = mp.datasets.tiny_config()
    mp.datasets.simulate_lots(config)
    assert "simulating lots" in capsys.readouterr().err
    shown.verbosity = 0
    mp.datasets.simulate_lots(config)
    assert "simulating lots" not in capsys.readouterr().err


def test_info_lines_time_each_step(tiny_train, shown, caplog):
    shown.progress = False
    adata = tiny_train.copy()
    with caplog.at_level(logging.INFO, logger="mscpotency"):
        mp.pp.qc(adata)
        mp.pp.preprocess(adata)
        mp.tl.cluster(adata, n_clusters=8)
    messages = "\n".join(r.getMessage() for r in caplog.records)
    for step in ("normalise + log1p", "highly variable genes", "PCA", "kNN graph", "resolution"):
        assert step in messages, step
