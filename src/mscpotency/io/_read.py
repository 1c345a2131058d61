"""Read per-lot single-cell count data (10x mtx folders, 10x ``.h5``, ``.h5ad``) into one AnnData."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import anndata as ad
import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from .. import _keys
from .._docs import doc_params
from .._provenance import record
from .._validate import check_counts
from ..pp._pool import MIN_CELLS_PER_LOT, check_pool_options, pool_lots

logger = logging.getLogger("mscpotency")

#: The formats a lot may come in, as said in error messages.
ACCEPTED_FORMATS = (
    "a 10x matrix folder (matrix.mtx.gz + features.tsv.gz + barcodes.tsv.gz, or the "
    "Cell Ranger v2 matrix.mtx + genes.tsv + barcodes.tsv; the folder itself or its "
    "filtered_feature_bc_matrix/ or outs/filtered_feature_bc_matrix/), "
    "a 10x '.h5' file, or an '.h5ad' file"
)

# The two file sets scanpy.read_10x_mtx reads: Cell Ranger >= 3 (gzipped) and Cell Ranger 2.
_MTX_V3 = ("matrix.mtx.gz", "features.tsv.gz", "barcodes.tsv.gz")
_MTX_V2 = ("matrix.mtx", "genes.tsv", "barcodes.tsv")
_MTX_SUBFOLDERS = ((), ("filtered_feature_bc_matrix",), ("outs", "filtered_feature_bc_matrix"))

# AnnData warns while a reader builds an object with duplicate names; read_lots makes the
# gene names unique itself (and reports it) and rejects duplicate barcodes with an error.
_DUPLICATE_NAME_WARNINGS = r"(Variable|Observation) names are not unique"


@doc_params
@record("io.read_lots")
def read_lots(
    source: str | os.PathLike | Mapping[str, str | os.PathLike],
    *,
    lot_key: str = _keys.LOT,
    cells_per_lot: int | str | None = None,
    min_cells_per_lot: int = MIN_CELLS_PER_LOT,
    small_lots: Literal["warn", "drop", "error"] = "warn",
    join: str = "inner",
    random_state: int = 0,
) -> AnnData:
    """Read the raw counts of several lots and pool them into one AnnData.

    Each lot is one 10x matrix folder, one 10x ``.h5`` file or one ``.h5ad`` file. Gene
    symbols become the gene names and the 10x gene ids are kept in ``var['gene_ids']``.
    A symbol that occurs more than once in a lot (10x maps several ids to one symbol, e.g.
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
        extension; hidden entries, whose name starts with ``.``, are skipped), or a mapping
        lot name -> path of that lot's data.
    lot_key
        {lot_key}
        Written here for every cell.
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
        ``"inner"`` keeps the genes measured in every lot, ``"outer"`` keeps all and fills
        zeros. Genes left out are reported in ``uns['pool_lots']['genes_dropped']``.
    random_state
        {random_state}
        Here: of the subsampling.

    Returns
    -------
    One AnnData of raw counts (cells x genes, ``X`` sparse float32) with unique cell names
    ``{lot}_{barcode}``, and

    `adata.obs[lot_key]` : categorical
        The lot of each cell, lots in the order read (a folder: sorted by name).
    `adata.var['gene_ids']`
        10x gene ids, where every lot has the same id for a gene.
    `adata.uns['read_lots']` : dict
        ``'sources'`` (lot -> path), ``'formats'`` (lot -> ``'10x_mtx'``, ``'10x_h5'`` or
        ``'h5ad'``), ``'count_source'`` (lot -> ``'X'`` or ``"layers['counts']"``),
        ``'genes_made_unique'`` (lot -> gene symbols that occurred more than once and were
        suffixed ``-1``, ``-2``, ...), ``'params'``.
    `adata.uns['pool_lots']` : dict
        Cells before/kept/removed per lot, lots left out, genes dropped by the join.
    `adata.uns['mscpotency']['log']`
        The provenance entry of this call.
    """
    # Cheap option checks before reading what may be gigabytes (pool_lots checks them too).
    check_pool_options(cells_per_lot, join, min_cells_per_lot, small_lots)
    lots = _resolve_source(source)
    parts, made_unique = _read_all(lots)
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
        "params": {
            "lot_key": lot_key,
            "cells_per_lot": cells_per_lot,
            "min_cells_per_lot": int(min_cells_per_lot),
            "small_lots": small_lots,
            "join": join,
            "random_state": random_state,
        },
    }
    logger.info("read_lots: %d lots, %d cells, %d genes", len(parts), pooled.n_obs, pooled.n_vars)
    return pooled


def _read_all(
    lots: Mapping[str, tuple[Path, str]],
) -> tuple[dict[str, tuple[AnnData, str]], dict[str, list[str]]]:
    """Lot -> (its counts, which matrix held them), and lot -> gene names made unique."""
    parts: dict[str, tuple[AnnData, str]] = {}
    made_unique: dict[str, list[str]] = {}
    for name, (path, fmt) in lots.items():
        part, used, duplicated = _read_one(name, path, fmt)
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
    return parts, made_unique


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
            f" It looks like one lot ({fmt}); pass {{'lot name': path}} instead."
            if fmt is not None
            else f" Accepted lot formats: {ACCEPTED_FORMATS}."
        )
        msg = f"{str(folder)!r} is a file, not a folder of lots.{hint}"
        raise ValueError(msg)
    if _mtx_folder(folder) is not None:
        msg = (
            f"{str(folder)!r} is a single 10x matrix folder, not a folder of lots; "
            "pass {'lot name': path} instead."
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
    if fmt == "10x_mtx":
        return path.name
    return path.name[: -len(".h5ad")] if fmt == "h5ad" else path.name[: -len(".h5")]


def _detect_format(path: Path) -> str | None:
    if path.is_dir():
        return "10x_mtx" if _mtx_folder(path) is not None else None
    suffix = path.name.lower()
    if suffix.endswith(".h5ad"):
        return "h5ad"
    if suffix.endswith(".h5"):
        return "10x_h5"
    return None


def _mtx_folder(path: Path) -> Path | None:
    """Find the folder with the 10x matrix files: ``path`` or its Cell Ranger sub-folder."""
    for parts in _MTX_SUBFOLDERS:
        candidate = path.joinpath(*parts)
        if (candidate / "matrix.mtx.gz").is_file() or (candidate / "matrix.mtx").is_file():
            return candidate
    return None


def _read_one(name: str, path: Path, fmt: str) -> tuple[AnnData, str, list[str]]:
    """Read one lot's raw counts as CSR float32, checked; which matrix held them; repeated genes."""
    where = f"lot {name!r} ({str(path)!r})"
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
                part = sc.read_10x_h5(path)
            else:
                part = ad.read_h5ad(path)
        except Exception as error:
            kind = {
                "10x_mtx": "a 10x matrix folder",
                "10x_h5": "a 10x .h5 file",
                "h5ad": "an .h5ad file",
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
    X, used = part.X, "X"
    try:
        check_counts(X, where=f"X of {where}")
    except ValueError:
        counts = part.layers[_keys.COUNTS_LAYER] if _keys.COUNTS_LAYER in part.layers else None
        if counts is None or not _is_counts(counts):
            raise
        X, used = counts, f"layers[{_keys.COUNTS_LAYER!r}]"
        logger.info("read_lots: %s has normalised X; using its raw counts in %s", where, used)
    X = sparse.csr_matrix(X, dtype=np.float32)
    obs = part.obs.copy()
    var = part.var.copy()
    var.index, duplicated = _unique_names(var.index)
    # Keep raw counts and annotations only: per-lot embeddings, layers and uns do not pool.
    return AnnData(X=X, obs=obs, var=var), used, duplicated


def _is_counts(X) -> bool:
    try:
        check_counts(X, where="layer")
    except ValueError:
        return False
    return True


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
