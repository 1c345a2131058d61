"""Per-lot quality control of cells, with a per-lot report of what was removed."""

from __future__ import annotations

import logging
import warnings
from typing import Literal

import numba
import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from .. import _dask, _keys, _registry
from .._cell_stats import map_rows, reduce_rows
from .._docs import doc_params
from .._provenance import record
from .._validate import (
    SMALL_LOT_EFFECT,
    check_counts,
    count_matrix,
    gene_symbols,
    looks_like_ensembl,
    lots_of,
    symbol_columns,
)
from ._pool import MIN_CELLS_PER_LOT

logger = logging.getLogger("mscpotency")


#: Prefixes of ribosomal protein genes (RPS*, RPL*; matched case-insensitively).
RIBO_PREFIXES = ("RPS", "RPL")

#: Scale factor of the median absolute deviation (consistent for the normal SD, as R's ``mad``).
MAD_SCALE = 1.4826

#: Filter -> (QC metric, removed if, the parameter holding the threshold, the rule in words).
#: The per-lot report names its columns after these filters and counts the cells failing each.
FILTERS = {
    "cells_below_min_genes": ("n_genes_by_counts", "<", "min_genes", "n_genes_by_counts < {v}"),
    "cells_below_min_counts": ("total_counts", "<", "min_counts", "total_counts < {v}"),
    "cells_above_max_pct_mito": (
        "pct_counts_mt",
        ">",
        "max_pct_mito",
        "pct_counts_mt > {v} (genes starting with {mito!r})",
    ),
    "cells_below_mad_counts": (
        "log1p(total_counts)",
        "<",
        "mad_counts",
        "log1p(total_counts) < the lot's median - {v} x 1.4826 x its MAD",
    ),
    "cells_below_mad_log_counts": (
        "log1p(total_counts)",
        "<",
        None,
        "log1p(total_counts) < {v:.4g} (total_counts < {raw:.4g}): the lot's median - {n} MADs",
    ),
    "cells_below_mad_log_genes": (
        "log1p(n_genes_by_counts)",
        "<",
        None,
        "log1p(n_genes_by_counts) < {v:.4g} (n_genes_by_counts < {raw:.4g}): the lot's median - {n} MADs",
    ),
    "cells_above_mad_pct_mito": (
        "pct_counts_mt",
        ">",
        None,
        "pct_counts_mt > {v:.4g}: the lot's median + {n} MADs",
    ),
    "cells_in_small_lot": (
        "cells of the lot kept by the filters above",
        "<",
        "min_cells_per_lot",
        "the lot keeps < {v} cells (small_lots='drop')",
    ),
    "genes_removed": (
        "n_cells_by_counts (of the cells kept)",
        "<",
        "min_cells_per_gene",
        "a gene detected in < {v} of the cells kept",
    ),
}


