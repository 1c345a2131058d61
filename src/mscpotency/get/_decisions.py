"""Tidy DataFrames of the decision tools: the potency model, its predictions, comparability."""

from __future__ import annotations

from typing import Literal

import pandas as pd
from anndata import AnnData

from .. import _registry
from .._docs import doc_params
from .._stored import stored_table

__all__ = ["comparability", "fit_potency_model", "predict_potency"]


@doc_params
def fit_potency_model(
    adata: AnnData,
    *,
    key: str = _registry.POTENCY_MODEL.key,
    kind: Literal["lots", "coefficients", "cv"] = "lots",
) -> pd.DataFrame:
    """The fitted potency model of :func:`mscpotency.tl.fit_potency_model`.

    Parameters
    ----------
    kind
        {kind}
        ``"lots"``: one row per training lot (leave-one-out prediction and interval);
        ``"coefficients"``: one row per term; ``"cv"``: one row of cross-validated error.

    Returns
    -------
    The table, a copy.
    """
    return stored_table(adata, _registry.POTENCY_MODEL, kind, key)


@doc_params
def predict_potency(adata: AnnData, *, key: str = _registry.POTENCY_PREDICTION.key) -> pd.DataFrame:
    """One row per query lot: prediction, interval, outside-range flag (and errors if measured).

    Returns
    -------
    The table of :func:`mscpotency.tl.predict_potency`, a copy.
    """
    return stored_table(adata, _registry.POTENCY_PREDICTION, key=key)


@doc_params
def comparability(
    adata: AnnData,
    *,
    key: str = _registry.COMPARABILITY.key,
    kind: Literal["table", "limits", "values"] = "table",
) -> pd.DataFrame:
    """Comparability of new lots with the reference lots (:func:`mscpotency.tl.comparability`).

    Parameters
    ----------
    kind
        {kind}
        ``"table"``: the verdict per new lot; ``"limits"``: the tolerance limits per
        attribute; ``"values"``: every lot's values.

    Returns
    -------
    The table, a copy.
    """
    return stored_table(adata, _registry.COMPARABILITY, kind, key)
