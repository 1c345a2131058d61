"""Read per-lot single-cell count data (10x mtx folders, 10x ``.h5``, ``.h5ad``, CSV/TSV) into one AnnData."""

from __future__ import annotations

import gzip
import logging
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import anndata as ad
import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from .. import _keys
from .._docs import doc_params
from .._provenance import record
from .._validate import check_counts, looks_like_ensembl
from ..pp._pool import MIN_CELLS_PER_LOT, check_pool_options, pool_lots

logger = logging.getLogger("mscpotency")

#: The formats a lot may come in, as said in error messages.
ACCEPTED_FORMATS = (
    "a 10x matrix folder (matrix.mtx.gz + features.tsv.gz + barcodes.tsv.gz, or the "
    "Cell Ranger v2 matrix.mtx + genes.tsv + barcodes.tsv; the folder itself or its "
    "filtered_feature_bc_matrix/ or outs/filtered_feature_bc_matrix/), "
    "a 10x '.h5' file (or a Cell Ranger sample folder holding "
    "outs/filtered_feature_bc_matrix.h5), an '.h5ad' file, or a count matrix as CSV/TSV text (.csv, .tsv, "
    ".tab, .txt, optionally .gz; genes x cells or cells x genes, names in the first row "
    "and column)"
)

#: Suffixes of count matrices as delimited text (each also gzipped, ``.csv.gz``).
_TEXT_SUFFIXES = (".csv", ".tsv", ".tab", ".txt")

#: A cell barcode (10x and most droplet technologies): 8 or more bases, an optional suffix.
_BARCODE = re.compile(r"(?:^|[_:-])[ACGTN]{8,}(?:[-_.]\d+)?$")

#: Gene symbols that name genes in every annotation (mitochondrial, ribosomal protein).
_KNOWN_GENES = re.compile(r"^(?:MT-|RP[SL]\d|ACTB$|GAPDH$|B2M$|MALAT1$)", re.IGNORECASE)

#: Rows of a text count matrix converted to sparse at a time.
_TEXT_CHUNK_ROWS = 2000

# The two file sets scanpy.read_10x_mtx reads: Cell Ranger >= 3 (gzipped) and Cell Ranger 2.
_MTX_V3 = ("matrix.mtx.gz", "features.tsv.gz", "barcodes.tsv.gz")
_MTX_V2 = ("matrix.mtx", "genes.tsv", "barcodes.tsv")
_MTX_SUBFOLDERS = ((), ("filtered_feature_bc_matrix",), ("outs", "filtered_feature_bc_matrix"))
# Cell Ranger's 10x .h5 inside a sample folder (used when the folder holds no matrix folder).
_H5_IN_FOLDER = (("filtered_feature_bc_matrix.h5",), ("outs", "filtered_feature_bc_matrix.h5"))

# AnnData warns while a reader builds an object with duplicate names; read_lots makes the
# gene names unique itself (and reports it) and rejects duplicate barcodes with an error.
_DUPLICATE_NAME_WARNINGS = r"(Variable|Observation) names are not unique"


