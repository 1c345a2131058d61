"""Open per-lot ``.h5ad`` files lazily as one Dask-backed AnnData (the out-of-core path)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from .. import _dask, _keys
from .._docs import doc_params
from .._provenance import record
from .._validate import check_counts, unreadable_file
from ..pp._pool import merged_var_columns, warn_var_disagreements
from ._read import _unique_names

logger = logging.getLogger("mscpotency")

#: Cells per block when reading lots lazily.
DEFAULT_CHUNK_CELLS = 10_000


@dataclass
class _LazyLot:
    """One lot's annotations, its counts as a lazy array, and where the counts were found."""

    obs: pd.DataFrame
    var: pd.DataFrame
    block: Any
    count_key: str


@doc_params
@record("io.read_lots_lazy")
def read_lots_lazy(
    source: str | os.PathLike | Mapping[str, str | os.PathLike],
    *,
    lot_key: str = _keys.LOT,
    chunk_cells: int = DEFAULT_CHUNK_CELLS,
) -> AnnData:
    """Open per-lot ``.h5ad`` files lazily as one Dask-backed AnnData, chunked along cells.

    Only the cell and gene annotations are read; the counts stay on disk and are read
    block by block (``anndata.experimental.read_elem_lazy``) when a computation needs
    them, so the pooled matrix may be larger than memory. Pass the result to
    :func:`mscpotency.pp.qc` and :func:`mscpotency.pp.preprocess` as usual (see
    ``docs/scale.md``).

    Parameters
    ----------
    source
        A folder of ``.h5ad`` files, one per lot (the lot is named after the file without
        its extension; hidden files are skipped), or a mapping lot name -> path.
    lot_key
        {lot_key}
        Written here for every cell.
    chunk_cells
        Cells per Dask block (a lot smaller than this is one block).

    Returns
    -------
    AnnData with ``X`` a Dask array of CSR blocks (the raw counts: each file's
    ``layers['counts']`` if it has one, else its ``X``), cell names ``{lot}_{cell}``, the
    files' ``var`` columns (gene symbols, ids: a text annotation the files disagree on keeps
    the first file's value, with a warning; a numeric one is left out), and

    `adata.obs[lot_key]` : categorical
        The lot of each cell, lots in the order read (a folder: sorted by name).
    `adata.uns['read_lots_lazy']` : dict
        ``'sources'`` (lot -> path), ``'count_source'`` (lot -> ``'X'`` or
        ``"layers['counts']"``), ``'genes_made_unique'`` (gene names that occurred more
        than once and were suffixed ``-1``, ``-2``, ... as :func:`mscpotency.io.read_lots`
        does, counts kept apart), ``'var_disagreements'`` (column -> gene -> lot -> value,
        as :func:`mscpotency.pp.pool_lots`), ``'params'``.
    """
    da = _dask.require_dask()
    _check_chunk_cells(chunk_cells)
    sources = _lazy_sources(source)
    lots = _open_lots(sources, chunk_cells)
    X = da.concatenate([part.block for part in lots.values()], axis=0)
    var = next(iter(lots.values())).var
    genes, made_unique = _unique_names(var.index)
    if made_unique:
        logger.warning(
            "read_lots_lazy: %d gene names occur more than once: %s; their later features were "
            "made unique by suffixing -1, -2, ... and their counts kept apart, not summed "
            "(see uns['read_lots_lazy']['genes_made_unique'])",
            len(made_unique),
            made_unique[:20],
        )
    var, disagreements = _shared_var(lots, genes)
    adata = AnnData(X=X, obs=_pooled_obs(lots, lot_key), var=var)
    adata.uns["read_lots_lazy"] = {
        "sources": {lot: str(path) for lot, path in sources.items()},
        "count_source": {
            lot: "X" if part.count_key == "X" else f"layers[{_keys.COUNTS_LAYER!r}]"
            for lot, part in lots.items()
        },
        "genes_made_unique": made_unique,
        "var_disagreements": disagreements,
        "params": {"lot_key": lot_key, "chunk_cells": int(chunk_cells)},
    }
    return adata


def _shared_var(
    lots: Mapping[str, _LazyLot], genes: pd.Index
) -> tuple[pd.DataFrame, dict[str, dict]]:
    """The lots' gene annotations (e.g. ``gene_symbols``, ``gene_ids``), as ``pp.pool_lots``.

    A text annotation the lots disagree on keeps the first lot's value, with a warning (one
    gene name for different gene ids pools different genes' counts); a numeric column they
    disagree on is left out. Also the disagreements (column -> gene -> lot -> value).
    """
    frames = {}
    for lot, part in lots.items():
        frame = part.var.copy()
        frame.index = genes
        frames[lot] = frame
    columns = list(dict.fromkeys(c for frame in frames.values() for c in frame.columns))
    var, disagreements = merged_var_columns(frames, genes, columns)
    warn_var_disagreements(disagreements, "read_lots_lazy")
    return var, disagreements


