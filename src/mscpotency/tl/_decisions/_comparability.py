"""Comparability of new lots with the reference lots (ICH Q5E-style).

After a process change, a new site or a new donor source, a QC lab shows that the new lots'
quality attributes lie within the range the reference lots established. Here the
attributes are the lot composition: the potency cluster's fraction (the critical one) and
every other cluster's fraction, plus the distance of the whole composition from the
reference lots' centre. Each reference range is a normal tolerance interval (a range that
holds ``coverage`` of reference-like lots with ``confidence``), computed on the logit of
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
from ..._provenance import record
from ..._validate import require_uns

Scale = Literal["logit", "fraction"]

#: Default ``key_added`` of :func:`comparability`.
COMPARABILITY = "comparability"
#: Attribute name of the whole-composition distance.
COMPOSITION_DISTANCE = "composition_distance"
#: Fewest reference lots a tolerance interval is computed from.
MIN_REFERENCE_LOTS = 5


# --------------------------------------------------------------------------- kernels
def tolerance_factor(
    n: int, *, coverage: float = 0.95, confidence: float = 0.95, sided: int = 2
) -> float:
    """Normal tolerance factor k: ``mean ± k sd`` of n values holds ``coverage`` with ``confidence``.

    Two-sided: Howe's (1969) approximation, accurate to a few parts in a thousand for
    n >= 5. One-sided: exact, from the noncentral t distribution.
    """
    if n < 2:
        msg = f"a tolerance factor needs at least 2 values, got {n}"
        raise ValueError(msg)
    if not (0 < coverage < 1 and 0 < confidence < 1):
        msg = (
            f"coverage and confidence must be between 0 and 1, got {coverage!r} and {confidence!r}"
        )
        raise ValueError(msg)
    if sided == 1:
        return float(
            stats.nct.ppf(confidence, n - 1, stats.norm.ppf(coverage) * np.sqrt(n)) / np.sqrt(n)
        )
    if sided == 2:
        z = stats.norm.ppf((1 + coverage) / 2)
        chi2 = stats.chi2.ppf(1 - confidence, n - 1)
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
    reference: np.ndarray, *, coverage: float, confidence: float, sided: int = 2
) -> tuple[float, float, float, float, float]:
    """Mean, sd, k and the (low, high) tolerance limits of one attribute's reference values."""
    reference = np.asarray(reference, dtype=float)
    n = reference.size
    mean = float(reference.mean())
    sd = float(reference.std(ddof=1))
    k = tolerance_factor(n, coverage=coverage, confidence=confidence, sided=sided)
    if sided == 1:
        return mean, sd, k, -np.inf, mean + k * sd
    return mean, sd, k, mean - k * sd, mean + k * sd


