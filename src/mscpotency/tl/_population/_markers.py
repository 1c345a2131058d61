"""Top marker genes of the potency cluster, with their consistency across lots."""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import stats

from ... import _keys, _registry
from ..._cell_stats import GroupMoments, group_moments, rank_sum_z
from ..._docs import doc_params
from ..._provenance import record
from ..._stats import benjamini_hochberg
from ..._stored import potency_cluster
from ..._validate import gene_symbols, lots_of, require_obs_column
from ._scanpy_markers import store_rank_genes_groups

_METHODS = ("wilcoxon", "t-test", "t-test_overestim_var")
#: rank_by="logfoldchange": the genes ranked by fold change are significant at this BH FDR
#: and detected in at least this share of the cluster's cells (scanpy's
#: ``filter_rank_genes_groups`` default ``min_in_group_fraction``).
_SPECIFIC_FDR = 0.05
_SPECIFIC_MIN_PCT_IN = 0.25


@doc_params
@record("tl.potency_markers")
def potency_markers(
    adata: AnnData,
    cluster: str | None = None,
    *,
    cluster_key: str = _keys.CLUSTER,
    lot_key: str = _keys.LOT,
    association_key: str = _registry.POTENCY_ASSOCIATION.key,
    n_genes: int = 20,
    method: Literal["wilcoxon", "t-test", "t-test_overestim_var"] = "wilcoxon",
    layer: str | None = None,
    min_cells: int = 5,
    rank_by: Literal["score", "logfoldchange"] = "logfoldchange",
    key_added: str = _registry.POTENCY_MARKERS.key,
    copy: bool = False,
) -> AnnData | None:
    """Rank the genes that mark one cluster against all other cells, and check them per lot.

    Cells are not replicates: next to the cell-level test (the statistics of scanpy's
    ``rank_genes_groups`` for the cluster against the rest), each top gene is checked
    inside every lot (cluster cells vs the lot's other cells, mean log expression) and a
    two-sided sign test across lots says whether it is up consistently, not in a few lots
    only.

    Parameters
    ----------
    adata
        {adata}
        Log-normalised (``pp.preprocess``), with cluster labels.
    association_key
        {association_key}
        Read only when ``cluster`` is ``None``.
    n_genes
        How many top genes to report.
    method
        {method}
        The cell-level test, as in ``rank_genes_groups``: ``"wilcoxon"`` (rank-sum z, no tie
        correction), ``"t-test"`` (Welch) or ``"t-test_overestim_var"``.
    layer
        {layer}
        It holds log-normalised expression.
    min_cells
        A lot enters the per-lot check when it has at least this many cells in and out
        of the cluster.
    rank_by
        ``"logfoldchange"`` (default): the genes significant at ``pvalue_adj <= 0.05``,
        up, and detected in at least 25% of the cluster's cells, by fold change, then the
        others by score: the cluster's specific markers, on in it and mostly off
        elsewhere (at thousands of cells many p-values underflow to 0 and Seurat's
        ``FindMarkers`` ties them by fold change the same way). ``"score"``: by the test's
        score, scanpy's ``rank_genes_groups`` order (the gene that best separates the
        cluster, often a highly expressed programme gene up a little everywhere in it).
        The planted marker of the simulated potency population ranks 1st by fold change
        in every hard-preset and study seed measured, by score in 7 of 10 hard seeds and
        in a minority of study seeds (``benchmarks/results/potency_markers_rank_by.md``);
        the statistics are the same either way, only the order differs.

    Returns
    -------
    ``None``, or the copy when ``copy=True``. Writes ``adata.uns[key_added]`` with
    ``'table'`` : DataFrame (rank, gene, score, logfoldchange, pvalue, pvalue_adj,
    pct_in, pct_out, n_lots_up, n_lots_tested, lot_sign_pvalue, median_lot_log2fc; and
    ``symbol`` after ``gene`` when ``var['gene_symbols']`` holds symbols other than the
    gene names, e.g. for Ensembl ids),
    ``'cluster'`` and ``'params'``.

    Notes
    -----
    Scores, fold changes (scanpy's: of ``expm1`` of the mean log expression), p-values
    (BH-adjusted over all genes) and detection rates are those ``sc.tl.rank_genes_groups(...,
    groups=[cluster], reference="rest", pts=True)`` gives, to rounding (tested), but they
    are computed in bounded memory: one pass over row blocks collects per lot and side the
    sums, squares and detection counts of every gene (which also give the per-lot check),
    and the rank sums hold only the smaller side's values sorted (``_cell_stats``). scanpy
    copies the rest of the matrix (and its detection pattern) first: at 10^5 cells that
    was the peak memory of the whole analysis. The same code runs on a Dask-backed ``X``
    (``io.read_lots_lazy``), block by block; ties in the score are ordered by gene position.
    """
    labels = require_obs_column(
        adata, cluster_key, what="cluster labels", hint="Run `tl.cluster` first."
    )
    lots = lots_of(adata, lot_key)
    cluster = potency_cluster(adata, cluster=cluster, association_key=association_key)
    in_cluster = _cluster_cells(labels, cluster, cluster_key)
    X = _expression(adata, method, layer)
    n_genes = min(n_genes, adata.n_vars)
    n_lots = lots.cat.categories.size
    # one pass: per lot x side (out = 0, in = 1) sums, squares and detection of every gene
    moments = group_moments(
        X, lots.cat.codes.to_numpy().astype(np.int64) * 2 + in_cluster, 2 * n_lots
    )
    sides = moments.merge(np.arange(2 * n_lots) % 2, 2)
    table = _cell_level_table(X, in_cluster, sides, adata.var_names, method)
    table = table.iloc[_marker_order(table, rank_by)[:n_genes]]
    table = table.join(_per_lot_consistency(moments, table.index, adata.var_names, min_cells))
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    table.insert(1, "gene", table.index.to_numpy())
    _add_symbols(table, adata.var)
    table.index.name = None
    adata = adata.copy() if copy else adata
    adata.uns[key_added] = {
        "table": table,
        "cluster": cluster,
        "params": {
            "cluster_key": cluster_key,
            "lot_key": lot_key,
            "n_genes": n_genes,
            "method": method,
            "layer": layer,
            "min_cells": min_cells,
            "rank_by": rank_by,
        },
    }
    store_rank_genes_groups(adata, key_added)
    return adata if copy else None


