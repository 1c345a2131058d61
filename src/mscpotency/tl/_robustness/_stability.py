"""Robustness of the potency cluster to resolution, seed, cell subsample and single lots.

Two robustness checks a reviewer asks for when a single Spearman rho at one clustering
resolution carries a claim:

- :func:`association_stability` re-clusters the stored kNN graph over a resolution sweep
  and over random cell subsamples with new seeds, matches every new clustering to the
  reference clusters by Jaccard index (Hennig's ``clusterboot`` idea, on subsamples), and
  recomputes the matched cluster's association with potency each time.
- :func:`influential_lots` turns the leave-one-lot-out rhos into a flag: which lot, on its
  own, moves the association far more than the others.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from ... import _keys, _registry, _stats
from ..._docs import doc_params
from ..._provenance import record
from ..._settings import progress
from ..._stored import potency_cluster, stored
from ..._validate import lots_of, require_obs_column
from .._population._cluster import _leiden, _name_by_size, _weighted_igraph_of
from ._inputs import Potency, lot_counts, lot_potency, reference_graph

logger = logging.getLogger("mscpotency")

#: Default resolution sweep, as multiples of the reference clustering's resolution.
RESOLUTION_FACTORS = (0.25, 0.35, 0.5, 0.7, 1.0, 1.4, 2.0)
#: Hennig's (2007) reading of a cluster's mean bootstrap Jaccard: >= 0.75 stable, < 0.5 dissolved.
STABLE_JACCARD = 0.75
DISSOLVED_JACCARD = 0.5


# --------------------------------------------------------------------------- kernels
def igraph_from_connectivities(connectivities: sparse.spmatrix, flavor: str = "igraph"):
    """The weighted igraph graph of a kNN connectivity matrix, built as :func:`mscpotency.tl.cluster` builds it for ``flavor``."""
    return _weighted_igraph_of(connectivities, flavor)


def leiden_labels(
    graph, resolution: float, *, seed: int, n_iterations: int = 2, flavor: str = "igraph"
) -> np.ndarray:
    """Leiden labels of ``graph`` exactly as :func:`mscpotency.tl.cluster` computes them.

    Same graph, resolution, seed and flavor give the reference labels back; the random
    source is seeded for the call and restored afterwards.
    """
    labels = _leiden(
        graph, float(resolution), n_iterations=n_iterations, seed=int(seed), flavor=flavor
    )
    return np.asarray(labels, dtype=np.int64)


def contingency(a: np.ndarray, b: np.ndarray, n_a: int, n_b: int) -> np.ndarray:
    """Cells in each (a, b) pair of integer labels: an ``n_a x n_b`` count matrix."""
    table = np.zeros((n_a, n_b), dtype=np.int64)
    np.add.at(table, (a, b), 1)
    return table


def jaccard_matrix(a: np.ndarray, b: np.ndarray, n_a: int, n_b: int) -> np.ndarray:
    """Jaccard index of every cluster of labelling ``a`` with every cluster of ``b`` (same cells)."""
    both = contingency(a, b, n_a, n_b).astype(float)
    union = both.sum(axis=1, keepdims=True) + both.sum(axis=0, keepdims=True) - both
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, both / union, 0.0)


def robust_z(values: np.ndarray) -> np.ndarray:
    """``|x - median| / scale`` with scale ``1.4826 MAD``, or ``1.2533 MeanAD`` when MAD is 0.

    Leave-one-out rhos of a few lots are discrete and often mostly equal (MAD 0); the mean
    absolute deviation then takes over as the scale (the usual fallback of the modified
    z-score), so a lot is not an outlier merely for differing from a tie.
    """
    values = np.asarray(values, dtype=float)
    finite = np.isfinite(values)
    z = np.full(values.shape, np.nan)
    if not finite.any():
        return z
    deviation = np.abs(values[finite] - np.median(values[finite]))
    scale = 1.4826 * np.median(deviation)
    if scale <= 1e-12:
        scale = 1.2533 * deviation.mean()
    z[finite] = deviation / scale if scale > 1e-12 else 0.0
    return z


# --------------------------------------------------------------------------- helpers
def _lot_fraction_matrix(lot_codes: np.ndarray, labels: np.ndarray, n_lots: int) -> np.ndarray:
    n_labels = int(labels.max()) + 1
    counts = contingency(lot_codes, labels, n_lots, n_labels).astype(float)
    totals = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, counts / totals, np.nan)


def _by_size(labels: np.ndarray) -> np.ndarray:
    """Integer labels renumbered from the largest cluster (0) down."""
    names = _name_by_size(labels, "")
    return np.asarray(names.codes, dtype=np.int64)


def _association_of(
    fractions: np.ndarray,
    y: np.ndarray,
    matched: int,
    method: str,
    alternative: str,
    random_state: int,
) -> tuple[float, float, str, int, float]:
    """Rho and p of the matched cluster; the cluster with the largest rho and that rho."""
    keep = np.isfinite(fractions).all(axis=1)
    fractions, y = fractions[keep], y[keep]
    rho = _stats.spearman_rho(fractions, y)
    result = _stats.spearman_test(
        fractions[:, [matched]],
        y,
        method=method,
        alternative=alternative,  # type: ignore[arg-type]
        n_permutations=1999,
        random_state=random_state,
    )
    top = int(np.nanargmax(rho)) if np.isfinite(rho).any() else -1
    top_rho = float(rho[top]) if top >= 0 else float("nan")
    return float(rho[matched]), float(result.pvalue[0]), result.pvalue_method, top, top_rho


@dataclass(frozen=True)
class _Reference:
    """The reference clustering and the lots every re-clustering is compared with."""

    codes: np.ndarray  # reference cluster (code) of each cell
    categories: list[str]
    target: int  # code of the potency cluster
    lot_codes: np.ndarray
    n_lots: int
    y: np.ndarray  # potency of each lot
    method: str
    alternative: str
    random_state: int

    def association(self) -> tuple[float, float]:
        """Rho and p of the potency cluster itself, computed as for every re-clustering."""
        fractions = _lot_fraction_matrix(self.lot_codes, self.codes, self.n_lots)
        rho, p, *_ = _association_of(
            fractions, self.y, self.target, self.method, self.alternative, self.random_state
        )
        return rho, p


@dataclass(frozen=True)
class _Match:
    """A new clustering matched to the potency cluster, and the matched cluster's association."""

    n_clusters: int
    jaccard: np.ndarray  # reference clusters x new clusters
    matched: int
    matched_size: int
    rho: float
    pvalue: float
    pvalue_method: str
    top: int
    top_rho: float


