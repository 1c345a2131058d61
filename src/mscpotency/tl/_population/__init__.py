"""Which cells carry potency: clustering, lot composition, potency association, the search, markers."""

from ._association import potency_association
from ._cluster import cluster
from ._cluster_quality import cluster_quality
from ._deviation import composition_deviation
from ._fractions import lot_fractions
from ._lot_specificity import lot_specificity
from ._markers import potency_markers
from ._search import potency_population

__all__ = [
    "cluster",
    "cluster_quality",
    "composition_deviation",
    "lot_fractions",
    "lot_specificity",
    "potency_association",
    "potency_markers",
    "potency_population",
]
