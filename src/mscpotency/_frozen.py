"""What a reference must provide for mapping, read once from an AnnData, checked and hashed.

A reference is either a processed AnnData (``pp.preprocess`` + a label column such as
``tl.cluster``'s) or a frozen reference from :func:`mscpotency.tl.freeze_reference`: the
same thing slimmed to the genes of the embedding and stamped with a content hash (its
record in ``uns``). :func:`reference_model` reads either into a :class:`ReferenceModel`;
the mapping backends (``tl``) and the reference's reader and writer (``io``) both build on
it, so it lives below both.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from . import _keys
from ._registry import FROZEN_REFERENCE, LOT_FRACTIONS, POTENCY_ASSOCIATION, PREPROCESS
from ._stored import params, potency_cluster

#: Run this to get what mapping needs from a reference.
_PREPROCESS_HINT = (
    "Run `pp.preprocess` on the reference (it fits the embedding that query cells are "
    "projected onto)."
)


@dataclass(frozen=True)
class ReferenceModel:
    """Everything the mapping backends read from a reference, as plain arrays."""

    genes: pd.Index  # genes of the embedding (the reference's HVGs), in PCA order
    pca_mean: np.ndarray  # (n_genes,) centring of the PCA
    loadings: np.ndarray  # (n_genes, n_comps) varm['PCs'] on those genes
    target_sum: float
    embedding: np.ndarray  # (n_ref, n_comps) obsm['X_pca']
    expression: sparse.csr_matrix  # (n_ref, n_genes) log-normalised expression of those genes
    labels: np.ndarray  # (n_ref,) integer codes into ``categories``
    categories: pd.Index
    cluster_key: str
    lots: np.ndarray | None  # (n_ref,) lot of each reference cell, if known
    umap: np.ndarray | None  # (n_ref, 2) reference UMAP, if present
    potency_cluster: str | None  # the reference's potency cluster, if it was determined
    hash: str
    frozen: bool
    hash_parts: dict[str, str]  # a digest per part (what :func:`content_hash` combines)
    boundary: dict[str, Any] | None = None  # the potency population's boundary rule, if any
    #: the hash of everything but shipped calibrations: what those are computed from, and
    #: the key of mapping's caches (equal to ``hash`` when none are shipped)
    data_hash: str = ""
    calibrations: Mapping[str, Any] | None = None  # the record's shipped calibrations, if any


# --------------------------------------------------------------------------- frozen record
def _is_record(value: Any) -> bool:
    return isinstance(value, Mapping) and "hash" in value and "cluster_key" in value


def frozen_record(adata: AnnData) -> Mapping | None:
    """The record :func:`mscpotency.tl.freeze_reference` wrote, or ``None`` (not frozen).

    Looked up under the default key first, then under any other key of ``adata.uns``
    (``freeze_reference(..., key_added=...)``).
    """
    candidates = [adata.uns.get(FROZEN_REFERENCE.key), *adata.uns.values()]
    return next((value for value in candidates if _is_record(value)), None)


# --------------------------------------------------------------------------- normalisation
def lognormalise(counts, target_sum: float) -> sparse.csr_matrix:
    """``log1p(counts / total_per_cell * target_sum)`` as float32 CSR (cells without counts stay 0).

    Canonical CSR counts (sorted, no stored zeros) give a matrix with its own values but the
    counts' ``indices``/``indptr`` (nothing here changes the sparsity structure), so only
    the values are copied. Lazy (Dask) counts are computed first: mapping works in memory.
    """
    if hasattr(counts, "compute"):
        counts = counts.compute()
    if sparse.issparse(counts) and counts.format == "csr" and counts.has_canonical_format:
        X = sparse.csr_matrix(
            (counts.data.astype(np.float32, copy=True), counts.indices, counts.indptr),
            shape=counts.shape,
            copy=False,
        )
    else:
        X = sparse.csr_matrix(counts, dtype=np.float32, copy=True)
    _scale_rows(X.data, X.indptr, _row_scale(X, target_sum))
    np.log1p(X.data, out=X.data)
    return X


@numba.njit(nogil=True, cache=True)
def _scale_rows(data, indptr, scale):  # pragma: no cover - compiled
    """``data`` of row i times ``scale[i]`` (single precision, as numpy multiplies), in place."""
    for row in range(indptr.size - 1):
        factor = scale[row]
        for k in range(indptr[row], indptr[row + 1]):
            data[k] = data[k] * factor


# --------------------------------------------------------------------------- the model
def reference_model(
    reference: AnnData,
    *,
    cluster_key: str,
    layer: str = _keys.COUNTS_LAYER,
    lot_key: str | None = _keys.LOT,
    umap_key: str = "X_umap",
    association_key: str = POTENCY_ASSOCIATION.key,
    expected_hash: str | None = None,
) -> ReferenceModel:
    """Read and check what mapping needs from ``reference``; every gap is a clear error.

    ``layer`` holds the reference's raw counts (the expression is recomputed from them);
    a frozen reference's own ``X`` is used as is, and its record decides the lots, the
    potency cluster and the UMAP (``obsm['X_umap']``). A frozen reference whose content no
    longer matches its hash, or whose record disagrees with its content, is refused; so is
    any reference whose hash is not ``expected_hash`` (when given).
    """
    if not isinstance(reference, AnnData):
        msg = (
            "reference must be an AnnData (processed or from `tl.freeze_reference`), got "
            f"{type(reference).__name__}"
        )
        raise TypeError(msg)
    expected_hash = expected_hash_value(expected_hash)
    record = frozen_record(reference)
    if record is not None:
        lot_key = str(record.get("lot_key", "")) or None
        umap_key = "X_umap"  # where tl.freeze_reference puts it
    labels = _labels(reference, cluster_key, record)
    target_sum = _target_sum(reference)
    used, loadings, embedding = _embedding(reference)
    genes = reference.var_names[used]
    pca_mean = reference.var["pca_mean"].to_numpy(dtype=np.float64)[used]
    expression, expression_part = _verified_expression(reference, used, layer, target_sum, record)
    categorical = labels.astype("category")
    categories = pd.Index([str(c) for c in categorical.cat.categories])
    codes = categorical.cat.codes.to_numpy().astype(np.int64)
    lots = _reference_lots(reference, lot_key)
    umap = _reference_umap(reference, umap_key)
    potency = _potency_cluster(reference, record, association_key, cluster_key, categories)
    boundary = _population_boundary(reference, record, cluster_key, categories)
    parts = hash_parts(
        genes=genes,
        categories=categories,
        codes=codes,
        cluster_key=cluster_key,
        potency_cluster=potency,
        lots=lots,
        parameters=_parameters(reference, target_sum),
        pca_mean=pca_mean,
        loadings=loadings,
        embedding=embedding,
        expression=expression,
        umap=umap,
        scvi_model=None if record is None else record.get("scvi"),
        expression_part=expression_part,
    )
    if boundary is not None:  # only then: references without one keep their hash
        parts["boundary"] = boundary_digest(boundary)
    data_hash = content_hash(parts)
    calibrations = None if record is None else record.get("calibrations")
    if calibrations is not None:  # likewise
        parts["calibrations"] = calibrations_digest(calibrations)
    digest = content_hash(parts)
    _check_hash(record, digest, parts, cluster_key=cluster_key, lot_key=lot_key)
    _check_record(record, categories, n_cells=reference.n_obs, n_genes=len(genes))
    _check_expected(expected_hash, digest)
    return ReferenceModel(
        genes=genes,
        pca_mean=pca_mean,
        loadings=loadings,
        target_sum=target_sum,
        embedding=embedding,
        expression=expression,
        labels=codes,
        categories=categories,
        cluster_key=cluster_key,
        lots=lots,
        umap=umap,
        potency_cluster=potency,
        hash=digest,
        frozen=record is not None,
        hash_parts=parts,
        boundary=boundary,
        data_hash=data_hash,
        calibrations=calibrations,
    )


def _missing(what: str) -> KeyError:
    return KeyError(f"the reference has no {what}. {_PREPROCESS_HINT}")


def _labels(reference: AnnData, cluster_key: str, record: Mapping | None) -> pd.Series:
    """The labels to transfer: present, complete, and the ones a frozen reference carries."""
    if record is not None and cluster_key != str(record["cluster_key"]):
        stored_key = str(record["cluster_key"])
        msg = (
            f"this frozen reference carries labels {stored_key!r}, not {cluster_key!r}; pass "
            f"cluster_key={stored_key!r} or freeze the reference again with "
            f"cluster_key={cluster_key!r}."
        )
        raise KeyError(msg)
    if cluster_key not in reference.obs.columns:
        msg = (
            f"the reference has no labels in obs[{cluster_key!r}]; obs columns are "
            f"{list(reference.obs.columns)[:12]}. Run `tl.cluster` on the reference or pass "
            "cluster_key=."
        )
        raise KeyError(msg)
    labels = reference.obs[cluster_key]
    if labels.isna().any():
        msg = (
            f"{int(labels.isna().sum())} reference cells have no label in "
            f"obs[{cluster_key!r}]; label or remove them."
        )
        raise ValueError(msg)
    return labels


def _target_sum(reference: AnnData) -> float:
    """The normalisation's target sum, once the embedding's parts are known to be there."""
    if "X_pca" not in reference.obsm:
        raise _missing("embedding obsm['X_pca']")
    if "PCs" not in reference.varm:
        raise _missing("PCA loadings varm['PCs']")
    if "pca_mean" not in reference.var.columns:
        raise _missing("PCA centring var['pca_mean']")
    stored = reference.uns.get(PREPROCESS.key)
    recorded = stored.get("params", {}) if isinstance(stored, Mapping) else {}
    if "target_sum" not in recorded:
        raise _missing(f"normalisation record uns[{PREPROCESS.key!r}]['params']['target_sum']")
    return float(recorded["target_sum"])


def _embedding(reference: AnnData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The genes of the embedding (mask), their loadings, and the cells' coordinates."""
    loadings_all = np.asarray(reference.varm["PCs"], dtype=np.float64)
    if "highly_variable" in reference.var.columns:
        used = reference.var["highly_variable"].to_numpy(dtype=bool)
    else:
        used = np.abs(loadings_all).sum(axis=1) > 0
    if used.sum() < 2:
        raise _missing("genes with PCA loadings")
    embedding = np.asarray(reference.obsm["X_pca"], dtype=np.float64)
    if embedding.shape[1] != loadings_all.shape[1]:
        msg = (
            f"the reference's obsm['X_pca'] has {embedding.shape[1]} components but varm['PCs'] "
            f"has {loadings_all.shape[1]}; they come from different runs. Run `pp.preprocess` "
            "again."
        )
        raise ValueError(msg)
    return used, loadings_all[used], embedding