def _match(reference: _Reference, new: np.ndarray, cells: np.ndarray | slice) -> _Match:
    """Match ``new`` labels of ``cells`` to the potency cluster (Jaccard) and test the match."""
    n_new = int(new.max()) + 1
    jaccard = jaccard_matrix(reference.codes[cells], new, len(reference.categories), n_new)
    matched = int(jaccard[reference.target].argmax())
    fractions = _lot_fraction_matrix(reference.lot_codes[cells], new, reference.n_lots)
    rho, p, p_method, top, top_rho = _association_of(
        fractions,
        reference.y,
        matched,
        reference.method,
        reference.alternative,
        reference.random_state,
    )
    return _Match(
        n_new, jaccard, matched, int((new == matched).sum()), rho, p, p_method, top, top_rho
    )


def _recovered(table: pd.DataFrame, min_jaccard: float, alpha: float) -> pd.Series:
    """Matched cluster is the top one, overlaps the potency cluster enough, and is significant."""
    return (
        table["matched_is_top"].astype(bool)
        & (table["jaccard"] >= min_jaccard)
        & (table["pvalue"] < alpha)
    )


def _sweep(
    reference: _Reference, graph, resolutions: Sequence[float], *, leiden: dict
) -> pd.DataFrame:
    """One row per resolution: the reference graph re-clustered with the reference seed."""
    rows = []
    for resolution in progress(sorted(resolutions), desc="resolution sweep", unit="Leiden"):
        new = _by_size(leiden_labels(graph, resolution, **leiden))
        match = _match(reference, new, slice(None))
        rows.append(
            {
                "resolution": resolution,
                "n_clusters": match.n_clusters,
                "matched_cluster": f"R{match.matched}",
                "jaccard": float(match.jaccard[reference.target, match.matched]),
                "matched_size": match.matched_size,
                "rho": match.rho,
                "pvalue": match.pvalue,
                "pvalue_method": match.pvalue_method,
                "top_cluster": f"R{match.top}",
                "top_rho": match.top_rho,
                "matched_is_top": match.matched == match.top,
            }
        )
    return pd.DataFrame(rows)


