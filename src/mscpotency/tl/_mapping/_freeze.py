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

import logging
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from ... import _keys
from ..._docs import doc_params
from ..._frozen import (
    COUNTS_ENCODING,
    HASH_VERSION,
    LOG_ENCODING,
    SCALE_COLUMN,
    ReferenceModel,
    calibrations_digest,
    compact_counts,
    content_hash,
    expression_digest,
    frozen_record,
    model_digest,
    normalisation_scale,
    reference_model,
    scaled_log,
    stored_counts,
)
from ..._provenance import append_log, fingerprint, package_versions, record
from ..._registry import FROZEN_REFERENCE, POTENCY_ASSOCIATION, PREPROCESS
from ._scvi import ScviOptions, reference_counts, train_reference
from ._shipped import calibrations_for, projection_options

logger = logging.getLogger("mscpotency")


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
    scvi: bool | ScviOptions = False,
    calibrations: Sequence[str] = (),
    random_state: int = 0,
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
    scvi
        Train the scvi backend's model (scVI -> scANVI on the reference counts, lots as
        batches, plus one model per fold of lots for the calibration) and store it in the
        frozen reference, so that ``map_to_reference(..., method="scvi")`` maps onto it by
        query surgery alone. ``True``: :class:`~mscpotency.tl.ScviOptions` defaults; or
        the options to train with. Needs ``scvi-tools``; minutes on a CPU.
    calibrations
        Backends (``"anchors"``, ``"fast"``) whose calibrations on held-out reference lots
        to compute now and ship in the frozen reference (``uns[key_added]['calibrations']``),
        so that mapping onto the saved reference in a new process does not compute them on
        its first call (study preset, a new process reading the saved reference and mapping
        one set: 3.4-4.4 s instead of 11-12 s with ``anchors``, 2.7-3.2 s instead of 6.6-7.4 s
        with ``fast``; freezing with both took 12.9 s instead of 0.9 s, and the file grew
        from 22 to 27 MB; ``benchmarks/results/mapping_shipped.md``). The same results
        either way, bit for bit; used only by the package version that computed them (the
        record's ``'stamp'``: another version computes them again). ``()``: none.
    random_state
        {random_state}
        Here: the seed of the scVI training.
    key_added
        {key_added}
        Here: of the frozen reference returned, for its record.

    Returns
    -------
    A new AnnData (reference cells x embedding genes) with ``X`` (the raw counts of the
    embedding genes in the smallest exact integer type, and ``obs['normalisation_scale']``,
    each cell's ``target_sum`` / total counts, from which the log-normalised expression is
    recomputed bit for bit; or, for a reference without raw counts, the log-normalised
    expression itself: ``uns[key_added]['expression_encoding']`` says which),
    ``obs[cluster_key]``, ``obs[lot_key]``, ``obsm['X_pca']``, ``obsm['X_umap']`` (if present),
    ``varm['PCs']``, ``var['pca_mean']``, ``var['highly_variable']``,
    ``uns['preprocess']['params']`` and ``uns[key_added]`` with the content ``'hash'``,
    ``'hash_version'``, ``'hash_parts'`` (a digest per part, to name what changed),
    ``'cluster_key'``, ``'lot_key'``, ``'potency_cluster'``, ``'labels'``, ``'n_cells'``,
    ``'n_genes'``, ``'source_fingerprint'``, ``'created'``, ``'versions'`` and ``'params'``;
    with labels of :func:`mscpotency.tl.potency_population` (``cluster_key`` its
    ``key_added``), also ``'boundary'``: the population's boundary rule (population and
    neighbour labels, ``'axis'`` in the reference PCA, ``'threshold'``), which
    :func:`mscpotency.tl.map_to_reference` applies to query cells;
    with ``scvi``, also ``uns[key_added]['scvi']``: the trained model as plain arrays
    (``'weights'``, ``'setup'`` as JSON, the reference cells' ``'latent'`` coordinates,
    the ``'held_out'`` calibration predictions, ``'options'``); with ``calibrations``, also
    ``uns[key_added]['calibrations']``: ``'format'``, ``'stamp'`` (the code that computed
    them), ``'owner'`` (the reference's hash without them), ``'methods'`` and ``'entries'``
    (arrays by cache and key digest).

    Notes
    -----
    What the content hash guarantees: it covers everything mapping reads from the frozen
    reference, so that editing any of it makes :func:`mscpotency.io.read_reference` and
    :func:`mscpotency.tl.map_to_reference` refuse the reference: the embedding genes, the
    labels (values, categories and ``cluster_key``), the potency cluster, the reference lots,
    the normalisation and embedding parameters (``uns['preprocess']['params']``), the PCA
    centring and loadings, the cells' embedding, the expression matrix, the UMAP, the stored
    scVI model, the potency population's boundary rule and the shipped calibrations (BLAKE2b,
    128 bits, arrays rounded to float32 so a save/load round trip keeps it). The record's
    description of that content (``'labels'``, ``'n_cells'``, ``'n_genes'``) is checked
    against it. The same reference, processed or frozen, has the same hash (unless a scVI
    model or calibrations are stored, which the processed reference lacks).

    What it does not guarantee: it is an integrity check, not a signature. It detects a
    reference changed after freezing, but whoever changes the content can also store a
    recomputed hash, and the file then verifies. To know that a reference is *the* approved
    one, record its hash where it cannot be changed (a validation report) and pin it:
    ``io.read_reference(path, expected_hash=...)`` or
    ``tl.map_to_reference(..., expected_hash=...)``. Provenance (cell names, ``'created'``,
    ``'versions'``, ``'source_fingerprint'``, ``'params'`` and the provenance log) changes no
    answer and is not hashed.
    """
    options = _scvi_options(scvi)
    methods = _backends(calibrations)
    model = reference_model(
        adata,
        cluster_key=cluster_key,
        layer=layer,
        lot_key=lot_key,
        umap_key=umap_key,
        association_key=association_key,
    )
    frozen, encoding = _slim_copy(adata, model, cluster_key, lot_key, layer)
    source = adata.uns.get(PREPROCESS.key, {}).get("params", {})
    frozen.uns[PREPROCESS.key] = {"params": {k: v for k, v in source.items() if v is not None}}
    called_with = {
        "cluster_key": cluster_key,
        "lot_key": lot_key,
        "layer": layer,
        "umap_key": umap_key,
        "association_key": association_key,
        "scvi": scvi if isinstance(scvi, bool) else "ScviOptions",
        "calibrations": list(methods),
        "random_state": random_state,
    }
    stored = _trained_model(adata, frozen, model, options, random_state)
    record = _record(adata, frozen, model, cluster_key, lot_key, called_with)
    record["expression_encoding"] = encoding
    if model.boundary is not None:
        record["boundary"] = model.boundary
    if stored is not None:
        record["scvi"] = stored
        parts = {**_data_parts(model), "scvi": model_digest(stored)}
        record.update(hash=content_hash(parts), hash_parts=parts)
    frozen.uns[key_added] = record
    for entry in adata.uns.get(_keys.PACKAGE, {}).get(_keys.LOG, []):
        append_log(frozen, str(entry))
    # the hash is taken on float32 values, so the slim copy must reproduce it exactly
    checked = reference_model(frozen, cluster_key=cluster_key)
    if methods:
        _ship_calibrations(record, checked, methods)
        frozen.uns[key_added] = record
        reference_model(frozen, cluster_key=cluster_key)
    return frozen


def _data_parts(model: ReferenceModel) -> dict[str, str]:
    """The hash parts of ``model`` but shipped calibrations (freezing a frozen one ships anew)."""
    return {name: digest for name, digest in model.hash_parts.items() if name != "calibrations"}


def _backends(calibrations: Sequence[str]) -> tuple[str, ...]:
    """``calibrations`` as distinct backend names (a lone string is one), each checked."""
    names = (calibrations,) if isinstance(calibrations, str) else tuple(calibrations)
    methods = tuple(dict.fromkeys(str(name) for name in names))
    for method in methods:
        projection_options(method)  # a clear error now, not after the freeze's work
    return methods


def _ship_calibrations(
    record: dict[str, Any], model: ReferenceModel, methods: tuple[str, ...]
) -> None:
    """Compute the calibrations of ``methods`` on the frozen ``model`` and add them, hashed, to ``record``."""
    start = time.perf_counter()
    record["calibrations"] = calibrations_for(model, methods)
    parts = {**record["hash_parts"], "calibrations": calibrations_digest(record["calibrations"])}
    record.update(hash=content_hash(parts), hash_parts=parts)
    logger.info(
        "calibrations for %s shipped in %.1f s", ", ".join(methods), time.perf_counter() - start
    )


def _scvi_options(scvi: bool | ScviOptions) -> ScviOptions | None:
    """The options to train the scVI model with (``None``: no model)."""
    if scvi is False:
        return None
    if scvi is True:
        return ScviOptions()
    if not isinstance(scvi, ScviOptions):
        msg = f"scvi must be True, False or a tl.ScviOptions, got {type(scvi).__name__}"
        raise TypeError(msg)
    return scvi


def _trained_model(
    adata: AnnData,
    frozen: AnnData,
    model: ReferenceModel,
    options: ScviOptions | None,
    random_state: int,
) -> dict[str, Any] | None:
    """The scvi backend's reference model, trained on the counts of the embedding genes."""
    if options is None:
        return None
    counts = stored_counts(frozen)
    counts = counts if counts is not None else reference_counts(adata, model)
    start = time.perf_counter()
    stored = train_reference(counts, model, options, random_state=random_state)
    logger.info("scvi reference model trained in %.1f s", time.perf_counter() - start)
    return stored