def _reference_lots(reference: AnnData, lot_key: str | None) -> np.ndarray | None:
    if lot_key is None or lot_key not in reference.obs.columns:
        return None
    return reference.obs[lot_key].astype(str).to_numpy()


def _reference_umap(reference: AnnData, umap_key: str) -> np.ndarray | None:
    if umap_key not in reference.obsm:
        return None
    return np.asarray(reference.obsm[umap_key], dtype=np.float64)[:, :2]


def _potency_cluster(
    reference: AnnData,
    record: Mapping | None,
    association_key: str,
    cluster_key: str,
    categories: pd.Index,
) -> str | None:
    """The reference's potency cluster among its labels: the frozen record's, else the association's."""
    if record is not None and record.get("potency_cluster"):
        name = str(record["potency_cluster"])
    else:
        name = _associated_cluster(reference, association_key, cluster_key)
    return name if name in categories else None


def _population_boundary(
    reference: AnnData, record: Mapping | None, cluster_key: str, categories: pd.Index
) -> dict[str, Any] | None:
    """The boundary rule of the potency population in these labels, if they carry one.

    A frozen reference's record holds it; a processed one has it in ``uns[cluster_key]``
    when ``obs[cluster_key]`` holds the labels of ``tl.potency_population`` (which writes
    both under its ``key_added``). Used only when both its labels are among the categories
    and its axis lives in the reference PCA (``obsm['X_pca']``), where queries are projected.
    """
    source = record if record is not None else reference.uns.get(cluster_key)
    rule = source.get("boundary") if isinstance(source, Mapping) else None
    if not isinstance(rule, Mapping):
        return None
    labels = {str(rule.get("population")), str(rule.get("neighbour"))}
    if str(rule.get("representation")) != "X_pca" or not labels <= set(categories):
        return None
    return {
        "population": str(rule["population"]),
        "neighbour": str(rule["neighbour"]),
        "representation": "X_pca",
        "axis": np.asarray(rule["axis"], dtype=np.float64),
        **{name: float(rule[name]) for name in ("centre", "spread", "threshold", "quantile")},
    }


