"""Leiden clustering of the pooled lots (igraph or leidenalg), optionally to a target number of clusters."""

from __future__ import annotations

import functools
import logging
import random
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Literal

import numba
import numpy as np
import pandas as pd
import scanpy as sc
from anndata import AnnData
from scipy import sparse

from ... import _registry
from ..._cell_stats import worker_threads
from ..._docs import doc_params
from ..._memory import release_freed_memory
from ..._provenance import record
from ..._settings import progress

if TYPE_CHECKING:
    import igraph

logger = logging.getLogger("mscpotency")

_RESOLUTION_BOUNDS = (0.01, 5.0)
#: Up to this many cells ``knn_method="auto"`` uses exact neighbours. The approximate
#: search (pynndescent) compiles kernels numba cannot cache (about 20 CPU-seconds in every
#: new process, on one core); at 10^5 cells ``tl.cluster`` costs about the same CPU time
#: either way in a fresh process (28-29 CPU-s exact, 27-31 approximate; 11 once compiled),
#: but the exact search spreads it over the cores: half the wall time on 2 cores, with the
#: same ARI vs truth (``benchmarks/results/cluster_profile.md``).
_EXACT_KNN_MAX_CELLS = 150_000


Flavor = Literal["igraph", "leidenalg"]
_FLAVORS = ("igraph", "leidenalg")
_KNN_METHODS = ("auto", "exact", "approximate")


@doc_params
@record("tl.cluster")
def cluster(
    adata: AnnData,
    *,
    n_clusters: int | None = None,
    resolution: float = 1.0,
    n_neighbors: int = 15,
    use_rep: str = "X_pca",
    flavor: Flavor = "igraph",
    n_iterations: int = 2,
    knn_method: Literal["auto", "exact", "approximate"] = "auto",
    max_search_steps: int = 30,
    scanpy_neighbors: bool | None = None,
    random_state: int = 0,
    prefix: str = "CL",
    key_added: str = _registry.CLUSTER.key,
    copy: bool = False,
) -> AnnData | None:
    """Leiden clustering of the cell kNN graph, labelled ``CL0``, ``CL1`` ... by size.

    Parameters
    ----------
    adata
        {adata}
        Needs ``obsm[use_rep]`` (run :func:`mscpotency.pp.preprocess` first).
    n_clusters
        Target number of clusters: the resolution is found by bisection. ``None`` uses
        ``resolution`` as given.
    resolution
        Leiden resolution when ``n_clusters`` is ``None``.
    n_neighbors
        Neighbours of the kNN graph (computed here, stored under ``key_added + '_neighbors'``).
    flavor
        Leiden implementation, as ``scanpy.tl.leiden`` offers: ``"igraph"`` (igraph's
        ``community_leiden``, modularity) or ``"leidenalg"`` (the ``leidenalg`` package's
        ``RBConfigurationVertexPartition``, the same modularity with a resolution). Both
        weight edges by connectivity, take the same resolution search and the same seed.
    n_iterations
        Leiden iterations (``-1``: until stable).
    knn_method
        ``"exact"`` (scikit-learn, deterministic), ``"approximate"`` (pynndescent, fast on
        large data once compiled) or ``"auto"``: exact up to 150,000 cells.
    max_search_steps
        Bisection steps of the resolution search.
    scanpy_neighbors
        Also store the graph where scanpy looks by default (``uns['neighbors']``,
        ``obsp['connectivities']``, ``obsp['distances']``), so ``sc.tl.umap(adata)`` and
        ``sc.tl.paga(adata)`` use it. ``None`` (default): only when those slots are free or
        hold a graph an earlier ``tl.cluster`` wrote; a graph of the user's own (e.g. from
        ``sc.pp.neighbors``) is kept, with a warning naming the ``neighbors_key`` to pass
        instead. ``True``: always (replaces the user's graph). ``False``: never.
    random_state
        {random_state}
        It seeds the graph construction and Leiden.
    prefix
        Label prefix; clusters are numbered from the largest (``CL0``) down.
    key_added
        {key_added}
        Also the obs column of the labels.

    Returns
    -------
    ``None``, or the copy when ``copy=True``. Writes ``obs[key_added]`` (categorical),
    the kNN graph as ``obsp[key_added + '_neighbors_connectivities']`` and
    ``obsp[key_added + '_neighbors_distances']`` (scanpy's ``neighbors_key``
    ``key_added + '_neighbors'``), the same graph in scanpy's default slots
    (``uns['neighbors']``, ``obsp['connectivities']``, ``obsp['distances']``; see
    ``scanpy_neighbors``), and ``uns[key_added]`` with the resolution used, the cluster sizes
    and the parameters (``params['scanpy_neighbors']``: whether the default slots got it).

    Examples
    --------
    >>> import scanpy as sc
    >>> mp.tl.cluster(adata, n_clusters=8)  # doctest: +SKIP
    >>> sc.tl.umap(adata)  # the default graph is tl.cluster's  # doctest: +SKIP
    >>> sc.tl.umap(adata, neighbors_key="cluster_neighbors")  # always tl.cluster's  # doctest: +SKIP
    """
    _check_cluster_options(adata, use_rep, n_clusters, knn_method, flavor, scanpy_neighbors)
    adata = adata.copy() if copy else adata
    neighbors_key = f"{key_added}_neighbors"
    graph, weights = _neighbour_graph(
        adata,
        n_neighbors=n_neighbors,
        use_rep=use_rep,
        knn_method=knn_method,
        random_state=random_state,
        neighbors_key=neighbors_key,
        flavor=flavor,
    )
    in_default_slots = _store_default_graph(adata, neighbors_key, key_added, scanpy_neighbors)
    leiden = functools.partial(
        _leiden,
        graph,
        weights=weights,
        n_iterations=n_iterations,
        seed=random_state,
        flavor=flavor,
    )
    if n_clusters is None:
        labels = leiden(resolution)
    else:
        resolution, labels = _search_resolution(leiden, n_clusters, max_search_steps)
    named = pd.Series(_name_by_size(labels, prefix), index=adata.obs_names)
    adata.obs[key_added] = named
    adata.uns[key_added] = {
        "resolution": float(resolution),
        "n_clusters": int(named.cat.categories.size),
        "sizes": {
            str(k): int(v) for k, v in named.value_counts().reindex(named.cat.categories).items()
        },
        "params": {
            "n_clusters": n_clusters,
            "resolution_searched": n_clusters is not None,
            "n_neighbors": n_neighbors,
            "use_rep": use_rep,
            "flavor": flavor,
            "n_iterations": n_iterations,
            "knn_method": knn_method,
            "knn_threads": adata.uns[neighbors_key]["params"]["knn_threads"],
            "random_state": random_state,
            "neighbors_key": neighbors_key,
            "scanpy_neighbors": in_default_slots,
        },
    }
    return adata if copy else None


