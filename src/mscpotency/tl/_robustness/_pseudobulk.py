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

from typing import Literal

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from ... import _keys, _registry, _stats
from ..._docs import doc_params
from ..._provenance import record
from ..._settings import progress
from ..._stored import potency_cluster, stored
from ..._validate import check_counts, count_matrix, lots_of, require_min_lots, require_obs_column
from ._inputs import Potency, lot_potency

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
    for start in progress(range(0, n_genes, chunk), desc="sign-flip null", unit="chunk"):
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


def _cluster_cells(
    adata: AnnData, cluster: str | None, cluster_key: str, association_key: str
) -> tuple[str, np.ndarray]:
    """The cluster to describe (default: the potency cluster) and which cells are in it."""
    labels = require_obs_column(
        adata, cluster_key, what="cluster labels", hint="Run `tl.cluster` first."
    )
    cluster = potency_cluster(adata, cluster=cluster, association_key=association_key)
    values = labels.astype(str).to_numpy()
    known = sorted(set(values))
    if cluster not in known:
        msg = f"unknown cluster {cluster!r} in obs[{cluster_key!r}]; known clusters: {known}"
        raise ValueError(msg)
    return cluster, values == cluster


def _ranked(table: pd.DataFrame, by: list[str], ascending: list[bool]) -> pd.DataFrame:
    """Genes sorted best first, numbered by ``rank`` and indexed by gene name."""
    table = table.sort_values(by, ascending=ascending, kind="stable")
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    table = table.set_index("gene", drop=False)
    table.index.name = None
    return table


def _top_genes_per_lot(
    values: np.ndarray, lot_names, lot_key: str, genes: pd.Index, table: pd.DataFrame
) -> pd.DataFrame:
    """Lots x the ranked table's first 50 genes of a lots x genes matrix."""
    frame = pd.DataFrame(values, index=pd.Index(lot_names, name=lot_key), columns=genes)
    return frame[table["gene"].head(50).tolist()]


def _cell_rank(adata: AnnData, markers_key: str, cluster: str, genes: pd.Series):
    """Each gene's rank in ``tl.potency_markers`` when that result describes the same cluster."""
    if not isinstance(adata.uns.get(markers_key), dict):
        return np.nan
    markers = stored(adata, _registry.POTENCY_MARKERS, markers_key)
    cell_table = pd.DataFrame(markers.get("table", pd.DataFrame()))
    if str(markers.get("cluster", "")) != cluster or "rank" not in cell_table:
        return np.nan
    return genes.map(dict(zip(cell_table["gene"].astype(str), cell_table["rank"], strict=True)))


