"""``tl.map_to_reference``: transfer reference labels to new lots, with calibrated confidence."""

from __future__ import annotations

import functools
import json
import logging
import os
import time
import warnings
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from anndata import AnnData

from ... import _keys
from ..._provenance import record
from ..._validate import lots_of, require_unique_cell_names
from ._anchors import filter_space, find_transfer_anchors, transfer_data
from ._calibration import (
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    lot_folds,
    reliability_table,
)
from ._fast import fast_transfer, gaussian_weights
from ._harmonise import harmonise
from ._model import ReferenceModel, reference_model
from ._neighbors import knn
from ._project import Centre, CentredMatrix, centred, own_axes
from ._scoring import mapping_score

logger = logging.getLogger("mscpotency")

#: Default ``key_added`` of :func:`map_to_reference`.
MAPPING = "predicted"
Method = Literal["fast", "anchors", "scvi"]
_METHODS = ("fast", "anchors", "scvi")


@dataclass(frozen=True)
class _Settings:
    method: str
    centre: str
    n_neighbors: int
    k_anchor: int
    k_filter: int
    k_score: int
    k_weight: int
    sd_weight: float
    n_comps_own: int
    knn_method: str
    random_state: int


def _blas_single_thread(func):
    """Run with one BLAS thread.

    The linear algebra here is many small factorisations (QR/SVD of cells x 30 blocks), for
    which a multi-threaded BLAS spends far more time synchronising than computing (40x
    slower on two busy cores); the heavy lifting (neighbour search) is threaded by
    scikit-learn's own OpenMP pool, which a BLAS pool would only oversubscribe.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any):
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1, user_api="blas"):
            return func(*args, **kwargs)

    return wrapper


def _with_reference_hash(func):
    """Add the reference's content hash to the provenance entry the call wrote."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any):
        result = func(*args, **kwargs)
        target = (
            result if isinstance(result, AnnData) else (args[0] if args else kwargs.get("query"))
        )
        key = kwargs.get("key_added", MAPPING)
        if isinstance(target, AnnData) and isinstance(target.uns.get(key), dict):
            log = target.uns.get(_keys.PACKAGE, {}).get(_keys.LOG)
            if log is not None and len(log):
                entry = json.loads(str(log[-1]))
                if entry.get("function") == "tl.map_to_reference":
                    entry["params"]["reference_hash"] = str(target.uns[key]["reference_hash"])
                    entries = list(log)
                    entries[-1] = json.dumps(entry, sort_keys=True)
                    target.uns[_keys.PACKAGE][_keys.LOG] = entries
        return result

    return wrapper


