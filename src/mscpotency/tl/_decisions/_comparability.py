"""Comparability of new lots with the reference lots (ICH Q5E-style).

After a process change, a new site or a new donor source, a QC lab shows that the new lots'
quality attributes lie within the range the reference lots established. Here the
attributes are the lot composition: the potency cluster's fraction (the critical one) and
every other cluster's fraction, plus the distance of the whole composition from the
reference lots' centre. Each reference range is a normal tolerance interval (a range that
holds ``coverage`` of reference-like lots at confidence ``level``), computed on the logit of
the fraction, where lot-to-lot variation is closer to normal than on the fraction itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import stats

from ... import _registry
from ..._docs import doc_params
from ..._provenance import record
from ..._stored import potency_cluster
from .._robustness._inputs import fractions_lot_key, lot_counts

Scale = Literal["logit", "fraction"]
#: Attribute name of the whole-composition distance.
COMPOSITION_DISTANCE = "composition_distance"
#: Fewest reference lots a tolerance interval is computed from.
MIN_REFERENCE_LOTS = 5


# --------------------------------------------------------------------------- kernels
def tolerance_factor(
    n: int, *, coverage: float = 0.95, level: float = 0.95, sided: int = 2
) -> float:
    """Normal tolerance factor k: ``mean ± k sd`` of n values holds ``coverage`` at confidence ``level``.

    Two-sided: Howe's (1969) approximation, accurate to a few parts in a thousand for
    n >= 5. One-sided: exact, from the noncentral t distribution.
    """
    if n < 2:
        msg = f"a tolerance factor needs at least 2 values, got {n}"
        raise ValueError(msg)
    if not (0 < coverage < 1 and 0 < level < 1):
        msg = f"coverage and level must be between 0 and 1, got {coverage!r} and {level!r}"
        raise ValueError(msg)
    if sided == 1:
        return float(
            stats.nct.ppf(level, n - 1, stats.norm.ppf(coverage) * np.sqrt(n)) / np.sqrt(n)
        )
    if sided == 2:
        z = stats.norm.ppf((1 + coverage) / 2)
        chi2 = stats.chi2.ppf(1 - level, n - 1)
        return float(z * np.sqrt((n - 1) * (1 + 1 / n) / chi2))
    msg = f"sided must be 1 or 2, got {sided!r}"
    raise ValueError(msg)


def logit_fractions(counts: np.ndarray, *, pseudocount: float = 0.5) -> np.ndarray:
    """``logit((count + c) / (n + 2c))`` per lot (row) and cluster (column); finite at 0 cells."""
    counts = np.asarray(counts, dtype=float)
    totals = counts.sum(axis=1, keepdims=True)
    share = (counts + pseudocount) / (totals + 2 * pseudocount)
    return np.log(share / (1 - share))


def clr_counts(counts: np.ndarray, *, pseudocount: float = 0.5) -> np.ndarray:
    """Centred log-ratio of counts plus a pseudocount (rows are lots)."""
    logged = np.log(np.asarray(counts, dtype=float) + pseudocount)
    return logged - logged.mean(axis=1, keepdims=True)


def composition_distances(
    reference_counts: np.ndarray, new_counts: np.ndarray, *, pseudocount: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """Aitchison distance of every lot from the reference centre.

    Reference lots are measured from the centre of the *other* reference lots (leave one
    out), so that their distances are on the same footing as a new lot's.
    """
    ref = clr_counts(reference_counts, pseudocount=pseudocount)
    new = clr_counts(new_counts, pseudocount=pseudocount)
    n = ref.shape[0]
    total = ref.sum(axis=0)
    loo_centres = (total[None, :] - ref) / (n - 1)
    ref_distance = np.sqrt(((ref - loo_centres) ** 2).sum(axis=1))
    new_distance = np.sqrt(((new - total / n) ** 2).sum(axis=1))
    return ref_distance, new_distance


def limits_kernel(
    reference: np.ndarray, *, coverage: float, level: float, sided: int = 2
) -> tuple[float, float, float, float, float]:
    """Mean, sd, k and the (low, high) tolerance limits of one attribute's reference values."""
    reference = np.asarray(reference, dtype=float)
    n = reference.size
    mean = float(reference.mean())
    sd = float(reference.std(ddof=1))
    k = tolerance_factor(n, coverage=coverage, level=level, sided=sided)
    if sided == 1:
        return mean, sd, k, -np.inf, mean + k * sd
    return mean, sd, k, mean - k * sd, mean + k * sd


