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
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from ... import _keys
from ..._docs import doc_params
from ..._frozen import HASH_VERSION, ReferenceModel, reference_model
from ..._provenance import append_log, fingerprint, package_versions, record
from ..._registry import FROZEN_REFERENCE, POTENCY_ASSOCIATION, PREPROCESS


@doc_params
@record("tl.freeze_reference")
def freeze_reference(
    adata: AnnData,
    *,
    cluster_key: str = _keys.CLUSTER,
    lot_key: str | None = _keys.LOT,
    layer: str = _keys.COUNTS_LAYER,
    umap_key: str = "X_umap",
    association_key: str = POTENCY_ASSOCIATION.key,
    key_added: str = FROZEN_REFERENCE.key,
) -> AnnData:
    """A slim, hashed copy of a processed reference, ready to save and to map onto.

    Parameters
    ----------
    adata
        {adata}
        The processed reference: ``pp.preprocess`` (embedding) and labels in
        ``obs[cluster_key]`` (e.g. ``tl.cluster``); ``tl.potency_association`` on those
        labels, if run, names the potency cluster that query analyses default to.
    cluster_key
        {cluster_key}
        The labels to ship.
    lot_key
        {lot_key}
        The reference lots are held out in turn to calibrate mapping.
    layer
        {layer}
        The reference's expression is recomputed from these counts exactly as a query's
        will be.
    umap_key
        ``obsm`` key of a UMAP to ship for plotting queries on it (skipped when absent).
    key_added
        {key_added}
        Here: of the frozen reference returned, for its record.

    Returns
    -------
    A new AnnData (reference cells x embedding genes) with ``X`` (log-normalised expression),
    ``obs[cluster_key]``, ``obs[lot_key]``, ``obsm['X_pca']``, ``obsm['X_umap']`` (if present),
    ``varm['PCs']``, ``var['pca_mean']``, ``var['highly_variable']``,
    ``uns['preprocess']['params']`` and ``uns[key_added]`` with the content ``'hash'``,
    ``'hash_version'``, ``'hash_parts'`` (a digest per part, to name what changed),
    ``'cluster_key'``, ``'lot_key'``, ``'potency_cluster'``, ``'labels'``, ``'n_cells'``,
    ``'n_genes'``, ``'source_fingerprint'``, ``'created'``, ``'versions'`` and ``'params'``.

    Notes
    -----
    What the content hash guarantees: it covers everything mapping reads from the frozen
    reference, so that editing any of it makes :func:`mscpotency.io.read_reference` and
    :func:`mscpotency.tl.map_to_reference` refuse the reference: the embedding genes, the
    labels (values, categories and ``cluster_key``), the potency cluster, the reference lots,
    the normalisation and embedding parameters (``uns['preprocess']['params']``), the PCA
    centring and loadings, the cells' embedding, the expression matrix and the UMAP (BLAKE2b,
    128 bits, arrays rounded to float32 so a save/load round trip keeps it). The record's
    description of that content (``'labels'``, ``'n_cells'``, ``'n_genes'``) is checked
    against it. The same reference, processed or frozen, has the same hash.

    What it does not guarantee: it is an integrity check, not a signature. It detects a
    reference changed after freezing, but whoever changes the content can also store a
    recomputed hash, and the file then verifies. To know that a reference is *the* approved
    one, record its hash where it cannot be changed (a validation report) and pin it:
    ``io.read_reference(path, expected_hash=...)`` or
    ``tl.map_to_reference(..., expected_hash=...)``. Provenance (cell names, ``'created'``,
    ``'versions'``, ``'source_fingerprint'``, ``'params'`` and the provenance log) changes no
    answer and is not hashed.
    """
    model = reference_model(
        adata,
        cluster_key=cluster_key,
        layer=layer,
        lot_key=lot_key,
        umap_key=umap_key,
        association_key=association_key,
    )
    frozen = _slim_copy(adata, model, cluster_key, lot_key)
    source = adata.uns.get(PREPROCESS.key, {}).get("params", {})
    frozen.uns[PREPROCESS.key] = {"params": {k: v for k, v in source.items() if v is not None}}
    called_with = {
        "cluster_key": cluster_key,
        "lot_key": lot_key,
        "layer": layer,
        "umap_key": umap_key,
        "association_key": association_key,
    }
    frozen.uns[key_added] = _record(adata, frozen, model, cluster_key, lot_key, called_with)
    for entry in adata.uns.get(_keys.PACKAGE, {}).get(_keys.LOG, []):
        append_log(frozen, str(entry))
    # the hash is taken on float32 values, so the slim float32 copy must reproduce it exactly
    reference_model(frozen, cluster_key=cluster_key)
    return frozen


def _slim_copy(
    adata: AnnData, model: ReferenceModel, cluster_key: str, lot_key: str | None
) -> AnnData:
    """The reference cells on the embedding genes, with only what mapping reads (float32)."""
    obs = pd.DataFrame(index=adata.obs_names.copy())
    obs[cluster_key] = pd.Categorical.from_codes(model.labels, categories=list(model.categories))
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
    return frozen


def _record(
    adata: AnnData,
    frozen: AnnData,
    model: ReferenceModel,
    cluster_key: str,
    lot_key: str | None,
    called_with: dict[str, Any],
) -> dict[str, Any]:
    """The frozen reference's record: its hash, what it carries, where it came from."""
    return {
        "hash": model.hash,
        "hash_version": HASH_VERSION,
        "hash_parts": dict(model.hash_parts),
        "cluster_key": cluster_key,
        "lot_key": lot_key if model.lots is not None and lot_key is not None else "",
        "potency_cluster": model.potency_cluster or "",
        "labels": list(model.categories),
        "n_cells": int(frozen.n_obs),
        "n_genes": int(frozen.n_vars),
        "source_fingerprint": fingerprint(adata),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": dict(package_versions()),
        "params": {k: v for k, v in called_with.items() if v is not None},
    }
