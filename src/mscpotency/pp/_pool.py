"""Pool per-lot AnnData objects into one population."""

from __future__ import annotations

import logging
import zlib
from collections.abc import Iterable, Mapping, Sequence

import anndata as ad
import numpy as np
import pandas as pd
from anndata import AnnData

from .. import _keys
from .._docs import doc_params
from .._provenance import record

logger = logging.getLogger("mscpotency")


@doc_params
@record("pp.pool_lots")
def pool_lots(
    lots: Mapping[str, AnnData] | Sequence[AnnData],
    *,
    lot_key: str = _keys.LOT,
    cells_per_lot: int | str | None = None,
    join: str = "inner",
    random_state: int = 0,
) -> AnnData:
    """Concatenate the cells of several lots into one AnnData.

    The study pooled about equal numbers of cells per lot, so that the pooled population
    stands for "MSC in general" rather than for the largest lots; ``cells_per_lot`` does
    that by seeded subsampling.

    Parameters
    ----------
    lots
        Lot name -> AnnData, or AnnData objects whose ``obs[lot_key]`` already names their lot.
    lot_key
        {lot_key}
        Written here for every pooled cell.
    cells_per_lot
        ``None`` keeps every cell; an integer subsamples each lot to at most that many;
        ``"min"`` subsamples every lot to the size of the smallest. Lots smaller than the
        target are kept whole.
    join
        ``"inner"`` keeps genes measured in every lot (lots that share no gene are an
        error), ``"outer"`` keeps all and fills zeros. Genes left out are reported per lot in
        ``uns['pool_lots']['genes_dropped']``.
    random_state
        {random_state}
        Each lot draws its subsample from its own stream seeded by
        ``(random_state, lot name)``, so the cells kept of a lot do not depend on the other lots.

    Returns
    -------
    One AnnData with unique cell names ``{lot}_{barcode}``, ``obs[lot_key]`` (categorical,
    in the given lot order) and ``uns['pool_lots']`` with cells kept per lot and dropped genes.
    """
    named = _name_lots(lots, lot_key)
    if not named:
        msg = "no lots given; pass a mapping lot name -> AnnData."
        raise ValueError(msg)
    empty = [name for name, a in named.items() if a.n_obs == 0]
    if empty:
        msg = f"lots {empty} have no cells."
        raise ValueError(msg)
    check_pool_options(cells_per_lot, join)
    sizes = {name: a.n_obs for name, a in named.items()}
    target = _target_size(cells_per_lot, sizes)
    if target is not None:
        _check_seed(random_state)
    parts = {name: _subsample(part, target, random_state, name) for name, part in named.items()}
    if join == "inner":
        _require_shared_genes(parts)
    pooled = _concat(parts, lot_key, join)
    _report_dropped_genes(pooled, parts, sizes, cells_per_lot, join, random_state)
    return pooled


def check_pool_options(cells_per_lot: int | str | None, join: str) -> None:
    """Check ``join`` and ``cells_per_lot`` (cheap; ``io.read_lots`` checks before reading)."""
    if join not in ("inner", "outer"):
        msg = f"join must be 'inner' or 'outer', got {join!r}"
        raise ValueError(msg)
    if not (
        cells_per_lot is None
        or cells_per_lot == "min"
        or (
            isinstance(cells_per_lot, (int, np.integer))
            and not isinstance(cells_per_lot, bool)
            and cells_per_lot > 0
        )
    ):
        msg = f"cells_per_lot must be None, 'min' or a positive integer, got {cells_per_lot!r}"
        raise ValueError(msg)


def _check_seed(random_state) -> None:
    if (
        not isinstance(random_state, (int, np.integer))
        or isinstance(random_state, bool)
        or random_state < 0
    ):
        msg = f"random_state must be a non-negative integer, got {random_state!r}"
        raise ValueError(msg)


def _subsample(part: AnnData, target: int | None, random_state: int, name: str) -> AnnData:
    """At most ``target`` cells of one lot, drawn from the lot's own seeded stream."""
    if target is None or part.n_obs <= target:
        return part
    # One stream per lot, seeded by (random_state, lot name): the cells kept of a lot
    # do not change when other lots are added, removed or reordered.
    rng = np.random.default_rng([int(random_state), zlib.crc32(name.encode())])
    chosen = np.sort(rng.choice(part.n_obs, size=target, replace=False))
    return part[chosen]


def _require_shared_genes(parts: Mapping[str, AnnData]) -> None:
    shared = set.intersection(*(set(a.var_names) for a in parts.values()))
    if not shared:
        examples = {name: a.var_names[:3].tolist() for name, a in parts.items()}
        msg = (
            f"the lots share no gene names (e.g. {examples}), so join='inner' keeps nothing. "
            "Use the same gene naming (symbols or ids) in every lot."
        )
        raise ValueError(msg)


