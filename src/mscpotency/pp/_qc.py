"""Per-lot quality control of cells, with a per-lot report of what was removed."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scanpy as sc
from anndata import AnnData

from .. import _keys
from .._provenance import record
from .._validate import check_counts, count_matrix, lots_of


@record("pp.qc")
def qc(
    adata: AnnData,
    *,
    lot_key: str = _keys.LOT,
    counts_layer: str | None = _keys.COUNTS_LAYER,
    min_genes: int = 200,
    min_counts: int | None = None,
    max_pct_mito: float | None = 20.0,
    mito_prefix: str = "MT-",
    min_cells_per_gene: int = 3,
    mad_counts: float | None = None,
    key_added: str = _keys.QC,
    copy: bool = False,
) -> AnnData | None:
    """Compute QC metrics and remove low-quality cells and rarely detected genes.

    Parameters
    ----------
    adata
        Cells with raw counts in ``layers[counts_layer]`` or, if that layer is absent, in ``X``.
    lot_key
        obs column with the lot of each cell; removals are reported per lot.
    counts_layer
        Layer with raw counts (falls back to ``X`` when absent).
    min_genes
        Cells with fewer detected genes are removed.
    min_counts
        Cells with fewer total counts are removed (``None``: no threshold).
    max_pct_mito
        Cells with a larger percentage of counts in genes starting with ``mito_prefix``
        are removed (``None``: no threshold).
    mito_prefix
        Prefix of mitochondrial gene names.
    min_cells_per_gene
        Genes detected in fewer cells are removed.
    mad_counts
        If set, also remove cells whose log total counts lie more than this many median
        absolute deviations below their own lot's median (per-lot adaptive threshold).
    key_added
        ``adata.uns`` key of the report.
    copy
        Return a filtered copy instead of filtering in place.

    Returns
    -------
    ``None``, or the copy when ``copy=True``. Writes obs ``n_genes_by_counts``,
    ``total_counts``, ``pct_counts_mt``; ``adata.uns[key_added]['per_lot']`` : DataFrame
    (lots x removal reasons, cells before and after) and ``['genes_removed']``.
    """
    lots = lots_of(adata, lot_key)
    X = count_matrix(adata, counts_layer)
    check_counts(X, where="the count matrix" if X is adata.X else f"layers[{counts_layer!r}]")
    adata = adata.copy() if copy else adata
    adata.var["mt"] = adata.var_names.str.upper().str.startswith(mito_prefix.upper())
    layer = counts_layer if counts_layer in adata.layers else None
    sc.pp.calculate_qc_metrics(adata, qc_vars=["mt"], layer=layer, percent_top=None, log1p=False, inplace=True)
    reasons = pd.DataFrame(index=adata.obs_names)
    reasons["min_genes"] = adata.obs["n_genes_by_counts"].to_numpy() < min_genes
    if min_counts is not None:
        reasons["min_counts"] = adata.obs["total_counts"].to_numpy() < min_counts
    if max_pct_mito is not None:
        reasons["max_pct_mito"] = adata.obs["pct_counts_mt"].to_numpy() > max_pct_mito
    if mad_counts is not None:
        reasons["mad_counts"] = _below_lot_mad(adata.obs["total_counts"], lots, mad_counts)
    removed = reasons.any(axis=1).to_numpy()
    report = reasons.groupby(lots.to_numpy(), observed=True).sum().astype(int)
    report.insert(0, "cells_before", lots.value_counts().reindex(report.index).astype(int))
    report["cells_removed"] = pd.Series(removed, index=adata.obs_names).groupby(lots.to_numpy(), observed=True).sum().astype(int)
    report["cells_after"] = report["cells_before"] - report["cells_removed"]
    report.index.name = lot_key
    emptied = report.index[report["cells_after"] == 0].tolist()
    if emptied:
        msg = (
            f"QC would remove every cell of lots {emptied} (reasons per lot:\n{report.loc[emptied]}). "
            "Relax the thresholds or remove these lots explicitly."
        )
        raise ValueError(msg)
    n_cells_detected = np.asarray((count_matrix(adata, counts_layer)[~removed] > 0).sum(axis=0)).ravel()
    gene_removed = n_cells_detected < min_cells_per_gene
    genes_removed = adata.var_names[gene_removed].tolist()
    adata._inplace_subset_obs(~removed)
    if gene_removed.any():
        adata._inplace_subset_var(~gene_removed)
    adata.uns[key_added] = {
        "per_lot": report,
        "genes_removed": genes_removed,
        "params": {
            "min_genes": min_genes, "min_counts": min_counts, "max_pct_mito": max_pct_mito,
            "mito_prefix": mito_prefix, "min_cells_per_gene": min_cells_per_gene,
            "mad_counts": mad_counts, "lot_key": lot_key,
        },
    }
    return adata if copy else None


def _below_lot_mad(total_counts: pd.Series, lots: pd.Series, n_mad: float) -> np.ndarray:
    log_counts = np.log1p(total_counts.to_numpy(dtype=float))
    frame = pd.DataFrame({"lot": lots.to_numpy(), "x": log_counts})
    grouped = frame.groupby("lot", observed=True)["x"]
    median = grouped.transform("median").to_numpy()
    mad = grouped.transform(lambda v: np.median(np.abs(v - np.median(v)))).to_numpy()
    return log_counts < median - n_mad * 1.4826 * mad