def _subsamples(
    reference: _Reference,
    connectivities: sparse.csr_matrix,
    resolution: float,
    *,
    n_subsamples: int,
    fraction: float,
    leiden: dict,
) -> tuple[pd.DataFrame, np.ndarray]:
    """One row per random cell subsample, clustered at ``resolution`` with its own seed.

    Also returns, per subsample and reference cluster, the best Jaccard index of any new
    cluster (NaN where the subsample has none of the cluster's cells).
    """
    rng = np.random.default_rng(reference.random_state)
    seeds = rng.integers(0, 2**31 - 1, size=n_subsamples)
    n_cells = connectivities.shape[0]
    n_keep = max(2, round(fraction * n_cells))
    n_categories = len(reference.categories)
    rows = []
    best_jaccard = np.full((n_subsamples, n_categories), np.nan)
    for i, seed in enumerate(progress(seeds, desc="subsamples", unit="Leiden")):
        keep = (
            np.sort(rng.choice(n_cells, size=n_keep, replace=False))
            if n_keep < n_cells
            else np.arange(n_cells)
        )
        subgraph = igraph_from_connectivities(connectivities[keep][:, keep], leiden["flavor"])
        new = _by_size(leiden_labels(subgraph, resolution, **{**leiden, "seed": int(seed)}))
        match = _match(reference, new, keep)
        present = np.bincount(reference.codes[keep], minlength=n_categories) > 0
        best_jaccard[i, present] = match.jaccard.max(axis=1)[present]
        rows.append(
            {
                "seed": int(seed),
                "n_cells": int(keep.size),
                "n_clusters": match.n_clusters,
                "jaccard": float(match.jaccard[reference.target, match.matched]),
                "rho": match.rho,
                "pvalue": match.pvalue,
                "matched_is_top": match.matched == match.top,
            }
        )
    columns = ["seed", "n_cells", "n_clusters", "jaccard", "rho", "pvalue", "matched_is_top"]
    table = pd.DataFrame(rows, columns=columns)
    table.index.name = "subsample"
    return table, best_jaccard


def _cluster_stability(
    best_jaccard: np.ndarray, reference: _Reference, cluster: str, cluster_key: str
) -> pd.DataFrame:
    """Per reference cluster: its subsample Jaccard indices read as in Hennig (2007)."""
    columns = ("mean_jaccard", "min_jaccard", "share_stable", "share_dissolved")
    if best_jaccard.shape[0]:
        with np.errstate(invalid="ignore"):
            jaccard = {
                "mean_jaccard": np.nanmean(best_jaccard, axis=0),
                "min_jaccard": np.nanmin(best_jaccard, axis=0),
                "share_stable": (best_jaccard >= STABLE_JACCARD).mean(axis=0),
                "share_dissolved": (best_jaccard < DISSOLVED_JACCARD).mean(axis=0),
            }
    else:
        jaccard = dict.fromkeys(columns, np.nan)
    clusters = pd.DataFrame(
        {"n_cells": np.bincount(reference.codes, minlength=len(reference.categories)), **jaccard},
        index=pd.Index(reference.categories, name=cluster_key),
    )
    clusters["is_potency_cluster"] = clusters.index == cluster
    return clusters