@doc_params
@record("io.read_lots")
def read_lots(
    source: str | os.PathLike | Mapping[str, str | os.PathLike],
    *,
    lot_key: str = _keys.LOT,
    barcodes_to_lots: Mapping | pd.Series | pd.DataFrame | str | os.PathLike | None = None,
    orientation: Literal["auto", "genes_x_cells", "cells_x_genes"] = "auto",
    cells_per_lot: int | str | None = None,
    min_cells_per_lot: int = MIN_CELLS_PER_LOT,
    small_lots: Literal["warn", "drop", "error"] = "warn",
    join: Literal["inner", "outer"] = "inner",
    random_state: int = 0,
) -> AnnData:
    """Read the raw counts of several lots and pool them into one AnnData.

    Each lot is one 10x matrix folder, one 10x ``.h5`` file, one ``.h5ad`` file or one
    count matrix as CSV/TSV text (``.csv``, ``.tsv``, ``.tab``, ``.txt``, each optionally
    gzipped; genes x cells or cells x genes, with the names in the first row and column:
    the orientation is detected, see ``orientation``). Or one file holds many lots: an
    ``.h5ad`` file whose ``obs[lot_key]`` names the lot of each cell, or any of the
    formats with a ``barcodes_to_lots`` table.

    For 10x data, gene symbols become the gene names, the symbols are also kept in
    ``var['gene_symbols']`` (where :func:`mscpotency.pp.qc` looks for mitochondrial
    genes) and the 10x gene ids in ``var['gene_ids']``. A symbol that occurs more than
    once in a lot (10x maps several ids to one symbol, e.g.
    ``TBCE``) is made unique, not summed: its second and later features are suffixed
    ``-1``, ``-2``, ... (as ``anndata``'s ``var_names_make_unique``), their counts kept
    apart, and the repeated symbols are named in a logged warning and in
    ``uns['read_lots']['genes_made_unique']``. The lots are pooled with
    :func:`mscpotency.pp.pool_lots`. A file that cannot be parsed (e.g. truncated by an
    interrupted copy) is an error naming the lot, the file and what to do.

    Parameters
    ----------
    source
        A folder whose every entry is one lot (the lot is named after the entry without its
        extension; hidden entries, whose name starts with ``.``, are skipped), a mapping
        lot name -> path of that lot's data, or one file (or 10x matrix folder) holding
        many lots: an ``.h5ad`` file with the lots in ``obs[lot_key]``, or any lot format
        with ``barcodes_to_lots``.
    lot_key
        {lot_key}
        Written here for every cell; for one ``.h5ad`` file holding many lots, read from here.
    barcodes_to_lots
        For one file holding many lots: the lot of each cell barcode, as a mapping or Series
        barcode -> lot, a DataFrame (column ``lot_key``; barcodes in its index or first
        column), or the path of such a CSV/TSV table (first column the barcodes, lots in
        column ``lot_key`` or the second column). Cells of the file missing from the table
        are left out with a warning (counted in ``uns['read_lots']['cells_without_lot']``);
        no barcode in common is an error.
    orientation
        Of CSV/TSV count matrices: ``"auto"`` detects it per file from the names (Ensembl
        ids, cell barcodes, well-known gene symbols on one axis, else the longer axis is
        taken for genes) and says which it chose and why in a log line and in
        ``uns['read_lots']['orientation']``; ``"genes_x_cells"`` or ``"cells_x_genes"``
        states it.
    cells_per_lot
        ``None`` keeps every cell; an integer subsamples each lot to at most that many;
        ``"min"`` subsamples every lot to the size of the smallest (see ``pp.pool_lots``).
    min_cells_per_lot
        {min_cells_per_lot}
        Here: as in :func:`mscpotency.pp.pool_lots` (with ``small_lots``, and the floor of
        ``cells_per_lot="min"``).
    small_lots
        Lots of fewer than ``min_cells_per_lot`` cells: ``"warn"`` (keep), ``"drop"`` or
        ``"error"``, as in :func:`mscpotency.pp.pool_lots`.
    join
        ``"inner"`` keeps the genes measured in every lot (those left out are reported in
        ``uns['pool_lots']['genes_dropped']``), ``"outer"`` keeps all and fills zeros
        (the genes added per lot in ``uns['pool_lots']['genes_added']``); see
        :func:`mscpotency.pp.pool_lots`.
    random_state
        {random_state}
        Here: of the subsampling.

    Returns
    -------
    One AnnData of raw counts (cells x genes, ``X`` sparse float32) with unique cell names
    ``{lot}_{barcode}``, and

    `adata.obs[lot_key]` : categorical
        The lot of each cell, lots in the order read (a folder: sorted by name; one file:
        as in its lot column or table).
    `adata.var['gene_ids']`, `adata.var['gene_symbols']`
        10x gene ids and symbols, where every lot that measured a gene agrees on them.
    `adata.uns['read_lots']` : dict
        ``'sources'`` (lot -> path), ``'formats'`` (lot -> ``'10x_mtx'``, ``'10x_h5'``,
        ``'h5ad'``, ``'csv'`` or ``'tsv'``), ``'count_source'`` (lot -> ``'X'`` or
        ``"layers['counts']"``), ``'genes_made_unique'`` (lot -> gene symbols that
        occurred more than once and were suffixed ``-1``, ``-2``, ...), ``'orientation'``
        (lot -> how a CSV/TSV matrix was read, and why), ``'lots_from'`` (``'files'``,
        ``"obs['<lot_key>']"`` or ``'barcodes_to_lots'``), ``'cells_without_lot'``,
        ``'params'``.
    `adata.uns['pool_lots']` : dict
        Cells before/kept/removed per lot, lots left out, genes dropped or added by the join.
    `adata.uns['mscpotency']['log']`
        The provenance entry of this call.
    """
    # Cheap option checks before reading what may be gigabytes (pool_lots checks them too).
    check_pool_options(cells_per_lot, join, min_cells_per_lot, small_lots)
    single = _single_source(source, lot_key, barcodes_to_lots)
    if single is not None:
        parts, lots, made_unique, info = _read_many_lots_file(
            *single, lot_key, barcodes_to_lots, orientation
        )
    else:
        lots = _resolve_source(source)
        parts, made_unique, info = _read_all(lots, orientation)
    pooled = pool_lots(
        {name: part for name, (part, _) in parts.items()},
        lot_key=lot_key,
        cells_per_lot=cells_per_lot,
        min_cells_per_lot=min_cells_per_lot,
        small_lots=small_lots,
        join=join,
        random_state=random_state,
    )
    pooled.uns["read_lots"] = {
        "sources": {name: str(path) for name, (path, _) in lots.items()},
        "formats": {name: fmt for name, (_, fmt) in lots.items()},
        "count_source": {name: used for name, (_, used) in parts.items()},
        "genes_made_unique": made_unique,
        **info,
        "params": {
            "lot_key": lot_key,
            "barcodes_to_lots": _describe_table(barcodes_to_lots),
            "orientation": orientation,
            "cells_per_lot": cells_per_lot,
            "min_cells_per_lot": int(min_cells_per_lot),
            "small_lots": small_lots,
            "join": join,
            "random_state": random_state,
        },
    }
    logger.info("read_lots: %d lots, %d cells, %d genes", len(parts), pooled.n_obs, pooled.n_vars)
    return pooled


