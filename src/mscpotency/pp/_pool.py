"""Pool per-lot AnnData objects into one population."""

from __future__ import annotations

import logging
import re
import warnings
import zlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

import anndata as ad
import numpy as np
import pandas as pd
from anndata import AnnData

from .. import _keys
from .._docs import doc_params
from .._provenance import record
from .._validate import SMALL_LOT_EFFECT

logger = logging.getLogger("mscpotency")

#: Default smallest lot ``pp.pool_lots`` and ``pp.qc`` accept without a warning.
MIN_CELLS_PER_LOT = 20


@doc_params
@record("pp.pool_lots")
def pool_lots(
    lots: Mapping[str, AnnData] | Sequence[AnnData],
    *,
    lot_key: str = _keys.LOT,
    cells_per_lot: int | str | None = None,
    min_cells_per_lot: int = MIN_CELLS_PER_LOT,
    small_lots: Literal["warn", "drop", "error"] = "warn",
    join: Literal["inner", "outer"] = "inner",
    random_state: int = 0,
) -> AnnData:
    """Concatenate the cells of several lots into one AnnData.

    The study pooled about equal numbers of cells per lot, so that the pooled population
    stands for "MSC in general" rather than for the largest lots; ``cells_per_lot`` does
    that by seeded subsampling. What subsampling removes is reported per lot (in
    ``uns['pool_lots']`` and as a logged warning), and ``cells_per_lot="min"`` refuses to
    bring every lot down to a lot smaller than ``min_cells_per_lot``.

    Each lot's genes must have unique names: a lot with repeated gene names is refused,
    naming the genes (make them unique with ``adata.var_names_make_unique()``, which
    :func:`mscpotency.io.read_lots` does for you and reports, or sum them yourself).

    Parameters
    ----------
    lots
        Lot name -> AnnData, or AnnData objects whose ``obs[lot_key]`` already names their lot.
    lot_key
        {lot_key}
        Written here for every pooled cell.
    cells_per_lot
        ``None`` keeps every cell; an integer subsamples each lot to at most that many;
        ``"min"`` subsamples every lot to the size of the smallest, which must have at least
        ``min_cells_per_lot`` cells (else an error names it: leave it out with
        ``small_lots="drop"``, give an integer, or lower ``min_cells_per_lot`` to accept
        it). Lots smaller than the target are kept whole.
    min_cells_per_lot
        {min_cells_per_lot}
        Here: lots with fewer cells are handled by ``small_lots``, and ``"min"`` may not
        subsample below it. The default, 20, flags lots that are broken rather than small
        (a fraction of 20 cells moves in steps of 5 percentage points);
        :func:`mscpotency.tl.lot_fractions` warns again below 50 cells after QC.
    small_lots
        What to do with lots of fewer than ``min_cells_per_lot`` cells: ``"warn"`` keeps
        them whole and warns, saying how they enter each statistic; ``"drop"`` leaves them
        out (reported in ``uns['pool_lots']['lots_dropped']``); ``"error"`` refuses.
    join
        ``"inner"`` keeps genes measured in every lot (lots that share no gene are an
        error); genes left out are reported per lot in ``uns['pool_lots']['genes_dropped']``
        and in a logged warning. ``"outer"`` keeps every gene of every lot and gives a lot
        zero counts for the genes it did not measure (right for lots measured on one
        platform whose annotations differ, wrong for panels that did not measure a gene);
        the genes added to each lot are reported in ``uns['pool_lots']['genes_added']``
        and in a logged warning.
    random_state
        {random_state}
        Each lot draws its subsample from its own stream seeded by
        ``(random_state, lot name)``, so the cells kept of a lot do not depend on the other lots.

    Returns
    -------
    One AnnData with unique cell names ``{lot}_{barcode}``, ``obs[lot_key]`` (categorical,
    in the given lot order) and ``uns['pool_lots']``: ``'cells_before'``, ``'cells_kept'``
    and ``'cells_removed'`` (lot -> cells; a dropped lot keeps 0), ``'lots_dropped'`` (lot
    -> cells, by ``small_lots="drop"``), ``'genes_dropped'`` (lot -> genes the join left
    out), ``'genes_added'`` (lot -> genes ``join="outer"`` added with zero counts) and
    ``'var_disagreements'`` (``var`` column -> gene -> lot -> value, below) and
    ``'params'``. Each gene's ``var`` annotations are those of the first lot that measured
    it. A text column (gene ids, ``gene_symbols``) is kept even where lots disagree on a
    gene, with a warning: the same gene name standing for different gene ids in different
    lots pools different genes' counts. A numeric column the lots disagree on (a per-lot
    statistic), or a text column they disagree on in most genes (a per-lot note), is left
    out, with a logged warning.
    """
    named = _name_lots(lots, lot_key)
    if not named:
        msg = "no lots given; pass a mapping lot name -> AnnData."
        raise ValueError(msg)
    empty = [name for name, a in named.items() if a.n_obs == 0]
    if empty:
        msg = f"lots {empty} have no cells."
        raise ValueError(msg)
    check_pool_options(cells_per_lot, join, min_cells_per_lot, small_lots)
    sizes = {name: a.n_obs for name, a in named.items()}
    small = {name: n for name, n in sizes.items() if n < min_cells_per_lot}
    dropped = _apply_small_lot_rule(small, sizes, min_cells_per_lot, small_lots)
    named = {name: a for name, a in named.items() if name not in dropped}
    target = _target_size(cells_per_lot, {k: sizes[k] for k in named}, min_cells_per_lot)
    if target is not None:
        _check_seed(random_state)
    parts = {name: _subsample(part, target, random_state, name) for name, part in named.items()}
    if join == "inner":
        _require_shared_genes(parts)
    pooled, disagreements = _concat(parts, lot_key, join)
    params = {
        "cells_per_lot": cells_per_lot,
        "min_cells_per_lot": int(min_cells_per_lot),
        "small_lots": small_lots,
        "join": join,
        "random_state": random_state,
    }
    _report(pooled, parts, sizes, dropped, join, params)
    pooled.uns["pool_lots"]["var_disagreements"] = disagreements
    warn_var_disagreements(disagreements, "pool_lots")
    _warn_removed(pooled.uns["pool_lots"], target, small, small_lots, min_cells_per_lot)
    return pooled


