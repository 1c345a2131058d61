"""Top marker genes of the potency cluster, with their consistency across lots."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scanpy as sc
from anndata import AnnData
from scipy import sparse, stats

from .. import _keys
from .._provenance import record
from .._validate import lots_of, require_obs_column


@record("tl.potency_markers")
def potency_markers(
    adata: AnnData,
    cluster: str | None = None,
    *,
    cluster_key: str = _keys.CLUSTER,
    lot_key: str = _keys.LOT,
    association_key: str = _keys.POTENCY_ASSOCIATION,
    n_genes: int = 20,
    method: str = "wilcoxon",
    layer: str | None = None,
    min_cells_per_lot: int = 5,
    key_added: str = _keys.POTENCY_MARKERS,
    copy: bool = False,
) -> AnnData | None:
    """Rank the genes that mark one cluster against all other cells, and check them per lot.

    Cells are not replicates: next to the cell-level test (scanpy's ``rank_genes_groups``),
    each top gene is checked inside every lot (cluster cells vs the lot's other cells,
    mean log expression) and a two-sided sign test across lots says whether it is up
    consistently, not in a few lots only.

    Parameters
    ----------
    adata
        Log-normalised cells (``pp.preprocess``) with cluster labels.
    cluster
        The cluster to describe; default: the potency cluster found by
        :func:`mscpotency.tl.potency_association`.
    cluster_key
        obs column of the labels.
    lot_key
        obs column with the lot of each cell.
    association_key
        Where to find the potency cluster when ``cluster`` is ``None``.
    n_genes
        How many top genes to report.
    method
        ``rank_genes_groups`` test (``"wilcoxon"``, ``"t-test"``, ...).
    layer
        Layer with log-normalised expression (default: ``X``).
    min_cells_per_lot
        A lot enters the per-lot check when it has at least this many cells in and out
        of the cluster.
    key_added
        ``adata.uns`` key of the result.
    copy
        Return a copy instead of writing in place.

    Returns
    -------
    ``None``, or the copy when ``copy=True``. Writes ``adata.uns[key_added]`` with
    ``'table'`` : DataFrame (rank, gene, score, logfoldchange, pvalue, pvalue_adj,
    pct_in, pct_out, n_lots_up, n_lots_tested, lot_sign_pvalue, median_lot_log2fc),
    ``'cluster'`` and ``'params'``.
    """
    labels = require_obs_column(adata, cluster_key, what="cluster labels", hint="Run `tl.cluster` first.")
    lots = lots_of(adata, lot_key)
    if cluster is None:
        if association_key not in adata.uns or not adata.uns[association_key].get("potency_cluster"):
            msg = (
                f"no cluster given and adata.uns[{association_key!r}] names no potency cluster. "
                "Run `tl.potency_association` first or pass cluster=."
            )
            raise KeyError(msg)
        cluster = str(adata.uns[association_key]["potency_cluster"])
    categories = [str(c) for c in labels.astype("category").cat.categories]
    if cluster not in categories:
        msg = f"unknown cluster {cluster!r} in obs[{cluster_key!r}]; known clusters: {categories}"
        raise ValueError(msg)
    in_cluster = labels.astype(str).to_numpy() == cluster
    if in_cluster.sum() < 2 or (~in_cluster).sum() < 2:
        msg = f"cluster {cluster!r} has {int(in_cluster.sum())} cells; markers need at least 2 in and out"
        raise ValueError(msg)
    n_genes = min(n_genes, adata.n_vars)
    groups = pd.Categorical(np.where(in_cluster, "in", "out"), categories=["in", "out"])
    view = AnnData(
        X=adata.layers[layer] if layer is not None else adata.X,
        obs=pd.DataFrame({"group": groups}, index=adata.obs_names),
        var=pd.DataFrame(index=adata.var_names),
    )
    view.uns["log1p"] = {"base": None}
    sc.tl.rank_genes_groups(
        view, "group", groups=["in"], reference="rest", method=method, n_genes=n_genes, pts=True,
        use_raw=False,
    )
    table = sc.get.rank_genes_groups_df(view, group="in").head(n_genes)
    table = table.rename(columns={"names": "gene", "scores": "score", "logfoldchanges": "logfoldchange",
                                  "pvals": "pvalue", "pvals_adj": "pvalue_adj", "pct_nz_group": "pct_in",
                                  "pct_nz_reference": "pct_out"})
    per_lot = _per_lot_consistency(view.X, adata.var_names, table["gene"], in_cluster, lots, min_cells_per_lot)
    table = table.join(per_lot, on="gene")
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    table = table.set_index("gene", drop=False)
    table.index.name = None
    adata = adata.copy() if copy else adata
    adata.uns[key_added] = {
        "table": table,
        "cluster": cluster,
        "params": {
            "cluster_key": cluster_key, "lot_key": lot_key, "n_genes": n_genes, "method": method,
            "layer": layer, "min_cells_per_lot": min_cells_per_lot,
        },
    }
    return adata if copy else None


def _per_lot_consistency(
    X, var_names: pd.Index, genes: pd.Series, in_cluster: np.ndarray, lots: pd.Series, min_cells: int
) -> pd.DataFrame:
    columns = var_names.get_indexer(genes)
    sub = X[:, columns]
    sub = sub.toarray() if sparse.issparse(sub) else np.asarray(sub)
    codes = lots.cat.codes.to_numpy()
    diffs = []
    for code in range(lots.cat.categories.size):
        in_lot = codes == code
        inside, outside = in_lot & in_cluster, in_lot & ~in_cluster
        if inside.sum() >= min_cells and outside.sum() >= min_cells:
            diffs.append(sub[inside].mean(axis=0) - sub[outside].mean(axis=0))
    if not diffs:
        frame = pd.DataFrame(index=genes.to_numpy())
        frame["n_lots_up"] = 0
        frame["n_lots_tested"] = 0
        frame["lot_sign_pvalue"] = np.nan
        frame["median_lot_log2fc"] = np.nan
        return frame
    diffs_arr = np.vstack(diffs)
    n_up = (diffs_arr > 0).sum(axis=0)
    n_tested = diffs_arr.shape[0]
    sign_p = [stats.binomtest(int(k), n_tested, 0.5).pvalue for k in n_up]
    return pd.DataFrame(
        {
            "n_lots_up": n_up,
            "n_lots_tested": n_tested,
            "lot_sign_pvalue": sign_p,
            # X is natural-log expression: convert the mean difference to log2
            "median_lot_log2fc": np.median(diffs_arr, axis=0) / np.log(2),
        },
        index=genes.to_numpy(),
    )
