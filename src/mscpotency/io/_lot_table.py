"""Read a lot-level table (potency assays, tissue, passage) from CSV, TSV or Excel."""

from __future__ import annotations

import logging
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from .. import _keys
from .._docs import doc_params
from .._validate import negative_columns, unreadable_file, warn_negative

_READERS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".txt": "tsv",
    ".tab": "tsv",
    ".xlsx": "xlsx",
    ".xlsm": "xlsx",
}

logger = logging.getLogger("mscpotency")


@doc_params
def read_lot_table(
    path: str | os.PathLike,
    *,
    lot_key: str = _keys.LOT,
    sheet_name: str | int = 0,
    allow_negative: bool | str | Sequence[str] = False,
) -> pd.DataFrame:
    """Read a table with one row per lot, indexed by lot name.

    Every cell is read as text first, so lot names such as ``"007"`` keep their leading
    zeros; then each other column whose every non-empty value is a number becomes numeric,
    and the rest stay text. Column names and lot names are stripped of surrounding
    whitespace, and empty unnamed columns (trailing separators, spreadsheet debris) are
    dropped. An empty cell or a code such as ``NA`` or ``n/a`` is a missing value, except in
    the column of lot names (a lot may be named ``NA``). A ``.csv`` whose header holds no
    comma but semicolons (Excel where the decimal mark is a comma) is read as
    ``;``-separated, and text that is not UTF-8 as Windows-1252. Join the result into the
    cells with :func:`mscpotency.pp.add_lot_table`.

    A numeric column with negative values gets a warning naming the column and the lots:
    most assays (secreted protein, potency readouts, passage) are non-negative, so a
    negative value is often a sign error or a missing-value code such as ``-999``. Say
    which columns may be negative (log-ratios, baseline-subtracted values) with
    ``allow_negative``. A file that cannot be parsed (a truncated or corrupt ``.xlsx``, a
    binary file named ``.csv``) is an error naming the file and what to do.

    Parameters
    ----------
    path
        A ``.csv``, ``.tsv``/``.txt``/``.tab`` (tab-separated) or ``.xlsx`` file.
    lot_key
        {lot_key}
        The file's column of lot names has the same name; it becomes the table's index
        (and the index's name), on which :func:`mscpotency.pp.add_lot_table` joins.
    sheet_name
        Sheet of an Excel file: its name or 0-based position.
    allow_negative
        Columns whose negative values are expected: ``True`` (all), ``False`` (none: warn
        about any) or their names. Recorded in the table's ``attrs['allow_negative']``,
        which :func:`mscpotency.pp.add_lot_table` honours.

    Returns
    -------
    DataFrame indexed by lot name (``str``, index name ``lot_key``), one column per other
    column of the file.
    """
    path = Path(path)
    table = _without_debris(_read_text(path, _format_of(path), sheet_name), path)
    lots = _lot_names(table, lot_key, path)
    table = table.drop(columns=[lot_key])
    table.index = pd.Index(lots.to_numpy(dtype=str), name=lot_key)
    for column in table.columns:
        table[column] = _numeric_if_all(table[column])
    warn_negative(
        negative_columns(table, allow_negative), where=f"lot table {str(path)!r}", stacklevel=2
    )
    table.attrs["allow_negative"] = (
        list(table.columns)
        if allow_negative is True
        else ([allow_negative] if isinstance(allow_negative, str) else list(allow_negative or []))
    )
    return table


def _format_of(path: Path) -> str:
    """``'csv'``, ``'tsv'`` or ``'xlsx'`` by the file's suffix; a missing file or folder is an error."""
    if not path.exists():
        msg = f"lot table {str(path)!r} does not exist."
        raise FileNotFoundError(msg)
    if path.is_dir():
        msg = f"lot table {str(path)!r} is a folder; pass the table file."
        raise ValueError(msg)
    kind = _READERS.get(path.suffix.lower())
    if kind is None:
        msg = (
            f"lot table {str(path)!r}: unknown format {path.suffix!r}. Accepted: .csv, "
            ".tsv/.txt/.tab (tab-separated), .xlsx (Excel)."
        )
        raise ValueError(msg)
    return kind


