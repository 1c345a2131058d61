"""Sub-clustering in a local representation: each cluster's own HVGs, PCA and kNN graph.

The global PCA spends its components on the differences between all populations; two
populations that differ by a weak programme (a potency state and its transitional
neighbour) can share one cluster because no global component separates them. Practitioners
then sub-cluster: re-select the highly variable genes on the cluster's cells alone, run a
PCA of those, build a kNN graph and run Leiden on it. Within one cluster the variance is
the difference between what it merged, so the local PCA sees it; lot effects, which can
then be the largest variance left, are removed from the local PCA first (Harmony).

This module does that for every fixed-k cluster with the package's own kernels (the HVG
selection of :func:`mscpotency.pp.preprocess`, its covariance PCA, the kNN graph and Leiden
of :func:`mscpotency.tl.cluster`). It never reads potency: the search adds the parts as
candidates, and its selection-aware permutation stays valid.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from ... import _dask
from ...pp._integrate import _harmony
from ...pp._pca import pca_of_hvg
from ...pp._preprocess import _select_hvg
from ._cluster import _leiden, _neighbour_graph

logger = logging.getLogger("mscpotency")

#: Fewest cells a cluster needs for a local representation of its own.
_MIN_LOCAL_CELLS = 50


@dataclass(frozen=True)
class LocalView:
    """One cluster in its own representation: local PCA, local kNN graph, Leiden parts."""

    cells: np.ndarray  # indices of the cluster's cells in the whole data
    embedding: np.ndarray  # cells x local PCs
    connectivities: sparse.csr_matrix  # local kNN graph (cells x cells)
    partitions: dict[float, np.ndarray]  # Leiden resolution -> labels of the cells
    n_hvg: int  # highly variable genes selected on the cluster's cells


def local_view(
    X,
    cells: np.ndarray,
    *,
    resolutions: Sequence[float],
    n_top_genes: int,
    n_comps: int,
    n_neighbors: int,
    seed: int,
    n_iterations: int,
    flavor: str,
    lots: np.ndarray | None = None,
) -> LocalView | None:
    """The local representation of the cells ``cells`` of log-normalised ``X`` and its parts.

    Parameters
    ----------
    X
        Log-normalised expression of all cells (sparse, dense or Dask), cells x genes.
    cells
        Indices of the cluster's cells.
    resolutions
        Leiden resolutions on the local kNN graph.
    n_top_genes
        Highly variable genes selected on these cells ('seurat' flavour, as
        :func:`mscpotency.pp.preprocess`).
    n_comps
        Local principal components (at most one fewer than the genes and the cells).
    n_neighbors
        Neighbours of the local kNN graph (exact, as :func:`mscpotency.tl.cluster` below
        150,000 cells).
    seed
        Seed of the graph and of Leiden.
    n_iterations, flavor
        Leiden options, as :func:`mscpotency.tl.cluster` used them.
    lots
        The lot of each of the cells: when they come from two or more lots, the local PCA
        is corrected for lot effects with Harmony (``pp.integrate``'s kernel and defaults:
        theta 2, 20 iterations) before the graph is built. Within a cluster the lot
        effects can be the largest variance left: on hard_100k seed 0 the potency
        population and its neighbour share cluster CL1 (18,430 cells), its second local
        PC carries the difference (R^2 0.70 with the truth) but PCs 3-10 carry lots (R^2
        0.47-0.74) and the local Leiden parts were lot groups (ARI 0.85 with the lots,
        0.01 with the truth); corrected, a part holds the potency population (F1 0.90,
        ARI 0.68 with the truth, 0.007 with the lots), at 2.4 s for the correction.

    Returns
    -------
    The view, or ``None`` for a cluster too small (fewer than 50 cells) or without
    variable genes.
    """
    if cells.size < max(_MIN_LOCAL_CELLS, n_neighbors + 2):
        return None
    block = X[cells]
    if _dask.is_dask(block):
        block = block.compute()
    if sparse.issparse(block):
        block = sparse.csr_matrix(block)
    local = AnnData(X=block)
    with warnings.catch_warnings():
        # genes silent in the cluster have no dispersion; all the others are then kept
        warnings.filterwarnings("ignore", "`n_top_genes` > number of normalized dispersions")
        _select_hvg(local, min(n_top_genes, local.n_vars), "seurat", None)
    hvg = local.var["highly_variable"].to_numpy()
    n_comps = min(n_comps, int(hvg.sum()) - 1, cells.size - 1)
    if n_comps < 2:
        return None
    pca_of_hvg(local, n_comps, hvg, seed)
    if lots is not None and np.unique(lots).size > 1:
        local.obsm["X_pca"] = _lot_corrected(local, np.asarray(lots), seed)
    graph, weights = _neighbour_graph(
        local,
        n_neighbors=n_neighbors,
        use_rep="X_pca",
        knn_method="auto",
        random_state=seed,
        neighbors_key="local",
        flavor=flavor,
    )
    partitions = {
        float(r): _leiden(
            graph, r, weights=weights, n_iterations=n_iterations, seed=seed, flavor=flavor
        )
        for r in resolutions
    }
    return LocalView(
        cells=np.asarray(cells),
        embedding=np.asarray(local.obsm["X_pca"], dtype=float),
        connectivities=sparse.csr_matrix(local.obsp["local_connectivities"]),
        partitions=partitions,
        n_hvg=int(hvg.sum()),
    )


def _lot_corrected(local: AnnData, lots: np.ndarray, seed: int) -> np.ndarray:
    """The local PCA corrected for lot effects by Harmony (theta 2, 20 iterations)."""
    batches = pd.DataFrame({"lot": pd.Categorical(lots.astype(str))})
    keep = np.ones(local.n_obs, dtype=bool)
    return _harmony(local, batches, "X_pca", [2.0], 20, seed, keep)


def local_views(
    X,
    groups: Sequence[np.ndarray],
    lot_codes: np.ndarray | None = None,
    **options,
) -> list[LocalView | None]:
    """:func:`local_view` of every group of cells (one per fixed-k cluster), timed.

    ``lot_codes``: the lot of every cell, for the lot correction of each local PCA.
    """
    start = time.perf_counter()
    views = [
        local_view(X, cells, lots=None if lot_codes is None else lot_codes[cells], **options)
        for cells in groups
    ]
    logger.info(
        "local sub-clustering of %d clusters (%d cells) in %.2f s",
        len(groups),
        sum(int(g.size) for g in groups),
        time.perf_counter() - start,
    )
    return views


def cohesion_lift(view: LocalView, inside: np.ndarray) -> float:
    """How much of a group's kNN weight stays inside it, beyond what its share would give.

    ``inside``: the group's cells among ``view.cells`` (boolean). Per cell of the group, the
    share of its kNN weight in the view's graph that reaches the group; their mean ``c``
    against the group's share ``s`` of the view's cells: ``(c - s) / (1 - s)``, 1 when the
    group's cells link only among themselves, 0 when they link as a random draw of the
    view's cells would. ``NaN`` when the group is empty or the whole view.
    """
    inside = np.asarray(inside, dtype=bool)
    share = float(inside.mean()) if inside.size else 0.0
    if not 0 < share < 1:
        return float("nan")
    graph = view.connectivities
    degree = np.asarray(graph.sum(axis=1)).ravel()[inside]
    linked = np.asarray(graph[inside] @ inside.astype(float)).ravel()
    cohesion = float(np.mean(linked / np.maximum(degree, 1e-12)))
    return (cohesion - share) / (1 - share)
