"""Tidy DataFrames of the reference analysis: QC, lot fractions, deviation, association, markers."""

from __future__ import annotations

from typing import Literal

import pandas as pd
from anndata import AnnData

from .. import _keys, _registry
from .._docs import doc_params
from .._provenance import read_log
from .._stored import stored_table
from .._validate import lots_of

__all__ = [
    "cluster_quality",
    "composition_deviation",
    "lot_fractions",
    "lot_table",
    "potency_association",
    "potency_markers",
    "potency_population",
    "provenance",
    "qc",
]

#: Name of the value column of ``lot_fractions(long=True)``, per table.
_LONG_VALUE = {"fractions": "fraction", "counts": "count", "n_cells": "n_cells"}


@doc_params
def qc(
    adata: AnnData,
    *,
    key: str = _registry.QC.key,
    kind: Literal["per_lot", "thresholds", "lots_flagged", "genes_removed"] = "per_lot",
) -> pd.DataFrame:
    """What :func:`mscpotency.pp.qc` removed, and by which thresholds.

    Parameters
    ----------
    kind
        {kind}
        ``"per_lot"``: per lot, cells before QC, cells removed per reason, cells after;
        ``"thresholds"``: every filter's metric, direction, threshold and rule (per lot
        for data-adaptive thresholds); ``"lots_flagged"``: lots QC took above
        ``max_removed_share`` or below the minimum lot size; ``"genes_removed"``: the genes
        removed.

    Returns
    -------
    The table, a copy.
    """
    return stored_table(adata, _registry.QC, kind, key)


@doc_params
def cluster_quality(
    adata: AnnData,
    *,
    key: str = _registry.CLUSTER_QUALITY.key,
    kind: Literal["table", "summary"] = "table",
) -> pd.DataFrame:
    """Which clusters are made of low-quality cells, from :func:`mscpotency.tl.cluster_quality`.

    Parameters
    ----------
    kind
        {kind}
        ``"table"``: one row per cluster (n_cells, median_genes, median_counts,
        median_pct_mito, genes_mads, counts_mads, pct_mito_mads, low_quality);
        ``"summary"``: one row (n_clusters, the low-quality clusters, n_cells_low_quality,
        share_low_quality).

    Returns
    -------
    The table, a copy.
    """
    return stored_table(adata, _registry.CLUSTER_QUALITY, kind, key)


@doc_params
def lot_fractions(
    adata: AnnData,
    *,
    key: str = _registry.LOT_FRACTIONS.key,
    kind: Literal["fractions", "counts", "n_cells"] = "fractions",
    long: bool = False,
) -> pd.DataFrame:
    """Lots x clusters fractions (or counts) from :func:`mscpotency.tl.lot_fractions`.

    Parameters
    ----------
    kind
        {kind}
        ``"fractions"`` (lots x clusters, rows sum to 1), ``"counts"`` (lots x clusters,
        cells) or ``"n_cells"`` (cells per lot).
    long
        Return a tidy frame instead: columns lot, cluster and ``fraction`` (or ``count``);
        for ``"n_cells"`` columns lot and ``n_cells``.

    Returns
    -------
    The table, a copy.
    """
    table = stored_table(adata, _registry.LOT_FRACTIONS, kind, key)
    if not long:
        return table
    lot_name = table.index.name or "lot"
    if kind == "n_cells":
        return table.rename_axis(index=lot_name).reset_index()
    tidy = table.rename_axis(index=lot_name, columns="cluster").stack().rename(_LONG_VALUE[kind])
    return tidy.reset_index()


@doc_params
def composition_deviation(
    adata: AnnData,
    *,
    key: str = _registry.COMPOSITION_DEVIATION.key,
    kind: Literal["per_lot", "pooled", "log2_ratio"] = "per_lot",
) -> pd.DataFrame:
    """How far each lot's composition lies from the pool (:func:`mscpotency.tl.composition_deviation`).

    Parameters
    ----------
    kind
        {kind}
        ``"per_lot"``: one row per lot, its distance from the pooled composition, its
        sampling p and the most deviating cluster; ``"pooled"``: the pooled fractions;
        ``"log2_ratio"``: lots x clusters, log2 of each lot's fraction over the pooled one.

    Returns
    -------
    The table, a copy.
    """
    return stored_table(adata, _registry.COMPOSITION_DEVIATION, kind, key)