@doc_params
@record("pp.qc", views="actualise")
def qc(
    adata: AnnData,
    *,
    lot_key: str = _keys.LOT,
    layer: str | None = _keys.COUNTS_LAYER,
    thresholds: Literal["fixed", "mad"] = "fixed",
    min_genes: int = 200,
    min_counts: int | None = None,
    max_pct_mito: float | None = 20.0,
    n_mads: float = 3.0,
    mito_prefix: str = "MT-",
    symbol_key: str | None = None,
    min_cells_per_gene: int = 3,
    mad_counts: float | None = None,
    min_cells_per_lot: int = MIN_CELLS_PER_LOT,
    small_lots: Literal["warn", "drop", "error"] = "warn",
    max_removed_share: float | None = 0.5,
    key_added: str = _registry.QC.key,
    copy: bool = False,
) -> AnnData | None:
    """Compute QC metrics and remove low-quality cells and rarely detected genes.

    Parameters
    ----------
    adata
        Cells with raw counts in ``layers[layer]`` or, if that layer is absent, in ``X``.
    lot_key
        {lot_key}
        Removals are reported per lot.
    thresholds
        ``"fixed"`` (default): the same thresholds for every cell (``min_genes``,
        ``min_counts``, ``max_pct_mito``), which fit whole-transcriptome droplet data (10x)
        and may remove most cells of plate-based or targeted-panel data, or keep damaged
        cells of a deeply sequenced lot (on the simulator's presets they keep 125-155 of the
        ~300 low-quality cells of a reference, a tenth of the counts with many mitochondrial
        reads, which then form a cluster of their own; ``benchmarks/results/
        potency_population_*.md`` against ``*_qcmad.md``). ``"mad"``: data-adaptive
        thresholds per lot, as scater's ``isOutlier`` (``perCellQCFilters``) and the
        single-cell best practices: a cell is removed when
        its ``log1p(total_counts)`` or ``log1p(n_genes_by_counts)`` lies more than
        ``n_mads`` median absolute deviations (MAD, scaled by 1.4826 as R's ``mad``) below
        its lot's median, or its ``pct_counts_mt`` more than ``n_mads`` MADs above it (when
        mitochondrial genes are found). ``min_genes``, ``min_counts`` and ``max_pct_mito``
        are then not applied; a metric with a MAD of 0 in a lot (it does not vary there)
        gets no threshold in that lot. On the presets (seeds 0-9) "mad" removes every
        simulated low-quality cell and raises the fixed-k ARI (study median 0.925 -> 0.984),
        but Harmony's gain on the donor preset falls (seed 0: ARI +0.35 -> +0.18), and the
        hard preset loses the merge it was built for: not yet the default. The thresholds
        chosen for every lot are stated in ``uns[key_added]['thresholds']``.
    min_genes
        Cells with fewer detected genes are removed (``thresholds="fixed"`` only).
    min_counts
        Cells with fewer total counts are removed (``None``: no threshold;
        ``thresholds="fixed"`` only).
    max_pct_mito
        Cells with a larger percentage of counts in mitochondrial genes are removed
        (``thresholds="fixed"`` only). ``None``: no threshold, and no warning when no
        mitochondrial gene is found (with either rule: say so for a targeted panel).
    n_mads
        How many MADs from the lot's median a cell may lie (``thresholds="mad"``); 3 as scater.
    mito_prefix
        Prefix of mitochondrial gene symbols (matched case-insensitively, so ``"MT-"``
        finds mouse ``mt-`` genes too). Ribosomal protein genes (``RPS*``, ``RPL*``) are
        found the same way.
    symbol_key
        ``var`` column of gene symbols in which ``mito_prefix`` and the ribosomal prefixes
        are searched (e.g. when the gene names are Ensembl ids). ``None``:
        ``var['gene_symbols']`` when present (as :func:`mscpotency.io.read_lots` writes
        it), else the gene names. When no mitochondrial gene is found a warning says where
        it searched and how to point at the symbols.
    min_cells_per_gene
        Genes detected in fewer cells are removed.
    mad_counts
        If set, also remove cells whose log total counts lie more than this many median
        absolute deviations below their own lot's median (per-lot adaptive threshold).
    min_cells_per_lot
        {min_cells_per_lot}
        Here: lots left with fewer cells by the cell filters are handled by ``small_lots``.
    small_lots
        What to do with lots left with fewer than ``min_cells_per_lot`` cells: ``"warn"``
        keeps them and warns, saying how such a lot enters each statistic; ``"drop"``
        removes their cells (counted in the report's ``cells_in_small_lot``); ``"error"``
        refuses. A lot emptied by the cell filters is always an error.
    max_removed_share
        Warn when the cell filters remove more than this share of a lot's cells (default
        0.5: thresholds that remove most of a lot rarely fit its data); ``None``: never.
        Such lots are listed in ``uns[key_added]['lots_flagged']`` either way.

    Notes
    -----
    The metrics are those of ``sc.pp.calculate_qc_metrics(qc_vars=["mt"],
    percent_top=None, log1p=False)`` (same columns, dtypes and arithmetic), computed in one
    pass over row chunks (scratch memory of one chunk, where scanpy's call holds about one
    more count matrix). A Dask-backed count matrix (chunked along cells, e.g. from
    :func:`mscpotency.io.read_lots_lazy`) is supported: the metrics are computed block by
    block and the filtered matrix stays lazy. In memory, CSR matrices are filtered in place
    (no second copy of the counts).

    Returns
    -------
    ``None``, or the copy when ``copy=True``. Writes obs ``n_genes_by_counts``,
    ``total_counts``, ``total_counts_mt``, ``pct_counts_mt``, ``total_counts_ribo``,
    ``pct_counts_ribo``; var ``mt`` and ``ribo`` (bool) and the per-gene metrics; and

    `adata.uns[key_added]['per_lot']` : DataFrame
        Per lot: ``cells_before``; the number of cells failing each filter in use, named
        after the filter (``cells_below_min_genes``, ``cells_below_min_counts``,
        ``cells_above_max_pct_mito``, ``cells_below_mad_counts``; with
        ``thresholds="mad"`` ``cells_below_mad_log_counts``, ``cells_below_mad_log_genes``,
        ``cells_above_mad_pct_mito``; ``cells_in_small_lot`` with ``small_lots="drop"``; a
        cell can fail several); ``cells_removed`` and ``cells_after``.
    `adata.uns[key_added]['thresholds']` : DataFrame
        One row per filter in use (the report's column, and ``genes_removed``), and for
        per-lot thresholds one row per filter and lot: the ``metric``, ``removed_if``
        (``<`` or ``>``), the ``threshold`` (on the metric's scale), the ``lot`` it applies
        to (``"all"`` for a fixed one) and the ``rule`` in words.
    `adata.uns[key_added]['lots_flagged']` : DataFrame
        Lots that lost more than ``max_removed_share`` of their cells or were left below
        ``min_cells_per_lot``: ``cells_before``, ``cells_after``, ``share_removed``,
        ``above_max_removed_share``, ``below_min_cells_per_lot``.
    `adata.uns[key_added]['genes_removed']` : list
        The genes removed.

    Read the tables back with :func:`mscpotency.get.qc`.
    """
    lots = lots_of(adata, lot_key)
    X = count_matrix(adata, layer)
    check_counts(X, where="the count matrix" if X is adata.X else f"layers[{layer!r}]")
    mito, ribo, symbols_from = _mito_and_ribo(adata.var, symbol_key, mito_prefix)
    obs_metrics, var_metrics = qc_metrics(X, mito, ribo)
    obs_metrics.index = adata.obs_names
    if not mito.any() and max_pct_mito is not None:
        _warn_no_mito(adata.var, mito_prefix, symbols_from)
    fixed = {"min_genes": min_genes, "min_counts": min_counts, "max_pct_mito": max_pct_mito}
    if thresholds == "mad":
        fixed = dict.fromkeys(fixed)
    reasons = _removal_reasons(obs_metrics, lots, **fixed, mad_counts=mad_counts)
    per_lot_thresholds = {}
    if thresholds == "mad":
        per_lot_thresholds = _mad_thresholds(obs_metrics, lots, n_mads, use_mito=bool(mito.any()))
        for name, by_lot in per_lot_thresholds.items():
            reasons[name] = _fails(obs_metrics, lots, name, by_lot)
    removed = reasons.any(axis=1).to_numpy()
    _per_lot_report(reasons, removed, lots, lot_key)  # refuses before anything is written
    flagged = _flag_lots(reasons, removed, lots, max_removed_share, min_cells_per_lot, thresholds)
    in_small = _small_lots(lots, removed, min_cells_per_lot, small_lots)
    if in_small is not None:
        reasons["cells_in_small_lot"] = in_small
        removed = removed | in_small
    report = _per_lot_report(reasons, removed, lots, lot_key, check=False)
    adata = adata.copy() if copy else adata
    _write_metrics(adata, {"mt": mito, "ribo": ribo}, obs_metrics, var_metrics)
    n_cells_detected = _detected_per_gene(count_matrix(adata, layer), ~removed)
    gene_removed = n_cells_detected < min_cells_per_gene
    genes_removed = adata.var_names[gene_removed].tolist()
    _subset_inplace(adata, ~removed, ~gene_removed)
    if in_small is not None and isinstance(adata.obs[lot_key].dtype, pd.CategoricalDtype):
        adata.obs[lot_key] = adata.obs[lot_key].cat.remove_unused_categories()
    params = {
        "thresholds": thresholds,
        **fixed,
        "n_mads": float(n_mads),
        "mad_counts": mad_counts,
        "mito_prefix": mito_prefix,
        "symbol_key": symbol_key,
        "symbols_from": symbols_from,
        "min_cells_per_gene": min_cells_per_gene,
        "min_cells_per_lot": int(min_cells_per_lot),
        "small_lots": small_lots,
        "max_removed_share": max_removed_share,
        "lot_key": lot_key,
    }
    adata.uns[key_added] = {
        "per_lot": report,
        "thresholds": _thresholds_table(list(report.columns), params, per_lot_thresholds),
        "lots_flagged": flagged,
        "genes_removed": genes_removed,
        "params": params,
    }
    return adata if copy else None


