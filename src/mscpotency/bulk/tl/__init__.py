"""Tools on bulk lines x genes panels."""

from .._types import Consensus, SignRule
from ._consensus import consensus
from ._propensity import apply_propensity, fit_propensity
from ._rank_association import rank_association
from ._validation import validate_markers

__all__ = [
    "Consensus",
    "SignRule",
    "apply_propensity",
    "consensus",
    "fit_propensity",
    "rank_association",
    "validate_markers",
]