@doc_params
def potency_association(
    adata: AnnData,
    *,
    key: str = _registry.POTENCY_ASSOCIATION.key,
    kind: Literal["table", "lots"] = "table",
    sort: bool = True,
) -> pd.DataFrame:
    """The association of cluster shares with potency (:func:`mscpotency.tl.potency_association`).

    Parameters
    ----------
    kind
        {kind}
        ``"table"``: one row per cluster, rho, exact/permutation p, FDR, CI and
        leave-one-lot-out range; ``"lots"``: lots x (potency, cluster fractions), the
        values the association was computed on.
    sort
        Sort ``"table"`` by rho, strongest positive first (the ``"lots"`` keep their order).

    Returns
    -------
    The table, a copy.
    """
    table = stored_table(adata, _registry.POTENCY_ASSOCIATION, kind, key)
    if kind == "table" and sort:
        return table.sort_values("rho", ascending=False)
    return table


@doc_params
def potency_markers(adata: AnnData, *, key: str = _registry.POTENCY_MARKERS.key) -> pd.DataFrame:
    """Top marker genes of the potency cluster with their per-lot consistency.

    Returns
    -------
    One row per gene (:func:`mscpotency.tl.potency_markers`), a copy.
    """
    return stored_table(adata, _registry.POTENCY_MARKERS, "table", key)


@doc_params
def potency_population(
    adata: AnnData,
    *,
    key: str = _registry.POTENCY_POPULATION.key,
    kind: Literal["candidates", "summary", "lots", "overlap", "boundary"] = "candidates",
) -> pd.DataFrame:
    """The search for the potency population (:func:`mscpotency.tl.potency_population`).

    Parameters
    ----------
    kind
        {kind}
        ``"candidates"``: one row per candidate population, the strongest first (rho,
        per-candidate permutation p, size, overlap with the population found,
        ``lot_split_lift`` and ``lot_split``, set aside before the test as not a cell state
        of its own);
        ``"summary"``: one row, what was found beside the fixed-k potency cluster
        (``found``, ``population``, ``n_cells``, ``rho``, ``pvalue`` selection-aware,
        ``pvalue_naive``; the candidate before boundary refinement, ``candidate_n_cells``,
        ``candidate_rho``, ``boundary_added``, ``boundary_removed``, ``boundary_merged``
        (fixed-k clusters merged whole as one population with it); ``fixed_k_cluster``,
        ``fixed_k_n_cells``, ``fixed_k_rho``, ``jaccard_with_fixed_k`` and ``changed``,
        False when the search kept the fixed-k cluster; ``lot_splits_skipped``, the
        candidates set aside before the test at least as strong as the one named);
        ``"lots"``: lots x (potency, share of the population found, share of the fixed-k
        potency cluster); ``"overlap"``: every fixed-k cluster's cells inside the
        population found and its Jaccard index with it; ``"boundary"``: one
        row, the population's boundary rule (``population`` and ``neighbour`` labels, the
        ``representation``, the discriminant ``axis`` in it, the neighbour's ``centre``
        and ``spread`` on it, the ``threshold`` and ``quantile``), which
        ``tl.freeze_reference`` ships and ``tl.map_to_reference`` applies to query cells
        (absent when nothing was found or ``boundary_quantile=None``).

    Returns
    -------
    The table, a copy.
    """
    return stored_table(adata, _registry.POTENCY_POPULATION, kind, key)


@doc_params
def provenance(adata: AnnData) -> pd.DataFrame:
    """The record of every ``pp``/``tl`` call on ``adata``, oldest first.

    Returns
    -------
    One row per call: function, params, random_state, input_fingerprint, versions, time
    and seconds.
    """
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


#: obs column prefixes that are never lot attributes: ground truth and per-cell QC metrics.
_NOT_LOT_ATTRIBUTES = (_keys.TRUTH_PREFIX, "total_counts", "pct_counts", "n_genes", "log1p_")


@doc_params
def lot_table(
    adata: AnnData, *, lot_key: str = _keys.LOT, columns: list[str] | None = None
) -> pd.DataFrame:
    """One row per lot with every obs column that is constant within lots.

    Parameters
    ----------
    columns
        Columns to return; by default every lot-constant column except ground truth
        (``true_*``) and per-cell QC metrics (scanpy's names: ``total_counts*``,
        ``pct_counts*``, ``n_genes*``, ``log1p_*``), which can be constant by chance (no
        ribosomal gene measured) but are never lot attributes.

    Returns
    -------
    Lots x columns.
    """
    lots = lots_of(adata, lot_key)
    obs = adata.obs.drop(columns=[lot_key])
    if columns is None:
        candidates = [c for c in obs.columns if not str(c).startswith(_NOT_LOT_ATTRIBUTES)]
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
