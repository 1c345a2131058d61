"""Lots as replicates: pseudobulk markers and per-gene association with potency.

Cells are not replicates; lots are. Two lot-level views of the genes:

- :func:`pseudobulk_markers`: for every lot, the summed counts of the potency cluster's
  cells and of the lot's other cells (log2 CPM); the per-lot log fold changes are tested
  with an exact paired rank test across lots (Wilcoxon signed-rank, its null distribution
  counted over all 2^n sign flips, ties and zero differences included), next to the
  cell-level rank of :func:`mscpotency.tl.potency_markers`.
- :func:`gene_association`: the lot pseudobulk expression of every gene (inside the
  potency cluster, or over the whole lot) against potency with the package's Spearman
  kernel (exact p at small n, BH FDR): the gene-level route to a potency marker.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from ... import _keys, _registry, _stats
from ..._provenance import record
from ..._validate import (
    check_counts,
    count_matrix,
    lots_of,
    require_min_lots,
    require_obs_column,
    require_uns,
)
from .._population._association import lot_outcome

#: Default ``key_added`` of the tools in this module.
PSEUDOBULK_MARKERS = "pseudobulk_markers"
GENE_ASSOCIATION = "gene_association"
#: Up to this many lots the signed-rank test enumerates all 2^n sign flips.
SIGNED_RANK_EXACT_MAX_N = 16


# --------------------------------------------------------------------------- kernels
def pseudobulk(
    X,
    lot_codes: np.ndarray,
    n_lots: int,
    mask: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Summed counts per lot (lots x genes) of the cells in ``mask``, and the cells summed."""
    cells = np.arange(X.shape[0]) if mask is None else np.flatnonzero(mask)
    codes = lot_codes[cells]
    indicator = sparse.csr_matrix(
        (np.ones(cells.size), (codes, np.arange(cells.size))), shape=(n_lots, cells.size)
    )
    summed = indicator @ X[cells]
    summed = summed.toarray() if sparse.issparse(summed) else np.asarray(summed)
    return np.asarray(summed, dtype=float), np.bincount(codes, minlength=n_lots)


def log_cpm(counts: np.ndarray, *, prior: float = 1.0) -> np.ndarray:
    """``log2(CPM + prior)`` per row (lot); rows without counts give ``nan``."""
    counts = np.asarray(counts, dtype=float)
    totals = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, np.log2(counts / totals * 1e6 + prior), np.nan)