def _mito_and_ribo(
    var: pd.DataFrame, symbol_key: str | None, mito_prefix: str
) -> tuple[np.ndarray, np.ndarray, str]:
    """Mitochondrial and ribosomal genes (bool masks) by their symbols, and where those were read."""
    symbols, where = gene_symbols(var, symbol_key)
    upper = symbols.str.upper()
    mito = np.asarray(upper.str.startswith(mito_prefix.upper()), dtype=bool)
    ribo = np.asarray(upper.str.startswith(RIBO_PREFIXES), dtype=bool)
    return mito, ribo, where


def _warn_no_mito(var: pd.DataFrame, mito_prefix: str, symbols_from: str) -> None:
    """Warn that no gene matched ``mito_prefix``: where it was searched, and how to point at symbols."""
    names = var.index if symbols_from == "var_names" else var[symbols_from[5:-2]]
    examples = pd.Index(names).astype(str)[:3].tolist()
    ensembl = looks_like_ensembl(names)
    candidates = [c for c in symbol_columns(var) if f"var[{c!r}]" != symbols_from]
    hint = (
        f"they look like Ensembl ids (e.g. {examples}): pass symbol_key= naming the var "
        "column of gene symbols"
        if ensembl
        else f"e.g. {examples}: if they are not symbols, pass symbol_key= naming the var column "
        "of gene symbols"
    )
    matching = {
        c: int(var[c].astype(str).str.upper().str.startswith(mito_prefix.upper()).sum())
        for c in candidates
    }
    matching = {c: n for c, n in matching.items() if n}
    if matching:
        column, n = next(iter(matching.items()))
        hint += f"; var[{column!r}] has {n} genes starting with it: pass symbol_key={column!r}"
    elif candidates:
        hint += f" (text columns of var: {candidates[:8]})"
    warnings.warn(
        f"qc: no mitochondrial gene found: no gene in {symbols_from} starts with "
        f"{mito_prefix!r} (case-insensitive), so the mitochondrial filter removes no cell. "
        f"Gene names searched: {hint}; or set mito_prefix=; or, if the data hold no "
        "mitochondrial genes (a targeted panel), pass max_pct_mito=None to say so (the "
        "command line and settings files of `mscpotency analyse`: --symbol-key, "
        "--mito-prefix, --no-mito-filter; symbol_key, mito_prefix, mito_filter = false).",
        UserWarning,
        stacklevel=4,
    )


