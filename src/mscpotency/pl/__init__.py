"""Plots: one figure per question.

Every plot reads a stored result (a ``KeyError`` names the tool to run first), takes
``ax=None, show=None, return_fig=False`` and returns the Figure (``return_fig=True``), the
Axes (``show=False``) or ``None`` once shown. Clusters keep one colour in every plot, taken
from ``adata.uns[f"{cluster_key}_colors"]`` as in scanpy.
"""

from ._association import association_overview, potency_scatter
from ._composition import composition_deviation, lot_composition
from ._decisions import (
    association_stability,
    comparability,
    influential_lots,
    method_agreement,
    neighbourhood_association,
    potency_prediction,
)
from ._embedding import umap
from ._mapping import (
    mapping_calibration,
    mapping_confidence,
    mapping_umap,
    marker_by_set,
    potency_validation,
)
from ._markers import markers
from ._qc import qc_per_lot

__all__ = [
    "association_overview",
    "composition_deviation",
    "lot_composition",
    "markers",
    "potency_scatter",
    "qc_per_lot",
    "umap",
]
__all__ += [
    "association_stability",
    "comparability",
    "influential_lots",
    "method_agreement",
    "neighbourhood_association",
    "potency_prediction",
]
__all__ += [
    "mapping_calibration",
    "mapping_confidence",
    "mapping_umap",
    "marker_by_set",
    "potency_validation",
]