@_with_reference_hash
@record("tl.map_to_reference")
@_blas_single_thread
def map_to_reference(
    query: AnnData,
    reference: AnnData | str | os.PathLike,
    *,
    method: Method = "anchors",
    label_key: str = _keys.CLUSTER,
    counts_layer: str | None = _keys.COUNTS_LAYER,
    lot_key: str | None = _keys.LOT,
    centre: Centre = "lot",
    n_neighbors: int = 30,
    k_anchor: int = 5,
    k_filter: int = 200,
    k_score: int = 30,
    k_weight: int = 50,
    sd_weight: float = 1.0,
    calibrate: bool = True,
    n_calibration_folds: int = 3,
    min_shared_genes: float = 0.5,
    min_cells_per_lot: int = 50,
    min_score: float = 0.5,
    min_mapping_score: float = 0.5,
    n_comps_own: int = 20,
    umap_key: str = "X_umap",
    knn_method: Literal["auto", "exact", "approximate"] = "auto",
    scvi_kwargs: dict | None = None,
    random_state: int = 0,
    key_added: str = MAPPING,
    copy: bool = False,
) -> AnnData | None:
    """Map query cells (new lots, other tissues) onto a reference and transfer its labels.

    The query's raw counts are normalised exactly as the reference was, aligned to the genes
    of the reference embedding (missing genes zero-padded and reported) and projected onto
    the reference PCA. One of three backends then transfers the labels:

    - ``"fast"``: weighted votes of the ``n_neighbors`` nearest reference cells in the
      reference PCA (what scanpy's ``ingest`` does); right when query lots share the
      reference's batch;
    - ``"anchors"``: Seurat's FindTransferAnchors (``pcaproject``) + TransferData on numpy:
      mutual nearest neighbours as anchors, filtered, scored, and anchor-weighted label
      transfer; robust to lot and tissue effects;
    - ``"scvi"``: scVI → scANVI on the reference with lots as batches and scArches query
      surgery (optional dependency ``scvi-tools``).

    Every backend writes the same fields. The probabilities are temperature-scaled on the
    reference (its lots held out in turn and mapped onto the others; for scvi, the reference
    cells scANVI's classifier did not train on), and a mapping score,
    computed from the query's own structure, says how well the reference represents each
    cell: cells of a population the reference lacks score low instead of hiding behind a
    confident label.

    Parameters
    ----------
    query
        Cells to map, with raw counts in ``layers[counts_layer]`` (or ``X``).
    reference
        A processed reference (``pp.preprocess``, labels in ``obs[label_key]``), a frozen one
        from :func:`mscpotency.tl.freeze_reference`, or the path of a saved frozen reference.
    method
        ``"fast"``, ``"anchors"`` or ``"scvi"``.
    label_key
        obs column of the reference labels to transfer.
    counts_layer
        Layer with the query's raw counts (``X`` when absent).
    lot_key
        obs column with the query's lots: per-lot centring, per-lot summaries and the
        small-lot warning. ``None`` treats the query as one lot.
    centre
        Where query cells are centred before projection: on each lot's mean (``"lot"``,
        removes donor/tissue shifts), on the query's mean (``"query"``) or on the reference
        mean (``"reference"``, as Seurat and ingest do).
    n_neighbors
        Reference neighbours voting in the fast backend (15 of them also place cells on
        the reference UMAP).
    k_anchor, k_filter, k_score, k_weight, sd_weight
        Anchor backend parameters, as Seurat's of the same names (``k_filter=0`` skips
        the filter).
    calibrate
        Fit a temperature on reference lots held out in turn (scvi: on scANVI's validation
        cells) and apply it.
    n_calibration_folds
        Folds of reference lots for the calibration (each maps at most 10,000 of its held-out
        cells, drawn at random: one temperature is fitted).
    min_shared_genes
        Smallest share of the reference's embedding genes the query must have.
    min_cells_per_lot
        Query lots with fewer cells trigger a warning that names them.
    min_score
        Cells whose prediction score is below this count as low-confidence.
    min_mapping_score
        Cells whose mapping score is below this count as off-reference.
    n_comps_own
        The query's own principal axes used by the mapping score and the anchor filter.
    umap_key
        Reference ``obsm`` key of a UMAP to place query cells on (skipped when absent).
    knn_method
        ``"exact"`` (brute force: deterministic; 10^5 query onto 10^5 reference cells in
        about 15 s on 2 cores), ``"approximate"`` (pynndescent) or ``"auto"`` (exact up to
        2 x 10^10 query x reference pairs).
    scvi_kwargs
        Options of the scvi backend (``n_latent``, ``max_epochs``, ``query_epochs``, ...).
    random_state
        Seed of every random step; the same seed gives the same result.
    key_added
        Prefix of the fields written.
    copy
        Return a copy instead of writing in place.

    Returns
    -------
    ``None``, or the copy when ``copy=True``. Writes

    - ``obs[key_added]`` : categorical, the predicted label (the reference's categories);
    - ``obs[f'{key_added}_score']`` : its probability (the prediction score);
    - ``obsm[f'{key_added}_probabilities']`` : DataFrame (cells x reference labels, rows sum to 1);
    - ``obs[f'{key_added}_mapping_score']`` : in [0, 1], low = not represented by the reference;
    - ``obsm[f'{key_added}_umap']`` : placement on the reference UMAP (when it has one);
    - ``uns[key_added]`` : ``'per_lot'`` DataFrame (cells, mean scores, shares of
      low-confidence and off-reference cells, per lot), ``'summary'`` (shares over all
      cells), ``'genes_missing'``, ``'n_genes_shared'``, ``'reference_hash'``,
      ``'reference_labels'``, ``'potency_label'`` (the reference's potency cluster, if it
      had one), ``'calibration'`` (reliability on held-out reference lots before and after
      scaling, and the temperature), ``'anchors'`` (anchor counts, anchors backend) and
      ``'params'``.
    """
    if method not in _METHODS:
        msg = f"method must be one of {_METHODS}, got {method!r}"
        raise ValueError(msg)
    if centre not in ("reference", "query", "lot"):
        msg = f"centre must be 'reference', 'query' or 'lot', got {centre!r}"
        raise ValueError(msg)
    for name, value in (("min_score", min_score), ("min_mapping_score", min_mapping_score)):
        if not 0 <= value <= 1:
            msg = f"{name} must lie in [0, 1], got {value!r}"
            raise ValueError(msg)
    if isinstance(reference, (str, os.PathLike)):
        from ...io._reference import read_reference

        reference = read_reference(reference)
    model = reference_model(
        reference, label_key=label_key, counts_layer=_keys.COUNTS_LAYER, umap_key=umap_key
    )
    require_unique_cell_names(query)
    if query.n_obs == 0:
        msg = "the query has no cells"
        raise ValueError(msg)
    lots = _query_lots(query, lot_key, min_cells_per_lot)
    harmonised = harmonise(
        query,
        model.genes,
        counts_layer=counts_layer,
        target_sum=model.target_sum,
        min_shared=min_shared_genes,
    )
    settings = _Settings(
        method=method,
        centre=centre,
        n_neighbors=n_neighbors,
        k_anchor=k_anchor,
        k_filter=k_filter,
        k_score=k_score,
        k_weight=k_weight,
        sd_weight=sd_weight,
        n_comps_own=n_comps_own,
        knn_method=knn_method,
        random_state=random_state,
    )
    start = time.perf_counter()
    by_lot = centred(harmonised.expression, centre="lot", reference_mean=model.pca_mean, lots=lots)
    projected = by_lot.dot(model.loadings)  # the query in the reference PCA, centred per lot
    score_map, own, _ = mapping_score(
        by_lot,
        model.loadings,
        n_comps=n_comps_own,
        knn_method=knn_method,
        random_state=random_state,
        projected=projected,
    )
    logger.info("mapping score in %.2f s", time.perf_counter() - start)
    anchor_info: dict[str, int] = {}
    if method == "scvi":
        from ._scvi import scvi_transfer

        probabilities, embedding_q, embedding_r, held_out = scvi_transfer(
            query,
            reference,
            model,
            harmonised,
            counts_layer=counts_layer,
            lots=lots,
            random_state=random_state,
            **(scvi_kwargs or {}),
        )
        placement_q, placement_r = embedding_q, embedding_r
        transfer_neighbours = None
    else:
        A = (
            by_lot
            if centre == "lot"
            else centred(
                harmonised.expression, centre=centre, reference_mean=model.pca_mean, lots=lots
            )
        )
        rows = np.arange(model.embedding.shape[0])
        query_embedding = projected if A is by_lot else A.dot(model.loadings)
        probabilities, anchor_info, transfer_neighbours = _transfer(
            model, rows, A, own, settings, query_embedding=query_embedding
        )
        placement_q, placement_r = query_embedding, model.embedding
    calibration: dict[str, Any] = {"temperature": 1.0, "fitted": False}
    if calibrate:
        if method == "scvi":
            # the scANVI classifier never trained on its validation cells: fit the temperature there
            calibration = calibration_summary(*held_out) if held_out[1].size else calibration
        else:
            calibration = _fit_calibration(model, settings, n_calibration_folds)
        probabilities = apply_temperature(probabilities, calibration["temperature"])
    placement = _umap_placement(
        model, placement_q, placement_r, knn_method, random_state, transfer_neighbours
    )
    categories = model.categories
    predicted = pd.Categorical.from_codes(probabilities.argmax(axis=1), categories=categories)
    score = probabilities.max(axis=1)
    per_lot, summary = _summaries(lots, score, score_map, min_score, min_mapping_score)
    query = query.copy() if copy else query
    query.obs[key_added] = pd.Categorical(np.asarray(predicted), categories=categories)
    query.obs[f"{key_added}_score"] = score
    query.obs[f"{key_added}_mapping_score"] = score_map
    query.obsm[f"{key_added}_probabilities"] = pd.DataFrame(
        probabilities, index=query.obs_names, columns=categories
    )
    if placement is not None:
        query.obsm[f"{key_added}_umap"] = placement
    else:  # a placement left by an earlier mapping would no longer match these labels
        query.obsm.pop(f"{key_added}_umap", None)
    query.uns[key_added] = {
        "per_lot": per_lot,
        "summary": summary,
        "genes_missing": harmonised.missing,
        "n_genes_shared": harmonised.shared,
        "n_genes_reference": len(model.genes),
        "target_sum": model.target_sum,
        "reference_hash": model.hash,
        "reference_labels": list(categories),
        "potency_label": model.potency_label or "",
        "calibration": calibration,
        "anchors": anchor_info,
        "params": {
            "method": method,
            "label_key": label_key,
            "counts_layer": counts_layer,
            "lot_key": lot_key,
            "centre": centre,
            "n_neighbors": n_neighbors,
            "k_anchor": k_anchor,
            "k_filter": k_filter,
            "k_score": k_score,
            "k_weight": k_weight,
            "sd_weight": sd_weight,
            "calibrate": calibrate,
            "n_calibration_folds": n_calibration_folds,
            "min_shared_genes": min_shared_genes,
            "min_cells_per_lot": min_cells_per_lot,
            "min_score": min_score,
            "min_mapping_score": min_mapping_score,
            "n_comps_own": n_comps_own,
            "umap_key": umap_key,
            "umap_placed": placement is not None,
            "knn_method": knn_method,
            "random_state": random_state,
            "reference_frozen": model.frozen,
        },
    }
    return query if copy else None