def _stability_summary(
    cluster: str,
    reference_resolution: float,
    reference_association: tuple[float, float],
    by_resolution: pd.DataFrame,
    by_subsample: pd.DataFrame,
    subsample_fraction: float,
) -> dict:
    """The shares of resolutions and subsamples that recover the association, and a sentence."""
    ref_rho, ref_p = reference_association
    n_subsamples = len(by_subsample)
    median_jaccard = float(by_subsample["jaccard"].median()) if n_subsamples else float("nan")
    sentence = (
        f"{cluster} (rho = {ref_rho:.2f}, p = {ref_p:.2g}) is recovered at "
        f"{int(by_resolution['recovered'].sum())}/{len(by_resolution)} resolutions"
    )
    if n_subsamples:
        sentence += (
            f" and in {int(by_subsample['recovered'].sum())}/{n_subsamples} subsamples of "
            f"{subsample_fraction:.0%} of cells (median Jaccard {median_jaccard:.2f})"
        )
    return {
        "cluster": cluster,
        "reference_resolution": reference_resolution,
        "reference_rho": ref_rho,
        "reference_pvalue": ref_p,
        "share_resolutions_recovered": float(by_resolution["recovered"].mean()),
        "share_subsamples_recovered": float(by_subsample["recovered"].mean())
        if n_subsamples
        else float("nan"),
        "median_subsample_jaccard": median_jaccard,
        "text": sentence + ".",
    }


def _check_stability_options(
    subsample_fraction: float, n_subsamples: int, min_jaccard: float
) -> None:
    if not 0 < subsample_fraction <= 1:
        msg = f"subsample_fraction must be in (0, 1], got {subsample_fraction!r}"
        raise ValueError(msg)
    if n_subsamples < 0:
        msg = f"n_subsamples must be >= 0, got {n_subsamples!r}"
        raise ValueError(msg)
    if not 0 < min_jaccard <= 1:
        msg = f"min_jaccard must be in (0, 1], got {min_jaccard!r}"
        raise ValueError(msg)


def _sweep_resolutions(resolutions: Sequence[float] | None, reference: float) -> list[float]:
    """The sweep's resolutions: given, or the reference resolution times RESOLUTION_FACTORS."""
    if resolutions is None:
        resolutions = [reference * f for f in RESOLUTION_FACTORS]
    resolutions = [float(r) for r in resolutions]
    if not resolutions or any(not np.isfinite(r) or r <= 0 for r in resolutions):
        msg = f"resolutions must be positive numbers, got {resolutions!r}"
        raise ValueError(msg)
    return resolutions


def _reference_of(
    adata: AnnData,
    potency: Potency,
    cluster: str | None,
    *,
    cluster_key: str,
    lot_key: str,
    association_key: str,
    options: dict,
) -> tuple[_Reference, str]:
    """The reference labels, the potency cluster's code, the lots and their potency."""
    labels = require_obs_column(
        adata, cluster_key, what="cluster labels", hint="Run `tl.cluster` first."
    ).astype("category")
    categories = [str(c) for c in labels.cat.categories]
    cluster = potency_cluster(adata, cluster=cluster, association_key=association_key)
    if cluster not in categories:
        msg = f"unknown cluster {cluster!r} in obs[{cluster_key!r}]; known clusters: {categories}"
        raise ValueError(msg)
    lots = lots_of(adata, lot_key)
    lot_names = pd.Index(lots.cat.categories.astype(str))
    outcome, potency_name = lot_potency(
        adata, potency, lot_names, lot_key, association_key=association_key
    )
    reference = _Reference(
        codes=labels.cat.codes.to_numpy().astype(np.int64),
        categories=categories,
        target=categories.index(cluster),
        lot_codes=lots.cat.codes.to_numpy().astype(np.int64),
        n_lots=lot_names.size,
        y=outcome.to_numpy(),
        **options,
    )
    return reference, potency_name


