"""Tidy tables of the bulk results."""

from ._results import consensus, fit_propensity, marker_counts, rank_association, validate_markers

__all__ = ["consensus", "fit_propensity", "marker_counts", "rank_association", "validate_markers"]