def _query_lots(query: AnnData, lot_key: str | None, min_cells_per_lot: int) -> np.ndarray | None:
    """The lot of every query cell (or ``None``), warning about lots too small to summarise."""
    if lot_key is None:
        if query.n_obs < min_cells_per_lot:
            warnings.warn(
                f"map_to_reference: the query has only {query.n_obs} cells (< {min_cells_per_lot}); "
                "its label fractions and mapping scores are noisy.",
                UserWarning,
                stacklevel=4,
            )
        return None
    lots = lots_of(query, lot_key)
    counts = lots.value_counts()
    small = counts[counts < min_cells_per_lot].sort_index()
    if len(small):
        named = ", ".join(f"{lot!r} ({n} cells)" for lot, n in small.items())
        warnings.warn(
            f"map_to_reference: query lot(s) {named} have fewer than {min_cells_per_lot} cells; "
            "they are mapped, but their label fractions and mapping scores are noisy. "
            "Pool them with other lots of the same batch or interpret them with care.",
            UserWarning,
            stacklevel=4,
        )
    return lots.astype(str).to_numpy()


def _transfer(
    model: ReferenceModel,
    rows: np.ndarray,
    A: CentredMatrix,
    own: np.ndarray,
    s: _Settings,
    query_embedding: np.ndarray | None = None,
) -> tuple[np.ndarray, dict[str, int], tuple[np.ndarray, np.ndarray] | None]:
    """Label probabilities of the query ``A`` from the reference cells ``rows``.

    ``query_embedding``: ``A.dot(model.loadings)`` when already computed. Also returns the
    fast backend's reference neighbours (indices into ``rows``, distances), which the UMAP
    placement reuses; ``None`` for the anchors backend.
    """
    n_labels = len(model.categories)
    reference_embedding = model.embedding[rows]
    reference_labels = model.labels[rows]
    if query_embedding is None:
        query_embedding = A.dot(model.loadings)
    if s.method == "fast":
        probabilities, indices, distances = fast_transfer(
            reference_embedding,
            reference_labels,
            n_labels,
            query_embedding,
            n_neighbors=s.n_neighbors,
            knn_method=s.knn_method,
            random_state=s.random_state,
        )
        return probabilities, {}, (indices, distances)
    reference_filter = query_filter = None
    if s.k_filter > 0:
        expression = model.expression[rows]
        mean = model.pca_mean

        def reference_dot(basis: np.ndarray) -> np.ndarray:
            return np.asarray(expression @ basis) - mean @ basis

        reference_filter, query_filter = filter_space(reference_dot, A.dot, model.loadings, own)
    anchors = find_transfer_anchors(
        reference_embedding,
        query_embedding,
        reference_filter=reference_filter,
        query_filter=query_filter,
        k_anchor=s.k_anchor,
        k_filter=s.k_filter,
        k_score=s.k_score,
        knn_method=s.knn_method,
        random_state=s.random_state,
    )
    probabilities = transfer_data(
        query_embedding,
        anchors,
        reference_labels,
        n_labels,
        k_weight=s.k_weight,
        sd_weight=s.sd_weight,
        knn_method=s.knn_method,
        random_state=s.random_state,
    )
    info = {
        "n_mnn": anchors.n_mnn,
        "n_anchors": int(anchors.reference.size),
        "n_query_cells_anchored": int(np.unique(anchors.query).size),
    }
    return probabilities, info, None