def _mad_thresholds(
    obs: pd.DataFrame, lots: pd.Series, n_mads: float, *, use_mito: bool
) -> dict[str, pd.Series]:
    """Filter -> lot -> threshold on the filter's metric: median -/+ n_mads x 1.4826 x MAD.

    As scater's ``isOutlier`` (``nmads``, ``type="lower"``/``"higher"``, ``batch=lot``) on
    ``log1p`` of the counts and genes and on the mitochondrial percentage. A lot whose MAD
    is 0 gets no threshold (``-inf`` or ``inf``). A cell without counts has no
    mitochondrial percentage (0/0): it is left out of its lot's median and MAD (it fails
    the counts filter), as scater's ``na.rm``, instead of making the lot's MAD undefined.
    """
    metrics = {
        "cells_below_mad_log_counts": (np.log1p(obs["total_counts"].to_numpy(float)), -1),
        "cells_below_mad_log_genes": (np.log1p(obs["n_genes_by_counts"].to_numpy(float)), -1),
    }
    if use_mito:
        metrics["cells_above_mad_pct_mito"] = (obs["pct_counts_mt"].to_numpy(float), 1)
    found = {}
    for name, (values, sign) in metrics.items():
        grouped = pd.Series(values).groupby(lots.to_numpy(), observed=True)
        median = grouped.median()
        mad = MAD_SCALE * grouped.apply(_median_absolute_deviation)
        limit = median + sign * n_mads * mad
        found[name] = limit.where(mad > 0, sign * np.inf).astype(float)
    return found


def _median_absolute_deviation(values: pd.Series) -> float:
    """``median(|v - median(v)|)`` over the values that are not NaN (NaN when none is)."""
    v = values.to_numpy(float)
    v = v[~np.isnan(v)]
    return float(np.median(np.abs(v - np.median(v)))) if v.size else np.nan


def _fails(obs: pd.DataFrame, lots: pd.Series, name: str, by_lot: pd.Series) -> np.ndarray:
    """Cells failing one per-lot MAD filter."""
    metric, removed_if, _, _ = FILTERS[name]
    column = metric.removeprefix("log1p(").removesuffix(")")
    values = obs[column].to_numpy(float)
    values = np.log1p(values) if metric.startswith("log1p(") else values
    limit = by_lot.reindex(lots.to_numpy()).to_numpy(float)
    return values < limit if removed_if == "<" else values > limit


