"""Tidy tables of the bulk results."""

from ._results import (
    consensus_candidates,
    marker_counts,
    marker_validation,
    propensity,
    propensity_loadings,
    rank_association,
)

__all__ = [
    "consensus_candidates",
    "marker_counts",
    "marker_validation",
    "propensity",
    "propensity_loadings",
    "rank_association",
]