# --------------------------------------------------------------------------- stability
@doc_params
@record("tl.association_stability")
def association_stability(
    adata: AnnData,
    potency: Potency = _keys.POTENCY,
    *,
    cluster: str | None = None,
    resolutions: Sequence[float] | None = None,
    n_subsamples: int = 20,
    subsample_fraction: float = 0.8,
    cluster_key: str = _keys.CLUSTER,
    lot_key: str = _keys.LOT,
    association_key: str = _registry.POTENCY_ASSOCIATION.key,
    min_jaccard: float = DISSOLVED_JACCARD,
    alpha: float = 0.05,
    method: _stats.PvalueMethod = "auto",
    alternative: _stats.Alternative = "two-sided",
    n_iterations: int | None = None,
    random_state: int = 0,
    key_added: str = _registry.ASSOCIATION_STABILITY.key,
    copy: bool = False,
) -> AnnData | None:
    """Check that the potency cluster and its association survive other clusterings.

    The kNN graph of :func:`mscpotency.tl.cluster` is re-clustered (Leiden) at every
    resolution of a sweep, and at the reference resolution on ``n_subsamples`` random
    subsamples of the cells with a new seed each. Every new clustering is matched to the
    reference clusters by the Jaccard index of their cells (on a subsample: of the cells
    drawn); the cluster that best matches the potency cluster is the *matched cluster*,
    and its lot fractions are tested against potency again (Spearman, exact p at small n).

    A resolution (or subsample) *recovers* the association when the matched cluster has
    a Jaccard index of at least ``min_jaccard`` with the potency cluster, has the largest
    rho of its clustering, and its p-value is below ``alpha``. Per reference cluster, the
    mean Jaccard over subsamples reads as in Hennig (2007): >= 0.75 stable, < 0.5 dissolved.

    Parameters
    ----------
    adata
        {adata}
        Clustered by :func:`mscpotency.tl.cluster` (its graph in ``obsp``).
    potency
        {potency}
        Or a lot -> value mapping/Series.
    resolutions
        Leiden resolutions of the sweep; default: the reference resolution times
        0.25, 0.35, 0.5, 0.7, 1, 1.4 and 2.
    n_subsamples
        Random subsamples of cells, each clustered at the reference resolution with its own
        seed (0 to skip).
    subsample_fraction
        Share of cells in each subsample; ``1.0`` varies the seed only.
    cluster_key
        {cluster_key}
        Also the ``uns`` key of the clustering.
    min_jaccard
        Smallest Jaccard index at which the matched cluster counts as the potency cluster.
    n_iterations
        Leiden iterations; default: those of the reference clustering.
    random_state
        {random_state}
        Seeds the subsamples (and their Leiden runs); the sweep uses the reference
        clustering's own seed, so at the reference resolution it gives the reference
        labels back.

    Returns
    -------
    ``None``, or the copy when ``copy=True``. Writes ``adata.uns[key_added]`` with
    ``'resolutions'`` : DataFrame (one row per resolution: resolution, n_clusters,
    matched_cluster, jaccard, matched_size, rho, pvalue, pvalue_method, top_cluster,
    top_rho, matched_is_top, recovered), ``'subsamples'`` : DataFrame (one row per
    subsample: seed, n_cells, n_clusters, jaccard, rho, pvalue, matched_is_top, recovered),
    ``'clusters'`` : DataFrame (one row per reference cluster: n_cells, mean_jaccard,
    min_jaccard, share_stable, share_dissolved, is_potency_cluster), ``'summary'`` : dict
    (cluster, reference rho and p, share of resolutions and of subsamples that recover
    the association, median subsample Jaccard, a sentence) and ``'params'``.
    """
    options = {"method": method, "alternative": alternative, "random_state": random_state}
    reference, potency_name = _reference_of(
        adata,
        potency,
        cluster,
        cluster_key=cluster_key,
        lot_key=lot_key,
        association_key=association_key,
        options=options,
    )
    cluster = reference.categories[reference.target]
    _check_stability_options(subsample_fraction, n_subsamples, min_jaccard)
    connectivities, reference_resolution, cluster_params = reference_graph(adata, cluster_key)
    if n_iterations is None:
        n_iterations = int(cluster_params.get("n_iterations", 2))
    leiden = {
        "seed": int(cluster_params.get("random_state", 0)),
        "n_iterations": n_iterations,
        "flavor": str(cluster_params.get("flavor", "igraph")),
    }
    resolutions = _sweep_resolutions(resolutions, reference_resolution)

    adata = adata.copy() if copy else adata
    by_resolution = _sweep(
        reference,
        igraph_from_connectivities(connectivities, leiden["flavor"]),
        resolutions,
        leiden=leiden,
    )
    by_resolution["recovered"] = _recovered(by_resolution, min_jaccard, alpha)
    by_subsample, best_jaccard = _subsamples(
        reference,
        connectivities,
        reference_resolution,
        n_subsamples=n_subsamples,
        fraction=subsample_fraction,
        leiden=leiden,
    )
    by_subsample["recovered"] = _recovered(by_subsample, min_jaccard, alpha)
    summary = _stability_summary(
        cluster,
        reference_resolution,
        reference.association(),
        by_resolution,
        by_subsample,
        subsample_fraction,
    )
    adata.uns[key_added] = {
        "resolutions": by_resolution,
        "subsamples": by_subsample,
        "clusters": _cluster_stability(best_jaccard, reference, cluster, cluster_key),
        "summary": summary,
        "params": {
            "potency": potency_name,
            "cluster": cluster,
            "resolutions": resolutions,
            "n_subsamples": n_subsamples,
            "subsample_fraction": subsample_fraction,
            "cluster_key": cluster_key,
            "lot_key": lot_key,
            "association_key": association_key,
            "min_jaccard": min_jaccard,
            "alpha": alpha,
            "method": method,
            "alternative": alternative,
            "n_iterations": n_iterations,
            "random_state": random_state,
        },
    }
    logger.info(summary["text"])
    return adata if copy else None