def signed_rank_test(
    differences: np.ndarray,
    *,
    n_flips: int = 9999,
    random_state: int | np.random.Generator = 0,
) -> tuple[np.ndarray, np.ndarray, str]:
    """Two-sided Wilcoxon signed-rank test of every column (paired differences across lots).

    Midranks of ``|d|`` over all lots (zeros keep their rank but have no sign, Pratt's
    treatment); the statistic ``sum(sign(d) * rank)`` is compared with its distribution over
    all ``2^n`` sign flips (exact, up to 16 lots) or ``n_flips`` random ones.

    Returns
    -------
    statistic, pvalue, method
        Per column; ``pvalue`` is ``nan`` when every difference is zero.
    """
    d = np.asarray(differences, dtype=float)
    n, n_genes = d.shape
    ranks = _stats.midranks(np.abs(d))
    signed = np.sign(d) * ranks
    observed = signed.sum(axis=0)
    magnitude = ranks * (d != 0)
    if n <= SIGNED_RANK_EXACT_MAX_N:
        flips = 1 - 2 * ((np.arange(2**n)[:, None] >> np.arange(n)) & 1)
        method = "exact"
    else:
        rng = np.random.default_rng(random_state)
        flips = rng.choice([-1.0, 1.0], size=(n_flips, n))
        method = "permutation"
    flips = flips.astype(float)
    extreme = np.zeros(n_genes)
    chunk = max(1, 2_000_000 // max(1, flips.shape[0]))
    for start in range(0, n_genes, chunk):
        null = flips @ magnitude[:, start : start + chunk]
        extreme[start : start + chunk] = (
            np.abs(null) >= np.abs(observed[start : start + chunk]) - 1e-9
        ).sum(axis=0)
    pvalue = extreme / flips.shape[0] if method == "exact" else (1 + extreme) / (1 + flips.shape[0])
    pvalue[(d == 0).all(axis=0)] = np.nan
    return observed, pvalue, method


# --------------------------------------------------------------------------- helpers
def _counts_and_lots(adata: AnnData, layer: str | None, lot_key: str):
    if layer is not None and layer not in adata.layers:
        msg = (
            f"adata.layers has no {layer!r}; pass the layer with raw counts (or layer=None for X)."
        )
        raise KeyError(msg)
    X = count_matrix(adata, layer)
    check_counts(X, where=f"adata.layers[{layer!r}]" if layer is not None else "adata.X")
    lots = lots_of(adata, lot_key)
    return (sparse.csr_matrix(X) if sparse.issparse(X) else np.asarray(X)), lots


def _resolve_cluster(
    adata: AnnData, cluster: str | None, cluster_key: str, association_key: str
) -> tuple[str, np.ndarray]:
    labels = require_obs_column(
        adata, cluster_key, what="cluster labels", hint="Run `tl.cluster` first."
    )
    if cluster is None:
        stored = require_uns(adata, association_key, tool="tl.potency_association")
        cluster = str(stored.get("potency_cluster", ""))
        if not cluster:
            msg = f"adata.uns[{association_key!r}] names no potency cluster; pass cluster=."
            raise ValueError(msg)
    values = labels.astype(str).to_numpy()
    known = sorted(set(values))
    if cluster not in known:
        msg = f"unknown cluster {cluster!r} in obs[{cluster_key!r}]; known clusters: {known}"
        raise ValueError(msg)
    return cluster, values == cluster


# --------------------------------------------------------------------------- tools
@record("tl.pseudobulk_markers")
def pseudobulk_markers(
    adata: AnnData,
    cluster: str | None = None,
    *,
    layer: str | None = _keys.COUNTS_LAYER,
    cluster_key: str = _keys.CLUSTER,
    lot_key: str = _keys.LOT,
    association_key: str = _registry.POTENCY_ASSOCIATION.key,
    markers_key: str = _registry.POTENCY_MARKERS.key,
    min_cells: int = 10,
    min_lots: int = 6,
    n_flips: int = 9999,
    random_state: int = 0,
    key_added: str = PSEUDOBULK_MARKERS,
    copy: bool = False,
) -> AnnData | None:
    """Markers of a cluster with lots as replicates: per-lot pseudobulk, exact paired rank test.

    In every lot with at least ``min_cells`` cells in and out of the cluster, the counts of
    the cluster's cells and of the other cells are summed and turned into log2(CPM + 1);
    their difference is the lot's log2 fold change. Across lots, a two-sided Wilcoxon
    signed-rank test (exact over all sign flips up to 16 lots) asks whether a gene is up
    (or down) consistently; BH FDR across genes. With ``n`` lots the smallest attainable
    p is ``2 / 2^n`` (6 lots: 0.031), hence ``min_lots``.

    Parameters
    ----------
    adata
        Cells with raw counts (``layers[layer]`` or X) and cluster labels.
    cluster
        The cluster to describe; default: the potency cluster.
    layer
        Layer with raw counts (``None``: X).
    cluster_key
        obs column of the labels.
    lot_key
        obs column with the lot of each cell.
    association_key
        Where to find the potency cluster when ``cluster`` is ``None``.
    markers_key
        Key of :func:`mscpotency.tl.potency_markers`; when present its cell-level rank is
        shown beside the pseudobulk result.
    min_cells
        Fewest cells in and out of the cluster for a lot to enter.
    min_lots
        Fewest lots for the test.
    n_flips
        Random sign flips above 16 lots.
    random_state
        Seed of the random sign flips.
    key_added
        ``adata.uns`` key of the result.
    copy
        Return a copy instead of writing in place.

    Returns
    -------
    ``None``, or the copy when ``copy=True``. Writes ``adata.uns[key_added]`` with
    ``'table'`` : DataFrame (one row per gene, best first: rank, gene, mean_log2fc,
    median_log2fc, n_lots_up, n_lots, statistic, pvalue, pvalue_method, fdr, cell_rank),
    ``'log2fc'`` : DataFrame (lots x genes of the ranked table's first 50 genes),
    ``'cluster'`` and ``'params'``.
    """
    cluster, inside = _resolve_cluster(adata, cluster, cluster_key, association_key)
    X, lots = _counts_and_lots(adata, layer, lot_key)
    codes = lots.cat.codes.to_numpy()
    n_lots = lots.cat.categories.size
    counts_in, cells_in = pseudobulk(X, codes, n_lots, inside)
    counts_out, cells_out = pseudobulk(X, codes, n_lots, ~inside)
    usable = (cells_in >= min_cells) & (cells_out >= min_cells)
    require_min_lots(
        int(usable.sum()),
        min_lots,
        what=f"an exact paired test with {min_cells}+ cells in and out of {cluster!r}",
    )
    log2fc = log_cpm(counts_in[usable]) - log_cpm(counts_out[usable])
    expressed = (counts_in[usable] + counts_out[usable]).sum(axis=0) > 0
    statistic, pvalue, method = signed_rank_test(
        log2fc[:, expressed], n_flips=n_flips, random_state=random_state
    )
    genes = adata.var_names[expressed].astype(str)
    table = pd.DataFrame(
        {
            "gene": genes,
            "mean_log2fc": log2fc[:, expressed].mean(axis=0),
            "median_log2fc": np.median(log2fc[:, expressed], axis=0),
            "n_lots_up": (log2fc[:, expressed] > 0).sum(axis=0),
            "n_lots": int(usable.sum()),
            "statistic": statistic,
            "pvalue": pvalue,
            "pvalue_method": method,
        }
    )
    table["fdr"] = _stats.benjamini_hochberg(table["pvalue"].to_numpy())
    table = table.sort_values(["pvalue", "mean_log2fc"], ascending=[True, False], kind="stable")
    cell_rank = np.nan
    if markers_key in adata.uns and isinstance(adata.uns[markers_key], dict):
        cell_table = pd.DataFrame(adata.uns[markers_key].get("table", pd.DataFrame()))
        if str(adata.uns[markers_key].get("cluster", "")) == cluster and "rank" in cell_table:
            cell_rank = table["gene"].map(
                dict(zip(cell_table["gene"].astype(str), cell_table["rank"], strict=True))
            )
    table["cell_rank"] = cell_rank
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    table = table.set_index("gene", drop=False)
    table.index.name = None
    top = table["gene"].head(50).tolist()
    lot_names = lots.cat.categories.astype(str)[usable]
    per_lot = pd.DataFrame(
        log2fc[:, expressed], index=pd.Index(lot_names, name=lot_key), columns=genes
    )[top]
    adata = adata.copy() if copy else adata
    adata.uns[key_added] = {
        "table": table,
        "log2fc": per_lot,
        "cluster": cluster,
        "params": {
            "cluster": cluster,
            "layer": layer,
            "cluster_key": cluster_key,
            "lot_key": lot_key,
            "min_cells": min_cells,
            "min_lots": min_lots,
            "n_flips": n_flips,
            "random_state": random_state,
            "pvalue_method": method,
            "lots_used": list(lot_names),
        },
    }
    return adata if copy else None


@record("tl.gene_association")
def gene_association(
    adata: AnnData,
    potency: str | Mapping | pd.Series = _keys.POTENCY,
    *,
    cluster: str | None = None,
    within: Literal["cluster", "lot"] = "cluster",
    layer: str | None = _keys.COUNTS_LAYER,
    cluster_key: str = _keys.CLUSTER,
    lot_key: str = _keys.LOT,
    association_key: str = _registry.POTENCY_ASSOCIATION.key,
    min_cells: int = 5,
    min_lots_expressed: float = 0.5,
    method: _stats.PvalueMethod = "auto",
    alternative: _stats.Alternative = "two-sided",
    n_permutations: int = 9999,
    random_state: int = 0,
    key_added: str = GENE_ASSOCIATION,
    copy: bool = False,
) -> AnnData | None:
    """Spearman association of every gene's lot pseudobulk expression with potency.

    Each lot's counts are summed (over the cluster's cells, ``within="cluster"``, or over
    all its cells, ``within="lot"``) and turned into log2(CPM + 1); every gene is then
    tested against potency across lots with the package's Spearman kernel (exact p over
    all n! orderings at small n, BH FDR across genes). ``within="lot"`` is the bulk-like
    route that needs no clustering: a marker of the potency cluster rises with the
    cluster's share. ``within="cluster"`` asks whether the cluster's cells *themselves*
    express a gene more in potent lots (a per-cell state, not a share).

    Parameters
    ----------
    adata
        Cells with raw counts (``layers[layer]`` or X).
    potency
        obs column with one value per lot, or a lot -> value mapping/Series.
    cluster
        The cluster for ``within="cluster"``; default: the potency cluster.
    within
        ``"cluster"`` or ``"lot"``.
    layer
        Layer with raw counts (``None``: X).
    cluster_key
        obs column of the labels.
    lot_key
        obs column with the lot of each cell.
    association_key
        Where to find the potency cluster when ``cluster`` is ``None``.
    min_cells
        With ``within="cluster"``: every lot needs this many cells in the cluster.
    min_lots_expressed
        A gene is tested when it has counts in at least this share of lots.
    method
        ``"auto"``, ``"exact"`` or ``"permutation"``.
    alternative
        ``"two-sided"``, ``"greater"`` or ``"less"``.
    n_permutations
        Monte-Carlo permutations when not exact.
    random_state
        Seed of the permutations.
    key_added
        ``adata.uns`` key of the result.
    copy
        Return a copy instead of writing in place.

    Returns
    -------
    ``None``, or the copy when ``copy=True``. Writes ``adata.uns[key_added]`` with
    ``'table'`` : DataFrame (one row per tested gene, best first: rank, gene, rho, pvalue,
    pvalue_method, pvalue_asymptotic, fdr, mean_log2cpm, n_lots), ``'expression'`` :
    DataFrame (lots x the first 50 genes, log2 CPM), ``'cluster'`` (or ``None`` for
    ``within="lot"``) and ``'params'``.
    """
    if within not in ("cluster", "lot"):
        msg = f"within must be 'cluster' or 'lot', got {within!r}"
        raise ValueError(msg)
    if not 0 <= min_lots_expressed <= 1:
        msg = f"min_lots_expressed must be a share between 0 and 1, got {min_lots_expressed!r}"
        raise ValueError(msg)
    mask = None
    if within == "cluster":
        cluster, mask = _resolve_cluster(adata, cluster, cluster_key, association_key)
    else:
        cluster = None
    X, lots = _counts_and_lots(adata, layer, lot_key)
    lot_names = pd.Index(lots.cat.categories.astype(str))
    require_min_lots(lot_names.size)
    outcome, potency_name = lot_outcome(adata, potency, lot_names, lot_key)
    codes = lots.cat.codes.to_numpy()
    summed, n_cells = pseudobulk(X, codes, lot_names.size, mask)
    if within == "cluster" and (n_cells < min_cells).any():
        few = {
            str(name): int(c) for name, c in zip(lot_names, n_cells, strict=True) if c < min_cells
        }
        msg = (
            f"lots {few} have fewer than {min_cells} cells in cluster {cluster!r}; their pseudobulk is "
            "too noisy. Lower min_cells, drop those lots, or use within='lot'."
        )
        raise ValueError(msg)
    expression = log_cpm(summed)
    tested = (summed > 0).mean(axis=0) >= min_lots_expressed
    tested &= np.ptp(expression, axis=0) > 0
    if not tested.any():
        msg = "no gene is expressed in enough lots to be tested; lower min_lots_expressed."
        raise ValueError(msg)
    result = _stats.spearman_test(
        expression[:, tested],
        outcome.to_numpy(),
        method=method,
        alternative=alternative,
        n_permutations=n_permutations,
        random_state=random_state,
    )
    genes = adata.var_names[tested].astype(str)
    table = pd.DataFrame(
        {
            "gene": genes,
            "rho": result.rho,
            "pvalue": result.pvalue,
            "pvalue_method": result.pvalue_method,
            "pvalue_asymptotic": result.pvalue_asymptotic,
            "fdr": result.fdr,
            "mean_log2cpm": expression[:, tested].mean(axis=0),
            "n_lots": result.n_lots,
        }
    )
    table = table.sort_values(["pvalue", "rho"], ascending=[True, False], kind="stable")
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    table = table.set_index("gene", drop=False)
    table.index.name = None
    top = table["gene"].head(50).tolist()
    per_lot = pd.DataFrame(
        expression[:, tested], index=pd.Index(lot_names, name=lot_key), columns=genes
    )[top]
    adata = adata.copy() if copy else adata
    adata.uns[key_added] = {
        "table": table,
        "expression": per_lot,
        "cluster": cluster,
        "params": {
            "potency": potency_name,
            "cluster": cluster,
            "within": within,
            "layer": layer,
            "cluster_key": cluster_key,
            "lot_key": lot_key,
            "min_cells": min_cells,
            "min_lots_expressed": min_lots_expressed,
            "method": result.pvalue_method,
            "alternative": alternative,
            "n_permutations": n_permutations,
            "random_state": random_state,
        },
    }
    return adata if copy else None
