"""What a reference must provide for mapping, read once from an AnnData and validated.

A reference is either a processed AnnData (``pp.preprocess`` + a label column such as
``tl.cluster``'s) or a frozen reference from :func:`mscpotency.tl.freeze_reference`, which
is the same thing slimmed to the genes of the embedding and stamped with a content hash.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from ... import _keys, _registry
from ._harmonise import lognormalise

#: ``adata.uns`` key of the frozen-reference record (hash, labels, parameters).
FROZEN = "reference"


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
    label_key: str
    lots: np.ndarray | None  # (n_ref,) lot of each reference cell, if known
    umap: np.ndarray | None  # (n_ref, 2) reference UMAP, if present
    potency_label: str | None  # the reference's potency cluster, if it was determined
    hash: str
    frozen: bool


def _missing(what: str, hint: str) -> KeyError:
    return KeyError(f"the reference has no {what}. {hint}")


def reference_model(
    reference: AnnData,
    *,
    label_key: str,
    counts_layer: str = _keys.COUNTS_LAYER,
    lot_key: str | None = _keys.LOT,
    umap_key: str = "X_umap",
    association_key: str = _registry.POTENCY_ASSOCIATION.key,
) -> ReferenceModel:
    """Read and check what mapping needs from ``reference``; every gap is a clear error."""
    if not isinstance(reference, AnnData):
        msg = f"reference must be an AnnData (processed or from `tl.freeze_reference`), got {type(reference).__name__}"
        raise TypeError(msg)
    frozen = (
        FROZEN in reference.uns
        and isinstance(reference.uns[FROZEN], dict)
        and "hash" in reference.uns[FROZEN]
    )
    if frozen:
        stored_key = str(reference.uns[FROZEN]["label_key"])
        if label_key != stored_key:
            msg = (
                f"this frozen reference carries labels {stored_key!r}, not {label_key!r}; pass "
                f"label_key={stored_key!r} or freeze the reference again with label_key={label_key!r}."
            )
            raise KeyError(msg)
    if label_key not in reference.obs.columns:
        msg = (
            f"the reference has no labels in obs[{label_key!r}]; obs columns are "
            f"{list(reference.obs.columns)[:12]}. Run `tl.cluster` on the reference or pass label_key=."
        )
        raise KeyError(msg)
    labels = reference.obs[label_key]
    if labels.isna().any():
        msg = f"{int(labels.isna().sum())} reference cells have no label in obs[{label_key!r}]; label or remove them."
        raise ValueError(msg)
    hint = "Run `pp.preprocess` on the reference (it fits the embedding that query cells are projected onto)."
    if "X_pca" not in reference.obsm:
        raise _missing("embedding obsm['X_pca']", hint)
    if "PCs" not in reference.varm:
        raise _missing("PCA loadings varm['PCs']", hint)
    if "pca_mean" not in reference.var.columns:
        raise _missing("PCA centring var['pca_mean']", hint)
    params = (
        reference.uns.get(_registry.PREPROCESS.key, {}).get("params", {})
        if isinstance(reference.uns.get(_registry.PREPROCESS.key), dict)
        else {}
    )
    if "target_sum" not in params:
        raise _missing(
            f"normalisation record uns[{_registry.PREPROCESS.key!r}]['params']['target_sum']", hint
        )
    target_sum = float(params["target_sum"])
    loadings_all = np.asarray(reference.varm["PCs"], dtype=np.float64)
    if "highly_variable" in reference.var.columns:
        used = reference.var["highly_variable"].to_numpy(dtype=bool)
    else:
        used = np.abs(loadings_all).sum(axis=1) > 0
    if used.sum() < 2:
        raise _missing("genes with PCA loadings", hint)
    embedding = np.asarray(reference.obsm["X_pca"], dtype=np.float64)
    if embedding.shape[1] != loadings_all.shape[1]:
        msg = (
            f"the reference's obsm['X_pca'] has {embedding.shape[1]} components but varm['PCs'] has "
            f"{loadings_all.shape[1]}; they come from different runs. Run `pp.preprocess` again."
        )
        raise ValueError(msg)
    genes = reference.var_names[used]
    loadings = loadings_all[used]
    pca_mean = reference.var["pca_mean"].to_numpy(dtype=np.float64)[used]
    expression = _reference_expression(reference, used, counts_layer, target_sum, frozen)
    categorical = labels.astype("category")
    categories = pd.Index([str(c) for c in categorical.cat.categories])
    codes = categorical.cat.codes.to_numpy().astype(np.int64)
    if frozen:
        lot_key = str(reference.uns[FROZEN].get("lot_key", "")) or None
    lots = None
    if lot_key is not None and lot_key in reference.obs.columns:
        lots = reference.obs[lot_key].astype(str).to_numpy()
    umap = None
    if umap_key in reference.obsm:
        umap = np.asarray(reference.obsm[umap_key], dtype=np.float64)[:, :2]
    potency_label = None
    if frozen and reference.uns[FROZEN].get("potency_label"):
        potency_label = str(reference.uns[FROZEN]["potency_label"])
    elif isinstance(reference.uns.get(association_key), dict):
        potency_label = _potency_cluster_of(reference, association_key, label_key)
    if potency_label is not None and potency_label not in categories:
        potency_label = None
    digest = content_hash(
        genes, pca_mean, loadings, target_sum, embedding, expression, codes, categories, label_key
    )
    if frozen and str(reference.uns[FROZEN]["hash"]) != digest:
        msg = (
            f"this frozen reference's content hash {digest!r} differs from the one it was frozen with "
            f"({reference.uns[FROZEN]['hash']!r}): it was modified after `tl.freeze_reference`. "
            "Freeze it again from the processed reference."
        )
        raise ValueError(msg)
    return ReferenceModel(
        genes=genes,
        pca_mean=pca_mean,
        loadings=loadings,
        target_sum=target_sum,
        embedding=embedding,
        expression=expression,
        labels=codes,
        categories=categories,
        label_key=label_key,
        lots=lots,
        umap=umap,
        potency_label=potency_label,
        hash=digest,
        frozen=frozen,
    )


def _potency_cluster_of(reference: AnnData, association_key: str, label_key: str) -> str | None:
    """The potency cluster found by ``tl.potency_association`` on these labels, if any."""
    stored = reference.uns[association_key]
    cluster = stored.get("potency_cluster")
    fractions_key = stored.get("params", {}).get("fractions_key")
    fractions = reference.uns.get(fractions_key, {}) if fractions_key is not None else {}
    cluster_key = (
        fractions.get("params", {}).get("cluster_key") if isinstance(fractions, dict) else None
    )
    if cluster and cluster_key == label_key:
        return str(cluster)
    return None


def _reference_expression(
    reference: AnnData, used: np.ndarray, counts_layer: str, target_sum: float, frozen: bool
) -> sparse.csr_matrix:
    """Log-normalised expression of the embedding genes, recomputed from counts when available.

    Recomputing from the counts normalises the reference exactly as the query will be.
    """
    if not frozen and counts_layer in reference.layers:
        expression = lognormalise(reference.layers[counts_layer], target_sum)
        return expression if used.all() else expression[:, np.flatnonzero(used)].tocsr()
    X = reference.X
    if not used.all():
        X = X[:, np.flatnonzero(used)]
    if sparse.issparse(X) and X.format == "csr" and X.dtype == np.float32:
        return X  # a frozen reference's own matrix: read-only here, no copy
    return sparse.csr_matrix(X, dtype=np.float32)


def content_hash(
    genes: pd.Index,
    pca_mean: np.ndarray,
    loadings: np.ndarray,
    target_sum: float,
    embedding: np.ndarray,
    expression: sparse.csr_matrix,
    codes: np.ndarray,
    categories: pd.Index,
    label_key: str,
) -> str:
    """A hash of everything that decides where a query cell lands and which label it gets.

    Arrays are rounded to float32 before hashing so a save/load round trip keeps the hash.
    """
    h = hashlib.blake2b(digest_size=16)
    h.update("\x1f".join(map(str, genes)).encode())
    h.update("\x1f".join(map(str, categories)).encode())
    h.update(label_key.encode())
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
    """CSR float32 without stored zeros and with sorted indices; the input itself when it is one already."""
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