def _describe_table(barcodes_to_lots) -> str | None:
    """How ``barcodes_to_lots`` was given, for the params (a path as text, a table by its size)."""
    if barcodes_to_lots is None or isinstance(barcodes_to_lots, (str, os.PathLike)):
        return None if barcodes_to_lots is None else str(barcodes_to_lots)
    return f"a {type(barcodes_to_lots).__name__} of {len(barcodes_to_lots)} barcodes"


def _single_source(source, lot_key: str, barcodes_to_lots) -> tuple[Path, str] | None:
    """(path, format) when ``source`` is one file or 10x folder holding many lots, else ``None``.

    One ``.h5ad`` file is read as many lots (its ``obs[lot_key]`` is checked when read);
    another single lot format needs ``barcodes_to_lots``. A folder of lots or a mapping
    gives ``None``; ``barcodes_to_lots`` with them is an error.
    """
    if isinstance(source, (str, os.PathLike)) and Path(source).exists():
        path = Path(source)
        fmt = _detect_format(path)
        single = fmt is not None and (
            not path.is_dir() or _mtx_folder(path) is not None or _h5_in_folder(path) is not None
        )
        if single and (fmt == "h5ad" or barcodes_to_lots is not None):
            return path, fmt
    if barcodes_to_lots is not None:
        msg = (
            "barcodes_to_lots is for one file holding many lots (an .h5ad, 10x .h5, 10x "
            f"matrix folder or CSV/TSV count matrix), got {source!r}; a folder of lots or a "
            "mapping names each lot by its entry."
        )
        raise ValueError(msg)
    return None


def _read_many_lots_file(
    path: Path, fmt: str, lot_key: str, barcodes_to_lots, orientation: str
) -> tuple[dict, dict, dict, dict]:
    """Read one file and split its cells by lot: (parts, lot sources, genes made unique, info)."""
    part, used, duplicated, how = _read_one(path.name, path, fmt, orientation)
    if barcodes_to_lots is None:
        if lot_key not in part.obs.columns:
            shown = ", ".join(map(repr, list(part.obs.columns)[:12])) or "none"
            msg = (
                f"{str(path)!r} is a file, not a folder of lots. It looks like one lot ({fmt}) "
                f"without a lot column: its obs has no column {lot_key!r} (its columns: "
                f"{shown}). Pass lot_key= naming the column that holds each cell's lot, "
                "barcodes_to_lots= (a barcode -> lot table), or {'lot name': path} if it "
                "holds one lot."
            )
            raise ValueError(msg)
        cell_lots, names = _lots_from_obs(part, lot_key, path)
        lots_from, missing = f"obs[{lot_key!r}]", 0
    else:
        table = _barcode_table(barcodes_to_lots, lot_key)
        cell_lots, missing = _lots_from_table(part.obs_names, table, path)
        names = [lot for lot in pd.unique(table) if (cell_lots == lot).any()]
        lots_from = "barcodes_to_lots"
    part.obs = part.obs.drop(columns=[lot_key], errors="ignore")
    parts, lots = {}, {}
    for name in names:
        parts[name] = (part[(cell_lots == name).to_numpy()].copy(), used)
        lots[name] = (path, fmt)
    made_unique = dict.fromkeys(names, duplicated) if duplicated else {}
    if duplicated:
        logger.warning(
            "read_lots: %r has %d gene symbols occurring more than once: %s; their later "
            "features were made unique by suffixing -1, -2, ... (counts kept apart)",
            str(path),
            len(duplicated),
            duplicated[:20],
        )
    info = {"lots_from": lots_from, "cells_without_lot": int(missing)}
    info["orientation"] = dict.fromkeys(names, how) if how else {}
    logger.info("read_lots: %r holds %d lots (from %s)", str(path), len(names), lots_from)
    return parts, lots, made_unique, info


def _lots_from_obs(part: AnnData, lot_key: str, path: Path) -> tuple[pd.Series, list[str]]:
    """The lot of each cell from the file's ``obs[lot_key]`` (as text), and the lots in order.

    The order is the column's categories (a categorical column) or first appearance. A
    cell without a lot is an error.
    """
    lots = part.obs[lot_key]
    if lots.isna().any():
        msg = (
            f"{int(lots.isna().sum())} cells of {str(path)!r} have no lot in obs[{lot_key!r}]; "
            "assign one or remove them from the file."
        )
        raise ValueError(msg)
    text = lots.astype(str)
    if isinstance(lots.dtype, pd.CategoricalDtype):
        present = set(text)
        return text, [str(c) for c in lots.cat.categories if str(c) in present]
    return text, [str(lot) for lot in pd.unique(text)]


