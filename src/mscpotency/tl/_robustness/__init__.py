"""How sure is the answer: stability, influential lots, second opinions, pseudobulk genes."""

from ._pseudobulk import gene_association, pseudobulk_markers
from ._second_opinion import count_association, method_agreement, neighbourhood_association
from ._stability import association_stability, influential_lots

__all__ = [
    "association_stability",
    "count_association",
    "gene_association",
    "influential_lots",
    "method_agreement",
    "neighbourhood_association",
    "pseudobulk_markers",
]
