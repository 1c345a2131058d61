"""Join a lot-level table (potency assays, tissue, passage) into obs, validated."""

from __future__ import annotations

import pandas as pd
from anndata import AnnData

from .. import _keys
from .._provenance import record
from .._validate import lots_of


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
    anything else is an error naming the lots, so no lot is dropped silently. Read the
    table from a file with :func:`mscpotency.io.read_lot_table`.

    Parameters
    ----------
    adata
        Cells with ``obs[lot_key]``.
    table
        One row per lot: indexed by lot name, or with the lot name in ``lot_column``. A table
        with a plain 0..n-1 index and a column named ``lot_key`` is read as lot names in
        that column. The table itself is not modified.
    lot_key
        obs column with the lot of each cell.
    lot_column
        Column of ``table`` holding the lot names (default: the index, see ``table``).
    columns
        Columns to add (default: all). Existing obs columns of the same name are replaced.
    copy
        Return a modified copy instead of writing in place.

    Returns
    -------
    ``None``, or the copy when ``copy=True``. Writes

    `adata.obs[column]` for each table column
        The lot's value in every cell of the lot (constant within lots); text columns
        become categorical, numbers keep their dtype.
    """
    if not isinstance(table, pd.DataFrame):
        msg = f"table must be a pandas DataFrame (one row per lot), got a {type(table).__name__}. Read files with `io.read_lot_table`."
        raise TypeError(msg)
    table = _lot_indexed(table, lot_column, lot_key)
    columns = list(table.columns) if columns is None else list(columns)
    missing = [c for c in columns if c not in table.columns]
    if missing:
        msg = f"columns {missing} are not in the lot table (its columns: {list(table.columns)})"
        raise KeyError(msg)
    if lot_key in columns:
        msg = (
            f"the lot table has a column {lot_key!r}, which would overwrite obs[{lot_key!r}]; "
            "pass lot_column= if it holds the lot names, or leave it out with columns=."
        )
        raise ValueError(msg)
    lots = lots_of(adata, lot_key)
    present = pd.Index(lots.cat.categories.astype(str))
    no_cells = table.index.difference(present).tolist()
    no_row = present.difference(table.index).tolist()
    problems = []
    if no_cells:
        problems.append(f"lots {no_cells} of the lot table have no cells in obs[{lot_key!r}]")
    if no_row:
        problems.append(f"lots {no_row} have cells but no row in the lot table")
    if problems:
        msg = (
            "; ".join(problems)
            + ". Check the lot names, or subset the cells or the table to the same lots."
        )
        raise ValueError(msg)
    adata = adata.copy() if copy else adata
    cell_lots = lots.astype(str).to_numpy()
    for column in columns:
        values = table[column].reindex(cell_lots)
        if values.dtype == object and values.dropna().map(type).eq(str).all():
            values = values.astype("category")
        adata.obs[column] = values.set_axis(adata.obs_names)
    return adata if copy else None


def _lot_indexed(table: pd.DataFrame, lot_column: str | None, lot_key: str) -> pd.DataFrame:
    """Copy ``table`` indexed by lot name (str); unnamed, missing or repeated lots are errors."""
    if lot_column is None and isinstance(table.index, pd.RangeIndex) and lot_key in table.columns:
        lot_column = lot_key
    if lot_column is not None:
        if lot_column not in table.columns:
            msg = f"the lot table has no column {lot_column!r}; its columns are {list(table.columns)}."
            raise KeyError(msg)
        table = table.set_index(lot_column)
    else:
        table = table.copy()
    if table.index.isna().any():
        msg = f"{int(table.index.isna().sum())} rows of the lot table have no lot name; fill them in or drop them."
        raise ValueError(msg)
    table.index = table.index.astype(str)
    if table.index.duplicated().any():
        duplicated = sorted(table.index[table.index.duplicated()].unique().tolist())
        msg = f"the lot table names lots {duplicated} more than once; keep one row per lot."
        raise ValueError(msg)
    return table
