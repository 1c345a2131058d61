"""Join a lot-level table (potency assays, tissue, passage) into obs, validated."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
from anndata import AnnData

from .. import _keys
from .._docs import doc_params
from .._provenance import record
from .._validate import lots_of, negative_columns, warn_negative

logger = logging.getLogger("mscpotency")


@doc_params
@record("pp.add_lot_table")
def add_lot_table(
    adata: AnnData,
    lot_table: pd.DataFrame,
    *,
    lot_key: str = _keys.LOT,
    columns: list[str] | None = None,
    allow_negative: bool | str | Sequence[str] | None = None,
    extra_lots: Literal["error", "ignore"] = "error",
    overwrite: bool = False,
    copy: bool = False,
) -> AnnData | None:
    """Add lot-level columns (one value per lot) to ``adata.obs``.

    Every lot with cells must be in the table and, unless ``extra_lots="ignore"``, every
    lot in the table must have cells; anything else is an error naming the lots, so no lot
    is dropped silently. An existing obs column is not replaced unless ``overwrite=True``
    (one holding the same values already is left as it is). Read the table from a file
    with :func:`mscpotency.io.read_lot_table`.

    Negative values in a numeric column get a warning naming the column and the lots
    (most assays are non-negative: a negative value is often a sign error or a
    missing-value code such as ``-999``); ``allow_negative`` says which columns may be.

    Parameters
    ----------
    adata
        Cells with ``obs[lot_key]``.
    lot_table
        One row per lot, indexed by lot name (as :func:`mscpotency.io.read_lot_table`
        returns it); a table with a plain 0..n-1 index has the lot names in its column
        ``lot_key`` instead. The table itself is not modified.
    lot_key
        {lot_key}
        The table's column of lot names has the same name (see ``lot_table``).
    columns
        Columns to add (default: all).
    allow_negative
        Columns whose negative values are expected: ``True`` (all), ``False`` (none) or
        their names; ``None`` takes the table's ``attrs['allow_negative']`` (set by
        :func:`mscpotency.io.read_lot_table`), else none.
    extra_lots
        Lots of the table without cells (a table of every lot of a study joined to some of
        its cells): ``"error"`` refuses, naming them; ``"ignore"`` joins the lots that have
        cells and names the others in a logged warning.
    overwrite
        Replace obs columns of the same name that hold other values; ``False`` (default)
        refuses, naming them (leave them out with ``columns=``).

    Returns
    -------
    ``None``, or the copy when ``copy=True``. Writes

    `adata.obs[column]` for each table column
        The lot's value in every cell of the lot (constant within lots); text columns
        become categorical, numbers keep their dtype.
    """
    if not isinstance(lot_table, pd.DataFrame):
        msg = f"lot_table must be a pandas DataFrame (one row per lot), got a {type(lot_table).__name__}. Read files with `io.read_lot_table`."
        raise TypeError(msg)
    table = _lot_indexed(lot_table, lot_key)
    columns = _columns_to_add(table, columns, lot_key)
    lots = lots_of(adata, lot_key)
    with_cells = pd.Index(lots.cat.categories.astype(str))
    _require_the_same_lots(table.index, with_cells, lot_key, extra_lots)
    table = table.loc[table.index.intersection(with_cells, sort=False)]
    if allow_negative is None:  # what io.read_lot_table was told, for the columns still here
        allowed = lot_table.attrs.get("allow_negative", [])
        allow_negative = (
            allowed if isinstance(allowed, bool) else [c for c in allowed if c in table.columns]
        )
    negative = {
        c: names for c, names in negative_columns(table, allow_negative).items() if c in columns
    }
    cell_lots = lots.astype(str).to_numpy()
    new = {column: _cell_values(table[column], cell_lots, adata.obs_names) for column in columns}
    _refuse_overwrite(adata.obs, new, overwrite)
    adata = adata.copy() if copy else adata
    for column, values in new.items():
        adata.obs[column] = values
    warn_negative(negative, where="add_lot_table", stacklevel=4)
    return adata if copy else None


def _lot_indexed(table: pd.DataFrame, lot_key: str) -> pd.DataFrame:
    """Copy ``table`` indexed by lot name (str); unnamed, missing or repeated lots are errors."""
    if isinstance(table.index, pd.RangeIndex):
        if lot_key not in table.columns:
            msg = (
                f"the lot table has no column {lot_key!r}; its columns are {list(table.columns)}. "
                f"Index it by lot name, or name its column of lot names {lot_key!r}."
            )
            raise KeyError(msg)
        table = table.set_index(lot_key)
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


def _columns_to_add(table: pd.DataFrame, columns: list[str] | None, lot_key: str) -> list[str]:
    """The requested columns (default all), each in the table; none may overwrite the lots."""
    columns = list(table.columns) if columns is None else list(columns)
    missing = [c for c in columns if c not in table.columns]
    if missing:
        msg = f"columns {missing} are not in the lot table (its columns: {list(table.columns)})"
        raise KeyError(msg)
    if lot_key in columns:
        msg = (
            f"the lot table has a column {lot_key!r}, which would overwrite obs[{lot_key!r}]; "
            "index the table by lot name from that column (table.set_index(...)), or leave it "
            "out with columns=."
        )
        raise ValueError(msg)
    return columns


def _cell_values(values: pd.Series, cell_lots: np.ndarray, cells: pd.Index) -> pd.Series:
    """The lot's value in every cell; text becomes categorical (categories of lots with cells)."""
    values = values.reindex(cell_lots)
    if values.dtype == object and values.dropna().map(type).eq(str).all():
        values = values.astype("category")
    if isinstance(values.dtype, pd.CategoricalDtype):
        values = values.cat.remove_unused_categories()
    return values.set_axis(cells)


def _refuse_overwrite(obs: pd.DataFrame, new: dict[str, pd.Series], overwrite: bool) -> None:
    """Existing obs columns that would change are an error unless ``overwrite``."""
    if overwrite:
        return
    changed = []
    for column, values in new.items():
        if column not in obs.columns:
            continue
        old = obs[column]
        same = old.astype(object).to_numpy() == values.astype(object).to_numpy()
        same |= old.isna().to_numpy() & values.isna().to_numpy()
        if not same.all():
            changed.append(column)
    if changed:
        msg = (
            f"obs already has columns {changed} with other values than the lot table; "
            "pass overwrite=True to replace them, or leave them out with columns=."
        )
        raise ValueError(msg)


def _require_the_same_lots(
    in_table: pd.Index, with_cells: pd.Index, lot_key: str, extra_lots: str = "error"
) -> None:
    """Every lot with cells has a row; every lot of the table has cells unless ``extra_lots``."""
    no_cells = in_table.difference(with_cells).tolist()
    no_row = with_cells.difference(in_table).tolist()
    problems = []
    if no_cells and extra_lots == "ignore":
        logger.warning(
            "add_lot_table: lots %s of the lot table have no cells in obs[%r] and were not "
            "joined (extra_lots='ignore')",
            no_cells,
            lot_key,
        )
    elif no_cells:
        problems.append(
            f"lots {no_cells} of the lot table have no cells in obs[{lot_key!r}] (to join "
            "the lots that have cells, pass extra_lots='ignore')"
        )
    if no_row:
        problems.append(f"lots {no_row} have cells but no row in the lot table")
    if problems:
        msg = (
            "; ".join(problems)
            + ". Check the lot names, or subset the cells or the table to the same lots."
        )
        raise ValueError(msg)
