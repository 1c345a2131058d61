"""Tools: clustering, lot composition, potency association and markers."""

from ._association import potency_association
from ._cluster import cluster
from ._comparability import comparability
from ._consensus import SignRule, consensus
from ._deviation import composition_deviation
from ._fractions import lot_fractions
from ._mapping import map_to_reference
from ._marker_validation import validate_markers
from ._markers import potency_markers
from ._prediction import fit_potency_model, predict_potency
from ._propensity import propensity_score
from ._pseudobulk import gene_association, pseudobulk_markers
from ._rank_association import rank_association
from ._reference import freeze_reference
from ._second_opinion import count_association, method_agreement, neighbourhood_association
from ._stability import association_stability, influential_lots
from ._validate_potency import marker_by_set, validate_potency

__all__ = [
    "cluster",
    "composition_deviation",
    "lot_fractions",
    "potency_association",
    "potency_markers",
]
__all__ += ["SignRule", "consensus", "propensity_score", "rank_association", "validate_markers"]
__all__ += [
    "association_stability",
    "comparability",
    "count_association",
    "fit_potency_model",
    "gene_association",
    "influential_lots",
    "method_agreement",
    "neighbourhood_association",
    "predict_potency",
    "pseudobulk_markers",
]
__all__ += ["freeze_reference", "map_to_reference", "marker_by_set", "validate_potency"]
