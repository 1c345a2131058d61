"""Accessors: every stored result as a tidy DataFrame."""

from ._results import (
    composition_deviation,
    lot_fractions,
    lot_table,
    potency_association,
    potency_lots,
    potency_markers,
    provenance,
    qc_report,
    stored_table,
)
from ._bulk import consensus_candidates, marker_counts, marker_validation, propensity, propensity_loadings, rank_association

__all__ = [
    "composition_deviation",
    "lot_fractions",
    "lot_table",
    "potency_association",
    "potency_lots",
    "potency_markers",
    "provenance",
    "qc_report",
    "stored_table",
]
__all__ += ["consensus_candidates", "marker_counts", "marker_validation", "propensity", "propensity_loadings", "rank_association"]
