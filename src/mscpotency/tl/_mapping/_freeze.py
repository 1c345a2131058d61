"""A reference you can freeze and ship: map new lots without re-clustering.

:func:`freeze_reference` keeps exactly what :func:`mscpotency.tl.map_to_reference` needs —
the genes of the embedding with their log-normalised expression, the PCA (centring,
loadings, cell coordinates), the labels, the lots, the UMAP, the normalisation parameters,
the potency cluster — and stamps it with a content hash. :func:`mscpotency.io.write_reference`
writes it to ``.h5ad``; :func:`mscpotency.io.read_reference` reads it back and refuses a file
whose content no longer matches its hash. Every query mapped onto it records the hash
(``uns[key]['reference_hash']`` and the provenance log), so a QC report names the exact
reference it used.
"""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pandas as pd
from anndata import AnnData

from ... import _keys, _registry
from ..._provenance import append_log, fingerprint, package_versions, record
from ._model import FROZEN, reference_model


@record("tl.freeze_reference")
def freeze_reference(
    adata: AnnData,
    *,
    label_key: str = _keys.CLUSTER,
    lot_key: str | None = _keys.LOT,
    counts_layer: str = _keys.COUNTS_LAYER,
    umap_key: str = "X_umap",
    association_key: str = _registry.POTENCY_ASSOCIATION.key,
) -> AnnData:
    """A slim, hashed copy of a processed reference, ready to save and to map onto.

    Parameters
    ----------
    adata
        The processed reference: ``pp.preprocess`` (embedding) and labels in ``obs[label_key]``
        (e.g. ``tl.cluster``); ``tl.potency_association`` on those labels, if run, names
        the potency cluster that query analyses default to.
    label_key
        obs column of the labels to ship.
    lot_key
        obs column with the reference lots (used to calibrate mapping by holding lots out).
    counts_layer
        Layer with the reference's raw counts (the expression is recomputed from them
        exactly as a query's will be); ``X`` is used when absent.
    umap_key
        ``obsm`` key of a UMAP to ship for plotting queries on it (skipped when absent).
    association_key
        Where ``tl.potency_association`` stored its result.

    Returns
    -------
    A new AnnData (reference cells x embedding genes) with ``X`` (log-normalised expression),
    ``obs[label_key]``, ``obs[lot_key]``, ``obsm['X_pca']``, ``obsm['X_umap']`` (if present),
    ``varm['PCs']``, ``var['pca_mean']``, ``var['highly_variable']``,
    ``uns['preprocess']['params']`` and ``uns['reference']`` with the content ``'hash'``,
    ``'label_key'``, ``'lot_key'``, ``'potency_label'``, ``'labels'``, ``'source_fingerprint'``,
    ``'created'`` and ``'versions'``.
    """
    reference = adata
    model = reference_model(
        reference,
        label_key=label_key,
        counts_layer=counts_layer,
        lot_key=lot_key,
        umap_key=umap_key,
        association_key=association_key,
    )
    obs = pd.DataFrame(index=reference.obs_names.copy())
    obs[label_key] = pd.Categorical.from_codes(model.labels, categories=list(model.categories))
    if model.lots is not None and lot_key is not None:
        obs[lot_key] = pd.Categorical(model.lots)
    var = pd.DataFrame(index=pd.Index(model.genes, name=None))
    var["pca_mean"] = model.pca_mean.astype(np.float32)
    var["highly_variable"] = True
    frozen = AnnData(X=model.expression.astype(np.float32), obs=obs, var=var)
    frozen.varm["PCs"] = model.loadings.astype(np.float32)
    frozen.obsm["X_pca"] = model.embedding.astype(np.float32)
    if model.umap is not None:
        frozen.obsm["X_umap"] = model.umap.astype(np.float32)
    source = reference.uns.get(_registry.PREPROCESS.key, {}).get("params", {})
    frozen.uns[_registry.PREPROCESS.key] = {
        "params": {k: v for k, v in source.items() if v is not None}
    }
    frozen.uns[FROZEN] = {
        "hash": model.hash,
        "label_key": label_key,
        "lot_key": lot_key if model.lots is not None and lot_key is not None else "",
        "potency_label": model.potency_label or "",
        "labels": list(model.categories),
        "n_cells": int(frozen.n_obs),
        "n_genes": int(frozen.n_vars),
        "source_fingerprint": fingerprint(reference),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": dict(package_versions()),
    }
    for entry in reference.uns.get(_keys.PACKAGE, {}).get(_keys.LOG, []):
        append_log(frozen, str(entry))
    # the hash is taken on float32 values, so the slim float32 copy must reproduce it exactly
    reference_model(frozen, label_key=label_key)
    return frozen
