"""Decisions about new lots: predicted potency and comparability with released lots."""

from ._comparability import comparability
from ._prediction import fit_potency_model, predict_potency

__all__ = ["comparability", "fit_potency_model", "predict_potency"]
