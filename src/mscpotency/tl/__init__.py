"""Tools: clustering, lot composition, potency association and markers."""

from ._association import potency_association
from ._cluster import cluster
from ._deviation import composition_deviation
from ._fractions import lot_fractions
from ._markers import potency_markers
from ._consensus import SignRule, consensus
from ._marker_validation import validate_markers
from ._propensity import propensity_score
from ._rank_association import rank_association

__all__ = ["cluster", "composition_deviation", "lot_fractions", "potency_association", "potency_markers"]
__all__ += ["SignRule", "consensus", "propensity_score", "rank_association", "validate_markers"]
