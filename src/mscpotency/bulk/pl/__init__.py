"""Plots of the bulk results."""

from ._plots import (
    marker_overlap,
    marker_validation,
    propensity_scores,
    rank_volcano,
    validation_scatter,
)

__all__ = [
    "marker_overlap",
    "marker_validation",
    "propensity_scores",
    "rank_volcano",
    "validation_scatter",
]
