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
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from ... import _keys, _registry, _stats
from ..._provenance import record
from ..._validate import lots_of, require_obs_column, require_uns
from .._population._association import lot_outcome
from .._population._cluster import _igraph_of, _leiden, _name_by_size

logger = logging.getLogger("mscpotency")

#: Default ``key_added`` of the tools in this module.
ASSOCIATION_STABILITY = "association_stability"
INFLUENTIAL_LOTS = "influential_lots"

#: Default resolution sweep, as multiples of the reference clustering's resolution.
RESOLUTION_FACTORS = (0.25, 0.35, 0.5, 0.7, 1.0, 1.4, 2.0)
#: Hennig's (2007) reading of a cluster's mean bootstrap Jaccard: >= 0.75 stable, < 0.5 dissolved.
STABLE_JACCARD = 0.75
DISSOLVED_JACCARD = 0.5


# --------------------------------------------------------------------------- kernels
def igraph_from_connectivities(connectivities: sparse.spmatrix):
    """The weighted igraph graph of a kNN connectivity matrix, built as :func:`mscpotency.tl.cluster` builds it."""
    return _igraph_of(connectivities)


def leiden_labels(graph, resolution: float, *, seed: int, n_iterations: int = 2) -> np.ndarray:
    """Leiden labels of ``graph`` exactly as :func:`mscpotency.tl.cluster` computes them.

    Same graph, resolution and seed give the reference labels back; igraph's random source
    is seeded for the call and restored afterwards.
    """
    return np.asarray(_leiden(graph, float(resolution), n_iterations, int(seed)), dtype=np.int64)


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
def _graph_of(adata: AnnData, cluster_key: str) -> tuple[sparse.csr_matrix, float]:
    """The kNN connectivities and resolution ``tl.cluster`` used for ``obs[cluster_key]``.

    The clustering's parameters are in ``adata.uns[cluster_key]['params']``.
    """
    stored = require_uns(adata, cluster_key, tool="tl.cluster")
    params = stored.get("params", {}) if isinstance(stored, dict) else {}
    neighbors_key = params.get("neighbors_key")
    if neighbors_key is None or neighbors_key not in adata.uns:
        msg = (
            f"adata.uns[{cluster_key!r}] names no neighbour graph that is still present; "
            "run `tl.cluster` again."
        )
        raise KeyError(msg)
    connectivities_key = adata.uns[neighbors_key].get(
        "connectivities_key", f"{neighbors_key}_connectivities"
    )
    if connectivities_key not in adata.obsp:
        msg = f"adata.obsp has no {connectivities_key!r} (the graph of `tl.cluster`); run `tl.cluster` again."
        raise KeyError(msg)
    return sparse.csr_matrix(adata.obsp[connectivities_key]), float(stored["resolution"])


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