def _associated_cluster(reference: AnnData, association_key: str, cluster_key: str) -> str | None:
    """The potency cluster ``tl.potency_association`` named, if it ran on these labels."""
    try:
        name = potency_cluster(reference, association_key=association_key)
        fractions_key = params(reference, POTENCY_ASSOCIATION, association_key).get("fractions_key")
        if fractions_key is None:
            return None
        counted_on = params(reference, LOT_FRACTIONS, fractions_key).get("cluster_key")
    except KeyError:
        return None
    return name if counted_on == cluster_key else None


def _reference_expression(
    reference: AnnData, used: np.ndarray, layer: str, target_sum: float, record: Mapping | None
) -> sparse.csr_matrix:
    """Log-normalised expression of the embedding genes, recomputed from counts when available.

    Recomputing from the counts normalises the reference exactly as the query will be. A
    frozen reference stores either that expression or (smaller) the counts of the embedding
    genes with each cell's normalisation factor, from which it is recomputed bit for bit.
    """
    if record is None and layer in reference.layers:
        expression = lognormalise(reference.layers[layer], target_sum)
        return expression if used.all() else expression[:, np.flatnonzero(used)].tocsr()
    counts = stored_counts(reference, record)
    if counts is not None:
        scale = reference.obs[SCALE_COLUMN].to_numpy(dtype=np.float32)
        return scaled_log(counts, scale)
    X = reference.X
    if not used.all():
        X = X[:, np.flatnonzero(used)]
    if sparse.issparse(X) and X.format == "csr" and X.dtype == np.float32:
        return X  # a frozen reference's own matrix: read-only here, no copy
    return sparse.csr_matrix(X, dtype=np.float32)