def check_pool_options(
    cells_per_lot: int | str | None,
    join: str,
    min_cells_per_lot: int = MIN_CELLS_PER_LOT,
    small_lots: str = "warn",
) -> None:
    """Check the options (cheap; ``io.read_lots`` checks them before reading)."""
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


def _apply_small_lot_rule(
    small: Mapping[str, int], sizes: Mapping[str, int], minimum: int, rule: str
) -> dict[str, int]:
    """The lots to leave out (``rule="drop"``); ``"error"`` refuses small lots."""
    if not small or rule == "warn":
        return {}
    if rule == "error":
        msg = (
            f"lots {dict(small)} have fewer than min_cells_per_lot={minimum} cells "
            "(small_lots='error'). Leave them out (small_lots='drop'), keep them with a "
            "warning (small_lots='warn'), or lower min_cells_per_lot."
        )
        raise ValueError(msg)
    if len(small) == len(sizes):
        msg = (
            f"every lot has fewer than min_cells_per_lot={minimum} cells ({dict(small)}), "
            "so small_lots='drop' would leave nothing; lower min_cells_per_lot."
        )
        raise ValueError(msg)
    logger.warning(
        "pool_lots: left out lots %s with fewer than %d cells (small_lots='drop')",
        dict(small),
        minimum,
    )
    return dict(small)


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


def _concat(
    parts: Mapping[str, AnnData], lot_key: str, join: str
) -> tuple[AnnData, dict[str, dict]]:
    """One AnnData of every lot's cells, named ``{lot}_{barcode}``, lots categorical in order.

    Also the gene annotations the lots disagree on (:func:`merged_var_columns`).
    """
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
    return pooled, _keep_var_columns(pooled, parts)


def _keep_var_columns(pooled: AnnData, parts: Mapping[str, AnnData]) -> dict[str, dict]:
    """Restore the ``var`` columns of the lots; return the gene annotations they disagree on.

    ``anndata.concat(merge="same")`` drops a column when a lot lacks some genes (an outer
    join) or when lots disagree on one gene, so gene symbols and ids would be lost exactly
    where lots differ (and with the symbols, ``pp.qc``'s mitochondrial filter).
    """
    names = {c for a in parts.values() for c in a.var.columns} - set(pooled.var.columns)
    frames = {name: a.var for name, a in parts.items()}
    merged, disagreements = merged_var_columns(frames, pooled.var_names, sorted(names, key=str))
    for column in merged.columns:
        pooled.var[column] = merged[column]
    return disagreements