def _check_cluster_options(
    adata: AnnData,
    use_rep: str,
    n_clusters: int | None,
    knn_method: str,
    flavor: str,
    scanpy_neighbors: bool | None,
) -> None:
    """Raise on a missing embedding or an option out of range, before anything is computed."""
    if use_rep not in adata.obsm:
        msg = f"adata.obsm has no {use_rep!r}. Run `pp.preprocess` first (or pass use_rep=)."
        raise KeyError(msg)
    if n_clusters is not None and not (1 <= n_clusters < adata.n_obs):
        msg = f"n_clusters must be between 1 and the number of cells, got {n_clusters!r}"
        raise ValueError(msg)
    if knn_method not in _KNN_METHODS:
        msg = f"knn_method must be 'auto', 'exact' or 'approximate', got {knn_method!r}"
        raise ValueError(msg)
    if flavor not in _FLAVORS:
        msg = f"flavor must be 'igraph' or 'leidenalg', got {flavor!r}"
        raise ValueError(msg)
    if not (scanpy_neighbors is None or isinstance(scanpy_neighbors, (bool, np.bool_))):
        msg = f"scanpy_neighbors must be True, False or None, got {scanpy_neighbors!r}"
        raise ValueError(msg)


def _neighbour_graph(
    adata: AnnData,
    *,
    n_neighbors: int,
    use_rep: str,
    knn_method: str,
    random_state: int,
    neighbors_key: str,
    flavor: Flavor,
) -> tuple[igraph.Graph, np.ndarray]:
    """The kNN graph (written to ``obsp`` under scanpy's ``neighbors_key``) as an igraph graph.

    Returns the graph for Leiden of ``flavor`` and its edge weights (:func:`_igraph_of`).
    """
    exact = knn_method == "exact" or (knn_method == "auto" and adata.n_obs <= _EXACT_KNN_MAX_CELLS)
    # the exact search keeps the user's n_jobs (its graph does not depend on it)
    threads = sc.settings.n_jobs if exact else worker_threads()
    start = time.perf_counter()
    with _knn_threads(threads):
        sc.pp.neighbors(
            adata,
            n_neighbors=n_neighbors,
            use_rep=use_rep,
            random_state=random_state,
            key_added=neighbors_key,
            transformer="sklearn" if exact else None,
        )
    adata.uns[neighbors_key]["params"]["knn_threads"] = threads
    release_freed_memory()  # the search's freed blocks (~0.8 GB at 10^6 cells), before the graph
    logger.info(
        "kNN graph (%s, k=%d, %s thread(s)) of %d cells in %.2f s",
        "exact" if exact else "approximate",
        n_neighbors,
        threads,
        adata.n_obs,
        time.perf_counter() - start,
    )
    start = time.perf_counter()
    graph, weights = _igraph_of(adata.obsp[adata.uns[neighbors_key]["connectivities_key"]], flavor)
    logger.debug("igraph graph built in %.2f s", time.perf_counter() - start)
    return graph, weights


