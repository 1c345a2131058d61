"""Per-lot cluster counts and fractions."""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData

from ... import _keys, _registry
from ..._docs import doc_params
from ..._provenance import record
from ..._validate import lots_of, require_obs_column, require_unique_cell_names, warn_small_lots
from ._lot_specificity import default_settings, specificity_result


@doc_params
@record("tl.lot_fractions")
def lot_fractions(
    adata: AnnData,
    *,
    lot_key: str = _keys.LOT,
    cluster_key: str = _keys.CLUSTER,
    weights_key: str | None = None,
    min_cells_per_lot: int = 50,
    specificity_key: str | None = _registry.LOT_SPECIFICITY.key,
    key_added: str = _registry.LOT_FRACTIONS.key,
    copy: bool = False,
) -> AnnData | None:
    """Count the cells of each cluster in each lot and turn counts into fractions.

    Clusters built on a lot-corrected representation (:func:`mscpotency.pp.integrate`,
    then ``tl.cluster(adata, use_rep="X_pca_harmony")``) are counted the same way: the
    fractions count cells per label, whatever representation made the labels.

    Parameters
    ----------
    adata
        {adata}
        Needs ``obs[lot_key]`` and ``obs[cluster_key]``.
    weights_key
        Optional ``obsm`` key of a cells x clusters probability matrix (e.g. from
        ``tl.map_to_reference``); then each cell contributes its probabilities instead of
        one count to its label, so label uncertainty reaches the fractions.
    min_cells_per_lot
        {min_cells_per_lot}
        None is dropped.
    specificity_key
        Where the lot-specificity diagnostics of these clusters are written
        (``adata.uns[specificity_key]``, as :func:`mscpotency.tl.lot_specificity` with its
        default thresholds writes them: which clusters are made of one or a few lots'
        cells); ``None``: not computed. :func:`mscpotency.tl.potency_association` reads
        them to flag lot-dominated clusters.

    Returns
    -------
    ``None``, or the copy when ``copy=True``. Writes ``adata.uns[key_added]`` with
    ``'counts'`` : DataFrame (lots x clusters, cells), ``'fractions'`` : DataFrame
    (lots x clusters, rows sum to 1), ``'n_cells'`` : per-lot cell numbers and ``'params'``;
    unless ``specificity_key`` is ``None``, ``adata.uns[specificity_key]`` too.
    """
    require_unique_cell_names(adata)
    lots = lots_of(adata, lot_key)
    labels = require_obs_column(
        adata, cluster_key, what="cluster labels", hint="Run `tl.cluster` first."
    )
    if labels.isna().any():
        msg = f"{int(labels.isna().sum())} cells have no label in obs[{cluster_key!r}]"
        raise ValueError(msg)
    labels = labels.astype("category")
    if weights_key is not None:
        counts = _weighted_counts(adata, lots, labels, weights_key)
    else:
        counts = _label_counts(lots, labels)
    counts.index.name = lot_key
    counts.columns.name = cluster_key
    n_cells = counts.sum(axis=1)
    warn_small_lots(
        lots.value_counts().reindex(counts.index), min_cells_per_lot, context="lot_fractions"
    )
    fractions = counts.div(n_cells, axis=0)
    adata = adata.copy() if copy else adata
    adata.uns[key_added] = {
        "counts": counts.astype(float),
        "fractions": fractions,
        "n_cells": lots.value_counts().reindex(counts.index).astype(int).to_frame("n_cells"),
        "params": {
            "lot_key": lot_key,
            "cluster_key": cluster_key,
            "weights_key": weights_key,
            "min_cells_per_lot": min_cells_per_lot,
            "specificity_key": specificity_key,
        },
    }
    if specificity_key is not None:
        adata.uns[specificity_key] = _specificity(counts, key_added, lot_key, cluster_key)
    return adata if copy else None


def _specificity(counts: pd.DataFrame, key_added: str, lot_key: str, cluster_key: str) -> dict:
    """Lot-specificity diagnostics with the default thresholds, as tl.lot_specificity stores them."""
    settings = default_settings()
    settings.update(fractions_key=key_added, lot_key=lot_key, cluster_key=cluster_key)
    return specificity_result(counts, settings)


def _label_counts(lots: pd.Series, labels: pd.Series) -> pd.DataFrame:
    """Lots x labels cell counts, every lot and label present (zeros included)."""
    counts = pd.crosstab(lots, labels, dropna=False)
    return counts.reindex(index=lots.cat.categories, columns=labels.cat.categories, fill_value=0)


def _weighted_counts(
    adata: AnnData, lots: pd.Series, labels: pd.Series, weights_key: str
) -> pd.DataFrame:
    """Lots x labels sums of each cell's label probabilities (``obsm[weights_key]``)."""
    if weights_key not in adata.obsm:
        msg = f"adata.obsm has no {weights_key!r}. Run `tl.map_to_reference` first (or pass weights_key=None)."
        raise KeyError(msg)
    weights = adata.obsm[weights_key]
    if isinstance(weights, pd.DataFrame):
        columns = [str(c) for c in weights.columns]
        weights = weights.to_numpy(dtype=float)
    else:
        columns = [str(c) for c in labels.cat.categories]
        weights = np.asarray(weights, dtype=float)
        if weights.shape[1] != len(columns):
            msg = f"obsm[{weights_key!r}] has {weights.shape[1]} columns but obs has {len(columns)} labels"
            raise ValueError(msg)
    if not np.isfinite(weights).all() or (weights < 0).any():
        msg = f"obsm[{weights_key!r}] must hold finite, non-negative probabilities"
        raise ValueError(msg)
    codes = lots.cat.codes.to_numpy()
    summed = np.zeros((lots.cat.categories.size, weights.shape[1]))
    np.add.at(summed, codes, weights / weights.sum(axis=1, keepdims=True))
    return pd.DataFrame(summed, index=lots.cat.categories, columns=columns)