def merged_var_columns(
    frames: Mapping[str, pd.DataFrame], genes: pd.Index, columns: Iterable
) -> tuple[pd.DataFrame, dict[str, dict]]:
    """The lots' ``var`` columns over ``genes``, and where text annotations disagree.

    Each gene takes the value of the first lot that measured it. A column whose lots agree
    on every gene is kept. A text column (gene ids, symbols) that they disagree on in some
    genes is kept too, and the disagreement is returned (column -> gene -> lot -> value;
    Ensembl ids that differ only in their ``.version`` agree): one name that stands for
    different gene ids in different lots pools different genes' counts, which the caller
    must say. A numeric column that disagrees (a per-lot statistic), or a text column that
    disagrees in more than half of the genes two lots annotate (a per-lot note), is left
    out, with a logged warning.
    """
    merged, disagreements = {}, {}
    for column in columns:
        present = {lot: v[column] for lot, v in frames.items() if column in v.columns}
        stacked = pd.concat(
            {lot: values.astype(object).reindex(genes) for lot, values in present.items()}, axis=1
        )
        text = all(_is_text(values) for values in present.values())
        compared = stacked.map(_without_version) if text else stacked
        differs = (compared.nunique(axis=1, dropna=True) > 1).to_numpy()
        shared = int((stacked.notna().sum(axis=1) > 1).sum())  # genes two lots annotate
        if differs.any() and (not text or differs.sum() > shared / 2):
            logger.warning(
                "pooling lots: var[%r] differs between them in %d of %d genes and is left out "
                "(a per-lot statistic or note, not one annotation of the genes)",
                column,
                int(differs.sum()),
                shared,
            )
            continue
        table = stacked.to_numpy(dtype=object)
        first = np.argmax(~pd.isna(table), axis=1)  # the first lot that measured the gene
        merged[column] = pd.Series(table[np.arange(len(table)), first], index=genes).infer_objects()
        if differs.any():
            disagreements[str(column)] = {
                str(gene): {str(lot): value for lot, value in row.dropna().items()}
                for gene, row in stacked[differs].iterrows()
            }
    return pd.DataFrame(merged, index=genes), disagreements


def _is_text(values: pd.Series) -> bool:
    return (
        pd.api.types.is_object_dtype(values)
        or pd.api.types.is_string_dtype(values)
        or (
            isinstance(values.dtype, pd.CategoricalDtype)
            and pd.api.types.is_object_dtype(values.cat.categories)
        )
    )


_ENSEMBL_VERSION = re.compile(r"^(ENS[A-Z]*\d{6,})\.\d+$")


def _without_version(value):
    """An Ensembl id without its ``.version`` (other values as they are)."""
    if isinstance(value, str):
        match = _ENSEMBL_VERSION.match(value)
        return match.group(1) if match else value
    return value


def warn_var_disagreements(disagreements: Mapping[str, dict], caller: str) -> None:
    """Warn of gene annotations the lots disagree on (kept as the first lot has them)."""
    for column, genes in disagreements.items():
        examples = "; ".join(
            f"{gene}: " + ", ".join(f"{lot} {value!r}" for lot, value in values.items())
            for gene, values in list(genes.items())[:3]
        )
        consequence = (
            " One gene name then holds different genes' counts in different lots (e.g. Cell "
            "Ranger references of different versions map a symbol to other ids): pool the "
            "lots by gene id (var_names from var['gene_ids']) or quantify them with one "
            "reference."
            if "id" in column.lower()
            else ""
        )
        warnings.warn(
            f"{caller}: the lots disagree on var[{column!r}] for {len(genes)} genes ({examples}); "
            f"the column keeps the first lot's value for each gene.{consequence} The genes are "
            f"listed in uns[{caller!r}]['var_disagreements'].",
            UserWarning,
            stacklevel=4,
        )


