"""Tidy DataFrames of new-lot results: the frozen reference, the mapping, its validation."""

from __future__ import annotations

from typing import Literal

import pandas as pd
from anndata import AnnData

from .._docs import doc_params
from .._registry import FROZEN_REFERENCE, MAPPING, MARKER_BY_SET, VALIDATE_POTENCY
from .._stored import stored, stored_table

__all__ = ["freeze_reference", "map_to_reference", "marker_by_set", "validate_potency"]

#: Fields of a frozen reference's record shown by :func:`freeze_reference`.
_REFERENCE_FIELDS = [
    "hash",
    "hash_version",
    "cluster_key",
    "lot_key",
    "potency_cluster",
    "n_cells",
    "n_genes",
    "created",
    "source_fingerprint",
]


@doc_params
def freeze_reference(adata: AnnData, *, key: str = FROZEN_REFERENCE.key) -> pd.DataFrame:
    """One row describing a frozen reference: hash, labels, sizes, potency cluster, creation time.

    Parameters
    ----------
    adata
        {adata}
        A frozen reference from :func:`mscpotency.tl.freeze_reference`.

    Returns
    -------
    One row: ``hash``, ``hash_version`` (the definition of the hash; what it covers is
    described under :func:`mscpotency.tl.freeze_reference`), ``cluster_key``, ``lot_key``,
    ``potency_cluster``, ``n_cells``, ``n_genes``, ``created``, ``source_fingerprint`` and
    ``labels`` (comma-separated).
    """
    record = stored(adata, FROZEN_REFERENCE, key)
    row = {field: record.get(field) for field in _REFERENCE_FIELDS}
    row["labels"] = ", ".join(map(str, record.get("labels", [])))
    return pd.DataFrame([row])


@doc_params
def map_to_reference(
    adata: AnnData,
    *,
    key: str = MAPPING.key,
    kind: Literal["per_lot", "reliability_after", "reliability_before"] = "per_lot",
) -> pd.DataFrame:
    """A table of :func:`mscpotency.tl.map_to_reference`: per lot, or the calibration's reliability.

    Parameters
    ----------
    adata
        {adata}
        Query cells after :func:`mscpotency.tl.map_to_reference`.
    kind
        {kind}
        ``"per_lot"``: cells, mean prediction and mapping scores, shares of
        low-confidence, off-reference and Unassigned cells, the mean prediction-set size
        the novelty test (``n_novel``, ``share_novel``, ``expected_share_novel``,
        ``novelty_pvalue``, ``excess_novel``), and the lot's estimated shift from the
        reference (``lot_shift``) and whether its make-up was ambiguous
        (``make_up_ambiguous``) or unlike any reference lot's (``make_up_unusual``) per
        query lot; ``"reliability_after"`` /
        ``"reliability_before"``: per score bin, the held-out reference cells' mean score
        and accuracy after / before temperature scaling (empty when not calibrated).

    Returns
    -------
    The table, a copy.
    """
    return stored_table(adata, MAPPING, kind, key)


@doc_params
def validate_potency(
    adata: AnnData,
    *,
    key: str = VALIDATE_POTENCY.key,
    kind: Literal["per_set", "combined", "lots"] = "per_set",
) -> pd.DataFrame:
    """A table of :func:`mscpotency.tl.validate_potency`.

    Parameters
    ----------
    adata
        {adata}
        Query cells after :func:`mscpotency.tl.validate_potency`.
    kind
        {kind}
        ``"per_set"``: rho and exact p per set; ``"combined"``: pooled tests across sets;
        ``"lots"``: each lot's potency-like share with its bootstrap interval.

    Returns
    -------
    The table, a copy.
    """
    return stored_table(adata, VALIDATE_POTENCY, kind, key)


@doc_params
def marker_by_set(
    adata: AnnData,
    *,
    key: str = MARKER_BY_SET.key,
    kind: Literal["tests", "sets", "lots"] = "tests",
) -> pd.DataFrame:
    """A table of :func:`mscpotency.tl.marker_by_set`.

    Parameters
    ----------
    adata
        {adata}
        Query cells after :func:`mscpotency.tl.marker_by_set`.
    kind
        {kind}
        ``"tests"``: the tests between sets; ``"sets"``: per-set summaries; ``"lots"``:
        per-lot summaries (the replicates of the tests).

    Returns
    -------
    The table, a copy.
    """
    return stored_table(adata, MARKER_BY_SET, kind, key)
