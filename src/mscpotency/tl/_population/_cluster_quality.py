"""Which clusters are made of low-quality cells (damaged cells or empty droplets, not a state).

Per-cell QC thresholds that fit one dataset keep part of another's damaged cells, and those
cells then form a cluster of their own: few genes, few counts, often many mitochondrial
reads. Such a cluster is not a cell state: it must not be named a potency population, and
query cells that map onto it carry no readable state. :func:`cluster_quality_table` scores
each cluster by its *median cell*: every cell's QC metrics are placed in MADs from its own
lot's median (so a lot sequenced shallower is not mistaken for damage), and a cluster whose
median cell lies ``n_mads`` MADs below in both detected genes and total counts is low
quality: its typical cell would be removed by ``pp.qc(thresholds="mad", n_mads=n_mads)``.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from anndata import AnnData

from ... import _keys, _registry
from ..._docs import doc_params
from ..._provenance import record
from ..._stored import LowQualityClusterWarning
from ..._validate import lots_of, require_obs_column

__all__ = ["cluster_quality", "cluster_quality_table"]

#: The per-cell QC metrics of ``pp.qc`` (and ``sc.pp.calculate_qc_metrics``) this reads.
GENES, COUNTS, MITO = "n_genes_by_counts", "total_counts", "pct_counts_mt"

_HINT = (
    "Run mp.pp.qc first (it writes the metrics; mp.pp.qc(adata, min_genes=0, "
    "max_pct_mito=None, min_cells_per_gene=0) computes them without removing cells)."
)

#: The scale of a MAD that makes it a standard deviation for normal data (R's ``mad``).
_MAD_SCALE = 1.4826


def lot_mads(values: np.ndarray, lots: np.ndarray) -> np.ndarray:
    """Each value's distance from its lot's median, in (scaled) MADs of that lot.

    A lot whose metric does not vary (MAD 0) gives 0 for its cells: nothing can be an
    outlier there, as in ``pp.qc(thresholds="mad")``.
    """
    values = np.asarray(values, dtype=np.float64)
    out = np.zeros_like(values)
    for lot in pd.unique(lots):
        cells = lots == lot
        centre = np.median(values[cells])
        spread = _MAD_SCALE * np.median(np.abs(values[cells] - centre))
        if spread > 0:
            out[cells] = (values[cells] - centre) / spread
    return out


def cluster_quality_table(
    obs: pd.DataFrame, labels: pd.Series, lots: pd.Series, n_mads: float
) -> pd.DataFrame:
    """One row per cluster: its cells' median QC metrics, their MADs, and the flag.

    ``*_mads`` is the median over the cluster's cells of each cell's distance from its lot's
    median (``log1p`` of genes and counts, the mitochondrial percentage as it is), in MADs.
    ``low_quality``: genes and counts both at most ``-n_mads``. The mitochondrial distance
    is reported, not required (targeted panels measure no mitochondrial gene).
    """
    lots = lots.astype(str).to_numpy()
    per_cell = pd.DataFrame(
        {
            "genes_mads": lot_mads(np.log1p(obs[GENES].to_numpy(dtype=float)), lots),
            "counts_mads": lot_mads(np.log1p(obs[COUNTS].to_numpy(dtype=float)), lots),
        },
        index=obs.index,
    )
    metrics = [GENES, COUNTS]
    if MITO in obs:
        per_cell["pct_mito_mads"] = lot_mads(obs[MITO].to_numpy(dtype=float), lots)
        metrics.append(MITO)
    grouped_cells = per_cell.groupby(labels.to_numpy(), observed=True, sort=False)
    grouped_metrics = obs[metrics].groupby(labels.to_numpy(), observed=True, sort=False)
    table = grouped_metrics.median().rename(
        columns={GENES: "median_genes", COUNTS: "median_counts", MITO: "median_pct_mito"}
    )
    table.insert(0, "n_cells", grouped_cells.size())
    table = table.join(grouped_cells.median())
    if MITO not in obs:
        table["median_pct_mito"] = np.nan
        table["pct_mito_mads"] = np.nan
    table["low_quality"] = (table["genes_mads"] <= -n_mads) & (table["counts_mads"] <= -n_mads)
    order = [str(c) for c in labels.cat.categories if c in table.index]
    table.index = table.index.astype(str)
    table.index.name = labels.name
    columns = ["n_cells", "median_genes", "median_counts", "median_pct_mito"]
    columns += ["genes_mads", "counts_mads", "pct_mito_mads", "low_quality"]
    return table.loc[order, columns]


def _message(table: pd.DataFrame, cluster_key: str, key_added: str, n_mads: float) -> str:
    flagged = table[table["low_quality"]]
    others = table[~table["low_quality"]]
    typical = (
        f"{others['median_genes'].median():,.0f} genes and {others['median_counts'].median():,.0f}"
        " counts in the other clusters' median cells"
        if len(others)
        else "no other cluster to compare with"
    )
    described = "; ".join(
        f"{name}: {row.n_cells:,} cells, median {row.median_genes:,.0f} genes, "
        f"{row.median_counts:,.0f} counts"
        for name, row in flagged.iterrows()
    )
    return (
        f"obs[{cluster_key!r}] has clusters of low-quality cells ({described}; against "
        f"{typical}): their median cell lies at least {n_mads:g} MADs below its lot's median "
        "in genes and counts. They are damaged cells, not a state: remove their cells "
        f"(adata = adata[~adata.obs[{key_added!r}]].copy()) or use stricter QC "
        "(mp.pp.qc(adata, thresholds='mad')), then analyse (or map) again."
    )


@doc_params
@record("tl.cluster_quality")
def cluster_quality(
    adata: AnnData,
    *,
    cluster_key: str = _keys.CLUSTER,
    lot_key: str = _keys.LOT,
    n_mads: float = 3.0,
    key_added: str = _registry.CLUSTER_QUALITY.key,
    copy: bool = False,
) -> AnnData | None:
    """Flag clusters made of low-quality cells: damaged cells that QC kept, not a cell state.

    Every cell's detected genes and total counts (``log1p``) are placed in MADs from its
    own lot's median (scaled by 1.4826, as R's ``mad``); a cluster is low quality when its
    median cell lies at least ``n_mads`` MADs below in both, i.e. when its typical cell would
    be removed by ``pp.qc(thresholds="mad", n_mads=n_mads)``. Works on any labels: the
    reference's clusters, :func:`mscpotency.tl.potency_population`'s, or the labels
    :func:`mscpotency.tl.map_to_reference` transferred to new lots (query cells that map
    onto a reference cluster of damaged cells are damaged cells: on the hard preset, seeds
    1, 3, 5 and 6, exactly the simulated low-quality cells of the held-out lots).

    On the simulator's presets the fixed QC thresholds keep about half of the damaged cells
    and they form one cluster ~10 MADs below in genes and ~6 in counts; the other clusters
    lie within 0.2 MADs. On real data a state with fewer genes (small, quiescent cells) lies
    a MAD or two below, not three.

    Parameters
    ----------
    adata
        {adata}
        Needs ``obs['n_genes_by_counts']`` and ``obs['total_counts']`` (written by
        :func:`mscpotency.pp.qc` or ``sc.pp.calculate_qc_metrics``; ``obs['pct_counts_mt']``
        is reported where present) and ``obs[cluster_key]``.
    cluster_key
        {cluster_key}
    lot_key
        {lot_key}
        Each cell is compared with its own lot.
    n_mads
        How many MADs below its lot's median a cluster's median cell must lie, in genes
        and in counts.
    key_added
        {key_added}
        Also the obs column flagging the cells of low-quality clusters.

    Returns
    -------
    ``None``, or the copy when ``copy=True``. Writes ``obs[key_added]`` (bool: the cell's
    cluster is low quality) and ``uns[key_added]`` with ``'table'`` (one row per cluster:
    n_cells, median_genes, median_counts, median_pct_mito, genes_mads, counts_mads,
    pct_mito_mads, low_quality), ``'summary'`` (n_clusters, low_quality: the flagged
    clusters, n_cells_low_quality, share_low_quality) and ``'params'``. Warns
    (``LowQualityClusterWarning``) naming the flagged clusters.

    Examples
    --------
    >>> mp.tl.cluster_quality(adata)  # doctest: +SKIP
    >>> mp.get.cluster_quality(adata).query("low_quality")  # doctest: +SKIP
    """
    labels = require_obs_column(adata, cluster_key, what="the cluster of each cell")
    for metric in (GENES, COUNTS):
        require_obs_column(adata, metric, what="a per-cell QC metric", hint=_HINT)
    labels = labels.astype("category").cat.remove_unused_categories()
    table = cluster_quality_table(adata.obs, labels, lots_of(adata, lot_key), n_mads)
    flagged = table.index[table["low_quality"]].tolist()
    in_flagged = labels.astype(str).isin(flagged).to_numpy()
    adata = adata.copy() if copy else adata
    adata.obs[key_added] = in_flagged
    adata.uns[key_added] = {
        "table": table,
        "summary": {
            "n_clusters": len(table),
            "low_quality": flagged,
            "n_cells_low_quality": int(in_flagged.sum()),
            "share_low_quality": float(in_flagged.mean()),
        },
        "params": {"cluster_key": cluster_key, "lot_key": lot_key, "n_mads": float(n_mads)},
    }
    if flagged:
        warnings.warn(
            _message(table, cluster_key, key_added, n_mads), LowQualityClusterWarning, stacklevel=3
        )
    return adata if copy else None