def _barcode_table(barcodes_to_lots, lot_key: str) -> pd.Series:
    """``barcodes_to_lots`` as a Series barcode (str) -> lot (str), barcodes unique."""
    table = barcodes_to_lots
    if isinstance(table, (str, os.PathLike)):
        path = Path(table)
        if not path.is_file():
            msg = f"barcodes_to_lots {str(path)!r} does not exist (a CSV/TSV table barcode -> lot)."
            raise FileNotFoundError(msg)
        table = pd.read_csv(path, sep=_separator(path), dtype=str)
    if isinstance(table, Mapping):
        table = pd.Series(table, dtype=object)
    if isinstance(table, pd.DataFrame):
        table = _table_lots(table, lot_key)
    if not isinstance(table, pd.Series):
        msg = (
            "barcodes_to_lots must be a mapping or Series barcode -> lot, a DataFrame, or the "
            f"path of a CSV/TSV table, got a {type(barcodes_to_lots).__name__}."
        )
        raise TypeError(msg)
    table = table.dropna()
    table.index = table.index.astype(str).str.strip()
    table = table.astype(str).str.strip()
    repeated = table.index[table.index.duplicated()]
    conflicting = [b for b in repeated.unique() if table.loc[[b]].nunique() > 1]
    if conflicting:
        msg = f"barcodes_to_lots gives barcodes {conflicting[:5]} more than one lot; keep one row per barcode."
        raise ValueError(msg)
    return table[~table.index.duplicated()]


def _table_lots(table: pd.DataFrame, lot_key: str) -> pd.Series:
    """Barcode -> lot from a DataFrame: column ``lot_key`` (else the second of two columns)."""
    if lot_key not in table.columns:
        if table.shape[1] != 2:
            msg = (
                f"the barcodes_to_lots table has no column {lot_key!r} (its columns: "
                f"{list(table.columns)}); name the column of lots {lot_key!r} or pass lot_key=."
            )
            raise KeyError(msg)
        return table.set_index(table.columns[0])[table.columns[1]]
    if isinstance(table.index, pd.RangeIndex):
        others = [c for c in table.columns if c != lot_key]
        if not others:
            msg = "the barcodes_to_lots table has no column of barcodes; index it by barcode."
            raise ValueError(msg)
        table = table.set_index(others[0])
    return table[lot_key]


def _lots_from_table(barcodes: pd.Index, table: pd.Series, path: Path) -> tuple[pd.Series, int]:
    """The lot of each cell (``NaN``: not in the table) and how many cells have none."""
    cell_lots = pd.Series(table.reindex(barcodes.astype(str)).to_numpy(), index=barcodes)
    missing = int(cell_lots.isna().sum())
    if missing == len(cell_lots):
        msg = (
            f"no barcode of {str(path)!r} is in barcodes_to_lots (file: e.g. "
            f"{barcodes[:3].tolist()}; table: e.g. {table.index[:3].tolist()}). Check that both "
            "spell barcodes the same way (e.g. the '-1' suffix)."
        )
        raise ValueError(msg)
    if missing:
        warnings.warn(
            f"read_lots: {missing} of {len(cell_lots)} cells of {str(path)!r} have no lot in "
            f"barcodes_to_lots (e.g. {cell_lots.index[cell_lots.isna()][:3].tolist()}) and are "
            "left out; add them to the table to keep them.",
            UserWarning,
            stacklevel=5,
        )
    unused = len(table) - int(table.index.isin(barcodes.astype(str)).sum())
    if unused:
        logger.info("read_lots: %d barcodes of barcodes_to_lots are not in %r", unused, str(path))
    return cell_lots, missing


def _read_all(
    lots: Mapping[str, tuple[Path, str]], orientation: str
) -> tuple[dict[str, tuple[AnnData, str]], dict[str, list[str]], dict]:
    """Lot -> (its counts, which matrix held them), lot -> gene names made unique, and info."""
    parts: dict[str, tuple[AnnData, str]] = {}
    made_unique: dict[str, list[str]] = {}
    orientations: dict[str, str] = {}
    for name, (path, fmt) in lots.items():
        part, used, duplicated, how = _read_one(name, path, fmt, orientation)
        if how:
            orientations[name] = how
        if duplicated:
            made_unique[name] = duplicated
            logger.warning(
                "read_lots: lot %r has %d gene symbols occurring more than once: %s; their "
                "later features were made unique by suffixing -1, -2, ... and their counts "
                "kept apart, not summed (see var['gene_ids'] and "
                "uns['read_lots']['genes_made_unique'])",
                name,
                len(duplicated),
                duplicated[:20],
            )
        parts[name] = (part, used)
    several = _name_by_gene_id([part for part, _ in parts.values()])
    info = {
        "lots_from": "files",
        "cells_without_lot": 0,
        "orientation": orientations,
        "symbols_with_several_ids": several,
    }
    return parts, made_unique, info