def _add_symbols(table: pd.DataFrame, var: pd.DataFrame) -> None:
    """A ``symbol`` column beside ``gene`` where the gene names are not the symbols (e.g. Ensembl ids)."""
    symbols, _ = gene_symbols(var, None)
    if not symbols.equals(pd.Index(var.index.astype(str))):
        table.insert(2, "symbol", symbols[var.index.get_indexer(table.index)].to_numpy())


def _marker_order(table: pd.DataFrame, rank_by: str) -> np.ndarray:
    """Row order of the marker table: by score, or specific significant genes by fold change."""
    by_score = np.argsort(-table["score"].to_numpy(), kind="stable")
    if rank_by == "score":
        return by_score
    specific = (
        (table["pvalue_adj"].to_numpy() <= _SPECIFIC_FDR)
        & (table["pct_in"].to_numpy() >= _SPECIFIC_MIN_PCT_IN)
        & (table["logfoldchange"].to_numpy() > 0)
    )
    lfc = np.where(specific, table["logfoldchange"].to_numpy(), -np.inf)
    first = np.argsort(-lfc, kind="stable")[: int(specific.sum())]
    return np.concatenate([first, by_score[~specific[by_score]]])


def _cluster_cells(labels: pd.Series, cluster: str, cluster_key: str) -> np.ndarray:
    """Boolean mask of the cluster's cells; it must be a known label with 2+ cells in and out."""
    categories = [str(c) for c in labels.astype("category").cat.categories]
    if cluster not in categories:
        msg = f"unknown cluster {cluster!r} in obs[{cluster_key!r}]; known clusters: {categories}"
        raise ValueError(msg)
    in_cluster = labels.astype(str).to_numpy() == cluster
    if in_cluster.sum() < 2 or (~in_cluster).sum() < 2:
        msg = f"cluster {cluster!r} has {int(in_cluster.sum())} cells; markers need at least 2 in and out"
        raise ValueError(msg)
    return in_cluster


