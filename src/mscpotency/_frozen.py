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
    totals = np.asarray(X.sum(axis=1), dtype=np.float64).ravel()
    scale = np.divide(target_sum, totals, out=np.zeros_like(totals), where=totals > 0).astype(
        np.float32
    )
    _scale_rows(X.data, X.indptr, scale)
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
) -> ReferenceModel:
    """Read and check what mapping needs from ``reference``; every gap is a clear error.

    ``layer`` holds the reference's raw counts (the expression is recomputed from them);
    a frozen reference's own ``X`` is used as is, and its record decides the lots and the
    potency cluster. A frozen reference whose content no longer matches its hash is refused.
    """
    if not isinstance(reference, AnnData):
        msg = (
            "reference must be an AnnData (processed or from `tl.freeze_reference`), got "
            f"{type(reference).__name__}"
        )
        raise TypeError(msg)
    record = frozen_record(reference)
    labels = _labels(reference, cluster_key, record)
    target_sum = _target_sum(reference)
    used, loadings, embedding = _embedding(reference)
    genes = reference.var_names[used]
    pca_mean = reference.var["pca_mean"].to_numpy(dtype=np.float64)[used]
    expression = _reference_expression(reference, used, layer, target_sum, record is not None)
    categorical = labels.astype("category")
    categories = pd.Index([str(c) for c in categorical.cat.categories])
    codes = categorical.cat.codes.to_numpy().astype(np.int64)
    digest = content_hash(
        genes, pca_mean, loadings, target_sum, embedding, expression, codes, categories, cluster_key
    )
    _check_hash(record, digest)
    if record is not None:
        lot_key = str(record.get("lot_key", "")) or None
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
        lots=_reference_lots(reference, lot_key),
        umap=_reference_umap(reference, umap_key),
        potency_cluster=_potency_cluster(
            reference, record, association_key, cluster_key, categories
        ),
        hash=digest,
        frozen=record is not None,
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
    reference: AnnData, used: np.ndarray, layer: str, target_sum: float, frozen: bool
) -> sparse.csr_matrix:
    """Log-normalised expression of the embedding genes, recomputed from counts when available.

    Recomputing from the counts normalises the reference exactly as the query will be.
    """
    if not frozen and layer in reference.layers:
        expression = lognormalise(reference.layers[layer], target_sum)
        return expression if used.all() else expression[:, np.flatnonzero(used)].tocsr()
    X = reference.X
    if not used.all():
        X = X[:, np.flatnonzero(used)]
    if sparse.issparse(X) and X.format == "csr" and X.dtype == np.float32:
        return X  # a frozen reference's own matrix: read-only here, no copy
    return sparse.csr_matrix(X, dtype=np.float32)


# --------------------------------------------------------------------------- the hash
def _check_hash(record: Mapping | None, digest: str) -> None:
    """A frozen reference must still hash to what it was frozen with."""
    if record is not None and str(record["hash"]) != digest:
        msg = (
            f"this frozen reference's content hash {digest!r} differs from the one it was "
            f"frozen with ({record['hash']!r}): it was modified after `tl.freeze_reference`. "
            "Freeze it again from the processed reference."
        )
        raise ValueError(msg)


def content_hash(
    genes: pd.Index,
    pca_mean: np.ndarray,
    loadings: np.ndarray,
    target_sum: float,
    embedding: np.ndarray,
    expression: sparse.csr_matrix,
    codes: np.ndarray,
    categories: pd.Index,
    cluster_key: str,
) -> str:
    """A hash of everything that decides where a query cell lands and which label it gets.

    Arrays are rounded to float32 before hashing so a save/load round trip keeps the hash.
    """
    h = hashlib.blake2b(digest_size=16)
    h.update("\x1f".join(map(str, genes)).encode())
    h.update("\x1f".join(map(str, categories)).encode())
    h.update(cluster_key.encode())
    h.update(repr(float(target_sum)).encode())
    for values in (pca_mean, loadings, embedding):
        h.update(np.ascontiguousarray(np.asarray(values, dtype=np.float32)).tobytes())
    expression = _canonical_float32(expression)
    # the int32 arrays are hashed as int64 (the hash's definition), a chunk at a time
    h.update(expression.indptr.astype(np.int64).tobytes())
    for start in range(0, expression.indices.size, _HASH_CHUNK):
        h.update(expression.indices[start : start + _HASH_CHUNK].astype(np.int64))
    h.update(np.ascontiguousarray(expression.data))
    h.update(np.ascontiguousarray(np.asarray(codes, dtype=np.int64)).tobytes())
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
