"""Which clusters are made of one or a few lots' cells (a donor artefact, not a quality attribute).

A cluster whose cells come from one lot trivially "tracks" that lot's potency. The kernel
:func:`lot_specificity_table` works on a lots x clusters count table only; the tool
:func:`lot_specificity` reads the counts :func:`mscpotency.tl.lot_fractions` stored (which
also computes these diagnostics itself, see its ``specificity_key``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData

from ... import _registry
from ..._docs import doc_params
from ..._lot_specificity import (
    ALPHA,
    MAX_TOP_SHARE,
    MIN_ENTROPY,
    MIN_SHARE,
    N_PERMUTATIONS,
    lot_specificity_table,
)
from ..._provenance import record
from ..._stored import stored

__all__ = ["lot_specificity", "lot_specificity_table", "specificity_result"]


def lot_cluster_ari(counts: pd.DataFrame) -> float:
    """Adjusted Rand index between lot and cluster labels, from their contingency table.

    Near 0: clusters cut across lots; 1: every cluster is one lot's cells.
    """
    table = np.rint(np.asarray(counts, dtype=float))

    def pairs(v: np.ndarray) -> float:
        return float((v * (v - 1) / 2).sum())

    n = table.sum()
    index = pairs(table)
    rows, cols = pairs(table.sum(axis=1)), pairs(table.sum(axis=0))
    expected = rows * cols / (n * (n - 1) / 2)
    top = (rows + cols) / 2
    return float((index - expected) / (top - expected)) if top != expected else 0.0


def specificity_result(counts: pd.DataFrame, settings: dict) -> dict:
    """The stored form: ``'table'``, ``'summary'`` and ``'params'`` (``settings`` included)."""
    kernel = {k: settings[k] for k in _KERNEL_PARAMS}
    table = lot_specificity_table(counts, **kernel)
    summary = {
        "n_clusters": len(table),
        "n_lot_dominated": int(table["lot_dominated"].sum()),
        "lot_dominated": ",".join(table.index[table["lot_dominated"]]),
        "ari_cluster_lot": lot_cluster_ari(counts),
        "n_lots": int(counts.shape[0]),
    }
    return {"table": table, "summary": summary, "params": dict(settings)}


_KERNEL_PARAMS = (
    "min_share",
    "max_top_share",
    "min_entropy",
    "alpha",
    "n_permutations",
    "random_state",
)


def default_settings() -> dict:
    """The thresholds used when nothing else is asked for."""
    return {
        "min_share": MIN_SHARE,
        "max_top_share": MAX_TOP_SHARE,
        "min_entropy": MIN_ENTROPY,
        "alpha": ALPHA,
        "n_permutations": N_PERMUTATIONS,
        "random_state": 0,
    }


@doc_params
@record("tl.lot_specificity")
def lot_specificity(
    adata: AnnData,
    *,
    fractions_key: str = _registry.LOT_FRACTIONS.key,
    min_share: float = MIN_SHARE,
    max_top_share: float = MAX_TOP_SHARE,
    min_entropy: float = MIN_ENTROPY,
    alpha: float = ALPHA,
    n_permutations: int = N_PERMUTATIONS,
    random_state: int = 0,
    key_added: str = _registry.LOT_SPECIFICITY.key,
    copy: bool = False,
) -> AnnData | None:
    """Flag clusters made of one or a few lots' cells (donor artefacts, not quality attributes).

    :func:`mscpotency.tl.lot_fractions` already runs this with the default thresholds;
    call it to change them. :func:`mscpotency.tl.potency_association` carries the flag
    and warns when its potency cluster is lot-dominated.

    Parameters
    ----------
    adata
        {adata}
        Needs ``uns[fractions_key]`` from :func:`mscpotency.tl.lot_fractions`.
    min_share
        A lot *contributes* to a cluster when it holds at least this share of the cluster's
        cells (``n_lots_contributing``).
    max_top_share
        Flag a (significant) cluster whose largest lot holds at least this share of its
        cells and at least twice its share of all cells.
    min_entropy
        Flag a (significant) cluster whose lot-mix entropy is below this share of the
        pooled lot mix's entropy (0.5: about 5 of 24 equal lots).
    alpha
        {alpha}
        A cluster is flagged only when the G-test rejects the pooled lot mix at this level.
    n_permutations
        {n_permutations}
        Used where an expected count is below 5 (then ``pvalue_method`` says
        ``monte-carlo``).

    Returns
    -------
    ``None``, or the copy when ``copy=True``. Writes ``adata.uns[key_added]`` with
    ``'table'`` : DataFrame (one row per cluster, see :func:`lot_specificity_table`:
    n_cells, n_lots_contributing, top_lot, top_lot_share, top_lot_expected,
    entropy_ratio, g_statistic, pvalue, pvalue_method, lot_dominated), ``'summary'``
    (n_clusters, n_lot_dominated, the flagged clusters, ``ari_cluster_lot``: the
    adjusted Rand index between cluster and lot labels, n_lots) and ``'params'``.
    """
    fractions = stored(adata, _registry.LOT_FRACTIONS, fractions_key)
    settings = {
        "min_share": min_share,
        "max_top_share": max_top_share,
        "min_entropy": min_entropy,
        "alpha": alpha,
        "n_permutations": n_permutations,
        "random_state": random_state,
    }
    result = specificity_result(fractions["counts"], settings)
    result["params"]["fractions_key"] = fractions_key
    result["params"]["lot_key"] = fractions["params"]["lot_key"]
    result["params"]["cluster_key"] = fractions["params"]["cluster_key"]
    adata = adata.copy() if copy else adata
    adata.uns[key_added] = result
    return adata if copy else None
