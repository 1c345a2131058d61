"""Input checks shared by the public functions; each error says what was wrong and what to do."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from ._dask import is_dask


def require_obs_column(adata: AnnData, key: str, *, what: str, hint: str = "") -> pd.Series:
    """``adata.obs[key]``, or a ``KeyError`` that names the column and how to get it."""
    if key not in adata.obs.columns:
        shown = ", ".join(map(repr, list(adata.obs.columns)[:12]))
        msg = f"adata.obs has no column {key!r} ({what}); columns are: {shown}. {hint}".strip()
        raise KeyError(msg)
    return adata.obs[key]


def lots_of(adata: AnnData, lot_key: str) -> pd.Series:
    """The lot of every cell as a categorical without unused categories; NaN lots are an error."""
    lots = require_obs_column(adata, lot_key, what="the lot of each cell", hint="Pass lot_key=.")
    if lots.isna().any():
        msg = f"{int(lots.isna().sum())} cells have no lot in obs[{lot_key!r}]; assign one or remove them."
        raise ValueError(msg)
    lots = lots.astype("category").cat.remove_unused_categories()
    return lots


def require_unique_cell_names(adata: AnnData) -> None:
    """Duplicate cell names make per-cell results ambiguous."""
    if not adata.obs_names.is_unique:
        duplicated = adata.obs_names[adata.obs_names.duplicated()].unique()[:5].tolist()
        msg = (
            f"cell names are not unique (e.g. {duplicated}); pool lots with "
            "`pp.pool_lots` (which prefixes the lot) or call adata.obs_names_make_unique()."
        )
        raise ValueError(msg)


def count_matrix(adata: AnnData, layer: str | None) -> np.ndarray | sparse.spmatrix:
    """The matrix that must hold raw counts: ``layers[layer]`` if given and present, else X."""
    if layer is not None and layer in adata.layers:
        return adata.layers[layer]
    return adata.X


#: What :func:`check_counts` advises by default (the functions that take ``layer=``).
PASS_THE_COUNTS_LAYER = "pass the layer that holds them (e.g. layer='counts')"


def check_counts(X, *, where: str, advice: str = PASS_THE_COUNTS_LAYER) -> None:
    """Raise unless ``X`` holds non-negative integers (raw UMI counts).

    Checks every stored value (sparse ``data`` is cheap to scan). Lazy (dask) arrays are
    checked on their first chunk only, so as not to load the whole matrix. ``advice``
    ends the message on non-integer values: what the caller can do.
    """
    if is_dask(X):
        X = X.blocks[0, 0].compute() if X.ndim == 2 else X.compute()
    values = X.data if sparse.issparse(X) else np.asarray(X)
    if values.size == 0:
        return
    if not np.isfinite(values).all():
        msg = f"{where} contains NaN or inf; raw counts are required."
        raise ValueError(msg)
    if (values < 0).any():
        msg = f"{where} contains negative values; raw counts are required, not scaled data."
        raise ValueError(msg)
    sample = values if values.size <= 10_000_000 else values[:: values.size // 10_000_000 + 1]
    if not np.array_equal(sample, np.round(sample)):
        msg = (
            f"{where} contains non-integer values (e.g. {sample[sample != np.round(sample)][:3].tolist()}); "
            f"it looks normalised or log-transformed. Raw integer counts are required: {advice}."
        )
        raise ValueError(msg)


def lot_level_values(adata: AnnData, key: str, lot_key: str) -> pd.Series:
    """One value per lot from an obs column that must be constant within each lot."""
    column = require_obs_column(adata, key, what="a lot-level measurement")
    lots = lots_of(adata, lot_key)
    frame = pd.DataFrame({"lot": lots.values, "value": column.values})
    n_distinct = frame.groupby("lot", observed=True)["value"].nunique(dropna=False)
    varying = n_distinct[n_distinct > 1].index.tolist()
    if varying:
        msg = (
            f"obs[{key!r}] is not constant within lots {varying[:5]}: a lot-level column must "
            "have one value per lot. Join lot tables with `pp.add_lot_table`."
        )
        raise ValueError(msg)
    return frame.groupby("lot", observed=True)["value"].first()


def finite_outcome(values: pd.Series, *, name: str) -> pd.Series:
    """A lot-level outcome with numbers only: NaN/inf/non-numeric values are errors."""
    numeric = pd.to_numeric(values, errors="coerce")
    bad = values.index[~np.isfinite(numeric.to_numpy(dtype=float))].tolist()
    if bad:
        msg = f"{name} is missing, non-numeric, NaN or infinite for lots {bad}; every lot needs a finite value."
        raise ValueError(msg)
    return numeric.astype(float)


def match_lots(values: Mapping | pd.Series, lots: pd.Index, *, name: str) -> pd.Series:
    """Align a lot -> value table to the lots present; any unmatched lot is an error."""
    series = pd.Series(values) if not isinstance(values, pd.Series) else values
    series.index = series.index.astype(str)
    present = pd.Index(lots.astype(str))
    no_cells = series.index.difference(present).tolist()
    no_value = present.difference(series.index).tolist()
    problems = []
    if no_cells:
        problems.append(f"lots {no_cells} in the {name} table have no cells")
    if no_value:
        problems.append(f"lots {no_value} have cells but no {name} value")
    if problems:
        msg = "; ".join(problems) + ". Check lot names, or subset the data/table to the same lots."
        raise ValueError(msg)
    if series.index.duplicated().any():
        msg = f"the {name} table names lots {series.index[series.index.duplicated()].tolist()} more than once"
        raise ValueError(msg)
    return series.loc[present]


def require_min_lots(n_lots: int, minimum: int = 3, *, what: str = "a rank correlation") -> None:
    """At least ``minimum`` lots."""
    if n_lots < minimum:
        msg = f"{what} needs at least {minimum} lots, got {n_lots}."
        raise ValueError(msg)


#: How a lot with few cells enters each lot-level statistic (said wherever one is kept).
SMALL_LOT_EFFECT = (
    "A small lot is kept as a full lot: its cluster fractions (tl.lot_fractions) rest on its "
    "few cells (with n cells a fraction moves in steps of 1/n and its standard error is up to "
    "0.5/sqrt(n), 0.22 at 5 cells); the rank association (tl.potency_association) and its "
    "leave-one-lot-out and bootstrap count it as one lot with the same weight as the largest; "
    "tl.composition_deviation tests it against draws of its own size, so it is rarely flagged; "
    "per-lot marker consistency (tl.potency_markers) skips lots with fewer than min_cells cells "
    "in the cluster."
)


def warn_small_lots(counts: pd.Series, minimum: int, *, context: str) -> None:
    """Warn (not fail) when lots have too few cells for their fractions to mean much."""
    small = counts[counts < minimum]
    if len(small):
        warnings.warn(
            f"{context}: lots {small.to_dict()} have fewer than {minimum} cells; their fractions "
            f"are noisy. {SMALL_LOT_EFFECT} To leave such lots out, pass small_lots='drop' to "
            "pp.qc (or pp.pool_lots), or subset the cells.",
            UserWarning,
            stacklevel=3,
        )


def negative_columns(
    table: pd.DataFrame, allow_negative: bool | str | Sequence[str]
) -> dict[str, list[str]]:
    """Numeric columns of a lot table with negative values not allowed: column -> its lots.

    ``allow_negative`` is ``True`` (every column may be negative), ``False`` (none) or the
    column name(s) that may be. An unknown column name is an error.
    """
    if isinstance(allow_negative, (bool, np.bool_)):
        allowed = set(table.columns) if allow_negative else set()
    else:
        names = [allow_negative] if isinstance(allow_negative, str) else list(allow_negative)
        unknown = [c for c in names if c not in table.columns]
        if unknown:
            msg = (
                f"allow_negative names columns {unknown} that are not in the lot table "
                f"(its columns: {list(table.columns)})."
            )
            raise KeyError(msg)
        allowed = set(names)
    found = {}
    for column in table.columns:
        values = table[column]
        if column in allowed or not pd.api.types.is_numeric_dtype(values):
            continue
        if pd.api.types.is_bool_dtype(values):
            continue
        negative = values.to_numpy(dtype=float) < 0
        if negative.any():
            found[str(column)] = [str(lot) for lot in table.index[negative]]
    return found


def warn_negative(found: Mapping[str, list[str]], *, where: str, stacklevel: int = 3) -> None:
    """Warn that lot-level values are negative, naming columns and lots, and how to allow them."""
    if not found:
        return
    listed = "; ".join(f"{column!r}: lots {lots[:10]}" for column, lots in found.items())
    warnings.warn(
        f"{where}: negative values in {listed}. Most assays (secreted protein, potency "
        "readouts, passage, cell counts) are non-negative, so a negative value is often a "
        "sign error, a missing-value code (-1, -999), or a log-ratio or baseline-subtracted "
        "value. Check the table; if the values are real, pass allow_negative="
        f"{list(found)!r} (or allow_negative=True) to say so.",
        UserWarning,
        stacklevel=stacklevel,
    )


def unreadable_file(path, what: str, error: BaseException) -> str:
    """The message for a file a reader could not parse: which file, why, and what to do."""
    return (
        f"could not read {str(path)!r} ({what}): {type(error).__name__}: {error}. The file looks "
        "truncated or corrupt (e.g. an interrupted copy or download) or is not in the format "
        "its name says; copy it again from its source (compare its size or checksum with the "
        "original) or write it again."
    )


#: An Ensembl gene id (human ``ENSG``, mouse ``ENSMUSG``, other species ``ENS<code>G``),
#: with an optional version suffix (``ENSG00000198888.2``).
_ENSEMBL_GENE = r"^ENS[A-Z]*G\d{6,}(?:\.\d+)?$"

#: The ``var`` column read first for gene symbols (written by :func:`mscpotency.io.read_lots`).
SYMBOL_COLUMN = "gene_symbols"


def looks_like_ensembl(names) -> bool:
    """True when at least half of the gene names are Ensembl gene ids (``ENSG00000198888``)."""
    names = pd.Index(names).astype(str)
    if len(names) == 0:
        return False
    return bool(names.str.match(_ENSEMBL_GENE).mean() >= 0.5)


def gene_symbols(var: pd.DataFrame, symbol_key: str | None) -> tuple[pd.Index, str]:
    """The gene symbols of ``var`` (one per gene) and where they were read, in words.

    ``symbol_key`` names a ``var`` column (an error if absent); ``None`` reads
    ``var['gene_symbols']`` when present, else the gene names (``var_names``). A gene with
    no symbol in the column keeps its name.
    """
    if symbol_key is None and SYMBOL_COLUMN in var.columns:
        symbol_key = SYMBOL_COLUMN
    if symbol_key is None:
        return pd.Index(var.index.astype(str)), "var_names"
    if symbol_key not in var.columns:
        shown = ", ".join(map(repr, list(var.columns)[:12])) or "none"
        msg = (
            f"adata.var has no column {symbol_key!r} (the gene symbols); its columns are: "
            f"{shown}. Pass symbol_key= naming the column of gene symbols, or None to use var_names."
        )
        raise KeyError(msg)
    column = var[symbol_key]
    symbols = column.astype(object).where(column.notna(), pd.Series(var.index, index=var.index))
    return pd.Index(symbols.astype(str)), f"var[{symbol_key!r}]"


def symbol_columns(var: pd.DataFrame) -> list[str]:
    """``var`` columns of text whose values are mostly not Ensembl ids (candidate symbol columns)."""
    found = []
    for column in var.columns:
        values = var[column]
        if values.dtype == object or isinstance(values.dtype, pd.CategoricalDtype):
            text = values.dropna().astype(str)
            if len(text) and not looks_like_ensembl(text):
                found.append(str(column))
    return found