#: Calibrations already fitted in this process, by reference hash and settings: mapping several
#: query sets onto one reference fits the temperature once (the result is deterministic).
_CALIBRATIONS: dict[tuple, dict[str, Any]] = {}
_CALIBRATIONS_MAX = 16


def _fit_calibration(model: ReferenceModel, s: _Settings, n_folds: int) -> dict[str, Any]:
    """Temperature from reference lots held out in turn and mapped onto the rest (cached)."""
    cache_key = (model.hash, s, n_folds)
    if cache_key not in _CALIBRATIONS:
        if len(_CALIBRATIONS) >= _CALIBRATIONS_MAX:
            _CALIBRATIONS.pop(next(iter(_CALIBRATIONS)))
        _CALIBRATIONS[cache_key] = _calibration_fit(model, s, n_folds)
    stored = _CALIBRATIONS[cache_key]
    return {k: (v.copy() if isinstance(v, pd.DataFrame) else v) for k, v in stored.items()}


#: Held-out reference cells mapped per calibration fold, at most (a random subset above):
#: one temperature is fitted, and 10^4 cells per fold pin it down.
CALIBRATION_MAX_CELLS = 10_000


def _calibration_fit(model: ReferenceModel, s: _Settings, n_folds: int) -> dict[str, Any]:
    n = model.embedding.shape[0]
    collected, truth = [], []
    rng = np.random.default_rng([s.random_state, 2])
    for held_out in lot_folds(model.lots, n, n_folds, s.random_state):
        rows = np.flatnonzero(~held_out)
        if held_out.sum() > CALIBRATION_MAX_CELLS:
            kept = np.sort(
                rng.choice(np.flatnonzero(held_out), CALIBRATION_MAX_CELLS, replace=False)
            )
            held_out = np.zeros(n, dtype=bool)
            held_out[kept] = True
        lots = model.lots[held_out] if model.lots is not None else None
        A = centred(
            model.expression[held_out], centre=s.centre, reference_mean=model.pca_mean, lots=lots
        )
        own = np.zeros((A.X.shape[1], 0))
        if s.method == "anchors" and s.k_filter > 0:
            by_lot = (
                A
                if s.centre == "lot"
                else centred(
                    model.expression[held_out],
                    centre="lot",
                    reference_mean=model.pca_mean,
                    lots=lots,
                )
            )
            n_own = int(min(s.n_comps_own, max(1, by_lot.X.shape[0] - 2), by_lot.X.shape[1] - 1))
            own, _ = own_axes(by_lot, n_own, random_state=s.random_state)
        probabilities, _, _ = _transfer(model, rows, A, own, s)
        collected.append(probabilities)
        truth.append(model.labels[held_out])
    summary = calibration_summary(np.vstack(collected), np.concatenate(truth))
    summary["n_folds"] = n_folds
    return summary