# --------------------------------------------------------------------------- verified once per content
#: Expressions (and their digests) recomputed from stored bytes, keyed by a checksum of those
#: bytes (:func:`_expression_key`): a reference mapped again, unchanged, is neither
#: re-normalised nor re-hashed; a reference whose bytes changed in any way misses and is
#: recomputed and verified in full. The oldest of at most :data:`_EXPRESSIONS_KEPT` leaves first.
_EXPRESSIONS: dict[tuple, tuple[sparse.csr_matrix | None, str]] = {}
_EXPRESSIONS_KEPT = 2


def forget_expressions() -> None:
    """Forget every expression and digest :func:`reference_model` kept (a cold call's state)."""
    _EXPRESSIONS.clear()


def _verified_expression(
    reference: AnnData, used: np.ndarray, layer: str, target_sum: float, record: Mapping | None
) -> tuple[sparse.csr_matrix, str]:
    """:func:`_reference_expression` and its :func:`expression_digest`, computed once per content.

    The key checksums every byte the expression is computed from (the matrix's buffers, the
    normalisation factors, the genes used, ``target_sum``), so reusing an entry gives what
    recomputing would. A matrix used as it is (a frozen reference's own ``X``) is not kept,
    only its digest: the caller gets its own object back.
    """
    key = _expression_key(reference, used, layer, target_sum, record)
    if key is not None and key in _EXPRESSIONS:
        kept, digest = _EXPRESSIONS[key]
        if kept is not None:
            return kept, digest
        return _reference_expression(reference, used, layer, target_sum, record), digest
    expression = _reference_expression(reference, used, layer, target_sum, record)
    digest = expression_digest(expression)
    if key is not None:
        if len(_EXPRESSIONS) >= _EXPRESSIONS_KEPT:
            _EXPRESSIONS.pop(next(iter(_EXPRESSIONS)))
        owned = not _is_stored_matrix(reference, expression)
        if owned:  # shared by later calls: nothing may write to it
            _protect_own_buffers(expression, reference)
        _EXPRESSIONS[key] = (expression if owned else None, digest)
    return expression, digest


def _protect_own_buffers(expression: sparse.csr_matrix, reference: AnnData) -> None:
    """Make the buffers of ``expression`` read-only, except those the reference's matrices share.

    :func:`lognormalise` keeps the counts' ``indices``/``indptr``: made read-only in place,
    they would make the user's own counts (and an ``X`` sharing them) read-only too, and
    scanpy's in-place calls on them fail (``WRITEBACKIFCOPY base is read-only``). A shared
    buffer needs no guard here: the cache key checksums the reference's bytes, so an edit
    to it misses the cache.
    """
    stored = [
        buffer
        for matrix in (reference.X, *reference.layers.values())
        if sparse.issparse(matrix)
        for buffer in (matrix.data, matrix.indices, matrix.indptr)
    ]
    for buffer in (expression.data, expression.indices, expression.indptr):
        if not any(np.may_share_memory(buffer, other) for other in stored):
            buffer.flags.writeable = False


def _is_stored_matrix(reference: AnnData, expression) -> bool:
    """Whether ``expression`` is one of the reference's own matrices (not a computed copy)."""
    return expression is reference.X or any(expression is m for m in reference.layers.values())