def _flag_lots(
    reasons: pd.DataFrame,
    removed: np.ndarray,
    lots: pd.Series,
    max_share: float | None,
    minimum: int,
    rule: str = "fixed",
) -> pd.DataFrame:
    """Lots the cell filters take above ``max_share`` of or below ``minimum`` cells; warn of the first."""
    by_lot = lots.to_numpy()
    before = lots.value_counts().reindex(lots.cat.categories).astype(int)
    failing = reasons.groupby(by_lot, observed=True).sum().reindex(before.index)
    lost = pd.Series(removed, index=lots.index).groupby(by_lot, observed=True).sum()
    lost = lost.reindex(before.index).astype(int)
    share = (lost / before).astype(float)
    frame = pd.DataFrame(
        {
            "cells_before": before,
            "cells_after": before - lost,
            "share_removed": share,
            "above_max_removed_share": share > (1.0 if max_share is None else max_share),
            "below_min_cells_per_lot": (before - lost) < minimum,
        }
    )
    frame.index.name = lots.name
    flagged = frame[frame["above_max_removed_share"] | frame["below_min_cells_per_lot"]].copy()
    heavy = flagged[flagged["above_max_removed_share"]]
    if max_share is not None and len(heavy):
        listed = {
            str(lot): f"{int(lost[lot])} of {int(before[lot])} ({share[lot]:.0%}), most by "
            f"{failing.loc[lot].idxmax()}"
            for lot in heavy.index
        }
        hint = (
            "(min_genes=200 assumes whole-transcriptome droplet data): check "
            "mp.get.qc(adata), consider thresholds='mad' (per-lot thresholds)"
            if rule == "fixed"
            else "(a lot whose cells' counts are not one population: check mp.get.qc(adata) "
            "and pl.qc, consider a larger n_mads or thresholds='fixed' with thresholds "
            "that fit the technology)"
        )
        warnings.warn(
            f"qc: the cell filters remove more than {max_share:.0%} of the cells of lots "
            f"{listed}. The thresholds may not fit these data {hint}, or pass "
            "max_removed_share=None if this is expected.",
            UserWarning,
            stacklevel=4,
        )
    return flagged


def _write_metrics(
    adata: AnnData, masks: dict, obs_metrics: pd.DataFrame, var_metrics: pd.DataFrame
) -> None:
    """Write ``var['mt']``, ``var['ribo']`` and the per-cell and per-gene QC metrics."""
    for name, mask in masks.items():
        adata.var[name] = mask
    for column in obs_metrics:
        adata.obs[column] = obs_metrics[column].to_numpy()
    for column in var_metrics:
        adata.var[column] = var_metrics[column].to_numpy()


def _removal_reasons(
    obs: pd.DataFrame,
    lots: pd.Series,
    *,
    min_genes: int | None,
    min_counts: int | None,
    max_pct_mito: float | None,
    mad_counts: float | None,
) -> pd.DataFrame:
    """Cells x filters: whether each cell fails each filter in use (columns as in the report)."""
    reasons = pd.DataFrame(index=obs.index)
    if min_genes is not None:
        reasons["cells_below_min_genes"] = obs["n_genes_by_counts"].to_numpy() < min_genes
    if min_counts is not None:
        reasons["cells_below_min_counts"] = obs["total_counts"].to_numpy() < min_counts
    if max_pct_mito is not None:
        reasons["cells_above_max_pct_mito"] = obs["pct_counts_mt"].to_numpy() > max_pct_mito
    if mad_counts is not None:
        reasons["cells_below_mad_counts"] = _below_lot_mad(obs["total_counts"], lots, mad_counts)
    return reasons


def _per_lot_report(
    reasons: pd.DataFrame,
    removed: np.ndarray,
    lots: pd.Series,
    lot_key: str,
    *,
    check: bool = True,
) -> pd.DataFrame:
    """Lots x (cells before, cells failing each filter, removed, after); no lot may be emptied."""
    by_lot = lots.to_numpy()
    report = reasons.groupby(by_lot, observed=True).sum().astype(int)
    report.insert(0, "cells_before", lots.value_counts().reindex(report.index).astype(int))
    report["cells_removed"] = (
        pd.Series(removed, index=reasons.index).groupby(by_lot, observed=True).sum().astype(int)
    )
    report["cells_after"] = report["cells_before"] - report["cells_removed"]
    report.index.name = lot_key
    emptied = report.index[report["cells_after"] == 0].tolist()
    if check and emptied:
        failing = {
            str(lot): {c: int(report.loc[lot, c]) for c in reasons.columns if report.loc[lot, c]}
            for lot in emptied
        }
        msg = (
            f"QC would remove every cell of lots {emptied} (cells failing each filter, per lot: "
            f"{failing}). Relax the thresholds or remove these lots explicitly."
        )
        raise ValueError(msg)
    return report


def _small_lots(lots: pd.Series, removed: np.ndarray, minimum: int, rule: str) -> np.ndarray | None:
    """Cells of lots left with fewer than ``minimum`` cells: warned about, refused, or returned."""
    after = pd.Series(~removed, index=lots.index).groupby(lots.to_numpy(), observed=True).sum()
    small = {str(k): int(v) for k, v in after[after < minimum].items()}
    if not small:
        return None
    before = lots.astype(str).value_counts()
    taken = {lot: f"{int(before[lot])} -> {n}" for lot, n in small.items()}
    if rule == "error":
        msg = (
            f"after QC, lots {small} have fewer than min_cells_per_lot={minimum} cells "
            "(small_lots='error'). Remove them (small_lots='drop'), keep them with a warning "
            "(small_lots='warn'), relax the thresholds, or lower min_cells_per_lot."
        )
        raise ValueError(msg)
    if rule == "warn":
        warnings.warn(
            f"qc: after QC, lots {small} have fewer than min_cells_per_lot={minimum} cells and "
            f"are kept. {SMALL_LOT_EFFECT} Cells before -> after QC: {taken}. To remove them, "
            "pass small_lots='drop'; if the thresholds took them there, see mp.get.qc(adata).",
            UserWarning,
            stacklevel=4,
        )
        return None
    logger.warning(
        "qc: removed lots %s, left with fewer than %d cells (small_lots='drop')", small, minimum
    )
    return lots.astype(str).isin(list(small)).to_numpy()