@contextmanager
def _knn_threads(threads: int) -> Iterator[None]:
    """Run with scanpy's ``n_jobs`` at ``threads``, then restore it and numba's thread count.

    pynndescent takes ``n_jobs`` from scanpy's settings (1 by default: the 10^6-cell graph
    took 129 s on one core) and sets numba's thread count to it for good, which left every
    parallel kernel after it on one thread. Its graph is deterministic for a given number
    of threads but differs between thread counts (``knn_threads`` in the parameters).
    """
    n_jobs, numba_threads = sc.settings.n_jobs, numba.get_num_threads()
    sc.settings.n_jobs = threads
    try:
        yield
    finally:
        sc.settings.n_jobs = n_jobs
        numba.set_num_threads(numba_threads)


#: Marks scanpy's default neighbour slots as written by ``tl.cluster`` (free to rewrite).
_WRITTEN_BY = "mscpotency.tl.cluster"


def _store_default_graph(
    adata: AnnData, neighbors_key: str, key_added: str, scanpy_neighbors: bool | None
) -> bool:
    """Put the graph of ``neighbors_key`` in scanpy's default slots too, unless that would clobber the user's."""
    if scanpy_neighbors is not None and not scanpy_neighbors:
        return False
    current = adata.uns.get("neighbors")
    ours = isinstance(current, dict) and current.get("params", {}).get("written_by") == _WRITTEN_BY
    occupied = (current is not None or "connectivities" in adata.obsp) and not ours
    if occupied and scanpy_neighbors is None:
        warnings.warn(
            "adata already holds a neighbour graph of its own in uns['neighbors'] / "
            "obsp['connectivities'], kept as it is: scanpy functions called without "
            f"neighbors_key use it, not tl.cluster's. Pass neighbors_key={neighbors_key!r} "
            "to sc.tl.umap / sc.tl.paga, or scanpy_neighbors=True to replace it.",
            UserWarning,
            stacklevel=4,
        )
        return False
    stored = adata.uns[neighbors_key]
    adata.obsp["connectivities"] = adata.obsp[stored["connectivities_key"]]
    adata.obsp["distances"] = adata.obsp[stored["distances_key"]]
    adata.uns["neighbors"] = {
        "connectivities_key": "connectivities",
        "distances_key": "distances",
        "params": {**stored["params"], "written_by": _WRITTEN_BY, "key_added": key_added},
    }
    if occupied:
        logger.info(
            "tl.cluster replaced the neighbour graph in uns['neighbors'] (scanpy_neighbors=True)"
        )
    return True


class _IgraphRandom:
    """igraph's random number source, seeded per call (as scanpy's ``leiden`` seeds it)."""

    def __init__(self, seed: int) -> None:
        self._rng = np.random.RandomState(seed)

    def getrandbits(self, k: int) -> int:
        return self._rng.tomaxint() & ((1 << k) - 1)

    def randint(self, a: int, b: int) -> int:
        return self._rng.randint(a, b + 1)

    def __getattr__(self, attr: str):
        return getattr(self._rng, "normal" if attr == "gauss" else attr)