def _report(
    pooled: AnnData,
    parts: Mapping[str, AnnData],
    sizes: Mapping[str, int],
    dropped: Mapping[str, int],
    join: str,
    params: dict,
) -> None:
    """Write ``uns['pool_lots']`` (cells before/kept/removed, lots and genes left out)."""
    all_genes = pd.Index(sorted(set().union(*(set(a.var_names) for a in parts.values()))))
    genes_dropped = {
        name: sorted(set(all_genes) - set(pooled.var_names) & set(a.var_names))
        for name, a in parts.items()
    }
    genes_dropped = {k: v for k, v in genes_dropped.items() if v}
    if genes_dropped:
        n_dropped = len(all_genes) - pooled.n_vars
        logger.warning(
            "pool_lots: %d genes not measured in every lot were left out (join=%r); per lot: "
            "%s. To keep them with zero counts where a lot lacks them, pass join='outer'",
            n_dropped,
            join,
            {k: len(v) for k, v in genes_dropped.items()},
        )
    genes_added = {
        name: sorted(set(pooled.var_names) - set(a.var_names)) for name, a in parts.items()
    }
    genes_added = {k: v for k, v in genes_added.items() if v}
    if genes_added:
        logger.warning(
            "pool_lots: join='outer' added genes a lot did not measure, with zero counts; "
            "genes added per lot: %s (see uns['pool_lots']['genes_added'])",
            {k: len(v) for k, v in genes_added.items()},
        )
    kept = {k: int(parts[k].n_obs) if k in parts else 0 for k in sizes}
    pooled.uns["pool_lots"] = {
        "cells_before": {k: int(v) for k, v in sizes.items()},
        "cells_kept": kept,
        "cells_removed": {k: int(sizes[k]) - kept[k] for k in sizes},
        "lots_dropped": {k: int(v) for k, v in dropped.items()},
        "genes_dropped": genes_dropped,
        "genes_added": genes_added,
        "params": params,
    }


def _warn_removed(
    report: Mapping, target: int | None, small: Mapping[str, int], rule: str, minimum: int
) -> None:
    """Say what subsampling removed per lot (logged), and warn about small lots kept whole."""
    removed = {
        k: v for k, v in report["cells_removed"].items() if v and k not in report["lots_dropped"]
    }
    if removed:
        total = sum(report["cells_before"].values())
        n_removed = sum(removed.values())
        logger.warning(
            "pool_lots: subsampling to %d cells per lot removed %d of %d cells (%.0f%%); "
            "per lot: %s (see uns['pool_lots']['cells_removed'])",
            target,
            n_removed,
            total,
            100 * n_removed / total,
            removed,
        )
    if small and rule == "warn":
        warnings.warn(
            f"pool_lots: lots {dict(small)} have fewer than min_cells_per_lot={minimum} cells "
            f"and are kept whole. {SMALL_LOT_EFFECT} To leave them out, pass "
            "small_lots='drop' (here or to pp.qc).",
            UserWarning,
            stacklevel=4,
        )


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
            repeated = part.var_names[part.var_names.duplicated()].unique().tolist()
            msg = (
                f"lot {name!r} has duplicate gene names; call .var_names_make_unique() on it first. "
                f"Repeated ({len(repeated)}): {repeated[:20]}. pool_lots does not guess whether "
                "they are one gene (sum their counts) or distinct features (suffix -1, -2 with "
                ".var_names_make_unique(), as io.read_lots does and reports)."
            )
            raise ValueError(msg)
    return named


def _target_size(
    cells_per_lot: int | str | None, sizes: Mapping[str, int], minimum: int
) -> int | None:
    """Cells to keep per lot (``cells_per_lot`` already checked); ``"min"`` below ``minimum`` is refused."""
    if cells_per_lot is None:
        return None
    if cells_per_lot == "min":
        target = min(sizes.values())
        if target < minimum:
            smallest = {k: v for k, v in sizes.items() if v < minimum}
            total = sum(sizes.values())
            kept = target * len(sizes)
            msg = (
                f"cells_per_lot='min' would subsample every lot to {target} cells, the size of "
                f"lots {smallest}, below min_cells_per_lot={minimum}: {total - kept} of {total} "
                f"cells ({(total - kept) / total:.0%}) would be removed. Leave the small lots out "
                "(small_lots='drop'), give an integer cells_per_lot (smaller lots are kept "
                f"whole), or pass min_cells_per_lot={target} to accept it."
            )
            raise ValueError(msg)
        return target
    small = {k: v for k, v in sizes.items() if v < cells_per_lot}
    if small:
        logger.warning(
            "pool_lots: lots %s have fewer than %d cells and are kept whole",
            small,
            cells_per_lot,
        )
    return int(cells_per_lot)