def _name_by_gene_id(parts: list[AnnData]) -> dict[str, list[str]]:
    """Name every lot's genes by one map gene id -> name; the symbols with several ids.

    Each lot makes its repeated symbols unique on its own (``TBCE``, ``TBCE-1``), so lots
    quantified with different references (one lists two ids for a symbol, the other one)
    could give one name to different ids and pool different genes' counts under it. When
    every lot has unique ``var['gene_ids']``, the names are given once over all lots, in
    the order the ids are met: an id's name is its symbol (``var['gene_symbols']``, else
    the lot's name for it), suffixed ``-1``, ``-2``, ... when another id took it. Lots
    that agree get the names they had (a lot named by Ensembl ids takes the names of the
    lot read before it, by id). Returns symbol -> its ids in naming order, for the symbols
    with more than one.
    """
    if len(parts) < 2 or not all(
        "gene_ids" in part.var.columns and part.var["gene_ids"].is_unique for part in parts
    ):
        return {}
    names: dict[str, str] = {}
    taken: set[str] = set()
    ids_of: dict[str, list[str]] = {}
    for part in parts:
        symbols = part.var.get("gene_symbols", pd.Series(part.var_names, index=part.var_names))
        for gene_id, symbol in zip(
            part.var["gene_ids"].astype(str), symbols.astype(str), strict=True
        ):
            if gene_id in names:
                continue
            name, k = symbol, 0
            while name in taken:
                k += 1
                name = f"{symbol}-{k}"
            names[gene_id] = name
            taken.add(name)
            ids_of.setdefault(symbol, []).append(gene_id)
    renamed = {}
    for lot, part in enumerate(parts):
        new = pd.Index([names[i] for i in part.var["gene_ids"].astype(str)])
        renamed[lot] = int((new != part.var_names).sum())
        part.var_names = new
    if any(renamed.values()):
        logger.warning(
            "read_lots: genes renamed so that one gene id has one name in every lot (genes "
            "renamed per lot, in the order read: %s)",
            list(renamed.values()),
        )
    several = {symbol: ids for symbol, ids in ids_of.items() if len(ids) > 1}
    if several:
        logger.warning(
            "read_lots: %d gene symbols stand for more than one gene id across the lots: %s; "
            "each id has one name in every lot (the first id met keeps the symbol, the others "
            "are suffixed -1, -2, ...), so a name never pools different ids (see "
            "uns['read_lots']['symbols_with_several_ids'])",
            len(several),
            dict(list(several.items())[:5]),
        )
    return several


def _resolve_source(source) -> dict[str, tuple[Path, str]]:
    """Map lot name -> (path, format) for a folder or a mapping; every problem is an error."""
    if isinstance(source, Mapping):
        return _mapping_source(source)
    return _folder_source(source)


def _mapping_source(source: Mapping) -> dict[str, tuple[Path, str]]:
    """Lot name -> (path, format) for a mapping lot name -> path."""
    if not source:
        msg = "the mapping lot name -> path is empty; give at least one lot."
        raise ValueError(msg)
    resolved: dict[str, tuple[Path, str]] = {}
    for lot, path in source.items():
        name = str(lot).strip()
        if not name:
            msg = f"lot name {lot!r} is empty; every lot needs a name."
            raise ValueError(msg)
        if name in resolved:
            msg = f"lot {name!r} is named twice in the mapping (as {lot!r} and another key)."
            raise ValueError(msg)
        if not isinstance(path, (str, os.PathLike)):
            msg = f"lot {name!r}: expected a path, got a {type(path).__name__}. To pool AnnData objects use `pp.pool_lots`."
            raise TypeError(msg)
        path = Path(path)
        if not path.exists():
            msg = f"lot {name!r}: {str(path)!r} does not exist."
            raise FileNotFoundError(msg)
        fmt = _detect_format(path)
        if fmt is None:
            msg = f"lot {name!r}: {str(path)!r} is not in a format read_lots reads. Accepted: {ACCEPTED_FORMATS}."
            raise ValueError(msg)
        resolved[name] = (path, fmt)
    return resolved