def _concat(parts: Mapping[str, AnnData], lot_key: str, join: str) -> AnnData:
    """One AnnData of every lot's cells, named ``{lot}_{barcode}``, lots categorical in order."""
    # fill_value=0: a gene not measured in a lot has zero counts there (dense X would get NaN).
    pooled = ad.concat(
        parts, join=join, label=lot_key, index_unique="_", merge="same", fill_value=0
    )
    names = pd.Index(
        [f"{lot}_{cell}" for lot, cell in zip(pooled.obs[lot_key], _barcodes(parts), strict=True)]
    )
    if not names.is_unique:
        clashes = names[names.duplicated()].unique()[:5].tolist()
        msg = (
            f"pooled cell names {{lot}}_{{barcode}} collide (e.g. {clashes}) because a lot name plus "
            "a barcode spells another lot's name plus barcode; rename the lots."
        )
        raise ValueError(msg)
    pooled.obs_names = names
    pooled.obs[lot_key] = pd.Categorical(pooled.obs[lot_key], categories=list(parts))
    return pooled


def _report_dropped_genes(
    pooled: AnnData,
    parts: Mapping[str, AnnData],
    sizes: Mapping[str, int],
    cells_per_lot: int | str | None,
    join: str,
    random_state: int,
) -> None:
    """Write ``uns['pool_lots']`` (cells before/kept, genes the join left out) and warn."""
    all_genes = pd.Index(sorted(set().union(*(set(a.var_names) for a in parts.values()))))
    genes_dropped = {
        name: sorted(set(all_genes) - set(pooled.var_names) & set(a.var_names))
        for name, a in parts.items()
    }
    genes_dropped = {k: v for k, v in genes_dropped.items() if v}
    if genes_dropped:
        n_dropped = len(all_genes) - pooled.n_vars
        logger.warning(
            "pool_lots: %d genes not measured in every lot were left out (join='inner')", n_dropped
        )
    pooled.uns["pool_lots"] = {
        "cells_before": {k: int(v) for k, v in sizes.items()},
        "cells_kept": {k: int(a.n_obs) for k, a in parts.items()},
        "genes_dropped": genes_dropped,
        "params": {"cells_per_lot": cells_per_lot, "join": join, "random_state": random_state},
    }


def _barcodes(parts: Mapping[str, AnnData]) -> list[str]:
    return [str(name) for a in parts.values() for name in a.obs_names]


def _name_lots(lots, lot_key: str) -> dict[str, AnnData]:
    if isinstance(lots, AnnData):
        msg = (
            "pool_lots takes several lots (a mapping lot name -> AnnData, or a list of AnnData), "
            "got one AnnData. Split it by lot first, e.g. "
            "{lot: adata[adata.obs['lot'] == lot] for lot in adata.obs['lot'].unique()}."
        )
        raise TypeError(msg)
    if isinstance(lots, (str, bytes)) or hasattr(lots, "__fspath__"):
        msg = f"pool_lots takes AnnData objects, got the path {lots!r}; read files with `io.read_lots`."
        raise TypeError(msg)
    if isinstance(lots, Mapping):
        named = {str(k): v for k, v in lots.items()}
        if len(named) < len(lots):
            msg = f"lot names {list(lots)} are not unique once written as text"
            raise ValueError(msg)
    elif not isinstance(lots, Iterable):
        msg = f"lots must be a mapping lot name -> AnnData or a list of AnnData, got a {type(lots).__name__}"
        raise TypeError(msg)
    else:
        named = {}
        for i, part in enumerate(lots):
            if not isinstance(part, AnnData):
                msg = f"lot #{i} is a {type(part).__name__}, not an AnnData"
                raise TypeError(msg)
            if part.n_obs == 0:
                msg = f"lot #{i} has no cells."
                raise ValueError(msg)
            if lot_key not in part.obs or part.obs[lot_key].nunique() != 1:
                msg = (
                    f"lot #{i} has no single value in obs[{lot_key!r}]; pass a mapping "
                    "lot name -> AnnData instead."
                )
                raise ValueError(msg)
            name = str(part.obs[lot_key].iloc[0])
            if name in named:
                msg = f"lot {name!r} is given twice"
                raise ValueError(msg)
            named[name] = part
    for name, part in named.items():
        if not isinstance(part, AnnData):
            msg = f"lot {name!r} is a {type(part).__name__}, not an AnnData"
            raise TypeError(msg)
        if not part.obs_names.is_unique:
            msg = f"lot {name!r} has duplicate cell barcodes; call .obs_names_make_unique() on it first."
            raise ValueError(msg)
        if not part.var_names.is_unique:
            msg = (
                f"lot {name!r} has duplicate gene names; call .var_names_make_unique() on it first."
            )
            raise ValueError(msg)
    return named


def _target_size(cells_per_lot: int | str | None, sizes: Mapping[str, int]) -> int | None:
    """Cells to keep per lot (``cells_per_lot`` already checked), warning about small lots."""
    if cells_per_lot is None:
        return None
    if cells_per_lot == "min":
        return min(sizes.values())
    small = {k: v for k, v in sizes.items() if v < cells_per_lot}
    if small:
        logger.warning(
            "pool_lots: lots %s have fewer than %d cells and are kept whole",
            small,
            cells_per_lot,
        )
    return int(cells_per_lot)