def _slim_copy(
    adata: AnnData, model: ReferenceModel, cluster_key: str, lot_key: str | None, layer: str
) -> tuple[AnnData, str]:
    """The reference cells on the embedding genes, with only what mapping reads, and its encoding.

    ``X`` holds the embedding genes' counts (compressible integers) and ``obs`` each cell's
    normalisation factor when that recomputes the expression exactly; else the expression.
    """
    obs = pd.DataFrame(index=adata.obs_names.copy())
    obs[cluster_key] = pd.Categorical.from_codes(model.labels, categories=list(model.categories))
    if model.lots is not None and lot_key is not None:
        obs[lot_key] = pd.Categorical(model.lots)
    var = pd.DataFrame(index=pd.Index(model.genes, name=None))
    var["pca_mean"] = model.pca_mean.astype(np.float32)
    var["highly_variable"] = True
    X, scale = _counts_encoding(adata, model, layer)
    if scale is not None:
        obs[SCALE_COLUMN] = scale
    frozen = AnnData(X=X, obs=obs, var=var)
    frozen.varm["PCs"] = model.loadings.astype(np.float32)
    frozen.obsm["X_pca"] = model.embedding.astype(np.float32)
    if model.umap is not None:
        frozen.obsm["X_umap"] = model.umap.astype(np.float32)
    return frozen, LOG_ENCODING if scale is None else COUNTS_ENCODING


def _counts_encoding(adata: AnnData, model: ReferenceModel, layer: str):
    """The embedding genes' counts and each cell's factor, if they give back the expression exactly.

    ``(expression, None)`` when the reference has no counts, or when they do not
    reproduce the expression bit for bit.
    """
    record = frozen_record(adata)
    if record is not None:
        counts = stored_counts(adata, record)
        if counts is None:
            return model.expression.astype(np.float32), None
        return counts, adata.obs[SCALE_COLUMN].to_numpy(dtype=np.float32)
    if layer not in adata.layers:
        return model.expression.astype(np.float32), None
    counts = adata.layers[layer]
    counts = counts.compute() if hasattr(counts, "compute") else counts
    scale = normalisation_scale(counts, model.target_sum)
    columns = adata.var_names.get_indexer(model.genes)
    compact = compact_counts(sparse.csr_matrix(counts)[:, columns])
    if expression_digest(scaled_log(compact, scale)) != model.hash_parts["expression"]:
        logger.info("counts do not reproduce the expression exactly: storing the expression")
        return model.expression.astype(np.float32), None
    return compact, scale


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
        "hash": model.data_hash,
        "hash_version": HASH_VERSION,
        "hash_parts": _data_parts(model),
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
