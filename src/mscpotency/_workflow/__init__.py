"""The user's jobs end to end: ``analyse`` a lab's lots, ``release`` new lots, ``report``."""

from ._release import read_lot_model, share_interval, verdict_rule, write_lot_model
from ._report import report
from ._run import analyse, release_lots, write_analysis, write_release
from ._settings import AnalysisSettings, load_settings

__all__ = [
    "AnalysisSettings",
    "analyse",
    "load_settings",
    "read_lot_model",
    "release_lots",
    "report",
    "share_interval",
    "verdict_rule",
    "write_analysis",
    "write_lot_model",
    "write_release",
]