# --------------------------------------------------------------------------- influence
def influence_kernel(
    x: np.ndarray,
    y: np.ndarray,
    *,
    z_threshold: float = 3.5,
    min_shift: float = 0.1,
) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """Rho of ``x`` vs ``y``, rho without each lot, the robust z of those rhos and the flags.

    A lot is flagged when its leave-one-out rho is an outlier among all leave-one-out rhos
    (robust z above ``z_threshold``) and leaving it out moves rho by ``min_shift`` or more.
    """
    x = np.asarray(x, dtype=float)[:, None]
    y = np.asarray(y, dtype=float)
    rho = float(_stats.spearman_rho(x, y)[0])
    loo = _stats.leave_one_out(x, y)[:, 0]
    z = robust_z(loo)
    with np.errstate(invalid="ignore"):
        flagged = (z > z_threshold) & (np.abs(loo - rho) >= min_shift)
    return rho, loo, z, flagged


def _association_feature(
    adata: AnnData, association: dict, cluster: str, clusters: list[str]
) -> np.ndarray:
    """The cluster's per-lot feature as the association tested it: fraction, or CLR of counts."""
    association_params = association["params"]
    lots_table: pd.DataFrame = association["lots"]
    if association_params.get("transform") != "clr":
        return lots_table[cluster].to_numpy(dtype=float)
    counts = lot_counts(adata, association_params["fractions_key"])
    counts = counts.loc[lots_table.index, clusters].to_numpy(dtype=float)
    return _stats.clr(counts, counts=counts)[:, clusters.index(cluster)]


def _pvalues_without_each_lot(
    x: np.ndarray, y: np.ndarray, association_params: dict
) -> tuple[np.ndarray, float]:
    """The association's p-value without each lot, and with all lots (same test options)."""
    options = {
        "method": association_params.get("method", "auto"),
        "alternative": association_params.get("alternative", "two-sided"),
        "random_state": int(association_params.get("random_state", 0)),
    }
    keep = ~np.eye(len(x), dtype=bool)
    without = [
        _stats.spearman_test(x[keep[i], None], y[keep[i]], **options).pvalue[0]
        for i in range(len(x))
    ]
    return np.array(without), float(_stats.spearman_test(x[:, None], y, **options).pvalue[0])