def comparability_kernel(
    reference_counts: np.ndarray,
    new_counts: np.ndarray,
    target: int,
    *,
    coverage: float = 0.95,
    confidence: float = 0.95,
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
        [
            limits_kernel(ref_values[:, j], coverage=coverage, confidence=confidence)
            for j in range(n_clusters)
        ]
        + [limits_kernel(np.log(ref_distance), coverage=coverage, confidence=confidence, sided=1)]
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


# --------------------------------------------------------------------------- tool
@record("tl.comparability")
def comparability(
    adata: AnnData,
    reference: AnnData | Sequence[str],
    *,
    cluster: str | None = None,
    fractions_key: str = _registry.LOT_FRACTIONS.key,
    association_key: str = _registry.POTENCY_ASSOCIATION.key,
    coverage: float = 0.95,
    confidence: float = 0.95,
    scale: Scale = "logit",
    pseudocount: float = 0.5,
    key_added: str = COMPARABILITY,
    copy: bool = False,
) -> AnnData | None:
    """Compare new lots' composition with the reference lots' tolerance range.

    For every cluster, the reference lots' fractions (on the logit scale, counts plus
    ``pseudocount``) give a two-sided normal tolerance interval ``mean ± k sd`` that holds
    ``coverage`` of reference-like lots with ``confidence``; the Aitchison distance of a
    lot's whole composition (CLR of counts) from the reference centre gets a one-sided
    upper tolerance limit (log scale; reference lots measured leave-one-out). A new lot is
    *comparable* when its potency-cluster fraction lies inside its interval and its
    composition distance below its limit. Other clusters outside their own intervals are
    listed, not judged: with many clusters some fall outside by chance.

    Parameters
    ----------
    adata
        Cells of the new lots (and, when ``reference`` names lots, of the reference lots
        too) with ``uns[fractions_key]``, counted with the reference's cluster labels.
    reference
        AnnData of the reference lots with its own ``uns[fractions_key]``, or the names of
        the reference lots inside ``adata`` (then every other lot is a new lot).
    cluster
        The potency cluster; default: the one in the reference's ``uns[association_key]``.
    fractions_key
        Key of the lot fractions (in both objects).
    association_key
        Where to find the potency cluster when ``cluster`` is ``None``.
    coverage
        Share of reference-like lots a tolerance interval must hold.
    confidence
        Confidence that it does.
    scale
        ``"logit"`` (default) or ``"fraction"``: where the normal model is assumed.
    pseudocount
        Added to every cluster count before logit and CLR.
    key_added
        ``adata.uns`` key of the result.
    copy
        Return a copy instead of writing in place.

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
    own = require_uns(adata, fractions_key, tool="tl.lot_fractions")
    own_counts = _counts_of(own)
    if isinstance(reference, AnnData):
        ref_stored = require_uns(reference, fractions_key, tool="tl.lot_fractions")
        ref_counts = _counts_of(ref_stored)
        new_counts = own_counts
        association_source = reference
    else:
        if isinstance(reference, str):
            msg = "reference must be an AnnData or a list of lot names, not a single string; wrap it in a list."
            raise TypeError(msg)
        names = [str(r) for r in reference]
        unknown = [r for r in names if r not in own_counts.index]
        if unknown:
            msg = f"reference lots {unknown} are not in adata.uns[{fractions_key!r}] (lots: {list(own_counts.index)})."
            raise ValueError(msg)
        ref_counts = own_counts.loc[names]
        new_counts = own_counts.drop(index=names)
        association_source = adata
    if len(ref_counts) < MIN_REFERENCE_LOTS:
        msg = (
            f"a tolerance interval needs at least {MIN_REFERENCE_LOTS} reference lots, got "
            f"{len(ref_counts)}; with fewer lots it is too wide to flag anything."
        )
        raise ValueError(msg)
    if len(new_counts) == 0:
        msg = "no new lots to compare: every lot in adata is a reference lot."
        raise ValueError(msg)
    missing = [c for c in new_counts.columns if c not in ref_counts.columns]
    if missing:
        msg = (
            f"new lots have clusters {missing} that the reference lots lack; count the new lots "
            "with the reference's labels (e.g. transferred by `tl.map_to_reference`)."
        )
        raise ValueError(msg)
    new_counts = new_counts.reindex(columns=ref_counts.columns, fill_value=0.0)
    if cluster is None:
        stored = require_uns(association_source, association_key, tool="tl.potency_association")
        cluster = str(stored.get("potency_cluster", ""))
        if not cluster:
            msg = (
                f"the reference's uns[{association_key!r}] names no potency cluster; pass cluster=."
            )
            raise ValueError(msg)
    clusters = [str(c) for c in ref_counts.columns]
    if cluster not in clusters:
        msg = f"unknown cluster {cluster!r}; the lot fractions have clusters {clusters}"
        raise ValueError(msg)
    if pseudocount <= 0:
        msg = f"pseudocount must be > 0, got {pseudocount!r}"
        raise ValueError(msg)
    if scale not in ("logit", "fraction"):
        msg = f"scale must be 'logit' or 'fraction', got {scale!r}"
        raise ValueError(msg)
    target = clusters.index(cluster)
    result = comparability_kernel(
        ref_counts.to_numpy(),
        new_counts.to_numpy(),
        target,
        coverage=coverage,
        confidence=confidence,
        scale=scale,
        pseudocount=pseudocount,
    )
    attributes = [*clusters, COMPOSITION_DISTANCE]
    n_clusters = len(clusters)
    fraction_low = np.append(_to_fraction(result["low"][:n_clusters], scale), 0.0)
    fraction_high = np.append(
        _to_fraction(result["high"][:n_clusters], scale), np.exp(result["high"][-1])
    )
    limits = pd.DataFrame(
        {
            "n_reference": len(ref_counts),
            "mean": result["mean"],
            "sd": result["sd"],
            "k": result["k"],
            "low": result["low"],
            "high": result["high"],
            "scale": [scale] * n_clusters + ["log"],
            "low_value": fraction_low,
            "high_value": fraction_high,
        },
        index=pd.Index(attributes, name="attribute"),
    )
    new_fractions = new_counts.div(new_counts.sum(axis=1), axis=0)
    ref_fractions = ref_counts.div(ref_counts.sum(axis=1), axis=0)
    outside = result["clusters_outside"]
    table = pd.DataFrame(
        {
            "n_cells": new_counts.sum(axis=1).to_numpy(),
            "potency_fraction": new_fractions[cluster].to_numpy(),
            "potency_low": fraction_low[target],
            "potency_high": fraction_high[target],
            "potency_within": result["potency_within"],
            COMPOSITION_DISTANCE: result["new_values"][:, -1],
            "distance_limit": fraction_high[-1],
            "composition_within": result["composition_within"],
            "clusters_outside": [",".join(np.asarray(clusters)[row]) for row in outside],
            "comparable": result["comparable"],
        },
        index=pd.Index(new_counts.index.astype(str), name=own["params"]["lot_key"]),
    )
    table["reason"] = [_reason(row, cluster) for _, row in table.iterrows()]
    values = pd.concat(
        [
            ref_fractions.assign(
                **{COMPOSITION_DISTANCE: result["reference_values"][:, -1]}
            ).assign(group="reference"),
            new_fractions.assign(**{COMPOSITION_DISTANCE: result["new_values"][:, -1]}).assign(
                group="new"
            ),
        ]
    )
    values.index = values.index.astype(str)
    values.index.name = own["params"]["lot_key"]
    values = values[["group", *attributes]]
    adata = adata.copy() if copy else adata
    adata.uns[key_added] = {
        "table": table,
        "limits": limits,
        "values": values,
        "cluster": cluster,
        "params": {
            "reference": "AnnData" if isinstance(reference, AnnData) else list(map(str, reference)),
            "cluster": cluster,
            "fractions_key": fractions_key,
            "association_key": association_key,
            "coverage": coverage,
            "confidence": confidence,
            "scale": scale,
            "pseudocount": pseudocount,
        },
    }
    return adata if copy else None


def _counts_of(stored: dict) -> pd.DataFrame:
    counts = pd.DataFrame(stored["counts"]).astype(float).copy()
    counts.index = counts.index.astype(str)
    counts.columns = counts.columns.astype(str)
    return counts


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
