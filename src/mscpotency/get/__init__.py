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
