"""mscpotency.settings: verbosity and progress bars, scanpy style."""

import logging

import pytest

import mscpotency as mp
from mscpotency._settings import progress


@pytest.fixture
def restore_settings():
    verbosity, shown = mp.settings.verbosity, mp.settings.progress
    yield mp.settings
    mp.settings.verbosity, mp.settings.progress = verbosity, shown


def test_verbosity_takes_numbers_and_names_and_sets_the_logger_level(restore_settings):
    mp.settings.verbosity = "info"
    assert mp.settings.verbosity == 2
    assert logging.getLogger("mscpotency").getEffectiveLevel() == logging.INFO
    mp.settings.verbosity = 0
    assert logging.getLogger("mscpotency").getEffectiveLevel() == logging.ERROR


@pytest.mark.parametrize("bad", [4, -1, "loud", True, 1.5])
def test_verbosity_refuses_unknown_levels(restore_settings, bad):
    with pytest.raises(ValueError, match="verbosity must be 0-3"):
        mp.settings.verbosity = bad


def test_progress_bar_appears_after_the_delay_and_is_silenced_by_the_switch(
    restore_settings, capsys
):
    mp.settings.progress_delay = 0
    try:
        assert list(progress(range(3), desc="counting")) == [0, 1, 2]
        assert "counting" in capsys.readouterr().err
        mp.settings.progress = False
        items = range(3)
        assert progress(items, desc="counting") is items
        mp.settings.progress, mp.settings.verbosity = True, 0
        assert progress(items, desc="counting") is items
    finally:
        mp.settings.progress_delay = 2.0
