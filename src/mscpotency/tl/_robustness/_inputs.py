"""Inputs the robustness and decision tools share: stored lot counts, potency, the kNN graph.

Every tool here reads an earlier result; these helpers read it through
:mod:`mscpotency._stored`, so a missing result names the tool to run first.
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd
from anndata import AnnData
from scipy import sparse

from ... import _registry
from ..._stored import params, potency_column, stored, stored_table
from .._population._association import lot_outcome

#: What a potency argument may be: an obs column, a lot -> value table, or ``None``.
Potency = str | Mapping | pd.Series | None


def lot_counts(adata: AnnData, fractions_key: str) -> pd.DataFrame:
    """Cells per lot (rows) and cluster (columns) of ``tl.lot_fractions``, string labels, float."""
    counts = stored_table(adata, _registry.LOT_FRACTIONS, "counts", fractions_key).astype(float)
    counts.index = counts.index.astype(str)
    counts.columns = counts.columns.astype(str)
    return counts


def fractions_lot_key(adata: AnnData, fractions_key: str) -> str:
    """The obs column of lots that ``tl.lot_fractions`` counted by."""
    return str(params(adata, _registry.LOT_FRACTIONS, fractions_key)["lot_key"])


def lot_potency(
    adata: AnnData,
    potency: Potency,
    lots: pd.Index,
    lot_key: str,
    *,
    association_key: str | None = None,
) -> tuple[pd.Series, str]:
    """Potency of each lot in ``lots`` and its name; ``None``: the association's column."""
    if potency is None:
        potency = potency_column(adata, association_key=association_key)
    return lot_outcome(adata, potency, lots, lot_key)


def reference_graph(adata: AnnData, cluster_key: str) -> tuple[sparse.csr_matrix, float, dict]:
    """The kNN connectivities, resolution and parameters ``tl.cluster`` used for ``obs[cluster_key]``."""
    clustering = stored(adata, _registry.CLUSTER, cluster_key)
    cluster_params = dict(clustering["params"])
    neighbors_key = cluster_params.get("neighbors_key")
    if neighbors_key is None or neighbors_key not in adata.uns:
        msg = (
            f"adata.uns[{cluster_key!r}] names no neighbour graph that is still present; "
            "run `tl.cluster` again."
        )
        raise KeyError(msg)
    connectivities_key = adata.uns[neighbors_key].get(
        "connectivities_key", f"{neighbors_key}_connectivities"
    )
    if connectivities_key not in adata.obsp:
        msg = (
            f"adata.obsp has no {connectivities_key!r} (the graph of `tl.cluster`); "
            "run `tl.cluster` again."
        )
        raise KeyError(msg)
    connectivities = sparse.csr_matrix(adata.obsp[connectivities_key])
    return connectivities, float(clustering["resolution"]), cluster_params