def _expression(adata: AnnData, method: str, layer: str | None):
    """The expression matrix to test (``X`` or a layer), after checking the method and layer."""
    if method not in _METHODS:
        msg = f"method must be one of {list(_METHODS)}, got {method!r}"
        raise ValueError(msg)
    if layer is not None and layer not in adata.layers:
        msg = f"layer {layer!r} not found; available layers: {list(adata.layers)}"
        raise KeyError(msg)
    return adata.layers[layer] if layer is not None else adata.X


def _cell_level_table(
    X, in_cluster: np.ndarray, sides: GroupMoments, var_names: pd.Index, method: str
) -> pd.DataFrame:
    """Per gene: the cluster-vs-rest test as scanpy's ``rank_genes_groups`` reports it."""
    mean_out, mean_in = sides.mean()
    n_in, n_out = int(sides.n[1]), int(sides.n[0])
    if method == "wilcoxon":
        scores = rank_sum_z(X, in_cluster, nonzero=sides.nonzero[::-1])
        pvalues = 2 * stats.norm.sf(np.abs(scores))
    else:
        var_out, var_in = sides.var(ddof=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            scores, pvalues = stats.ttest_ind_from_stats(
                mean1=mean_in,
                std1=np.sqrt(var_in),
                nobs1=n_in,
                mean2=mean_out,
                std2=np.sqrt(var_out),
                # scanpy's "overestim_var": the rest's variance as if it had the cluster's size
                nobs2=n_out if method == "t-test" else n_in,
                equal_var=False,
            )
        scores[np.isnan(scores)] = 0  # equal means and no variance (an undetected gene)
        pvalues[np.isnan(pvalues)] = 1
    pct_out, pct_in = sides.fraction_nonzero()
    return pd.DataFrame(
        {
            "score": scores,
            # scanpy's fold change: of the expm1 of the mean log expression
            "logfoldchange": np.log2((np.expm1(mean_in) + 1e-9) / (np.expm1(mean_out) + 1e-9)),
            "pvalue": pvalues,
            "pvalue_adj": benjamini_hochberg(pvalues),
            "pct_in": pct_in,
            "pct_out": pct_out,
        },
        index=var_names.copy(),
    )


def _per_lot_consistency(
    moments: GroupMoments, genes: pd.Index, var_names: pd.Index, min_cells: int
) -> pd.DataFrame:
    """Inside every lot with enough cells in and out: the mean difference of each gene, and a sign test."""
    columns = var_names.get_indexer(genes)
    means = moments.mean()[:, columns]
    n_out, n_in = moments.n[0::2], moments.n[1::2]
    tested = (n_in >= min_cells) & (n_out >= min_cells)
    frame = pd.DataFrame(index=genes.copy())
    if not tested.any():
        frame["n_lots_up"] = 0
        frame["n_lots_tested"] = 0
        frame["lot_sign_pvalue"] = np.nan
        frame["median_lot_log2fc"] = np.nan
        return frame
    diffs = (means[1::2] - means[0::2])[tested]
    n_up = (diffs > 0).sum(axis=0)
    n_tested = diffs.shape[0]
    frame["n_lots_up"] = n_up
    frame["n_lots_tested"] = n_tested
    frame["lot_sign_pvalue"] = [stats.binomtest(int(k), n_tested, 0.5).pvalue for k in n_up]
    # X is natural-log expression: convert the mean difference to log2
    frame["median_lot_log2fc"] = np.median(diffs, axis=0) / np.log(2)
    return frame
