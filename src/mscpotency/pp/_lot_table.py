"""Join a lot-level table (potency assays, tissue, passage) into obs, validated."""

from __future__ import annotations

import pandas as pd
from anndata import AnnData

from .. import _keys
from .._provenance import record
from .._validate import lots_of, match_lots


@record("pp.add_lot_table")
def add_lot_table(
    adata: AnnData,
    table: pd.DataFrame,
    *,
    lot_key: str = _keys.LOT,
    lot_column: str | None = None,
    columns: list[str] | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Add lot-level columns (one value per lot) to ``adata.obs``.

    Every lot with cells must be in the table and every lot in the table must have cells;
    anything else is an error naming the lots, so no lot is dropped silently.

    Parameters
    ----------
    adata
        Cells with ``obs[lot_key]``.
    table
        One row per lot: indexed by lot name, or with the lot name in ``lot_column``.
    lot_key
        obs column with the lot of each cell.
    lot_column
        Column of ``table`` holding the lot names (default: the index).
    columns
        Columns to add (default: all). Existing obs columns of the same name are replaced.
    copy
        Return a modified copy instead of writing in place.

    Returns
    -------
    ``None``, or the copy when ``copy=True``; writes one obs column per table column.
    """
    table = table.set_index(lot_column) if lot_column is not None else table
    table.index = table.index.astype(str)
    columns = list(table.columns) if columns is None else list(columns)
    missing = [c for c in columns if c not in table.columns]
    if missing:
        msg = f"columns {missing} are not in the lot table (its columns: {list(table.columns)})"
        raise KeyError(msg)
    lots = lots_of(adata, lot_key)
    present = pd.Index(lots.cat.categories.astype(str))
    for column in columns:
        match_lots(table[column], present, name=f"lot table column {column!r}")
    adata = adata.copy() if copy else adata
    cell_lots = lots.astype(str).to_numpy()
    for column in columns:
        adata.obs[column] = table[column].reindex(cell_lots).to_numpy()
    return adata if copy else None
