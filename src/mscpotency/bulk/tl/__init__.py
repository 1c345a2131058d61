"""Tools on bulk lines x genes panels."""

from ._consensus import SignRule, consensus
from ._propensity import propensity_score
from ._rank_association import rank_association
from ._validation import validate_markers

__all__ = ["SignRule", "consensus", "propensity_score", "rank_association", "validate_markers"]