def _check_chunk_cells(chunk_cells) -> None:
    if (
        not isinstance(chunk_cells, (int, np.integer))
        or isinstance(chunk_cells, bool)
        or chunk_cells < 1
    ):
        msg = f"chunk_cells must be a positive integer, got {chunk_cells!r}"
        raise ValueError(msg)


def _lazy_sources(source) -> dict[str, Path]:
    """Lot name -> ``.h5ad`` path, for a folder or a mapping; every problem is an error."""
    if isinstance(source, Mapping):
        if not source:
            msg = "the mapping lot name -> path is empty; give at least one lot."
            raise ValueError(msg)
        lots = {str(lot): Path(path) for lot, path in source.items()}
    else:
        folder = Path(source)
        if not folder.is_dir():
            msg = f"{str(folder)!r} is not a folder of per-lot .h5ad files; pass the folder or a mapping lot -> path."
            raise ValueError(msg)
        lots = {p.stem: p for p in sorted(folder.glob("*.h5ad")) if not p.name.startswith(".")}
        if not lots:
            msg = f"folder {str(folder)!r} holds no .h5ad files (one per lot is expected)."
            raise ValueError(msg)
    for lot, path in lots.items():
        if not path.is_file():
            msg = f"lot {lot!r}: {str(path)!r} does not exist."
            raise FileNotFoundError(msg)
        if path.suffix != ".h5ad":
            msg = f"lot {lot!r}: {str(path)!r} is not an .h5ad file; the lazy reader reads .h5ad only."
            raise ValueError(msg)
    return lots


def _open_lot(lot: str, path: Path, chunk_cells: int) -> _LazyLot:
    """Read one lot's annotations and wrap its CSR counts in a lazy array (nothing else read)."""
    import h5py
    from anndata.experimental import read_elem_lazy
    from anndata.io import read_elem

    # the lazy blocks reopen the file by path when they are computed
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise ValueError(unreadable_file(path, f"lot {lot!r}, an .h5ad file", error)) from error
    with handle:
        try:
            obs = read_elem(handle["obs"])
            var = read_elem(handle["var"])
        except (OSError, KeyError) as error:
            what = f"lot {lot!r}, an .h5ad file: its obs and var"
            raise ValueError(unreadable_file(path, what, error)) from error
        has_counts = "layers" in handle and _keys.COUNTS_LAYER in handle["layers"]
        key = "layers/counts" if has_counts else "X"
        element = handle[key]
        encoding = element.attrs.get("encoding-type", "a dense array")
        if isinstance(element, h5py.Dataset) or encoding != "csr_matrix":
            msg = (
                f"lot {lot!r} ({str(path)!r}): {key} is stored as {encoding!r}; the lazy reader "
                "needs CSR (write it with adata.X = scipy.sparse.csr_matrix(adata.X)) or use `io.read_lots`."
            )
            raise ValueError(msg)
        if len(obs) == 0:
            msg = f"lot {lot!r} ({str(path)!r}) has no cells; remove it."
            raise ValueError(msg)
        block = read_elem_lazy(element, chunks=(min(chunk_cells, len(obs)), len(var)))
    # every lot's first block (pp.qc checks the pooled matrix's first block only, which is
    # the first lot's): an analysed file among raw ones is an error naming it
    check_counts(
        block,
        where=f"{key} of lot {lot!r} ({str(path)!r}, its first {block.chunks[0][0]} cells)",
        advice="the lazy reader reads layers['counts'], else X; write the lot's counts there",
    )
    return _LazyLot(obs=obs, var=var, block=block, count_key=key)


def _open_lots(sources: Mapping[str, Path], chunk_cells: int) -> dict[str, _LazyLot]:
    """Open every lot in turn; each must have the first lot's genes, in its order."""
    lots: dict[str, _LazyLot] = {}
    for lot, path in sources.items():
        part = _open_lot(lot, path, chunk_cells)
        if lots:
            first_lot, first = next(iter(lots.items()))
            if not part.var.index.equals(first.var.index):
                msg = (
                    f"lot {lot!r} has other genes (or another gene order) than lot {first_lot!r}: the "
                    "lazy reader needs one gene list; harmonise the files or use `io.read_lots` (join=)."
                )
                raise ValueError(msg)
        lots[lot] = part
    return lots


def _pooled_obs(lots: Mapping[str, _LazyLot], lot_key: str) -> pd.DataFrame:
    """The cells of every lot, named ``{lot}_{cell}``, with ``obs[lot_key]`` and text as categories."""
    parts = []
    for lot, part in lots.items():
        obs = part.obs.copy()
        obs.index = pd.Index([f"{lot}_{cell}" for cell in obs.index])
        obs[lot_key] = lot
        parts.append(obs)
    obs = pd.concat(parts)
    obs[lot_key] = pd.Categorical(obs[lot_key], categories=list(lots))
    for column in obs.columns:
        if column != lot_key and obs[column].dtype == object:
            obs[column] = obs[column].astype("category")
    if not obs.index.is_unique:
        duplicated = obs.index[obs.index.duplicated()].unique()[:5].tolist()
        msg = f"cell names repeat within a lot (e.g. {duplicated}); make them unique in the files."
        raise ValueError(msg)
    return obs