def _expression_key(
    reference: AnnData, used: np.ndarray, layer: str, target_sum: float, record: Mapping | None
) -> tuple | None:
    """A checksum of what :func:`_reference_expression` reads, or ``None`` (not in memory)."""
    if record is None and layer in reference.layers:
        source, kind = reference.layers[layer], f"layer {layer}"
    elif stored_counts(reference, record) is not None:
        source, kind = reference.X, "counts"
    else:
        source, kind = reference.X, "expression"
    parts = [_matrix_checksum(source), checksum(np.asarray(used, dtype=bool))]
    if kind == "counts":
        parts.append(checksum(reference.obs[SCALE_COLUMN].to_numpy(dtype=np.float32)))
    if any(part is None for part in parts):
        return None
    return (kind, float(target_sum), *parts)


def _matrix_checksum(matrix) -> tuple | None:
    """A checksum of an in-memory numpy array or scipy CSR/CSC matrix; ``None`` for others."""
    if isinstance(matrix, np.ndarray):
        return ("dense", checksum(matrix))
    if sparse.issparse(matrix) and matrix.format in ("csr", "csc"):
        buffers = (matrix.data, matrix.indices, matrix.indptr)
        return (matrix.format, matrix.shape, *(checksum(b) for b in buffers))
    return None


def checksum(values: np.ndarray) -> str:
    """A 128-bit checksum of an array's bytes, dtype and shape (not cryptographic; fast).

    Each 8-byte word ``w`` at position ``i`` adds ``mix(w + i * c)`` to two sums with
    different mixers (bijections of the word): a change of any single word always changes
    both sums, and a reordering of words changes them. Several times faster than BLAKE2b,
    for verifying that bytes already hashed with it have not changed.
    """
    values = np.ascontiguousarray(values)
    raw = values.reshape(-1).view(np.uint8)
    n_words = raw.size // 8
    words = raw[: n_words * 8].view(np.uint64)
    if words.ctypes.data % 8:  # numba reads aligned words
        words = words.copy()
    first, second = _word_sums(words)
    tail = raw[n_words * 8 :].tobytes().hex()
    return f"{values.dtype.str}{values.shape}:{first:016x}{second:016x}:{tail}"


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX = tuple(np.uint64(c) for c in (0xBF58476D1CE4E5B9, 0x94D049BB133111EB))
_FMIX = tuple(np.uint64(c) for c in (0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53))
_SHIFTS = tuple(np.uint64(s) for s in (30, 27, 31, 33))


@numba.njit(nogil=True, cache=True)
def _word_sums(words):  # pragma: no cover - compiled
    """Two sums over ``words`` of position-salted, bijectively mixed words (wrapping uint64)."""
    s30, s27, s31, s33 = _SHIFTS
    first = np.uint64(0)
    second = np.uint64(0)
    salt = np.uint64(0)
    for i in range(words.size):
        salt += _GOLDEN
        z = words[i] + salt
        z = (z ^ (z >> s30)) * _MIX[0]
        z = (z ^ (z >> s27)) * _MIX[1]
        first += z ^ (z >> s31)
        y = words[i] ^ salt
        y = (y ^ (y >> s33)) * _FMIX[0]
        y = (y ^ (y >> s33)) * _FMIX[1]
        second += y ^ (y >> s33)
    return first, second


# --------------------------------------------------------------------------- compact storage
#: ``expression_encoding`` of a frozen reference whose ``X`` holds counts (see below).
COUNTS_ENCODING = "counts"
#: ``expression_encoding`` of a frozen reference whose ``X`` is the log-normalised expression.
LOG_ENCODING = "log-normalised"
#: obs column of a counts-encoded frozen reference: each cell's normalisation factor
#: (``target_sum`` / its total counts over all genes, float32).
SCALE_COLUMN = "normalisation_scale"


def stored_counts(reference: AnnData, record: Mapping | None = None) -> sparse.csr_matrix | None:
    """The counts a counts-encoded frozen reference keeps in ``X`` (``None`` for any other)."""
    record = frozen_record(reference) if record is None else record
    if record is None or str(record.get("expression_encoding", LOG_ENCODING)) != COUNTS_ENCODING:
        return None
    if SCALE_COLUMN not in reference.obs.columns:
        msg = (
            f"this frozen reference stores counts but not their normalisation factors "
            f"(obs[{SCALE_COLUMN!r}]); it was edited after `tl.freeze_reference`. Use the "
            "original file or freeze the reference again."
        )
        raise ValueError(msg)
    X = reference.X
    return X if sparse.issparse(X) else sparse.csr_matrix(X)