def comparability_kernel(
    reference_counts: np.ndarray,
    new_counts: np.ndarray,
    target: int,
    *,
    coverage: float = 0.95,
    level: float = 0.95,
    scale: Scale = "logit",
    pseudocount: float = 0.5,
) -> dict[str, np.ndarray]:
    """Judge new lots (rows of ``new_counts``) against reference lots, cluster ``target`` first.

    Returns arrays: per attribute (clusters, then the composition distance) the reference
    ``mean``, ``sd``, ``k``, ``low``, ``high`` on the analysis scale; per new lot its
    ``new_values`` and ``reference_values`` (lots x attributes, analysis scale) and the
    booleans ``potency_within``, ``composition_within``, ``clusters_outside`` (lots x
    clusters) and ``comparable``.
    """
    reference_counts = np.asarray(reference_counts, dtype=float)
    new_counts = np.atleast_2d(np.asarray(new_counts, dtype=float))
    if scale == "logit":
        ref_values = logit_fractions(reference_counts, pseudocount=pseudocount)
        new_values = logit_fractions(new_counts, pseudocount=pseudocount)
    elif scale == "fraction":
        ref_values = reference_counts / reference_counts.sum(axis=1, keepdims=True)
        new_values = new_counts / new_counts.sum(axis=1, keepdims=True)
    else:
        msg = f"scale must be 'logit' or 'fraction', got {scale!r}"
        raise ValueError(msg)
    ref_distance, new_distance = composition_distances(
        reference_counts, new_counts, pseudocount=pseudocount
    )
    n_clusters = reference_counts.shape[1]
    limits = np.array(
        [limits_kernel(ref_values[:, j], coverage=coverage, level=level) for j in range(n_clusters)]
        + [limits_kernel(np.log(ref_distance), coverage=coverage, level=level, sided=1)]
    )
    low, high = limits[:, 3], limits[:, 4]
    outside = (new_values < low[:n_clusters]) | (new_values > high[:n_clusters])
    potency_within = ~outside[:, target]
    composition_within = np.log(new_distance) <= high[-1]
    return {
        "mean": limits[:, 0],
        "sd": limits[:, 1],
        "k": limits[:, 2],
        "low": low,
        "high": high,
        "reference_values": np.column_stack([ref_values, ref_distance]),
        "new_values": np.column_stack([new_values, new_distance]),
        "potency_within": potency_within,
        "composition_within": composition_within,
        "clusters_outside": outside,
        "comparable": potency_within & composition_within,
    }


def _to_fraction(values: np.ndarray, scale: str) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    if scale == "logit":
        with np.errstate(over="ignore"):
            return 1 / (1 + np.exp(-values))
    return values


