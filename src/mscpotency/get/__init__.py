"""Accessors: every stored result as a tidy DataFrame."""

from ._decisions import (
    association_stability,
    comparability,
    count_association,
    gene_association,
    influential_lots,
    method_agreement,
    neighbourhood_association,
    potency_model,
    potency_prediction,
    pseudobulk_markers,
)
from ._mapping import (
    mapping_calibration,
    mapping_qc,
    marker_by_set,
    potency_validation,
    reference_info,
)
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
__all__ += [
    "association_stability",
    "comparability",
    "count_association",
    "gene_association",
    "influential_lots",
    "method_agreement",
    "neighbourhood_association",
    "potency_model",
    "potency_prediction",
    "pseudobulk_markers",
]
__all__ += [
    "mapping_calibration",
    "mapping_qc",
    "marker_by_set",
    "potency_validation",
    "reference_info",
]