def scaled_log(counts, scale: np.ndarray) -> sparse.csr_matrix:
    """``log1p(counts * scale)`` per row in float32, exactly as :func:`lognormalise` computes it."""
    X = sparse.csr_matrix(counts, dtype=np.float32, copy=True)
    X.sort_indices()
    _scale_rows(X.data, X.indptr, np.asarray(scale, dtype=np.float32))
    np.log1p(X.data, out=X.data)
    return X


def normalisation_scale(counts, target_sum: float) -> np.ndarray:
    """Each cell's factor in :func:`lognormalise`: ``target_sum / total`` as float32 (0 if empty)."""
    if hasattr(counts, "compute"):
        counts = counts.compute()
    if sparse.issparse(counts) and counts.format == "csr" and counts.has_canonical_format:
        X = sparse.csr_matrix(
            (counts.data.astype(np.float32), counts.indices, counts.indptr), shape=counts.shape
        )
    else:
        X = sparse.csr_matrix(counts, dtype=np.float32, copy=True)
    return _row_scale(X, target_sum)


def _row_scale(X: sparse.csr_matrix, target_sum: float) -> np.ndarray:
    totals = np.asarray(X.sum(axis=1), dtype=np.float64).ravel()
    return np.divide(target_sum, totals, out=np.zeros_like(totals), where=totals > 0).astype(
        np.float32
    )


def compact_counts(counts) -> sparse.csr_matrix:
    """Counts in the smallest type that holds them exactly (uint16/uint32, else float32)."""
    counts = sparse.csr_matrix(counts, dtype=np.float32, copy=True)
    counts.eliminate_zeros()
    counts.sort_indices()
    data = counts.data
    if data.size and (np.any(data < 0) or np.any(data != np.round(data))):
        return counts
    largest = float(data.max()) if data.size else 0.0
    dtype = np.uint16 if largest <= np.iinfo(np.uint16).max else np.uint32
    if largest > np.iinfo(np.uint32).max:
        return counts
    return sparse.csr_matrix(
        (data.astype(dtype), counts.indices, counts.indptr), shape=counts.shape
    )


# --------------------------------------------------------------------------- the hash
#: Version of the hash's definition; a record without it (or with another) was frozen by a
#: release whose hash covered less, and must be frozen again.
HASH_VERSION = 3

#: What each part of the hash covers, as the refusal names it.
_PART_NAMES = {
    "genes": "the embedding genes (var_names)",
    "labels": "the labels (obs[{cluster_key!r}], their categories and the label key)",
    "potency_cluster": "the potency cluster (the record's 'potency_cluster')",
    "lots": "the reference lots (obs[{lot_key!r}])",
    "parameters": "the normalisation and embedding parameters (uns['preprocess']['params'])",
    "pca": "the PCA centring and loadings (var['pca_mean'], varm['PCs'])",
    "embedding": "the reference cells' embedding (obsm['X_pca'])",
    "expression": "the expression matrix (X)",
    "umap": "the reference UMAP (obsm['X_umap'])",
    "scvi": "the stored scVI model (the record's 'scvi')",
    "boundary": "the potency population's boundary rule (the record's 'boundary')",
    "calibrations": "the shipped mapping calibrations (the record's 'calibrations')",
}


def expected_hash_value(expected_hash: str | None) -> str | None:
    """``expected_hash`` normalised (stripped, lower case), or a ``ValueError`` if it is no hash."""
    if expected_hash is None:
        return None
    value = str(expected_hash).strip().lower() if isinstance(expected_hash, str) else None
    if value is None or len(value) != 32 or any(c not in "0123456789abcdef" for c in value):
        msg = (
            "expected_hash must be a reference's content hash: 32 hexadecimal digits, as "
            f"`get.freeze_reference(reference)['hash']` shows it; got {expected_hash!r}"
        )
        raise ValueError(msg)
    return value