def calibration_summary(probabilities: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Fit the temperature on held-out reference cells and describe the fit."""
    temperature = fit_temperature(probabilities, labels)
    scaled = apply_temperature(probabilities, temperature)
    before = reliability_table(probabilities.max(axis=1), probabilities.argmax(axis=1) == labels)
    after = reliability_table(scaled.max(axis=1), scaled.argmax(axis=1) == labels)
    return {
        "temperature": temperature,
        "fitted": True,
        "n_cells": int(labels.size),
        "accuracy": float((probabilities.argmax(axis=1) == labels).mean()),
        "ece_before": expected_calibration_error(
            probabilities.max(axis=1), probabilities.argmax(axis=1) == labels
        ),
        "ece_after": expected_calibration_error(
            scaled.max(axis=1), scaled.argmax(axis=1) == labels
        ),
        "reliability_before": before,
        "reliability_after": after,
    }


def _umap_placement(
    model: ReferenceModel,
    query_embedding: np.ndarray,
    reference_embedding: np.ndarray,
    knn_method: str,
    seed: int,
    neighbours: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray | None:
    """Each query cell at the weighted mean UMAP position of its 15 nearest reference cells.

    ``neighbours``: the query's nearest reference cells in the same embedding, nearest
    first, if already known (the fast backend's); their first 15 are used.
    """
    if model.umap is None:
        return None
    if neighbours is not None and neighbours[0].shape[1] >= min(15, reference_embedding.shape[0]):
        indices, distances = neighbours[0][:, :15], neighbours[1][:, :15]
    else:
        indices, distances = knn(
            reference_embedding, query_embedding, 15, method=knn_method, random_state=seed
        )
    weights = gaussian_weights(distances)
    weights /= weights.sum(axis=1, keepdims=True)
    return np.einsum("ij,ijk->ik", weights, model.umap[indices])


def _summaries(
    lots: np.ndarray | None,
    score: np.ndarray,
    score_map: np.ndarray,
    min_score: float,
    min_mapping: float,
) -> tuple[pd.DataFrame, dict[str, float]]:
    low_score = score < min_score
    off = score_map < min_mapping
    frame = pd.DataFrame(
        {
            "lot": lots if lots is not None else np.full(score.size, "all"),
            "score": score,
            "mapping_score": score_map,
            "low_score": low_score,
            "off_reference": off,
            "low_confidence": low_score | off,
        }
    )
    grouped = frame.groupby("lot", sort=True)
    per_lot = pd.DataFrame(
        {
            "n_cells": grouped.size(),
            "mean_score": grouped["score"].mean(),
            "share_low_score": grouped["low_score"].mean(),
            "mean_mapping_score": grouped["mapping_score"].mean(),
            "share_off_reference": grouped["off_reference"].mean(),
            "share_low_confidence": grouped["low_confidence"].mean(),
        }
    )
    per_lot.index.name = "lot"
    summary = {
        "n_cells": int(score.size),
        "mean_score": float(score.mean()),
        "share_low_score": float(low_score.mean()),
        "mean_mapping_score": float(np.nanmean(score_map))
        if np.isfinite(score_map).any()
        else float("nan"),
        "share_off_reference": float(off.mean()),
        "share_low_confidence": float((low_score | off).mean()),
    }
    return per_lot, summary
