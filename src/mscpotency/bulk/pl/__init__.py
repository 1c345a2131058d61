"""Plots of the bulk results."""

from ._plots import (
    consensus,
    fit_propensity,
    rank_association,
    validate_markers,
    validation_scatter,
)

__all__ = [
    "consensus",
    "fit_propensity",
    "rank_association",
    "validate_markers",
    "validation_scatter",
]
