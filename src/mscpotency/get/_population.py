"""Tidy DataFrames of the results the tools store in ``adata.uns``."""

from __future__ import annotations

from typing import Literal

import pandas as pd
from anndata import AnnData

from .. import _keys, _registry
from .._provenance import read_log
from .._validate import lots_of, require_uns

__all__ = [
    "composition_deviation",
    "lot_fractions",
    "lot_table",
    "potency_association",
    "potency_lots",
    "potency_markers",
    "provenance",
    "qc_report",
    "stored_table",
]


def stored_table(adata: AnnData, key: str, field: str, *, tool: str | None = None) -> pd.DataFrame:
    """``adata.uns[key][field]`` as a DataFrame copy, or a ``KeyError`` naming the tool to run."""
    stored = require_uns(adata, key, tool=tool)
    if not isinstance(stored, dict) or field not in stored:
        msg = f"adata.uns[{key!r}] has no {field!r}; was it written by `{tool or _registry.producer_of(key)}`?"
        raise KeyError(msg)
    return pd.DataFrame(stored[field]).copy()


def lot_fractions(
    adata: AnnData,
    *,
    key: str = _registry.LOT_FRACTIONS.key,
    kind: Literal["fractions", "counts"] = "fractions",
    long: bool = False,
) -> pd.DataFrame:
    """Lots x clusters fractions (or counts) from :func:`mscpotency.tl.lot_fractions`.

    With ``long=True`` a tidy frame with columns lot, cluster, value.
    """
    if kind not in ("fractions", "counts"):
        msg = f"kind must be 'fractions' or 'counts', got {kind!r}"
        raise ValueError(msg)
    table = stored_table(adata, key, kind, tool="tl.lot_fractions")
    if not long:
        return table
    lot_name = table.index.name or "lot"
    tidy = (
        table.rename_axis(index=lot_name, columns="cluster")
        .stack()
        .rename(kind[:-1] if kind == "fractions" else "count")
    )
    return tidy.reset_index()


def composition_deviation(
    adata: AnnData, *, key: str = _registry.COMPOSITION_DEVIATION.key
) -> pd.DataFrame:
    """One row per lot: distance from the pooled composition and the most deviating cluster."""
    return stored_table(adata, key, "per_lot", tool="tl.composition_deviation")


def potency_association(
    adata: AnnData, *, key: str = _registry.POTENCY_ASSOCIATION.key, sort: bool = True
) -> pd.DataFrame:
    """One row per cluster: rho, exact/permutation p, FDR, CI and leave-one-lot-out range.

    Sorted by rho, strongest positive first, unless ``sort=False``.
    """
    table = stored_table(adata, key, "table", tool="tl.potency_association")
    return table.sort_values("rho", ascending=False) if sort else table


def potency_lots(adata: AnnData, *, key: str = _registry.POTENCY_ASSOCIATION.key) -> pd.DataFrame:
    """Lots x (potency, cluster fractions) as used by :func:`mscpotency.tl.potency_association`."""
    return stored_table(adata, key, "lots", tool="tl.potency_association")


def potency_markers(adata: AnnData, *, key: str = _registry.POTENCY_MARKERS.key) -> pd.DataFrame:
    """Top marker genes of the potency cluster with their per-lot consistency."""
    return stored_table(adata, key, "table", tool="tl.potency_markers")


def qc_report(adata: AnnData, *, key: str = _registry.QC.key) -> pd.DataFrame:
    """Per lot: cells before QC, cells removed per reason, cells after."""
    return stored_table(adata, key, "per_lot", tool="pp.qc")


def provenance(adata: AnnData) -> pd.DataFrame:
    """The record of every ``pp``/``tl`` call on ``adata``, oldest first."""
    entries = read_log(adata)
    columns = [
        "function",
        "params",
        "random_state",
        "input_fingerprint",
        "versions",
        "time",
        "seconds",
    ]
    return pd.DataFrame(entries, columns=columns)


def lot_table(
    adata: AnnData, *, lot_key: str = _keys.LOT, columns: list[str] | None = None
) -> pd.DataFrame:
    """One row per lot with every obs column that is constant within lots.

    Parameters
    ----------
    adata
        Cells with ``obs[lot_key]``.
    lot_key
        obs column with the lot of each cell.
    columns
        Columns to return; by default every lot-constant column except ground truth
        (``true_*``) is returned.
    """
    lots = lots_of(adata, lot_key)
    obs = adata.obs.drop(columns=[lot_key])
    if columns is None:
        candidates = [c for c in obs.columns if not str(c).startswith(_keys.TRUTH_PREFIX)]
    else:
        missing = [c for c in columns if c not in obs.columns]
        if missing:
            msg = f"obs has no columns {missing}"
            raise KeyError(msg)
        candidates = list(columns)
    grouped = obs[candidates].groupby(lots.to_numpy(), observed=True)
    constant = [c for c in candidates if (grouped[c].nunique(dropna=False) <= 1).all()]
    if columns is not None and len(constant) < len(candidates):
        varying = sorted(set(candidates) - set(constant))
        msg = f"obs columns {varying} are not constant within lots"
        raise ValueError(msg)
    table = grouped[constant].first()
    table.index.name = lot_key
    return table
