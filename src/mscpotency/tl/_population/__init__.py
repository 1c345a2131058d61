"""Which cells carry potency: clustering, lot composition, potency association, markers."""

from ._association import potency_association
from ._cluster import cluster
from ._deviation import composition_deviation
from ._fractions import lot_fractions
from ._markers import potency_markers

__all__ = [
    "cluster",
    "composition_deviation",
    "lot_fractions",
    "potency_association",
    "potency_markers",
]