def _thresholds_table(
    columns: list[str], params: dict, per_lot: dict[str, pd.Series]
) -> pd.DataFrame:
    """One row per filter in use (the report's columns and the gene filter); per lot for MAD ones."""
    rows = []
    for name in [*columns, "genes_removed"]:
        if name not in FILTERS:
            continue
        metric, removed_if, param, rule = FILTERS[name]
        if name in per_lot:
            for lot, value in per_lot[name].items():
                raw = np.expm1(value) if metric.startswith("log1p(") else value
                text = rule.format(v=value, raw=raw, n=f"{params['n_mads']:g}")
                if not np.isfinite(value):
                    text = f"not applied: {metric} does not vary in the lot (MAD 0)"
                rows.append((name, metric, removed_if, float(value), str(lot), text))
            continue
        value = params[param]
        text = rule.format(v=f"{value:g}", mito=params["mito_prefix"])
        rows.append((name, metric, removed_if, float(value), "all", text))
    table = pd.DataFrame(
        rows, columns=["filter", "metric", "removed_if", "threshold", "lot", "rule"]
    )
    return table.set_index("filter")


def _below_lot_mad(total_counts: pd.Series, lots: pd.Series, n_mad: float) -> np.ndarray:
    log_counts = np.log1p(total_counts.to_numpy(dtype=float))
    frame = pd.DataFrame({"lot": lots.to_numpy(), "x": log_counts})
    grouped = frame.groupby("lot", observed=True)["x"]
    median = grouped.transform("median").to_numpy()
    mad = grouped.transform(lambda v: np.median(np.abs(v - np.median(v)))).to_numpy()
    return log_counts < median - n_mad * 1.4826 * mad


@numba.njit(nogil=True, cache=True)
def _qc_kernel(data, indices, indptr, mito, ribo, per_cell, per_gene):  # pragma: no cover
    for row in range(indptr.size - 1):
        for k in range(indptr[row], indptr[row + 1]):
            value = np.float64(data[k])
            gene = indices[k]
            if value > 0:
                per_cell[row, 0] += 1.0
                per_gene[0, gene] += 1.0
            per_cell[row, 1] += value
            per_gene[1, gene] += value
            if mito[gene]:
                per_cell[row, 2] += value
            if ribo[gene]:
                per_cell[row, 3] += value