@doc_params
@record("tl.influential_lots")
def influential_lots(
    adata: AnnData,
    cluster: str | None = None,
    *,
    association_key: str = _registry.POTENCY_ASSOCIATION.key,
    z_threshold: float = 3.5,
    min_shift: float = 0.1,
    key_added: str = _registry.INFLUENTIAL_LOTS.key,
    copy: bool = False,
) -> AnnData | None:
    """Flag a lot that on its own drives the potency association (leave-one-lot-out).

    For the cluster's lot fractions (transformed as in :func:`mscpotency.tl.potency_association`),
    rho is recomputed with each lot left out. A lot is *influential* when its leave-one-out
    rho lies far from the others' (robust z = ``|rho_-i - median| / (1.4826 MAD)``,
    MeanAD-based when MAD is 0, above ``z_threshold``, the Iglewicz-Hoaglin outlier rule)
    **and** leaving it out moves rho by at least ``min_shift``. Leaving one lot out cannot
    be done quietly at n ≈ 10: the exact p-value without the lot is reported too, with
    whether it changes the call at the association's ``alpha``.

    On lot-level simulations shaped like the study (11 lots of 1,500 cells, rho ≈ 0.9) the
    rule flags a planted discordant lot (highest fraction, lowest potency), and only it, in
    ~99% of studies and any lot in < 1% of clean ones (8 lots of 150 cells: ~91% and ~5%).
    Without any association (rho ≈ 0) some lot is flagged in about a third of studies,
    because a near-zero rho is easily moved by one lot: read the flag next to the
    association, not instead of it.

    Parameters
    ----------
    adata
        {adata}
        With ``uns[association_key]`` from :func:`mscpotency.tl.potency_association`.
    z_threshold
        Robust z above which a leave-one-out rho is an outlier.
    min_shift
        Smallest change of rho that counts as influence.

    Returns
    -------
    ``None``, or the copy when ``copy=True``. Writes ``adata.uns[key_added]`` with
    ``'table'`` : DataFrame (one row per lot: potency, feature, rho_without, shift,
    robust_z, pvalue_without, changes_call, influential), ``'cluster'``, ``'rho'``,
    ``'pvalue'`` and ``'params'``.
    """
    association = stored(adata, _registry.POTENCY_ASSOCIATION, association_key)
    association_params = association["params"]
    lots_table: pd.DataFrame = association["lots"]
    cluster = potency_cluster(adata, cluster=cluster, association_key=association_key)
    potency_name = str(association_params["potency"])
    clusters = [c for c in lots_table.columns if c != potency_name]
    if cluster not in clusters:
        msg = f"unknown cluster {cluster!r}; the stored association has clusters {clusters}"
        raise ValueError(msg)
    if z_threshold <= 0 or min_shift < 0:
        msg = f"z_threshold must be > 0 and min_shift >= 0, got {z_threshold!r} and {min_shift!r}"
        raise ValueError(msg)
    if len(lots_table) < 4:
        msg = (
            "leave-one-lot-out needs at least 4 lots (3 remain for a rank correlation), "
            f"got {len(lots_table)}."
        )
        raise ValueError(msg)
    x = _association_feature(adata, association, cluster, clusters)
    y = lots_table[potency_name].to_numpy(dtype=float)
    rho, loo, z, flagged = influence_kernel(x, y, z_threshold=z_threshold, min_shift=min_shift)
    p_without, p_full = _pvalues_without_each_lot(x, y, association_params)
    alpha = float(association_params.get("alpha", 0.05))
    table = pd.DataFrame(
        {
            potency_name: y,
            "feature": x,
            "rho_without": loo,
            "shift": loo - rho,
            "robust_z": z,
            "pvalue_without": p_without,
            "changes_call": (p_without < alpha) != (p_full < alpha),
            "influential": flagged,
        },
        index=pd.Index(
            lots_table.index.astype(str), name=association_params.get("lot_key", _keys.LOT)
        ),
    )
    adata = adata.copy() if copy else adata
    adata.uns[key_added] = {
        "table": table,
        "cluster": cluster,
        "rho": rho,
        "pvalue": p_full,
        "params": {
            "association_key": association_key,
            "cluster": cluster,
            "z_threshold": z_threshold,
            "min_shift": min_shift,
            "transform": association_params.get("transform", "fraction"),
            "potency": potency_name,
            "alpha": alpha,
        },
    }
    return adata if copy else None