def _without_debris(table: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Strip column names; drop empty unnamed columns and empty rows; no row left is an error."""
    table.columns = [str(c).strip() for c in table.columns]
    debris = [
        c for c in table.columns if (c == "" or c.startswith("Unnamed:")) and table[c].isna().all()
    ]
    table = table.drop(columns=debris)
    table = table.dropna(how="all")
    if table.empty:
        msg = f"lot table {str(path)!r} has no rows; it needs a header and one row per lot."
        raise ValueError(msg)
    return table


def _lot_names(table: pd.DataFrame, lot_key: str, path: Path) -> pd.Series:
    """The stripped lot names of column ``lot_key``: present, once, none empty or repeated."""
    if lot_key not in table.columns:
        close = [c for c in table.columns if c.lower() == lot_key.lower()]
        hint = f" Did you mean lot_key={close[0]!r}?" if close else " Pass lot_key=."
        msg = f"lot table {str(path)!r} has no column {lot_key!r}; its columns are {list(table.columns)}.{hint}"
        raise KeyError(msg)
    if list(table.columns).count(lot_key) > 1:
        msg = f"lot table {str(path)!r} has the column {lot_key!r} more than once."
        raise ValueError(msg)
    lots = table[lot_key].str.strip()
    # 1-based line numbers as a spreadsheet shows them (the header is line 1).
    lines = table.index.to_numpy() + 2
    empty = lines[(lots.isna() | (lots == "")).to_numpy()].tolist()
    if empty:
        msg = f"lot table {str(path)!r} has rows without a lot name in {lot_key!r} (lines {empty}); fill them in or delete them."
        raise ValueError(msg)
    duplicated = sorted(lots[lots.duplicated()].unique().tolist())
    if duplicated:
        msg = (
            f"lot table {str(path)!r} names lots {duplicated} more than once; keep one row per lot."
        )
        raise ValueError(msg)
    return lots


def _read_text(path: Path, kind: str, sheet_name: str | int) -> pd.DataFrame:
    """Read every cell as text (missing cells as NaN), row index 0..n-1 in file order."""
    if kind == "xlsx":
        try:
            import openpyxl  # noqa: F401
        except ImportError as error:  # pragma: no cover - openpyxl is a test dependency
            msg = "reading .xlsx lot tables needs openpyxl: pip install openpyxl (or mscpotency[excel])."
            raise ImportError(msg) from error
        try:
            return pd.read_excel(
                path,
                sheet_name=sheet_name,
                dtype=str,
                engine="openpyxl",
                keep_default_na=False,  # a lot named "NA" is a name; see MISSING
                na_values=[""],
            )
        except (zipfile.BadZipFile, OSError, KeyError) as error:
            what = "a lot table in .xlsx format; an old .xls or a CSV renamed .xlsx is not one"
            raise ValueError(unreadable_file(path, what, error)) from error
        except (ValueError, IndexError) as error:
            with pd.ExcelFile(path, engine="openpyxl") as workbook:
                sheets = workbook.sheet_names
            if sheet_name in sheets or (
                isinstance(sheet_name, int) and 0 <= sheet_name < len(sheets)
            ):
                raise  # the sheet exists: the error is about its content
            msg = f"lot table {str(path)!r} has no sheet {sheet_name!r}; its sheets are {sheets}."
            raise ValueError(msg) from error
    encoding = _text_encoding(path)
    sep = _text_separator(path, kind, encoding)
    try:
        return pd.read_csv(
            path,
            sep=sep,
            dtype=str,
            skipinitialspace=True,
            encoding=encoding,
            keep_default_na=False,  # a lot named "NA" or "None" is a name; see MISSING
            na_values=[""],
        )
    except pd.errors.EmptyDataError as error:
        msg = f"lot table {str(path)!r} is empty; it needs a header and one row per lot."
        raise ValueError(msg) from error
    except (UnicodeDecodeError, pd.errors.ParserError) as error:
        what = f"a lot table as {_SEPARATOR_NAMES[sep]}-separated text"
        raise ValueError(unreadable_file(path, what, error)) from error


#: Values that mean "missing" in a lot table's value columns (pandas' defaults); in the
#: column of lot names they are names.
MISSING = frozenset(
    {"#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN"}
    | {"<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"}
)

_SEPARATOR_NAMES = {",": "comma", "\t": "tab", ";": "semicolon"}


def _text_encoding(path: Path) -> str:
    """UTF-8 (a byte-order mark skipped), else Windows-1252 (Excel's CSV export in Europe)."""
    data = path.read_bytes()
    try:
        data.decode("utf-8-sig")
    except UnicodeDecodeError:
        if b"\x00" in data:  # binary, not text in another encoding
            return "utf-8-sig"
        logger.info("read_lot_table: %r is not UTF-8; read as Windows-1252", str(path))
        return "cp1252"
    return "utf-8-sig"


def _text_separator(path: Path, kind: str, encoding: str) -> str:
    """The suffix's separator, unless the header has none of it and another one instead.

    Excel writes ``;``-separated ".csv" files where the decimal mark is a comma, and a
    ".txt" may be comma-separated.
    """
    with open(path, encoding=encoding, errors="replace") as handle:
        header = handle.readline()
    expected = "," if kind == "csv" else "\t"
    if expected in header:
        return expected
    for other in ("\t", ";", ","):
        if other != expected and other in header:
            logger.info(
                "read_lot_table: %r has no %s in its header; read as %s-separated",
                str(path),
                _SEPARATOR_NAMES[expected],
                _SEPARATOR_NAMES[other],
            )
            return other
    return expected


def _numeric_if_all(column: pd.Series) -> pd.Series:
    """Return the column as numbers when every non-empty value is one, else as stripped text.

    Empty cells and the :data:`MISSING` codes (``NA``, ``n/a``, ...) are missing values.
    Decimal numbers are parsed by Python's ``float`` (correctly rounded; pandas' fast parser
    can be a few ulp off, e.g. ``0.014131167639463269``), integers stay integers.
    """
    text = column.str.strip()
    text = text.where((text != "") & ~text.isin(MISSING))
    numbers = pd.to_numeric(text, errors="coerce")
    if not (text.notna().any() and numbers.notna().sum() == text.notna().sum()):
        return text
    if pd.api.types.is_float_dtype(numbers):
        try:
            return text.map(float, na_action="ignore").astype(float)
        except ValueError:  # a form pandas reads and Python does not: pandas' value
            return numbers
    return numbers
