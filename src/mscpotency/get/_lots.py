"""Tidy DataFrames of lot-specificity diagnostics: which clusters are one or a few lots' cells."""

from __future__ import annotations

from typing import Literal

import pandas as pd
from anndata import AnnData

from .. import _registry
from .._docs import doc_params
from .._stored import stored_table

__all__ = ["integrate", "lot_specificity"]


@doc_params
def lot_specificity(
    adata: AnnData,
    *,
    key: str = _registry.LOT_SPECIFICITY.key,
    kind: Literal["table", "summary"] = "table",
) -> pd.DataFrame:
    """Lot-specificity diagnostics from :func:`mscpotency.tl.lot_fractions` / ``tl.lot_specificity``.

    Parameters
    ----------
    kind
        {kind}
        ``"table"``: one row per cluster (n_cells, n_lots_contributing, top_lot,
        top_lot_share, top_lot_expected, entropy_ratio, g_statistic, pvalue,
        pvalue_method, lot_dominated); ``"summary"``: one row (n_clusters,
        n_lot_dominated, the flagged clusters, ari_cluster_lot, n_lots).

    Returns
    -------
    The table, a copy.
    """
    return stored_table(adata, _registry.LOT_SPECIFICITY, kind, key)


@doc_params
def integrate(
    adata: AnnData,
    *,
    key: str = _registry.INTEGRATE.key,
    kind: Literal["metrics"] = "metrics",
) -> pd.DataFrame:
    """Integration quality from :func:`mscpotency.pp.integrate`, beside the uncorrected run.

    Parameters
    ----------
    kind
        {kind}
        ``"metrics"``: rows ``uncorrected`` and the method; median iLISI (lot mixing) and,
        when labels were given, cLISI (label purity), raw and scaled to [0, 1].

    Returns
    -------
    The table, a copy.
    """
    return stored_table(adata, _registry.INTEGRATE, kind, key)
