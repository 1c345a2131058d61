"""The potency markers also in scanpy's ``rank_genes_groups`` format, for ``sc.pl``/``sc.get``."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd
from anndata import AnnData

logger = logging.getLogger("mscpotency")

#: scanpy's default key, which ``sc.pl.rank_genes_groups*`` and ``sc.get`` read without ``key=``.
SCANPY_KEY = "rank_genes_groups"
#: Marks a ``rank_genes_groups`` entry as written by the package (free to rewrite).
WRITTEN_BY = "mscpotency.tl.potency_markers"

# the table's columns -> scanpy's fields (one record field per group)
_FIELDS = {
    "gene": "names",
    "score": "scores",
    "logfoldchange": "logfoldchanges",
    "pvalue": "pvals",
    "pvalue_adj": "pvals_adj",
}


def rank_genes_groups_of(table: pd.DataFrame, cluster: str, params: dict) -> dict:
    """The marker table of one cluster as scanpy's ``uns['rank_genes_groups']`` entry.

    Parameters
    ----------
    table
        ``uns['potency_markers']['table']``: one row per top gene, best first, with the
        columns ``gene``, ``score``, ``logfoldchange``, ``pvalue``, ``pvalue_adj``, ``pct_in``
        and ``pct_out``.
    cluster
        The cluster the genes mark (scanpy's group).
    params
        ``uns['potency_markers']['params']`` (``cluster_key``, ``method``, ``layer``).

    Returns
    -------
    A dict as ``sc.tl.rank_genes_groups(adata, groupby=cluster_key, groups=[cluster],
    reference="rest", pts=True)`` writes it: ``params``; ``names``, ``scores``,
    ``logfoldchanges``, ``pvals``, ``pvals_adj`` (record arrays with one field, the
    cluster); ``pts`` and ``pts_rest`` (DataFrames, top genes x the cluster).
    """
    missing = sorted((set(_FIELDS) | {"pct_in", "pct_out"}) - set(table.columns))
    if missing:
        msg = f"the marker table lacks the columns {missing}; rerun `tl.potency_markers`."
        raise KeyError(msg)
    entry: dict = {
        "params": {
            "groupby": params["cluster_key"],
            "reference": "rest",
            "method": params["method"],
            "use_raw": False,
            "layer": params.get("layer"),
            "corr_method": "benjamini-hochberg",
            "written_by": WRITTEN_BY,
        }
    }
    for column, field in _FIELDS.items():
        values = table[column].to_numpy()
        # scanpy's dtypes: float32 scores and fold changes, float64 p-values (no underflow)
        dtype = {"names": object, "pvals": np.float64, "pvals_adj": np.float64}.get(
            field, np.float32
        )
        entry[field] = np.rec.fromarrays([values.astype(dtype)], names=[str(cluster)])
    genes = pd.Index(table["gene"].astype(str).to_numpy())
    entry["pts"] = pd.DataFrame({str(cluster): table["pct_in"].to_numpy()}, index=genes)
    entry["pts_rest"] = pd.DataFrame({str(cluster): table["pct_out"].to_numpy()}, index=genes)
    return entry


def store_rank_genes_groups(adata: AnnData, key_added: str) -> str:
    """Write ``uns[key_added]``'s markers where scanpy looks, without clobbering the user's.

    The entry goes to ``uns['rank_genes_groups']`` when that key is free or holds an entry the
    package wrote; a ``rank_genes_groups`` result of the user's own (``sc.tl.rank_genes_groups``)
    is kept, the entry goes to ``uns[key_added + '_rank_genes_groups']`` and a warning names the
    ``key=`` to pass to scanpy. Where it went is recorded as
    ``uns[key_added]['rank_genes_groups_key']``.

    Genes are named by ``var_names`` (what ``sc.pl.rank_genes_groups_dotplot`` indexes by);
    with a symbol column in ``var`` (e.g. ``var['gene_symbols']`` from ``io.read_lots``), pass
    ``gene_symbols='gene_symbols'`` to scanpy's functions to show symbols.
    """
    stored = adata.uns[key_added]
    entry = rank_genes_groups_of(stored["table"], str(stored["cluster"]), stored["params"])
    current = adata.uns.get(SCANPY_KEY)
    ours = isinstance(current, dict) and current.get("params", {}).get("written_by") == WRITTEN_BY
    key = SCANPY_KEY
    if current is not None and not ours:
        key = f"{key_added}_{SCANPY_KEY}"
        warnings.warn(
            f"adata.uns[{SCANPY_KEY!r}] holds a result of its own, kept as it is; the potency "
            f"markers are in uns[{key!r}]: pass key={key!r} to sc.pl.rank_genes_groups* and "
            "sc.get.rank_genes_groups_df.",
            UserWarning,
            stacklevel=4,
        )
    adata.uns[key] = entry
    stored["rank_genes_groups_key"] = key
    logger.debug("potency markers also stored in scanpy's format as uns[%r]", key)
    return key