# --------------------------------------------------------------------------- inputs
def _counts_split_by_lot_names(
    counts: pd.DataFrame, names: Sequence[str], fractions_key: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Reference lots named inside ``adata``: their counts, and every other lot's."""
    if isinstance(names, str):
        msg = "reference must be an AnnData or a list of lot names, not a single string; wrap it in a list."
        raise TypeError(msg)
    names = [str(r) for r in names]
    unknown = [r for r in names if r not in counts.index]
    if unknown:
        msg = f"reference lots {unknown} are not in adata.uns[{fractions_key!r}] (lots: {list(counts.index)})."
        raise ValueError(msg)
    return counts.loc[names], counts.drop(index=names)


def _reference_and_new_counts(
    adata: AnnData, reference: AnnData | Sequence[str], fractions_key: str
) -> tuple[pd.DataFrame, pd.DataFrame, AnnData]:
    """Counts of the reference and of the new lots, and the AnnData naming the potency cluster.

    ``reference`` is either its own AnnData (every lot of ``adata`` is new) or the names of
    reference lots inside ``adata``.
    """
    own = lot_counts(adata, fractions_key)
    if isinstance(reference, AnnData):
        return lot_counts(reference, fractions_key), own, reference
    return (*_counts_split_by_lot_names(own, reference, fractions_key), adata)


def _check_lots(reference_counts: pd.DataFrame, new_counts: pd.DataFrame) -> None:
    """Enough reference lots, at least one new lot, and no cluster the reference lacks."""
    if len(reference_counts) < MIN_REFERENCE_LOTS:
        msg = (
            f"a tolerance interval needs at least {MIN_REFERENCE_LOTS} reference lots, got "
            f"{len(reference_counts)}; with fewer lots it is too wide to flag anything."
        )
        raise ValueError(msg)
    if len(new_counts) == 0:
        msg = "no new lots to compare: every lot in adata is a reference lot."
        raise ValueError(msg)
    missing = [c for c in new_counts.columns if c not in reference_counts.columns]
    if missing:
        msg = (
            f"new lots have clusters {missing} that the reference lots lack; count the new lots "
            "with the reference's labels (e.g. transferred by `tl.map_to_reference`)."
        )
        raise ValueError(msg)


def _check_options(cluster: str, clusters: list[str], pseudocount: float, scale: str) -> None:
    if cluster not in clusters:
        msg = f"unknown cluster {cluster!r}; the lot fractions have clusters {clusters}"
        raise ValueError(msg)
    if pseudocount <= 0:
        msg = f"pseudocount must be > 0, got {pseudocount!r}"
        raise ValueError(msg)
    if scale not in ("logit", "fraction"):
        msg = f"scale must be 'logit' or 'fraction', got {scale!r}"
        raise ValueError(msg)


# --------------------------------------------------------------------------- tables
def _limits_table(
    result: dict[str, np.ndarray], clusters: list[str], scale: str, n_reference: int
) -> pd.DataFrame:
    """One row per attribute: the tolerance limits on the analysis scale and back on the value's."""
    n_clusters = len(clusters)
    return pd.DataFrame(
        {
            "n_reference": n_reference,
            "mean": result["mean"],
            "sd": result["sd"],
            "k": result["k"],
            "low": result["low"],
            "high": result["high"],
            "scale": [scale] * n_clusters + ["log"],
            "low_value": np.append(_to_fraction(result["low"][:n_clusters], scale), 0.0),
            "high_value": np.append(
                _to_fraction(result["high"][:n_clusters], scale), np.exp(result["high"][-1])
            ),
        },
        index=pd.Index([*clusters, COMPOSITION_DISTANCE], name="attribute"),
    )


def _verdicts(
    result: dict[str, np.ndarray],
    new_counts: pd.DataFrame,
    limits: pd.DataFrame,
    cluster: str,
    lot_key: str,
) -> pd.DataFrame:
    """One row per new lot: the potency cluster's fraction, the composition distance, the verdict."""
    clusters = np.asarray(limits.index[:-1])
    table = pd.DataFrame(
        {
            "n_cells": new_counts.sum(axis=1).to_numpy(),
            "potency_fraction": new_counts[cluster].to_numpy() / new_counts.sum(axis=1).to_numpy(),
            "potency_low": limits.loc[cluster, "low_value"],
            "potency_high": limits.loc[cluster, "high_value"],
            "potency_within": result["potency_within"],
            COMPOSITION_DISTANCE: result["new_values"][:, -1],
            "distance_limit": limits.loc[COMPOSITION_DISTANCE, "high_value"],
            "composition_within": result["composition_within"],
            "clusters_outside": [",".join(clusters[row]) for row in result["clusters_outside"]],
            "comparable": result["comparable"],
        },
        index=pd.Index(new_counts.index.astype(str), name=lot_key),
    )
    table["reason"] = [_reason(row, cluster) for _, row in table.iterrows()]
    return table


def _values_table(
    result: dict[str, np.ndarray],
    reference_counts: pd.DataFrame,
    new_counts: pd.DataFrame,
    lot_key: str,
) -> pd.DataFrame:
    """Every reference and new lot: its group, every cluster's fraction, the composition distance."""
    groups = []
    for group, counts, values in (
        ("reference", reference_counts, result["reference_values"]),
        ("new", new_counts, result["new_values"]),
    ):
        fractions = counts.div(counts.sum(axis=1), axis=0)
        groups.append(fractions.assign(**{COMPOSITION_DISTANCE: values[:, -1]}).assign(group=group))
    values = pd.concat(groups)
    values.index = values.index.astype(str)
    values.index.name = lot_key
    return values[["group", *reference_counts.columns, COMPOSITION_DISTANCE]]


def _reason(row: pd.Series, cluster: str) -> str:
    reasons = []
    if not row["potency_within"]:
        side = "below" if row["potency_fraction"] < row["potency_low"] else "above"
        reasons.append(
            f"{cluster} fraction {row['potency_fraction']:.3f} {side} the reference range "
            f"[{row['potency_low']:.3f}, {row['potency_high']:.3f}]"
        )
    if not row["composition_within"]:
        reasons.append(
            f"composition distance {row[COMPOSITION_DISTANCE]:.2f} above the reference limit {row['distance_limit']:.2f}"
        )
    return "; ".join(reasons) if reasons else "within the reference ranges"


# --------------------------------------------------------------------------- tool
@doc_params
@record("tl.comparability")
def comparability(
    adata: AnnData,
    reference: AnnData | Sequence[str],
    *,
    cluster: str | None = None,
    fractions_key: str = _registry.LOT_FRACTIONS.key,
    association_key: str = _registry.POTENCY_ASSOCIATION.key,
    coverage: float = 0.95,
    level: float = 0.95,
    scale: Scale = "logit",
    pseudocount: float = 0.5,
    key_added: str = _registry.COMPARABILITY.key,
    copy: bool = False,
) -> AnnData | None:
    """Compare new lots' composition with the reference lots' tolerance range.

    For every cluster, the reference lots' fractions (on the logit scale, counts plus
    ``pseudocount``) give a two-sided normal tolerance interval ``mean ± k sd`` that holds
    ``coverage`` of reference-like lots at confidence ``level``; the Aitchison distance of
    a lot's whole composition (CLR of counts) from the reference centre gets a one-sided
    upper tolerance limit (log scale; reference lots measured leave-one-out). A new lot is
    *comparable* when its potency-cluster fraction lies inside its interval and its
    composition distance below its limit. Other clusters outside their own intervals are
    listed, not judged: with many clusters some fall outside by chance.

    Parameters
    ----------
    adata
        {adata}
        The new lots (and, when ``reference`` names lots, the reference lots too) with
        ``uns[fractions_key]``, counted with the reference's cluster labels.
    reference
        AnnData of the reference lots with its own ``uns[fractions_key]``, or the names of
        the reference lots inside ``adata`` (then every other lot is a new lot).
    cluster
        {cluster}
        Named by the reference's ``uns[association_key]`` when ``None``.
    fractions_key
        {fractions_key}
        The same key in both objects.
    coverage
        Share of reference-like lots a tolerance interval must hold.
    level
        {level}
        Here the confidence that a tolerance interval holds ``coverage`` of the lots.
    scale
        ``"logit"`` (default) or ``"fraction"``: where the normal model is assumed.
    pseudocount
        Added to every cluster count before logit and CLR.

    Returns
    -------
    ``None``, or the copy when ``copy=True``. Writes ``adata.uns[key_added]`` with
    ``'table'`` : DataFrame (one row per new lot: n_cells, potency_fraction, potency_low,
    potency_high, potency_within, composition_distance, distance_limit,
    composition_within, clusters_outside, comparable, reason), ``'limits'`` : DataFrame
    (one row per attribute: n_reference, mean, sd, k, low, high on the analysis scale and
    low/high back on the fraction scale), ``'values'`` : DataFrame (every reference and
    new lot: group, the fraction of every cluster and the composition distance),
    ``'cluster'`` and ``'params'``.
    """
    reference_counts, new_counts, association_source = _reference_and_new_counts(
        adata, reference, fractions_key
    )
    _check_lots(reference_counts, new_counts)
    new_counts = new_counts.reindex(columns=reference_counts.columns, fill_value=0.0)
    cluster = potency_cluster(association_source, cluster=cluster, association_key=association_key)
    clusters = [str(c) for c in reference_counts.columns]
    _check_options(cluster, clusters, pseudocount, scale)
    result = comparability_kernel(
        reference_counts.to_numpy(),
        new_counts.to_numpy(),
        clusters.index(cluster),
        coverage=coverage,
        level=level,
        scale=scale,
        pseudocount=pseudocount,
    )
    limits = _limits_table(result, clusters, scale, len(reference_counts))
    lot_key = fractions_lot_key(adata, fractions_key)
    adata = adata.copy() if copy else adata
    adata.uns[key_added] = {
        "table": _verdicts(result, new_counts, limits, cluster, lot_key),
        "limits": limits,
        "values": _values_table(result, reference_counts, new_counts, lot_key),
        "cluster": cluster,
        "params": {
            "reference": "AnnData" if isinstance(reference, AnnData) else list(map(str, reference)),
            "cluster": cluster,
            "fractions_key": fractions_key,
            "association_key": association_key,
            "coverage": coverage,
            "level": level,
            "scale": scale,
            "pseudocount": pseudocount,
        },
    }
    return adata if copy else None