def _check_hash(
    record: Mapping | None,
    digest: str,
    parts: Mapping[str, str],
    *,
    cluster_key: str,
    lot_key: str | None,
) -> None:
    """A frozen reference must still hash to what it was frozen with; name what changed."""
    if record is None or str(record["hash"]) == digest:
        return
    if record.get("hash_version") != HASH_VERSION:
        msg = (
            f"this frozen reference's hash {record['hash']!r} was computed by an earlier "
            f"mscpotency (hash version {record.get('hash_version')!r}; this one reads version "
            f"{HASH_VERSION}, which also covers a stored scVI model and reads the compact "
            "counts encoding). Freeze it again from the processed reference with "
            "`tl.freeze_reference`."
        )
        raise ValueError(msg)
    stored_parts = record.get("hash_parts")
    changed = (
        [name for name in _PART_NAMES if str(stored_parts.get(name)) != str(parts.get(name))]
        if isinstance(stored_parts, Mapping)
        else []
    )
    what = "; ".join(
        _PART_NAMES[name].format(cluster_key=cluster_key, lot_key=lot_key or "lot")
        for name in changed
    )
    msg = (
        f"this frozen reference's content hash {digest!r} differs from the one it was "
        f"frozen with ({record['hash']!r}): it was modified after `tl.freeze_reference`"
        f"{' (changed: ' + what + ')' if what else ''}. Freeze it again from the processed "
        "reference, or use the original file."
    )
    raise ValueError(msg)


def _check_record(
    record: Mapping | None, categories: pd.Index, *, n_cells: int, n_genes: int
) -> None:
    """The record's description of the content (labels, sizes) must match the content."""
    if record is None:
        return
    claims = {
        "labels": ([str(c) for c in record.get("labels", [])], list(categories)),
        "n_cells": (record.get("n_cells"), n_cells),
        "n_genes": (record.get("n_genes"), n_genes),
    }
    wrong = [
        f"{field} {claimed!r} (content: {actual!r})"
        for field, (claimed, actual) in claims.items()
        if _plain(claimed) != actual
    ]
    if wrong:
        msg = (
            f"this frozen reference's record disagrees with its content: it states "
            f"{'; '.join(wrong)}. The record was edited after `tl.freeze_reference`; freeze "
            "the reference again or use the original file."
        )
        raise ValueError(msg)


def _check_expected(expected_hash: str | None, digest: str) -> None:
    """The reference must be the one the caller pinned."""
    if expected_hash is not None and digest != expected_hash:
        msg = (
            f"the reference's content hash is {digest!r}, not the expected {expected_hash!r}: "
            "this is not the reference you pinned, or its content was changed (even if its "
            "stored hash was recomputed to match). Use the reference with the expected hash; "
            "pin a new hash only after reviewing what changed."
        )
        raise ValueError(msg)


def _parameters(reference: AnnData, target_sum: float) -> dict[str, Any]:
    """The normalisation and embedding parameters ``pp.preprocess`` recorded (set ones only)."""
    recorded = reference.uns.get(PREPROCESS.key, {}).get("params", {})
    parameters = {str(k): _plain(v) for k, v in recorded.items() if v is not None}
    parameters["target_sum"] = float(target_sum)
    return parameters


def _plain(value: Any) -> Any:
    """``value`` as plain Python (numpy scalars and arrays, as an h5ad round trip returns them)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (np.ndarray, list, tuple, pd.Index)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def hash_parts(
    *,
    genes: pd.Index,
    categories: pd.Index,
    codes: np.ndarray,
    cluster_key: str,
    potency_cluster: str | None,
    lots: np.ndarray | None,
    parameters: Mapping[str, Any],
    pca_mean: np.ndarray,
    loadings: np.ndarray,
    embedding: np.ndarray,
    expression: sparse.csr_matrix,
    umap: np.ndarray | None,
    scvi_model: Mapping[str, Any] | None = None,
    expression_part: str | None = None,
) -> dict[str, str]:
    """A digest of each part of a reference that can change a mapping's answer.

    Names are hashed as JSON lists, arrays as float32 (so a save/load round trip keeps the
    digests) with their shapes, absent parts (no lots, no UMAP) as ``null``.
    ``expression_part``: :func:`expression_digest` of ``expression``, when already known.
    """
    return {
        "genes": _digest(_json([str(g) for g in genes])),
        "labels": _digest(
            _json([cluster_key, [str(c) for c in categories]]), _int64(codes, codes.size)
        ),
        "potency_cluster": _digest(_json(potency_cluster or "")),
        "lots": _digest(_json(None if lots is None else [str(lot) for lot in lots])),
        "parameters": _digest(_json(dict(sorted(parameters.items())))),
        "pca": _digest(_float32(pca_mean), _float32(loadings)),
        "embedding": _digest(_float32(embedding)),
        "expression": expression_part or expression_digest(expression),
        "umap": _digest(_json(None) if umap is None else _float32(umap)),
        "scvi": model_digest(scvi_model),
    }


def model_digest(stored: Mapping[str, Any] | None) -> str:
    """The digest of a stored scVI model: everything of it a mapping reads.

    Its setup, options, weights (by name, float32), reference latent coordinates and
    held-out calibration predictions; ``null`` when there is none.
    """
    if stored is None:
        return _digest(_json(None))
    options = {str(k): str(_plain(v)) for k, v in dict(stored.get("options", {})).items()}
    chunks = [_json([str(stored.get("format")), str(stored.get("setup")), options])]
    weights = stored.get("weights", {})
    for name in sorted(weights):
        chunks += [name.encode(), _float32(weights[name])]
    chunks += [_float32(stored.get("latent", [])), _float32(stored.get("held_out", []))]
    return _digest(*chunks)


def boundary_digest(boundary: Mapping[str, Any]) -> str:
    """The digest of a population's boundary rule: its labels, axis and threshold (float32)."""
    names = [str(boundary[k]) for k in ("population", "neighbour", "representation")]
    numbers = [float(boundary[k]) for k in ("centre", "spread", "threshold", "quantile")]
    return _digest(_json(names), _float32(boundary["axis"]), _float32(np.asarray(numbers)))


