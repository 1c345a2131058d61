"""Tidy DataFrames of the decision tools.

Stability, influence, prediction, comparability, second opinions and pseudobulk genes.
"""

from __future__ import annotations

from typing import Literal

import pandas as pd
from anndata import AnnData

from .._validate import require_uns
from ..tl._decisions._comparability import COMPARABILITY
from ..tl._decisions._prediction import POTENCY_MODEL, POTENCY_PREDICTION
from ..tl._robustness._pseudobulk import GENE_ASSOCIATION, PSEUDOBULK_MARKERS
from ..tl._robustness._second_opinion import (
    COUNT_ASSOCIATION,
    METHOD_AGREEMENT,
    NEIGHBOURHOOD_ASSOCIATION,
)
from ..tl._robustness._stability import ASSOCIATION_STABILITY, INFLUENTIAL_LOTS
from ._population import stored_table

__all__ = [
    "association_stability",
    "comparability",
    "count_association",
    "gene_association",
    "influential_lots",
    "method_agreement",
    "neighbourhood_association",
    "potency_model",
    "potency_prediction",
    "pseudobulk_markers",
]


def _one_row(adata: AnnData, key: str, field: str, tool: str) -> pd.DataFrame:
    """A stored dict of scalars (``uns[key][field]``) as a one-row DataFrame."""
    stored = require_uns(adata, key, tool=tool)
    if not isinstance(stored, dict) or field not in stored:
        msg = f"adata.uns[{key!r}] has no {field!r}; was it written by `{tool}`?"
        raise KeyError(msg)
    return pd.DataFrame([dict(stored[field])])


def _check_kind(kind: str, allowed: tuple[str, ...]) -> None:
    if kind not in allowed:
        msg = f"kind must be one of {allowed}, got {kind!r}"
        raise ValueError(msg)


def association_stability(
    adata: AnnData,
    *,
    key: str = ASSOCIATION_STABILITY,
    kind: Literal["resolutions", "subsamples", "clusters", "summary"] = "resolutions",
) -> pd.DataFrame:
    """Results of :func:`mscpotency.tl.association_stability`.

    ``kind="resolutions"``: one row per resolution (matched cluster, Jaccard, rho, p,
    recovered); ``"subsamples"``: one row per subsample; ``"clusters"``: mean bootstrap
    Jaccard per reference cluster; ``"summary"``: one row with the shares recovered.
    """
    _check_kind(kind, ("resolutions", "subsamples", "clusters", "summary"))
    if kind == "summary":
        return _one_row(adata, key, "summary", "tl.association_stability")
    return stored_table(adata, key, kind, tool="tl.association_stability")


def influential_lots(adata: AnnData, *, key: str = INFLUENTIAL_LOTS) -> pd.DataFrame:
    """One row per lot: rho without it, shift, robust z, p without it, influential flag."""
    return stored_table(adata, key, "table", tool="tl.influential_lots")


def potency_model(
    adata: AnnData,
    *,
    key: str = POTENCY_MODEL,
    kind: Literal["lots", "coefficients", "cv"] = "lots",
) -> pd.DataFrame:
    """The fitted potency model: per-lot leave-one-out predictions, coefficients, or CV error (one row)."""
    _check_kind(kind, ("lots", "coefficients", "cv"))
    if kind == "cv":
        return _one_row(adata, key, "cv", "tl.fit_potency_model")
    return stored_table(adata, key, kind, tool="tl.fit_potency_model")


def potency_prediction(adata: AnnData, *, key: str = POTENCY_PREDICTION) -> pd.DataFrame:
    """One row per query lot: prediction, interval, outside-range flag (and errors if measured)."""
    return stored_table(adata, key, "table", tool="tl.predict_potency")


def comparability(
    adata: AnnData,
    *,
    key: str = COMPARABILITY,
    kind: Literal["table", "limits", "values"] = "table",
) -> pd.DataFrame:
    """Comparability of new lots: verdict per lot, tolerance limits per attribute, or every lot's values."""
    _check_kind(kind, ("table", "limits", "values"))
    return stored_table(adata, key, kind, tool="tl.comparability")


def count_association(
    adata: AnnData, *, key: str = COUNT_ASSOCIATION, sort: bool = True
) -> pd.DataFrame:
    """One row per cluster: quasi-binomial slope on potency, permutation p, FDR (strongest positive first)."""
    table = stored_table(adata, key, "table", tool="tl.count_association")
    return table.sort_values("coef", ascending=False) if sort else table


def neighbourhood_association(
    adata: AnnData,
    *,
    key: str = NEIGHBOURHOOD_ASSOCIATION,
    kind: Literal["nhoods", "clusters"] = "nhoods",
) -> pd.DataFrame:
    """Neighbourhood test: one row per neighbourhood, or per cluster (shares significant)."""
    _check_kind(kind, ("nhoods", "clusters"))
    return stored_table(adata, key, kind, tool="tl.neighbourhood_association")


def method_agreement(adata: AnnData, *, key: str = METHOD_AGREEMENT) -> pd.DataFrame:
    """One row per cluster: every method's effect, p-value and call, and whether they agree."""
    return stored_table(adata, key, "table", tool="tl.method_agreement")


def pseudobulk_markers(adata: AnnData, *, key: str = PSEUDOBULK_MARKERS) -> pd.DataFrame:
    """One row per gene, best first: per-lot pseudobulk log2FC and exact signed-rank p."""
    return stored_table(adata, key, "table", tool="tl.pseudobulk_markers")


def gene_association(adata: AnnData, *, key: str = GENE_ASSOCIATION) -> pd.DataFrame:
    """One row per gene, best first: Spearman of lot pseudobulk expression with potency."""
    return stored_table(adata, key, "table", tool="tl.gene_association")