def _folder_source(source) -> dict[str, tuple[Path, str]]:
    """Lot name -> (path, format) for a folder whose every entry is one lot."""
    if not isinstance(source, (str, os.PathLike)):
        msg = (
            f"source must be a folder or a mapping lot name -> path, got a {type(source).__name__}. "
            "To pool AnnData objects use `pp.pool_lots`."
        )
        raise TypeError(msg)
    folder = Path(source)
    if not folder.exists():
        msg = f"{str(folder)!r} does not exist; pass the folder holding one entry per lot."
        raise FileNotFoundError(msg)
    if not folder.is_dir():
        fmt = _detect_format(folder)
        hint = (
            f" It looks like one lot ({fmt}); pass {{'lot name': path}} instead, or "
            "barcodes_to_lots= (a barcode -> lot table) if it holds many lots."
            if fmt is not None
            else f" Accepted lot formats: {ACCEPTED_FORMATS}."
        )
        msg = f"{str(folder)!r} is a file, not a folder of lots.{hint}"
        raise ValueError(msg)
    if _mtx_folder(folder) is not None or _h5_in_folder(folder) is not None:
        kind = (
            "10x matrix folder" if _mtx_folder(folder) is not None else "Cell Ranger sample folder"
        )
        msg = (
            f"{str(folder)!r} is a single {kind}, not a folder of lots; "
            "pass {'lot name': path} instead, or barcodes_to_lots= (a barcode -> lot table) "
            "if it holds many lots."
        )
        raise ValueError(msg)
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    if not entries:
        msg = f"folder {str(folder)!r} is empty; it should hold one entry per lot ({ACCEPTED_FORMATS})."
        raise ValueError(msg)
    resolved, by_name, unreadable = {}, {}, []
    for entry in entries:
        fmt = _detect_format(entry)
        if fmt is None:
            unreadable.append(entry.name)
            continue
        name = _lot_name(entry, fmt)
        by_name.setdefault(name, []).append(entry.name)
        resolved[name] = (entry, fmt)
    if unreadable:
        msg = (
            f"entries {unreadable} of folder {str(folder)!r} are not lot data. Every entry must be "
            f"{ACCEPTED_FORMATS}. Move other files out (hidden files are skipped), or pass a "
            "mapping lot name -> path."
        )
        raise ValueError(msg)
    clashes = {name: found for name, found in by_name.items() if len(found) > 1}
    if clashes:
        msg = (
            f"several entries give the same lot name: {clashes}. Keep one entry per lot, or pass a "
            "mapping lot name -> path."
        )
        raise ValueError(msg)
    return resolved


def _lot_name(path: Path, fmt: str) -> str:
    if fmt == "10x_mtx" or path.is_dir():
        return path.name
    if fmt in ("csv", "tsv"):
        name = path.name[:-3] if path.name.lower().endswith(".gz") else path.name
        return name[: name.rfind(".")]
    return path.name[: -len(".h5ad")] if fmt == "h5ad" else path.name[: -len(".h5")]


def _detect_format(path: Path) -> str | None:
    if path.is_dir():
        if _mtx_folder(path) is not None:
            return "10x_mtx"
        return "10x_h5" if _h5_in_folder(path) is not None else None
    suffix = path.name.lower()
    if suffix.endswith(".h5ad"):
        return "h5ad"
    if suffix.endswith(".h5"):
        return "10x_h5"
    if suffix.removesuffix(".gz").endswith(_TEXT_SUFFIXES):
        return _text_matrix_format(path)
    return None


def _open_text(path: Path):
    """Open a text file for reading, gunzipping a ``.gz`` one."""
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rt", newline="")
    return open(path, newline="")


def _separator(path: Path) -> str:
    """Tab or comma: the one the first line of the file holds more of."""
    try:
        with _open_text(path) as handle:
            first = handle.readline()
    except (OSError, UnicodeDecodeError, EOFError):
        first = ""
    return "\t" if first.count("\t") > first.count(",") else ","


def _text_matrix_format(path: Path) -> str | None:
    """``'csv'``/``'tsv'`` when the file looks like a count matrix (a header, a numeric row)."""
    sep = _separator(path)
    try:
        with _open_text(path) as handle:
            header, row = handle.readline(), handle.readline()
    except (OSError, UnicodeDecodeError, EOFError):
        return None
    fields = row.rstrip("\r\n").split(sep)[1:]
    if len(header.split(sep)) < 2 or not fields:
        return None
    try:
        [float(v.strip().strip('"')) for v in fields[:50]]
    except ValueError:
        return None
    return "tsv" if sep == "\t" else "csv"


def _h5_in_folder(path: Path) -> Path | None:
    """Cell Ranger's ``filtered_feature_bc_matrix.h5`` in a sample folder (or its ``outs/``)."""
    for parts in _H5_IN_FOLDER:
        candidate = path.joinpath(*parts)
        if candidate.is_file():
            return candidate
    return None


def _mtx_folder(path: Path) -> Path | None:
    """Find the folder with the 10x matrix files: ``path`` or its Cell Ranger sub-folder."""
    for parts in _MTX_SUBFOLDERS:
        candidate = path.joinpath(*parts)
        if (candidate / "matrix.mtx.gz").is_file() or (candidate / "matrix.mtx").is_file():
            return candidate
    return None


