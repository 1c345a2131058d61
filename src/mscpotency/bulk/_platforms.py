"""The stored rank associations of several platforms, with features matched across them."""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd
from anndata import AnnData

from .. import _registry
from .._stored import stored_table


def _match_column(adata: AnnData, table: pd.DataFrame, platform: str, match_on: str | None):
    """The entity of each row: the feature name, or ``var[match_on]`` of the feature."""
    if match_on is None:
        return table["feature"].astype(str)
    if match_on not in adata.var.columns:
        msg = (
            f"results[{platform!r}].var has no column {match_on!r} to match features across "
            f"platforms; columns are {list(adata.var.columns)[:12]}"
        )
        raise KeyError(msg)
    mapping = adata.var[match_on].astype(str)
    mapping.index = mapping.index.astype(str)
    return mapping.reindex(table["feature"].astype(str)).to_numpy()


def association_tables(
    results: Mapping[str, AnnData],
    *,
    key: str = _registry.RANK_ASSOCIATION.key,
    match_on: str | None = None,
) -> dict[str, pd.DataFrame]:
    """The stored :func:`mscpotency.bulk.tl.rank_association` table of every platform.

    Each table gets a ``match`` column: the feature name, or ``var[match_on]`` (e.g. the
    gene a CAGE promoter belongs to) so features can be matched across platforms.
    """
    if not isinstance(results, Mapping) or not results:
        msg = (
            "results must be a non-empty mapping of platform name -> AnnData with "
            "bulk.tl.rank_association results"
        )
        raise ValueError(msg)
    tables = {}
    for platform, adata in results.items():
        if not isinstance(adata, AnnData):
            msg = f"results[{platform!r}] must be an AnnData, got {type(adata).__name__}"
            raise TypeError(msg)
        table = stored_table(adata, _registry.RANK_ASSOCIATION, "table", key)
        table["match"] = _match_column(adata, table, str(platform), match_on)
        tables[str(platform)] = table
    return tables