# --------------------------------------------------------------------------- tools
@doc_params
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
    key_added: str = _registry.PSEUDOBULK_MARKERS.key,
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
        {adata}
        With raw counts (``layers[layer]`` or X) and cluster labels.
    layer
        {layer}
        A layer that is named must exist.
    markers_key
        Key of :func:`mscpotency.tl.potency_markers`; when present its cell-level rank is
        shown beside the pseudobulk result.
    min_cells
        Fewest cells in and out of the cluster for a lot to enter.
    min_lots
        Fewest lots for the test.
    n_flips
        Random sign flips above 16 lots.

    Returns
    -------
    ``None``, or the copy when ``copy=True``. Writes ``adata.uns[key_added]`` with
    ``'table'`` : DataFrame (one row per gene, best first: rank, gene, mean_log2fc,
    median_log2fc, n_lots_up, n_lots, statistic, pvalue, pvalue_method, fdr, cell_rank),
    ``'log2fc'`` : DataFrame (lots x genes of the ranked table's first 50 genes),
    ``'cluster'`` and ``'params'``.
    """
    cluster, inside = _cluster_cells(adata, cluster, cluster_key, association_key)
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
    expressed = (counts_in[usable] + counts_out[usable]).sum(axis=0) > 0
    log2fc = (log_cpm(counts_in[usable]) - log_cpm(counts_out[usable]))[:, expressed]
    statistic, pvalue, method = signed_rank_test(log2fc, n_flips=n_flips, random_state=random_state)
    genes = adata.var_names[expressed].astype(str)
    table = pd.DataFrame(
        {
            "gene": genes,
            "mean_log2fc": log2fc.mean(axis=0),
            "median_log2fc": np.median(log2fc, axis=0),
            "n_lots_up": (log2fc > 0).sum(axis=0),
            "n_lots": int(usable.sum()),
            "statistic": statistic,
            "pvalue": pvalue,
            "pvalue_method": method,
        }
    )
    table["fdr"] = _stats.benjamini_hochberg(table["pvalue"].to_numpy())
    table["cell_rank"] = _cell_rank(adata, markers_key, cluster, table["gene"])
    table = _ranked(table, ["pvalue", "mean_log2fc"], [True, False])
    lot_names = lots.cat.categories.astype(str)[usable]
    adata = adata.copy() if copy else adata
    adata.uns[key_added] = {
        "table": table,
        "log2fc": _top_genes_per_lot(log2fc, lot_names, lot_key, genes, table),
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


def _check_gene_options(within: str, min_lots_expressed: float) -> None:
    if within not in ("cluster", "lot"):
        msg = f"within must be 'cluster' or 'lot', got {within!r}"
        raise ValueError(msg)
    if not 0 <= min_lots_expressed <= 1:
        msg = f"min_lots_expressed must be a share between 0 and 1, got {min_lots_expressed!r}"
        raise ValueError(msg)


def _require_cells_per_lot(
    n_cells: np.ndarray, lot_names: pd.Index, min_cells: int, cluster: str
) -> None:
    """Every lot needs ``min_cells`` cells in the cluster for a within-cluster pseudobulk."""
    few = {str(name): int(c) for name, c in zip(lot_names, n_cells, strict=True) if c < min_cells}
    if few:
        msg = (
            f"lots {few} have fewer than {min_cells} cells in cluster {cluster!r}; their pseudobulk is "
            "too noisy. Lower min_cells, drop those lots, or use within='lot'."
        )
        raise ValueError(msg)


def _tested_genes(summed: np.ndarray, expression: np.ndarray, min_share: float) -> np.ndarray:
    """Genes with counts in at least ``min_share`` of lots and not constant across lots."""
    tested = (summed > 0).mean(axis=0) >= min_share
    tested &= np.ptp(expression, axis=0) > 0
    if not tested.any():
        msg = "no gene is expressed in enough lots to be tested; lower min_lots_expressed."
        raise ValueError(msg)
    return tested


@doc_params
@record("tl.gene_association")
def gene_association(
    adata: AnnData,
    potency: Potency = _keys.POTENCY,
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
    key_added: str = _registry.GENE_ASSOCIATION.key,
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
        {adata}
        With raw counts (``layers[layer]`` or X).
    potency
        {potency}
        Or a lot -> value mapping/Series.
    cluster
        {cluster}
        Used with ``within="cluster"``.
    within
        ``"cluster"`` or ``"lot"``.
    layer
        {layer}
        A layer that is named must exist.
    min_cells
        With ``within="cluster"``: every lot needs this many cells in the cluster.
    min_lots_expressed
        A gene is tested when it has counts in at least this share of lots.

    Returns
    -------
    ``None``, or the copy when ``copy=True``. Writes ``adata.uns[key_added]`` with
    ``'table'`` : DataFrame (one row per tested gene, best first: rank, gene, rho, pvalue,
    pvalue_method, pvalue_asymptotic, fdr, mean_log2cpm, n_lots), ``'expression'`` :
    DataFrame (lots x the first 50 genes, log2 CPM), ``'cluster'`` (or ``None`` for
    ``within="lot"``) and ``'params'``.
    """
    _check_gene_options(within, min_lots_expressed)
    mask = None
    if within == "cluster":
        cluster, mask = _cluster_cells(adata, cluster, cluster_key, association_key)
    else:
        cluster = None
    X, lots = _counts_and_lots(adata, layer, lot_key)
    lot_names = pd.Index(lots.cat.categories.astype(str))
    require_min_lots(lot_names.size)
    outcome, potency_name = lot_potency(
        adata, potency, lot_names, lot_key, association_key=association_key
    )
    summed, n_cells = pseudobulk(X, lots.cat.codes.to_numpy(), lot_names.size, mask)
    if within == "cluster":
        _require_cells_per_lot(n_cells, lot_names, min_cells, cluster)
    expression = log_cpm(summed)
    tested = _tested_genes(summed, expression, min_lots_expressed)
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
    table = _ranked(table, ["pvalue", "rho"], [True, False])
    adata = adata.copy() if copy else adata
    adata.uns[key_added] = {
        "table": table,
        "expression": _top_genes_per_lot(expression[:, tested], lot_names, lot_key, genes, table),
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
