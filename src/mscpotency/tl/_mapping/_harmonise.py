"""Bring query counts onto the reference's genes and normalisation.

The query arrives as raw counts. It is normalised exactly as the reference was
(counts per cell scaled to the reference's ``target_sum``, then ``log1p``), and its genes
are aligned to the genes of the reference embedding: shared genes are taken over, genes the
query lacks are zero-padded and reported, and too few shared genes is an error.

Genes differ in how much of the reference embedding they carry: on the simulated study, a
query lacking the 5% of embedding genes with the largest loadings (49% of the embedding's
variance) kept 90% of its labels, one lacking the 5% with the smallest (almost none of it)
all of them; without the first 45% of the genes (63% of it) it kept 18%. So the missing genes are weighed by the share of the embedding's variance they carry
(:func:`variance_weights`), and the warning and the refusal are decided on that share.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from ..._frozen import lognormalise
from ..._validate import check_counts, count_matrix


@dataclass(frozen=True)
class Harmonised:
    """The query on the reference's genes."""

    expression: sparse.csr_matrix  # (n_query, n_reference_genes) log-normalised, zero-padded
    shared: int
    missing: list[str]
    share: float
    share_variance_missing: float = 0.0  # of the reference embedding, carried by ``missing``


def query_counts(query: AnnData, layer: str | None):
    """The query's raw counts (``layers[layer]`` or ``X``), checked to be counts."""
    X = count_matrix(query, layer)
    where = f"query.layers[{layer!r}]" if layer is not None and layer in query.layers else "query.X"
    try:
        check_counts(X, where=where)
    except ValueError as error:
        msg = (
            f"map_to_reference needs the query's raw counts, normalised here exactly as the reference "
            f"was; but {error}"
        )
        raise ValueError(msg) from None
    return X


def harmonise(
    query: AnnData,
    reference_genes: pd.Index,
    *,
    layer: str | None,
    target_sum: float,
    min_shared: float,
    weights: np.ndarray | None = None,
    max_variance_missing: float = 1.0,
) -> Harmonised:
    """Normalise the query's counts and align them to ``reference_genes``.

    Library sizes are the query's own totals over all its genes, as ``pp.preprocess``
    computed them for the reference. Reference genes the query lacks become zero columns.
    ``weights`` (from :func:`variance_weights`) weigh the missing genes: when they carry more
    than ``max_variance_missing`` of the embedding's variance, the query is refused.
    """
    if not query.var_names.is_unique:
        duplicated = query.var_names[query.var_names.duplicated()].unique()[:5].tolist()
        msg = f"the query's gene names are not unique (e.g. {duplicated}); call query.var_names_make_unique()."
        raise ValueError(msg)
    if not 0 < min_shared <= 1:
        msg = f"min_shared_genes must be a share in (0, 1], got {min_shared!r}"
        raise ValueError(msg)
    positions = query.var_names.get_indexer(reference_genes)
    found = positions >= 0
    shared = int(found.sum())
    share = shared / len(reference_genes)
    if shared == 0:
        msg = (
            f"the query shares no genes with the reference's {len(reference_genes)} embedding genes "
            f"(query genes look like {query.var_names[:3].tolist()}, reference genes like "
            f"{reference_genes[:3].tolist()}). Use the same gene identifiers (symbols or Ensembl IDs) in both."
        )
        raise ValueError(msg)
    if share < min_shared:
        msg = (
            f"the query shares only {shared} of the reference's {len(reference_genes)} embedding genes "
            f"({share:.0%}, below min_shared_genes={min_shared:.0%}); missing e.g. "
            f"{reference_genes[~found][:5].tolist()}. Check gene identifiers, or lower min_shared_genes "
            "knowingly (missing genes are zero-padded)."
        )
        raise ValueError(msg)
    variance_missing = float(weights[~found].sum()) if weights is not None else 1.0 - share
    if variance_missing > max_variance_missing:
        raise ValueError(
            _too_much_missing(
                reference_genes, found, weights, variance_missing, max_variance_missing
            )
        )
    counts = query_counts(query, layer)
    normalised = lognormalise(counts, target_sum)
    if shared == query.n_vars == len(reference_genes) and (positions == np.arange(shared)).all():
        # the same genes in the same order: nothing to align
        _refuse_empty_cells(query, normalised)
        return Harmonised(expression=normalised, shared=shared, missing=[], share=1.0)
    select = sparse.csr_matrix(
        (np.ones(shared, dtype=np.float32), (positions[found], np.flatnonzero(found))),
        shape=(query.n_vars, len(reference_genes)),
    )
    expression = (normalised @ select).tocsr()
    _refuse_empty_cells(query, expression)
    return Harmonised(
        expression=expression,
        shared=shared,
        missing=[str(g) for g in reference_genes[~found]],
        share=share,
        share_variance_missing=variance_missing,
    )


def _refuse_empty_cells(query: AnnData, expression: sparse.csr_matrix) -> None:
    """Refuse cells with no counts on the embedding genes, naming them.

    Such a cell lands where its lot's centring puts it and would get a confident label from
    nothing (ten empty cells were labelled at probability 0.76-0.93); ``pp.qc`` removes them.
    """
    empty = np.flatnonzero(np.asarray(expression.sum(axis=1)).ravel() == 0)
    if empty.size:
        msg = (
            f"{empty.size} query cells have no counts on the reference's embedding genes (e.g. "
            f"{query.obs_names[empty[:3]].tolist()}), so nothing places them; remove them "
            "first, e.g. with pp.qc (min_genes), as `mscpotency map` does."
        )
        raise ValueError(msg)


def variance_weights(loadings: np.ndarray, embedding: np.ndarray) -> np.ndarray:
    """Each embedding gene's share of the reference embedding's variance (they sum to 1).

    Gene ``g`` carries ``sum_k var_k L_gk^2`` of it, ``L`` the PCA loadings and ``var_k`` the
    variance of the reference cells along component ``k``: what the embedding loses, in
    expectation, when ``g`` is zero-padded.
    """
    variance = np.asarray(embedding, dtype=np.float64).var(axis=0)
    weights = (np.asarray(loadings, dtype=np.float64) ** 2) @ variance
    total = weights.sum()
    if not total > 0:
        return np.full(weights.size, 1.0 / max(weights.size, 1))
    return weights / total


def most_important(
    genes: pd.Index, found: np.ndarray, weights: np.ndarray | None, n: int = 5
) -> list[str]:
    """The ``n`` missing genes carrying most of the embedding's variance (first missing ones without weights)."""
    missing = np.flatnonzero(~found)
    if weights is not None:
        missing = missing[np.argsort(-weights[missing], kind="stable")]
    return [str(genes[i]) for i in missing[:n]]


def _too_much_missing(
    genes: pd.Index,
    found: np.ndarray,
    weights: np.ndarray | None,
    variance_missing: float,
    maximum: float,
) -> str:
    n_missing = int((~found).sum())
    return (
        f"the query lacks {n_missing} of the reference's {len(genes)} embedding genes "
        f"({n_missing / len(genes):.0%}), and they carry {variance_missing:.0%} of the reference "
        f"embedding's variance, above max_variance_missing={maximum:.0%}: the query cannot be placed "
        "reliably in the reference (on the simulated study, a query lacking genes that carry "
        "42% of it kept only 60% of its labels). Most important missing genes: "
        f"{most_important(genes, found, weights)}. Check that the query uses the reference's "
        "gene identifiers (symbols or Ensembl IDs, same annotation) and gene panel; raise "
        "max_variance_missing only knowingly (missing genes are zero-padded)."
    )