def calibrations_digest(calibrations: Mapping[str, Any]) -> str:
    """The digest of shipped mapping calibrations: every array exactly, by cache and key.

    Not rounded to float32 (unlike the reference's own arrays): they are stored and read
    back at the precision they were computed in, and are used as they are.
    """
    fields = [str(calibrations.get(k)) for k in ("format", "stamp", "owner")]
    chunks = [_json(fields)]
    entries = calibrations.get("entries", {})
    for name in sorted(entries):
        for key in sorted(entries[name]):
            chunks.append(f"{name}/{key}".encode())
            value = entries[name][key]
            parts = (
                [value[i] for i in sorted(value, key=int)]
                if isinstance(value, Mapping)
                else [value]
            )
            for array in parts:
                array = np.ascontiguousarray(np.asarray(array))
                chunks += [_json([array.dtype.str, list(array.shape)]), array.tobytes()]
    return _digest(*chunks)


def content_hash(parts: Mapping[str, str]) -> str:
    """The reference's content hash: BLAKE2b (128 bits) over its parts' digests and the version."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"mscpotency reference hash v{HASH_VERSION}\n".encode())
    for name in sorted(parts):
        h.update(f"{name}={parts[name]}\n".encode())
    return h.hexdigest()


def _json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode()


def _float32(values: np.ndarray) -> bytes:
    values = np.ascontiguousarray(np.asarray(values, dtype=np.float32))
    return _json(list(values.shape)) + values.tobytes()


def _int64(values: np.ndarray, size: int) -> bytes:
    return _json([size]) + np.ascontiguousarray(np.asarray(values, dtype=np.int64)).tobytes()


def _digest(*chunks: bytes) -> str:
    h = hashlib.blake2b(digest_size=16)
    for chunk in chunks:
        h.update(len(chunk).to_bytes(8, "little"))
        h.update(chunk)
    return h.hexdigest()


def expression_digest(expression: sparse.csr_matrix) -> str:
    """The expression's digest, streamed: shape, row pointers (int64), column indices (int32), values.

    Column indices are hashed as int32 (since hash version 3; exact for any gene count):
    half the bytes of int64, and the hash is the largest part of reading a reference.
    """
    expression = _canonical_float32(expression)
    h = hashlib.blake2b(digest_size=16)
    h.update(_json(list(expression.shape)))
    h.update(expression.indptr.astype(np.int64).tobytes())
    for start in range(0, expression.indices.size, _HASH_CHUNK):
        h.update(expression.indices[start : start + _HASH_CHUNK].astype(np.int32))
    h.update(np.ascontiguousarray(expression.data))
    return h.hexdigest()


#: Entries per chunk when hashing the expression's column indices.
_HASH_CHUNK = 1 << 22


def _canonical_float32(expression) -> sparse.csr_matrix:
    """CSR float32 without stored zeros and sorted indices; the input itself when it is one already."""
    if (
        sparse.issparse(expression)
        and expression.format == "csr"
        and expression.dtype == np.float32
        and expression.has_sorted_indices
        and np.count_nonzero(expression.data) == expression.data.size
    ):
        return expression
    expression = sparse.csr_matrix(expression, dtype=np.float32).copy()
    expression.eliminate_zeros()
    expression.sort_indices()
    return expression