def _qc_rows(rows: sparse.csr_matrix, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per cell (genes detected, total, mito, ribo) and per gene (cells detected, total) of some rows."""
    per_cell = np.zeros((rows.shape[0], 4))
    per_gene = np.zeros((2, rows.shape[1]))
    _qc_kernel(rows.data, rows.indices, rows.indptr, masks[0], masks[1], per_cell, per_gene)
    return per_cell, per_gene


def qc_metrics(
    X, mito: np.ndarray, ribo: np.ndarray | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``sc.pp.calculate_qc_metrics(qc_vars=['mt'], percent_top=None, log1p=False)`` in one pass.

    Per-cell and per-gene sums over row chunks (in memory) or blocks (Dask), returned with
    scanpy's column names, dtypes and arithmetic (float32 totals and percentage), so the
    same cells pass the thresholds. scanpy's own call holds about one more count matrix
    in memory, and on Dask computes its metrics in separate graphs that keep blocks alive
    together (about four count matrices at once at 10^5 cells). With ``ribo`` (a gene mask)
    also ``total_counts_ribo`` and ``pct_counts_ribo``, as ``qc_vars=["mt", "ribo"]``.
    """
    n_obs = X.shape[0]
    mito = np.asarray(mito, dtype=bool)
    masks = np.vstack([mito, np.zeros_like(mito) if ribo is None else np.asarray(ribo, dtype=bool)])
    parts = map_rows(X, _qc_rows, shared=masks)
    per_cell = np.vstack([cell for cell, _ in parts])
    per_gene = np.sum([gene for _, gene in parts], axis=0)
    obs = pd.DataFrame(
        {
            "n_genes_by_counts": per_cell[:, 0].astype(np.int32),
            "total_counts": per_cell[:, 1].astype(np.float32),
            "total_counts_mt": per_cell[:, 2].astype(np.float32),
        }
    )
    obs["pct_counts_mt"] = obs["total_counts_mt"] / obs["total_counts"] * 100
    if ribo is not None:
        obs["total_counts_ribo"] = per_cell[:, 3].astype(np.float32)
        obs["pct_counts_ribo"] = obs["total_counts_ribo"] / obs["total_counts"] * 100
    n_cells = per_gene[0].astype(np.int64)
    var = pd.DataFrame(
        {
            "n_cells_by_counts": n_cells,
            "mean_counts": per_gene[1] / n_obs,
            "pct_dropout_by_counts": (1 - n_cells / n_obs) * 100,
            "total_counts": per_gene[1].astype(np.float32),
        }
    )
    return obs, var


@numba.njit(nogil=True, cache=True)
def _detected_kernel(data, indices, indptr, keep, detected):  # pragma: no cover - compiled
    for row in range(indptr.size - 1):
        if keep[row]:
            for k in range(indptr[row], indptr[row + 1]):
                if data[k] > 0:
                    detected[indices[k]] += 1


def _detected_rows(rows: sparse.csr_matrix, keep: np.ndarray, n_vars: int) -> np.ndarray:
    detected = np.zeros(n_vars, dtype=np.int64)
    _detected_kernel(rows.data, rows.indices, rows.indptr, keep, detected)
    return detected


#: Rows per chunk of the chunked sparse kernels below (bounds their scratch memory).
_CHUNK_ROWS = 8192


def _is_plain_csr(X) -> bool:
    """A scipy CSR matrix whose arrays can be rewritten in place."""
    return (
        sparse.issparse(X)
        and X.format == "csr"
        and all(
            a.ndim == 1 and a.flags.c_contiguous and a.flags.writeable
            for a in (X.data, X.indices, X.indptr)
        )
    )


def _detected_per_gene(X, rows: np.ndarray) -> np.ndarray:
    """Number of cells among ``rows`` (boolean mask) with a non-zero count, per gene, in row chunks."""
    return reduce_rows(X, _detected_rows, row_args=(rows,), shared=X.shape[1]).astype(np.int64)


def _subset_inplace(adata: AnnData, keep_obs: np.ndarray, keep_var: np.ndarray) -> None:
    """Remove cells and genes from ``adata`` without a second copy of its CSR matrices.

    AnnData's own subsetting copies every matrix while the original is still alive (peak:
    twice the counts). CSR ``X`` and layers are instead compacted in place, chunk by chunk
    (arrays shared between matrices, e.g. the sparsity structure ``pp.preprocess`` shares
    between ``X`` and the counts layer, are compacted once and stay shared); everything
    else (obs, var, obsm, obsp, dense layers) goes through AnnData.
    """
    if keep_obs.all() and keep_var.all():
        return
    lazy = _subset_lazy(adata, keep_obs, keep_var)
    inplace = {}
    if not adata.is_view:
        candidates = {"X": adata.X, **{f"layers/{k}": v for k, v in adata.layers.items()}}
        inplace = {k: v for k, v in candidates.items() if v is not None and _is_plain_csr(v)}
        if not _shares_cleanly(list(inplace.values())):
            inplace = {}
    for key in inplace:
        if key == "X":
            adata.X = None
        else:
            del adata.layers[key.removeprefix("layers/")]
    compacted = _compact_csr(list(inplace.values()), keep_obs, keep_var)
    if not keep_obs.all():
        adata._inplace_subset_obs(keep_obs)
    if not keep_var.all():
        adata._inplace_subset_var(keep_var)
    for key, matrix in [*zip(inplace, compacted, strict=True), *lazy.items()]:
        if key == "X":
            adata.X = matrix
        else:
            adata.layers[key.removeprefix("layers/")] = matrix


def _subset_lazy(adata: AnnData, keep_obs: np.ndarray, keep_var: np.ndarray) -> dict:
    """Dask ``X``/layers, taken out of ``adata`` and subset block by block (``_dask.subset_cells``).

    AnnData's own subsetting of a Dask matrix rebalances its blocks with a shuffle, which
    doubles the cost of every later pass over the data.
    """
    lazy = {}
    if adata.is_view:
        return lazy
    if _dask.is_dask(adata.X):
        lazy["X"] = adata.X
        adata.X = None
    for name in [k for k, v in adata.layers.items() if _dask.is_dask(v)]:
        lazy[f"layers/{name}"] = adata.layers.pop(name)
    subset = {}
    for key, X in lazy.items():  # a matrix held twice (X and a layer) is subset once
        same = next((subset[k] for k in subset if lazy[k] is X), None)
        subset[key] = same if same is not None else _subset_dask(X, keep_obs, keep_var)
    return subset


def _subset_dask(X, keep_obs: np.ndarray, keep_var: np.ndarray):
    if not keep_obs.all():
        X = _dask.subset_cells(X, keep_obs)
    return X if keep_var.all() else X[:, keep_var]


def _shares_cleanly(matrices: list) -> bool:
    """True unless matrices share some arrays but not their whole structure (left to AnnData)."""
    structures = {(_buffer(X.indptr), _buffer(X.indices)) for X in matrices}
    indptrs = {s[0] for s in structures}
    indices = {s[1] for s in structures}
    data = {}
    for X in matrices:
        data.setdefault(_buffer(X.data), set()).add((_buffer(X.indptr), _buffer(X.indices)))
    return len(indptrs) == len(indices) == len(structures) and all(
        len(v) == 1 for v in data.values()
    )


def _buffer(a: np.ndarray) -> tuple[int, int]:
    return a.__array_interface__["data"][0], a.nbytes


def _compact_csr(matrices: list, keep_obs: np.ndarray, keep_var: np.ndarray) -> list:
    """Rows ``keep_obs`` and columns ``keep_var`` of CSR matrices, written over their own arrays.

    Entries are moved forward chunk by chunk (a kept entry only moves to a position that
    has been read already), so the scratch memory is one chunk, not one matrix. The
    results are views of the leading part of the original buffers. Matrices that share
    their sparsity structure are compacted in one pass and keep sharing it; the same
    matrix object listed twice comes back as one object.
    """
    groups: dict[tuple, list] = {}
    for X in matrices:
        groups.setdefault((_buffer(X.indptr), _buffer(X.indices)), []).append(X)
    shape = (int(keep_obs.sum()), int(keep_var.sum()))
    new_column = np.cumsum(keep_var) - 1
    by_id: dict[int, object] = {}
    for members in groups.values():
        first = members[0]
        data_arrays: dict[tuple[int, int], np.ndarray] = {}
        for X in members:
            data_arrays.setdefault(_buffer(X.data), X.data)
        indptr, indices, moved = _compact_pass(
            first, keep_obs, keep_var, new_column, list(data_arrays.values())
        )
        compacted = dict(zip(data_arrays, moved, strict=True))
        for X in members:
            if id(X) not in by_id:
                by_id[id(X)] = type(X)(
                    (compacted[_buffer(X.data)], indices, indptr), shape=shape, copy=False
                )
    return [by_id[id(X)] for X in matrices]


def _compact_pass(X, keep_obs, keep_var, new_column, data_arrays):
    if keep_var.all():
        return _compact_rows(X, keep_obs, data_arrays)
    indptr, indices = X.indptr, X.indices
    new_counts = np.zeros(X.shape[0], dtype=np.int64)
    write = 0
    for start in range(0, X.shape[0], _CHUNK_ROWS):
        stop = min(start + _CHUNK_ROWS, X.shape[0])
        lo, hi = int(indptr[start]), int(indptr[stop])
        lengths = np.diff(indptr[start : stop + 1])
        columns = indices[lo:hi].copy()
        kept = np.repeat(keep_obs[start:stop], lengths) & keep_var[columns]
        n_kept = int(kept.sum())
        for a in data_arrays:
            a[write : write + n_kept] = a[lo:hi][kept]
        indices[write : write + n_kept] = new_column[columns[kept]]
        local_row = np.repeat(np.arange(stop - start), lengths)
        new_counts[start:stop] = np.bincount(local_row[kept], minlength=stop - start)
        write += n_kept
    new_indptr = np.zeros(int(keep_obs.sum()) + 1, dtype=indptr.dtype)
    np.cumsum(new_counts[keep_obs], out=new_indptr[1:])
    return new_indptr, indices[:write], [a[:write] for a in data_arrays]


def _compact_rows(X, keep_obs, data_arrays):
    """Row removal only: move each run of kept rows forward as a block (at most a chunk at a time)."""
    indptr, indices = X.indptr, X.indices
    edges = np.flatnonzero(np.diff(np.r_[0, keep_obs.astype(np.int8), 0]))
    step = max(1, int(indptr[-1]) // max(1, X.shape[0]) * _CHUNK_ROWS)
    write = 0
    for first, last in zip(edges[::2], edges[1::2], strict=True):  # kept rows first..last-1
        lo, hi = int(indptr[first]), int(indptr[last])
        if lo != write:
            for start in range(lo, hi, step):
                stop = min(start + step, hi)
                target = write + start - lo
                for a in (indices, *data_arrays):
                    a[target : target + stop - start] = a[start:stop]
        write += hi - lo
    new_indptr = np.zeros(int(keep_obs.sum()) + 1, dtype=indptr.dtype)
    np.cumsum(np.diff(indptr)[keep_obs], out=new_indptr[1:])
    return new_indptr, indices[:write], [a[:write] for a in data_arrays]
