"""Tidy DataFrames of the robustness tools: stability, influence, second opinions, pseudobulk genes."""

from __future__ import annotations

from typing import Literal

import pandas as pd
from anndata import AnnData

from .. import _registry
from .._docs import doc_params
from .._stored import stored_table

__all__ = [
    "association_stability",
    "count_association",
    "gene_association",
    "influential_lots",
    "method_agreement",
    "neighbourhood_association",
    "pseudobulk_markers",
]


@doc_params
def association_stability(
    adata: AnnData,
    *,
    key: str = _registry.ASSOCIATION_STABILITY.key,
    kind: Literal["resolutions", "subsamples", "clusters", "summary"] = "resolutions",
) -> pd.DataFrame:
    """Results of :func:`mscpotency.tl.association_stability`.

    Parameters
    ----------
    kind
        {kind}
        ``"resolutions"``: one row per resolution (matched cluster, Jaccard, rho, p,
        recovered); ``"subsamples"``: one row per subsample; ``"clusters"``: mean subsample
        Jaccard per reference cluster; ``"summary"``: one row with the shares recovered.

    Returns
    -------
    The table, a copy.
    """
    return stored_table(adata, _registry.ASSOCIATION_STABILITY, kind, key)


@doc_params
def influential_lots(adata: AnnData, *, key: str = _registry.INFLUENTIAL_LOTS.key) -> pd.DataFrame:
    """One row per lot: rho without it, shift, robust z, p without it, influential flag.

    Returns
    -------
    The table of :func:`mscpotency.tl.influential_lots`, a copy.
    """
    return stored_table(adata, _registry.INFLUENTIAL_LOTS, key=key)


@doc_params
def count_association(
    adata: AnnData, *, key: str = _registry.COUNT_ASSOCIATION.key, sort: bool = True
) -> pd.DataFrame:
    """One row per cluster: quasi-binomial slope on potency, permutation p, FDR.

    Parameters
    ----------
    sort
        Strongest positive slope first (else in the stored order).

    Returns
    -------
    The table of :func:`mscpotency.tl.count_association`, a copy.
    """
    table = stored_table(adata, _registry.COUNT_ASSOCIATION, key=key)
    return table.sort_values("coef", ascending=False) if sort else table


@doc_params
def neighbourhood_association(
    adata: AnnData,
    *,
    key: str = _registry.NEIGHBOURHOOD_ASSOCIATION.key,
    kind: Literal["nhoods", "clusters"] = "nhoods",
) -> pd.DataFrame:
    """Neighbourhood test: one row per neighbourhood, or per cluster (shares significant).

    Parameters
    ----------
    kind
        {kind}
        ``"nhoods"``: one row per neighbourhood; ``"clusters"``: one row per cluster.

    Returns
    -------
    The table of :func:`mscpotency.tl.neighbourhood_association`, a copy.
    """
    return stored_table(adata, _registry.NEIGHBOURHOOD_ASSOCIATION, kind, key)


@doc_params
def method_agreement(
    adata: AnnData,
    *,
    key: str = _registry.METHOD_AGREEMENT.key,
    kind: Literal["table", "summary"] = "table",
) -> pd.DataFrame:
    """Every method's verdict per cluster, or the one-row summary of the potency cluster.

    Parameters
    ----------
    kind
        {kind}
        ``"table"``: one row per cluster (every method's effect, p-value and call, and
        whether they agree); ``"summary"``: one row (methods calling the potency cluster
        positive, and a sentence in ``text``).

    Returns
    -------
    The table of :func:`mscpotency.tl.method_agreement`, a copy.
    """
    return stored_table(adata, _registry.METHOD_AGREEMENT, kind, key)


@doc_params
def pseudobulk_markers(
    adata: AnnData, *, key: str = _registry.PSEUDOBULK_MARKERS.key
) -> pd.DataFrame:
    """One row per gene, best first: per-lot pseudobulk log2FC and exact signed-rank p.

    Returns
    -------
    The table of :func:`mscpotency.tl.pseudobulk_markers`, a copy.
    """
    return stored_table(adata, _registry.PSEUDOBULK_MARKERS, key=key)


@doc_params
def gene_association(
    adata: AnnData,
    *,
    key: str = _registry.GENE_ASSOCIATION.key,
    kind: Literal["table", "expression"] = "table",
) -> pd.DataFrame:
    """Spearman of every gene's lot pseudobulk expression with potency, or that expression.

    Parameters
    ----------
    kind
        {kind}
        ``"table"``: one row per gene, best first; ``"expression"``: lots x the first 50
        genes (log2 CPM).

    Returns
    -------
    The table of :func:`mscpotency.tl.gene_association`, a copy.
    """
    return stored_table(adata, _registry.GENE_ASSOCIATION, kind, key)