def _read_one(
    name: str, path: Path, fmt: str, orientation: str = "auto"
) -> tuple[AnnData, str, list[str], str | None]:
    """One lot's counts (CSR float32, checked), their matrix, repeated genes, orientation.

    The orientation says how a text matrix was read (``None`` for the other formats).
    """
    where = f"lot {name!r} ({str(path)!r})"
    how = None
    if fmt == "10x_mtx":
        folder = _mtx_folder(path)
        _check_mtx_files(folder, where)
    import scanpy as sc

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_DUPLICATE_NAME_WARNINGS, category=UserWarning)
        try:
            if fmt == "10x_mtx":
                part = sc.read_10x_mtx(folder, var_names="gene_symbols", make_unique=False)
            elif fmt == "10x_h5":
                part = sc.read_10x_h5(_h5_in_folder(path) if path.is_dir() else path)
            elif fmt in ("csv", "tsv"):
                part, how = _read_text_matrix(path, orientation)
            else:
                part = ad.read_h5ad(path)
        except Exception as error:
            kind = {
                "10x_mtx": "a 10x matrix folder",
                "10x_h5": "a 10x .h5 file",
                "h5ad": "an .h5ad file",
                "csv": "a count matrix as comma-separated text",
                "tsv": "a count matrix as tab-separated text",
            }[fmt]
            msg = (
                f"could not read {where} as {kind}: {type(error).__name__}: {error}. If the "
                "file is truncated or corrupt (e.g. an interrupted copy or download), copy it "
                "again from its source and compare its size or checksum with the original; "
                f"else check that it is {kind} (Cell Ranger's output, or written by anndata)."
            )
            raise ValueError(msg) from error
    if part.n_obs == 0:
        msg = f"{where} has no cells; remove it or check that Cell Ranger's output is complete."
        raise ValueError(msg)
    if part.n_vars == 0:
        msg = f"{where} has no genes (no 'Gene Expression' features)."
        raise ValueError(msg)
    if not part.obs_names.is_unique:
        duplicated = part.obs_names[part.obs_names.duplicated()].unique()[:5].tolist()
        msg = (
            f"{where} has duplicate cell barcodes (e.g. {duplicated}): one lot file must hold "
            "one sample. Split it, or load it yourself and pool with `pp.pool_lots`."
        )
        raise ValueError(msg)
    X, used, var = _raw_counts(part, where)
    X = sparse.csr_matrix(X, dtype=np.float32)
    obs = part.obs.copy()
    var = var.copy()
    if fmt in ("10x_mtx", "10x_h5") and "gene_symbols" not in var.columns:
        var["gene_symbols"] = var.index.astype(str)  # the symbols, before being made unique
    var.index, duplicated = _unique_names(var.index)
    # Keep raw counts and annotations only: per-lot embeddings, layers and uns do not pool.
    return AnnData(X=X, obs=obs, var=var), used, duplicated, how


def _read_text_matrix(path: Path, orientation: str) -> tuple[AnnData, str]:
    """A count matrix as delimited text (gzip or not), cells x genes, and how it was oriented.

    Read in row chunks straight into a sparse matrix (a dense copy of one chunk at a time).
    A value that is not a number (``NA``, an empty field, text) is an error naming it.
    """
    chunks, row_names, columns = [], [], None
    with pd.read_csv(
        path,
        sep=_separator(path),
        index_col=0,
        chunksize=_TEXT_CHUNK_ROWS,
        dtype=str,
        keep_default_na=False,  # "NA", "n/a" or an empty field is not a count: an error below
    ) as reader:
        for chunk in reader:
            columns = chunk.columns if columns is None else columns
            chunks.append(_numeric_chunk(chunk))
            row_names.extend(chunk.index.astype(str))
    if columns is None:
        msg = "the file holds a header only; a count matrix needs one row per gene or per cell."
        raise ValueError(msg)
    X = sparse.vstack(chunks, format="csr")
    rows, cols = pd.Index(row_names), _header_as_written(path, columns)
    genes_on_rows, how = _orientation(rows, cols, orientation)
    logger.info("read_lots: %r read as %s", str(path), how)
    if genes_on_rows:
        X, rows, cols = X.T.tocsr(), cols, rows
    return AnnData(X=X, obs=pd.DataFrame(index=rows), var=pd.DataFrame(index=cols)), how


def _header_as_written(path: Path, columns: pd.Index) -> pd.Index:
    """The column names as the file writes them (stripped).

    pandas renames a repeated header name (``TBCE``, ``TBCE.1``), which would hide a
    repeated gene from :func:`_unique_names` and a repeated barcode from the duplicate-cell
    check; the first line is read once more as data to get the names as written (all of
    them after the corner field, or all of them when the header is one field short, as R's
    ``write.table`` writes it).
    """
    first = pd.read_csv(
        path, sep=_separator(path), header=None, nrows=1, dtype=str, keep_default_na=False
    )
    written = [str(v).strip() for v in first.iloc[0].tolist()]
    if len(written) == len(columns) + 1:
        written = written[1:]
    if len(written) != len(columns):
        return pd.Index(columns.astype(str).str.strip())
    return pd.Index(written)


def _numeric_chunk(chunk: pd.DataFrame) -> sparse.csr_matrix:
    """Rows of a text count matrix as CSR float32; the first value that is not a number is an error."""
    try:
        return sparse.csr_matrix(chunk.to_numpy().astype(np.float32))
    except ValueError:  # find the first value that is not a number, to name it
        numbers = chunk.apply(pd.to_numeric, errors="coerce")
    bad = numbers.isna().to_numpy()
    if bad.any():
        row, column = np.argwhere(bad)[0]
        msg = (
            f"value {chunk.iat[row, column]!r} (row {chunk.index[row]!r}, column "
            f"{chunk.columns[column]!r}) is not a number; a count matrix holds counts only, "
            "with the gene and cell names in the first row and column."
        )
        raise ValueError(msg)
    return sparse.csr_matrix(numbers.to_numpy(dtype=np.float32))


