"""Bring query counts onto the reference's genes and normalisation.

The query arrives as raw counts. It is normalised exactly as the reference was
(counts per cell scaled to the reference's ``target_sum``, then ``log1p``), and its genes
are aligned to the genes of the reference embedding: shared genes are taken over, genes the
query lacks are zero-padded and reported, and too few shared genes is an error.
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
) -> Harmonised:
    """Normalise the query's counts and align them to ``reference_genes``.

    Library sizes are the query's own totals over all its genes, as ``pp.preprocess``
    computed them for the reference. Reference genes the query lacks become zero columns.
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
    counts = query_counts(query, layer)
    normalised = lognormalise(counts, target_sum)
    if shared == query.n_vars == len(reference_genes) and (positions == np.arange(shared)).all():
        # the same genes in the same order: nothing to align
        return Harmonised(expression=normalised, shared=shared, missing=[], share=1.0)
    select = sparse.csr_matrix(
        (np.ones(shared, dtype=np.float32), (positions[found], np.flatnonzero(found))),
        shape=(query.n_vars, len(reference_genes)),
    )
    expression = (normalised @ select).tocsr()
    return Harmonised(
        expression=expression,
        shared=shared,
        missing=[str(g) for g in reference_genes[~found]],
        share=share,
    )
