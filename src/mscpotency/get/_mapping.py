"""Tidy DataFrames of reference mapping and query-side validation results."""

from __future__ import annotations

from typing import Literal

import pandas as pd
from anndata import AnnData

from .._validate import require_uns
from ._population import stored_table

__all__ = [
    "mapping_calibration",
    "mapping_qc",
    "marker_by_set",
    "potency_validation",
    "reference_info",
]


_MAPPING = "predicted"
_VALIDATE = "validate_potency"
_MARKER = "marker_by_set"


def mapping_qc(adata: AnnData, *, key: str = _MAPPING) -> pd.DataFrame:
    """Per query lot: cells, mean prediction and mapping scores, shares of low-confidence cells.

    From :func:`mscpotency.tl.map_to_reference`.
    """
    return stored_table(adata, key, "per_lot", tool="tl.map_to_reference")


def mapping_calibration(
    adata: AnnData, *, key: str = _MAPPING, which: Literal["after", "before"] = "after"
) -> pd.DataFrame:
    """Reliability of the prediction score on held-out reference lots, per score bin.

    ``which="before"`` gives the table before temperature scaling. Empty when the mapping
    was not calibrated.
    """
    if which not in ("after", "before"):
        msg = f"which must be 'after' or 'before', got {which!r}"
        raise ValueError(msg)
    stored = require_uns(adata, key, tool="tl.map_to_reference")
    calibration = stored.get("calibration", {})
    table = calibration.get(f"reliability_{which}")
    if table is None:
        return pd.DataFrame(columns=["low", "high", "n_cells", "mean_score", "accuracy"])
    return pd.DataFrame(table).copy()


def potency_validation(
    adata: AnnData,
    *,
    key: str = _VALIDATE,
    table: Literal["per_set", "combined", "lots"] = "per_set",
) -> pd.DataFrame:
    """Results of :func:`mscpotency.tl.validate_potency`.

    ``table="per_set"``: rho and exact p per set; ``"combined"``: pooled tests across sets;
    ``"lots"``: each lot's potency-like share with its bootstrap interval.
    """
    if table not in ("per_set", "combined", "lots"):
        msg = f"table must be 'per_set', 'combined' or 'lots', got {table!r}"
        raise ValueError(msg)
    return stored_table(adata, key, table, tool="tl.validate_potency")


def marker_by_set(
    adata: AnnData, *, key: str = _MARKER, table: Literal["tests", "sets", "lots"] = "tests"
) -> pd.DataFrame:
    """Results of :func:`mscpotency.tl.marker_by_set`: tests between sets, per-set or per-lot summaries."""
    if table not in ("tests", "sets", "lots"):
        msg = f"table must be 'tests', 'sets' or 'lots', got {table!r}"
        raise ValueError(msg)
    return stored_table(adata, key, table, tool="tl.marker_by_set")


def reference_info(frozen: AnnData) -> pd.DataFrame:
    """One row describing a frozen reference: hash, labels, sizes, potency label, creation time."""
    stored = require_uns(frozen, "reference", tool="tl.freeze_reference")
    fields = [
        "hash",
        "label_key",
        "lot_key",
        "potency_label",
        "n_cells",
        "n_genes",
        "created",
        "source_fingerprint",
    ]
    row = {field: stored.get(field) for field in fields}
    row["labels"] = ", ".join(map(str, stored.get("labels", [])))
    return pd.DataFrame([row])