def _igraph_of(adjacency, flavor: Flavor = "igraph") -> tuple[igraph.Graph, np.ndarray]:
    """The undirected igraph graph of a kNN connectivity matrix, built once, and its edge weights.

    For ``flavor="leidenalg"``, the edges and weights ``scanpy.tl.leiden`` builds (every
    stored non-zero of the CSR matrix, row by row: each undirected edge twice), so Leiden
    on it gives scanpy's labels. For ``"igraph"``, each pair of cells once, weighted by
    the sum of its two entries (:func:`_each_pair_once`): the same modularity, half the
    edges; igraph's Leiden gave the labels of scanpy's graph on every graph tried (3 x
    10^4 and 10^5 cells at four resolutions, the same clusters at 10^6; degree sums may
    differ in their last bit) in 0.7-0.9x its time and half the graph's memory. Building
    from arrays instead of a Python list of tuples is what makes repeated Leiden runs
    cheap. The weights stay an array, passed to each Leiden run: as an igraph edge
    attribute they would be a Python float per edge (~0.35 GB at 10^6 cells);
    :func:`_weighted_igraph_of` sets them where a graph travels without them.
    """
    import igraph

    adjacency = sparse.csr_matrix(adjacency)
    if not adjacency.has_canonical_format:
        adjacency = adjacency.copy()
        adjacency.sum_duplicates()
    if flavor == "igraph":
        adjacency = _each_pair_once(adjacency)
    sources = np.repeat(np.arange(adjacency.shape[0]), np.diff(adjacency.indptr))
    nonzero = adjacency.data != 0
    edges = np.column_stack([sources[nonzero], adjacency.indices[nonzero]]).astype(
        np.int64, copy=False
    )
    graph = igraph.Graph(directed=False)
    graph.add_vertices(adjacency.shape[0])
    graph.add_edges(edges)  # (add_edges takes the array as is; Graph(edges=array) is 10x slower)
    # the stored values themselves (no copy unless some are explicit zeros): Leiden reads
    # each as a double, the values a float64 copy would hold
    return graph, adjacency.data if nonzero.all() else adjacency.data[nonzero]


def _each_pair_once(adjacency: sparse.csr_matrix) -> sparse.csr_matrix:
    """The upper triangle of ``A + A.T`` (in double precision) and the diagonal of ``A``.

    An undirected graph with the edges ``(i, j, a_ij)`` and ``(j, i, a_ji)`` is, for
    modularity, the graph with one edge ``(i, j, a_ij + a_ji)``. ``A`` in canonical CSR
    form. A symmetric ``A`` (scanpy's connectivities) is read in one compiled pass (its
    upper triangle, doubled: ~0.13 GB at 10^6 cells where scipy's ``triu`` and transpose
    held ~1 GB of intermediates); any other goes through scipy.
    """
    if _is_symmetric(adjacency.indptr, adjacency.indices, adjacency.data):
        indptr, indices, data = _upper_doubled(adjacency.indptr, adjacency.indices, adjacency.data)
        return sparse.csr_matrix((data, indices, indptr), shape=adjacency.shape)
    adjacency = adjacency.astype(np.float64)
    once = sparse.triu(adjacency, k=1, format="csr") + sparse.triu(adjacency.T, k=1, format="csr")
    once = (once + sparse.diags(adjacency.diagonal(), format="csr")).tocsr()
    once.sum_duplicates()
    once.eliminate_zeros()
    return once


@numba.njit(cache=True)
def _is_symmetric(indptr, indices, data):  # pragma: no cover - compiled
    """Whether every stored ``(i, j, a)`` has a stored ``(j, i, a)`` (sorted indices)."""
    for i in range(indptr.size - 1):
        for k in range(indptr[i], indptr[i + 1]):
            j = indices[k]
            row = indices[indptr[j] : indptr[j + 1]]
            at = np.searchsorted(row, i)
            if at == row.size or row[at] != i or data[indptr[j] + at] != data[k]:
                return False
    return True


@numba.njit(cache=True)
def _upper_doubled(indptr, indices, data):  # pragma: no cover - compiled
    """CSR arrays of a symmetric matrix's upper triangle doubled, its diagonal once (float64)."""
    n = indptr.size - 1
    out_indptr = np.zeros(n + 1, dtype=np.int64)
    for i in range(n):
        kept = 0
        for k in range(indptr[i], indptr[i + 1]):
            kept += indices[k] >= i and data[k] != 0
        out_indptr[i + 1] = out_indptr[i] + kept
    out_indices = np.empty(out_indptr[n], dtype=indices.dtype)
    out_data = np.empty(out_indptr[n], dtype=np.float64)
    for i in range(n):
        at = out_indptr[i]
        for k in range(indptr[i], indptr[i + 1]):
            j = indices[k]
            if j >= i and data[k] != 0:
                out_indices[at] = j
                out_data[at] = np.float64(data[k]) * (2.0 if j > i else 1.0)
                at += 1
    return out_indptr, out_indices, out_data