# --------------------------------------------------------------------------- stability
@record("tl.association_stability")
def association_stability(
    adata: AnnData,
    potency: str | Mapping | pd.Series = _keys.POTENCY,
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
    key_added: str = ASSOCIATION_STABILITY,
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
        Cells clustered by :func:`mscpotency.tl.cluster` (its graph in ``obsp``).
    potency
        obs column with one value per lot, or a lot -> value mapping/Series.
    cluster
        The reference potency cluster; default: the one found by
        :func:`mscpotency.tl.potency_association`.
    resolutions
        Leiden resolutions of the sweep; default: the reference resolution times
        0.25, 0.35, 0.5, 0.7, 1, 1.4 and 2.
    n_subsamples
        Random subsamples of cells, each clustered at the reference resolution with its own
        seed (0 to skip).
    subsample_fraction
        Share of cells in each subsample; ``1.0`` varies the seed only.
    cluster_key
        obs column of the reference labels (and ``uns`` key of the clustering).
    lot_key
        obs column with the lot of each cell.
    association_key
        Where to find the potency cluster when ``cluster`` is ``None``.
    min_jaccard
        Smallest Jaccard index at which the matched cluster counts as the potency cluster.
    alpha
        Level at which the matched cluster's association counts as significant.
    method
        p-value method of the Spearman kernel: ``"auto"``, ``"exact"`` or ``"permutation"``.
    alternative
        ``"two-sided"``, ``"greater"`` or ``"less"``.
    n_iterations
        Leiden iterations; default: those of the reference clustering.
    random_state
        Seed of the subsamples (and of their Leiden runs). The sweep uses the reference
        clustering's own seed, so the sweep at the reference resolution gives the
        reference labels back.
    key_added
        ``adata.uns`` key of the result.
    copy
        Return a copy instead of writing in place.

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
    labels = require_obs_column(
        adata, cluster_key, what="cluster labels", hint="Run `tl.cluster` first."
    )
    labels = labels.astype("category")
    categories = [str(c) for c in labels.cat.categories]
    if cluster is None:
        stored = require_uns(adata, association_key, tool="tl.potency_association")
        cluster = str(stored.get("potency_cluster", ""))
        if not cluster:
            msg = (
                f"adata.uns[{association_key!r}] names no potency cluster (no cluster has a "
                "positive rho); pass cluster= to check one."
            )
            raise ValueError(msg)
    if cluster not in categories:
        msg = f"unknown cluster {cluster!r} in obs[{cluster_key!r}]; known clusters: {categories}"
        raise ValueError(msg)
    if not 0 < subsample_fraction <= 1:
        msg = f"subsample_fraction must be in (0, 1], got {subsample_fraction!r}"
        raise ValueError(msg)
    if n_subsamples < 0:
        msg = f"n_subsamples must be >= 0, got {n_subsamples!r}"
        raise ValueError(msg)
    if not 0 < min_jaccard <= 1:
        msg = f"min_jaccard must be in (0, 1], got {min_jaccard!r}"
        raise ValueError(msg)
    connectivities, reference_resolution = _graph_of(adata, cluster_key)
    cluster_params = adata.uns[cluster_key]["params"]
    sweep_seed = int(cluster_params.get("random_state", 0))
    if n_iterations is None:
        n_iterations = int(cluster_params.get("n_iterations", 2))
    if resolutions is None:
        resolutions = [reference_resolution * f for f in RESOLUTION_FACTORS]
    resolutions = [float(r) for r in resolutions]
    if not resolutions or any(not np.isfinite(r) or r <= 0 for r in resolutions):
        msg = f"resolutions must be positive numbers, got {resolutions!r}"
        raise ValueError(msg)
    lots = lots_of(adata, lot_key)
    lot_names = pd.Index(lots.cat.categories.astype(str))
    outcome, potency_name = lot_outcome(adata, potency, lot_names, lot_key)
    y = outcome.to_numpy()
    lot_codes = lots.cat.codes.to_numpy().astype(np.int64)
    n_lots = lot_names.size
    ref_codes = labels.cat.codes.to_numpy().astype(np.int64)
    target = categories.index(cluster)

    # the reference association, computed the same way as every re-clustering
    ref_fractions = _lot_fraction_matrix(lot_codes, ref_codes, n_lots)
    ref_rho, ref_p, _, _, _ = _association_of(
        ref_fractions, y, target, method, alternative, random_state
    )

    adata = adata.copy() if copy else adata
    graph = igraph_from_connectivities(connectivities)
    rows = []
    for resolution in sorted(resolutions):
        new = _by_size(leiden_labels(graph, resolution, seed=sweep_seed, n_iterations=n_iterations))
        n_new = int(new.max()) + 1
        jac = jaccard_matrix(ref_codes, new, len(categories), n_new)[target]
        matched = int(jac.argmax())
        fractions = _lot_fraction_matrix(lot_codes, new, n_lots)
        rho, p, p_method, top, top_rho = _association_of(
            fractions, y, matched, method, alternative, random_state
        )
        rows.append(
            {
                "resolution": resolution,
                "n_clusters": n_new,
                "matched_cluster": f"R{matched}",
                "jaccard": float(jac[matched]),
                "matched_size": int((new == matched).sum()),
                "rho": rho,
                "pvalue": p,
                "pvalue_method": p_method,
                "top_cluster": f"R{top}",
                "top_rho": top_rho,
                "matched_is_top": matched == top,
            }
        )
    by_resolution = pd.DataFrame(rows)
    by_resolution["recovered"] = (
        by_resolution["matched_is_top"]
        & (by_resolution["jaccard"] >= min_jaccard)
        & (by_resolution["pvalue"] < alpha)
    )

    rng = np.random.default_rng(random_state)
    seeds = rng.integers(0, 2**31 - 1, size=n_subsamples)
    n_keep = max(2, round(subsample_fraction * adata.n_obs))
    sub_rows = []
    per_cluster = np.full((n_subsamples, len(categories)), np.nan)
    for i, seed in enumerate(seeds):
        keep = (
            np.sort(rng.choice(adata.n_obs, size=n_keep, replace=False))
            if n_keep < adata.n_obs
            else np.arange(adata.n_obs)
        )
        subgraph = igraph_from_connectivities(connectivities[keep][:, keep])
        new = _by_size(
            leiden_labels(subgraph, reference_resolution, seed=int(seed), n_iterations=n_iterations)
        )
        n_new = int(new.max()) + 1
        jac = jaccard_matrix(ref_codes[keep], new, len(categories), n_new)
        present = np.bincount(ref_codes[keep], minlength=len(categories)) > 0
        per_cluster[i, present] = jac.max(axis=1)[present]
        matched = int(jac[target].argmax())
        fractions = _lot_fraction_matrix(lot_codes[keep], new, n_lots)
        rho, p, _, top, _ = _association_of(
            fractions, y, matched, method, alternative, random_state
        )
        sub_rows.append(
            {
                "seed": int(seed),
                "n_cells": int(keep.size),
                "n_clusters": n_new,
                "jaccard": float(jac[target, matched]),
                "rho": rho,
                "pvalue": p,
                "matched_is_top": matched == top,
            }
        )
    columns = ["seed", "n_cells", "n_clusters", "jaccard", "rho", "pvalue", "matched_is_top"]
    by_subsample = pd.DataFrame(sub_rows, columns=columns)
    by_subsample.index.name = "subsample"
    by_subsample["recovered"] = (
        by_subsample["matched_is_top"].astype(bool)
        & (by_subsample["jaccard"] >= min_jaccard)
        & (by_subsample["pvalue"] < alpha)
    )

    with np.errstate(invalid="ignore"):
        clusters = pd.DataFrame(
            {
                "n_cells": np.bincount(ref_codes, minlength=len(categories)),
                "mean_jaccard": np.nanmean(per_cluster, axis=0) if n_subsamples else np.nan,
                "min_jaccard": np.nanmin(per_cluster, axis=0) if n_subsamples else np.nan,
                "share_stable": (per_cluster >= STABLE_JACCARD).mean(axis=0)
                if n_subsamples
                else np.nan,
                "share_dissolved": (per_cluster < DISSOLVED_JACCARD).mean(axis=0)
                if n_subsamples
                else np.nan,
            },
            index=pd.Index(categories, name=cluster_key),
        )
    clusters["is_potency_cluster"] = clusters.index == cluster

    share_res = float(by_resolution["recovered"].mean())
    share_sub = float(by_subsample["recovered"].mean()) if n_subsamples else float("nan")
    median_jac = float(by_subsample["jaccard"].median()) if n_subsamples else float("nan")
    sentence = (
        f"{cluster} (rho = {ref_rho:.2f}, p = {ref_p:.2g}) is recovered at "
        f"{int(by_resolution['recovered'].sum())}/{len(by_resolution)} resolutions"
    )
    if n_subsamples:
        sentence += (
            f" and in {int(by_subsample['recovered'].sum())}/{n_subsamples} subsamples of "
            f"{subsample_fraction:.0%} of cells (median Jaccard {median_jac:.2f})"
        )
    sentence += "."
    adata.uns[key_added] = {
        "resolutions": by_resolution,
        "subsamples": by_subsample,
        "clusters": clusters,
        "summary": {
            "cluster": cluster,
            "reference_resolution": reference_resolution,
            "reference_rho": ref_rho,
            "reference_pvalue": ref_p,
            "share_resolutions_recovered": share_res,
            "share_subsamples_recovered": share_sub,
            "median_subsample_jaccard": median_jac,
            "text": sentence,
        },
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
    logger.info(sentence)
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


@record("tl.influential_lots")
def influential_lots(
    adata: AnnData,
    cluster: str | None = None,
    *,
    association_key: str = _registry.POTENCY_ASSOCIATION.key,
    z_threshold: float = 3.5,
    min_shift: float = 0.1,
    key_added: str = INFLUENTIAL_LOTS,
    copy: bool = False,
) -> AnnData | None:
    """Flag a lot that on its own drives the potency association (leave-one-lot-out).

    For the cluster's lot fractions (transformed as in :func:`mscpotency.tl.potency_association`),
    rho is recomputed with each lot left out. A lot is *influential* when its leave-one-out
    rho lies far from the others' (robust z = ``|rho_-i - median| / (1.4826 MAD)``, MeanAD-based when MAD is 0, above
    ``z_threshold``, the Iglewicz-Hoaglin outlier rule) **and** leaving it out moves rho by
    at least ``min_shift``. Leaving one lot out cannot be done quietly at n ≈ 10: the
    exact p-value without the lot is reported too, with whether it changes the call at the
    association's ``alpha``.

    On lot-level simulations shaped like the study (11 lots of 1,500 cells, rho ≈ 0.9) the
    rule flags a planted discordant lot (highest fraction, lowest potency), and only it, in
    ~99% of studies and any lot in < 1% of clean ones (8 lots of 150 cells: ~91% and ~5%).
    Without any association (rho ≈ 0) some lot is flagged in about a third of studies,
    because a near-zero rho is easily moved by one lot: read the flag next to the
    association, not instead of it.

    Parameters
    ----------
    adata
        Cells with ``uns[association_key]`` from :func:`mscpotency.tl.potency_association`.
    cluster
        Cluster to check; default: the potency cluster.
    association_key
        Key of the stored association.
    z_threshold
        Robust z above which a leave-one-out rho is an outlier.
    min_shift
        Smallest change of rho that counts as influence.
    key_added
        ``adata.uns`` key of the result.
    copy
        Return a copy instead of writing in place.

    Returns
    -------
    ``None``, or the copy when ``copy=True``. Writes ``adata.uns[key_added]`` with
    ``'table'`` : DataFrame (one row per lot: potency, feature, rho_without, shift,
    robust_z, pvalue_without, changes_call, influential), ``'cluster'``, ``'rho'``,
    ``'pvalue'`` and ``'params'``.
    """
    stored = require_uns(adata, association_key, tool="tl.potency_association")
    params = stored["params"]
    lots_table: pd.DataFrame = stored["lots"]
    if cluster is None:
        cluster = str(stored.get("potency_cluster", ""))
        if not cluster:
            msg = f"adata.uns[{association_key!r}] names no potency cluster; pass cluster=."
            raise ValueError(msg)
    potency_name = str(params["potency"])
    clusters = [c for c in lots_table.columns if c != potency_name]
    if cluster not in clusters:
        msg = f"unknown cluster {cluster!r}; the stored association has clusters {clusters}"
        raise ValueError(msg)
    if z_threshold <= 0 or min_shift < 0:
        msg = f"z_threshold must be > 0 and min_shift >= 0, got {z_threshold!r} and {min_shift!r}"
        raise ValueError(msg)
    n_lots = len(lots_table)
    if n_lots < 4:
        msg = f"leave-one-lot-out needs at least 4 lots (3 remain for a rank correlation), got {n_lots}."
        raise ValueError(msg)
    if params.get("transform") == "clr":
        counts = require_uns(adata, params["fractions_key"], tool="tl.lot_fractions")["counts"]
        counts = counts.copy()
        counts.index = counts.index.astype(str)
        counts.columns = counts.columns.astype(str)
        counts = counts.loc[lots_table.index, clusters]
        features = _stats.clr(counts.to_numpy(dtype=float), counts=counts.to_numpy(dtype=float))
        x = features[:, clusters.index(cluster)]
    else:
        x = lots_table[cluster].to_numpy(dtype=float)
    y = lots_table[potency_name].to_numpy(dtype=float)
    rho, loo, z, flagged = influence_kernel(x, y, z_threshold=z_threshold, min_shift=min_shift)
    keep = ~np.eye(n_lots, dtype=bool)
    method = params.get("method", "auto")
    alternative = params.get("alternative", "two-sided")
    alpha = float(params.get("alpha", 0.05))
    p_without = np.array(
        [
            _stats.spearman_test(
                x[keep[i], None],
                y[keep[i]],
                method=method,
                alternative=alternative,
                random_state=int(params.get("random_state", 0)),
            ).pvalue[0]
            for i in range(n_lots)
        ]
    )
    p_full = float(
        _stats.spearman_test(
            x[:, None],
            y,
            method=method,
            alternative=alternative,
            random_state=int(params.get("random_state", 0)),
        ).pvalue[0]
    )
    shift = loo - rho
    table = pd.DataFrame(
        {
            potency_name: y,
            "feature": x,
            "rho_without": loo,
            "shift": shift,
            "robust_z": z,
            "pvalue_without": p_without,
            "changes_call": (p_without < alpha) != (p_full < alpha),
        },
        index=pd.Index(lots_table.index.astype(str), name=params.get("lot_key", _keys.LOT)),
    )
    table["influential"] = flagged
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
            "transform": params.get("transform", "fraction"),
            "potency": potency_name,
            "alpha": alpha,
        },
    }
    return adata if copy else None