def _orientation(rows: pd.Index, cols: pd.Index, orientation: str) -> tuple[bool, str]:
    """Whether the genes are the rows, and the reason in words.

    Evidence in order: Ensembl gene ids on one axis only, cell barcodes on one axis only,
    well-known gene symbols (``MT-``, ``RPS``/``RPL``, ``ACTB``, ``GAPDH``, ``B2M``,
    ``MALAT1``) on one axis only; else the longer axis is taken for genes.
    """
    if orientation != "auto":
        genes_on_rows = orientation == "genes_x_cells"
        return genes_on_rows, f"{orientation.replace('_x_', ' x ')} (as stated)"
    tests = [
        ("Ensembl gene ids", looks_like_ensembl, True),
        ("cell barcodes", lambda names: names.str.contains(_BARCODE).mean() >= 0.5, False),
        ("known gene symbols", lambda names: names.str.contains(_KNOWN_GENES).any(), True),
    ]
    for what, test, marks_genes in tests:
        on_rows, on_cols = bool(test(rows)), bool(test(cols))
        if on_rows != on_cols:
            genes_on_rows = on_rows == marks_genes
            axis = "rows" if on_rows else "columns"
            shape = "genes x cells" if genes_on_rows else "cells x genes"
            return genes_on_rows, f"{shape} (auto: {what} name the {axis})"
    genes_on_rows = len(rows) >= len(cols)
    shape = "genes x cells" if genes_on_rows else "cells x genes"
    warnings.warn(
        f"read_lots: no gene ids, barcodes or known gene symbols tell the orientation of a "
        f"{len(rows)} x {len(cols)} count matrix; read as {shape} (the longer axis as genes). "
        "Pass orientation= if that is wrong (a small gene panel has fewer genes than cells).",
        UserWarning,
        stacklevel=6,
    )
    return genes_on_rows, f"{shape} (auto: the longer axis taken for genes)"


def _raw_counts(part: AnnData, where: str) -> tuple[Any, str, pd.DataFrame]:
    """The lot's raw counts, where they were found, and their genes' ``var``.

    ``X``, else ``layers['counts']``, else ``.raw`` (scanpy's place for the data before
    normalisation; its genes may be more than ``X``'s): the first that holds non-negative
    integers. None: an error naming the file and what each place holds.
    """
    places = {
        "X": (part.X, part.var),
        f"layers[{_keys.COUNTS_LAYER!r}]": (part.layers.get(_keys.COUNTS_LAYER), part.var),
        ".raw": (None, None) if part.raw is None else (part.raw.X, part.raw.var),
    }
    found = {}
    for place, (X, var) in places.items():
        if X is None:
            found[place] = "absent"
            continue
        try:
            check_counts(X, where=place)
        except ValueError as error:
            found[place] = str(error).split(";")[0].removeprefix(f"{place} ")
            continue
        if place != "X":
            logger.info("read_lots: %s has no raw counts in X; using those in %s", where, place)
        return X, place, var
    described = "; ".join(f"{place}: {what}" for place, what in found.items())
    msg = (
        f"{where} holds no raw counts ({described}). Raw integer counts are required: "
        "io.read_lots reads X, else layers['counts'], else .raw; write the lot's counts to one "
        "of them (e.g. adata.layers['counts'] = the counts matrix) or read its Cell Ranger output."
    )
    raise ValueError(msg)


def _check_mtx_files(folder: Path, where: str) -> None:
    """Require the complete file set scanpy.read_10x_mtx needs; name what is missing."""
    present = {p.name for p in folder.iterdir()}
    files = _MTX_V3 if _MTX_V3[0] in present else _MTX_V2
    missing = [f for f in files if f not in present]
    if missing:
        msg = (
            f"{where}: the 10x matrix folder {str(folder)!r} has {files[0]} but lacks {missing}. "
            f"It needs {' + '.join(_MTX_V3)} (Cell Ranger >= 3) or {' + '.join(_MTX_V2)} "
            "(Cell Ranger 2)."
        )
        raise ValueError(msg)


def _unique_names(index: pd.Index) -> tuple[pd.Index, list[str]]:
    """Suffix repeated names ``-1``, ``-2``, ... (as anndata does); return them and the repeats."""
    names = pd.Index(index.astype(str))
    if names.is_unique:
        return names, []
    duplicated = names[names.duplicated()].unique().tolist()
    taken = set(names)
    seen: dict[str, int] = {}
    unique = []
    for name in names:
        if name not in seen:
            seen[name] = 0
            unique.append(name)
            continue
        k = seen[name]
        while True:
            k += 1
            candidate = f"{name}-{k}"
            if candidate not in taken:
                break
        seen[name] = k
        taken.add(candidate)
        unique.append(candidate)
    return pd.Index(unique), duplicated