def _weighted_igraph_of(adjacency, flavor: Flavor = "igraph") -> igraph.Graph:
    """:func:`_igraph_of` with the weights as the edge attribute ``"weight"``.

    For graphs that travel without their weights: the population search's induced
    subgraphs carry the attribute, and the stability kernels
    (:func:`mscpotency.tl._robustness._stability.leiden_labels`) take a graph alone.
    """
    graph, weights = _igraph_of(adjacency, flavor)
    # Python floats, as scanpy stores them
    graph.es["weight"] = weights.astype(np.float64, copy=False)
    return graph


#: Edge weights for Leiden: an array in edge order, or the name of an edge attribute.
Weights = np.ndarray | str


def _leiden(
    graph: igraph.Graph,
    resolution: float,
    *,
    weights: Weights = "weight",
    n_iterations: int,
    seed: int,
    flavor: Flavor,
) -> np.ndarray:
    """Leiden labels of ``graph`` at ``resolution`` with the chosen implementation."""
    if flavor == "leidenalg":
        return _leiden_leidenalg(graph, resolution, weights, n_iterations, seed)
    return _leiden_igraph(graph, resolution, weights, n_iterations, seed)


def _leiden_igraph(
    graph: igraph.Graph, resolution: float, weights: Weights, n_iterations: int, seed: int
) -> np.ndarray:
    """Leiden of igraph (modularity, edge weights) with its own seeded random source."""
    import igraph

    igraph.set_random_number_generator(_IgraphRandom(seed))
    try:
        partition = graph.community_leiden(
            objective_function="modularity",
            weights=weights,
            resolution=resolution,
            n_iterations=n_iterations,
        )
    finally:
        igraph.set_random_number_generator(random)
    return np.asarray(partition.membership)


def _leiden_leidenalg(
    graph: igraph.Graph, resolution: float, weights: Weights, n_iterations: int, seed: int
) -> np.ndarray:
    """Leiden of the ``leidenalg`` package (RB configuration model, edge weights), seeded."""
    try:
        import leidenalg
    except ImportError as error:  # pragma: no cover - a declared dependency
        msg = "flavor='leidenalg' needs the leidenalg package: pip install leidenalg"
        raise ImportError(msg) from error
    partition = leidenalg.find_partition(
        graph,
        leidenalg.RBConfigurationVertexPartition,
        weights=weights,
        resolution_parameter=resolution,
        n_iterations=n_iterations,
        seed=seed,
    )
    return np.asarray(partition.membership)


def _search_resolution(
    leiden: Callable[[float], np.ndarray], target: int, max_steps: int
) -> tuple[float, np.ndarray]:
    """Bisection on log-resolution for a clustering with ``target`` clusters (one graph, many Leidens)."""
    low, high = np.log(_RESOLUTION_BOUNDS[0]), np.log(_RESOLUTION_BOUNDS[1])
    best: tuple[int, float, np.ndarray] | None = None
    for step in progress(range(max_steps), desc="resolution search", unit="Leiden"):
        middle = (low + high) / 2
        resolution = float(np.exp(middle))
        start = time.perf_counter()
        labels = leiden(resolution)
        found = len(np.unique(labels))
        logger.debug(
            "resolution %.4f gives %d clusters (%.2f s)",
            resolution,
            found,
            time.perf_counter() - start,
        )
        if best is None or abs(found - target) < abs(best[0] - target):
            best = (found, resolution, labels)
        if found == target:
            logger.info(
                "resolution %.4f gives %d clusters (Leiden run %d)", resolution, found, step + 1
            )
            return resolution, labels
        if found < target:
            low = middle
        else:
            high = middle
    assert best is not None
    warnings.warn(
        f"no resolution in {_RESOLUTION_BOUNDS} gave exactly {target} clusters; "
        f"using {best[1]:.4f}, which gives {best[0]}.",
        UserWarning,
        stacklevel=3,
    )
    return best[1], best[2]


def _name_by_size(labels: np.ndarray, prefix: str) -> pd.Categorical:
    """Rename clusters by decreasing size (ties broken by first appearance)."""
    series = pd.Series(labels)
    order = series.value_counts(sort=True).index
    mapping = {old: f"{prefix}{i}" for i, old in enumerate(order)}
    names = [mapping[v] for v in labels]
    return pd.Categorical(names, categories=[f"{prefix}{i}" for i in range(len(order))])
