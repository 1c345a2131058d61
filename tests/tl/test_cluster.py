"""tl.cluster: recovers the simulated subpopulations, reproducibly."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

import mscpotency as mp


def test_recovers_subpopulations_on_tiny(tiny_ref):
    assert tiny_ref.obs["cluster"].nunique() == 8
    assert adjusted_rand_score(tiny_ref.obs["true_subpopulation"], tiny_ref.obs["cluster"]) >= 0.8


def test_labels_ordered_by_size_and_recorded(tiny_ref):
    sizes = tiny_ref.obs["cluster"].value_counts().reindex(tiny_ref.obs["cluster"].cat.categories)
    assert list(sizes.index) == [f"CL{i}" for i in range(8)]
    assert (np.diff(sizes.to_numpy()) <= 0).all()
    stored = tiny_ref.uns["cluster"]
    assert stored["n_clusters"] == 8 and stored["params"]["resolution_searched"]
    assert (
        "cluster_neighbors" in tiny_ref.uns and "cluster_neighbors_connectivities" in tiny_ref.obsp
    )


def test_same_seed_same_labels_and_copy_equals_inplace(tiny_ref):
    base = tiny_ref.copy()
    a = mp.tl.cluster(base, resolution=0.8, key_added="again", copy=True)
    assert "again" not in base.obs
    mp.tl.cluster(base, resolution=0.8, key_added="again")
    assert (a.obs["again"] == base.obs["again"]).all()


def test_fixed_resolution_without_search(tiny_ref):
    adata = mp.tl.cluster(tiny_ref, resolution=0.05, key_added="coarse", copy=True)
    assert adata.obs["coarse"].nunique() < 8
    assert adata.uns["coarse"]["resolution"] == pytest.approx(0.05)


def test_unreachable_target_warns_and_uses_closest(tiny_ref):
    with pytest.warns(UserWarning, match="exactly"):
        adata = mp.tl.cluster(
            tiny_ref, n_clusters=300, max_search_steps=4, key_added="many", copy=True
        )
    assert adata.obs["many"].nunique() > 8


def test_missing_embedding_names_preprocess(tiny_train):
    with pytest.raises(KeyError, match="pp.preprocess"):
        mp.tl.cluster(tiny_train.copy())


def test_bad_arguments(tiny_ref):
    with pytest.raises(ValueError, match="n_clusters"):
        mp.tl.cluster(tiny_ref, n_clusters=0, copy=True)
    with pytest.raises(ValueError, match="knn_method"):
        mp.tl.cluster(tiny_ref, knn_method="fast", copy=True)
    with pytest.raises(ValueError, match="flavor must be 'igraph' or 'leidenalg'"):
        mp.tl.cluster(tiny_ref, flavor="louvain", copy=True)


def test_leidenalg_flavor_is_recorded_and_seeded(tiny_ref):
    a = mp.tl.cluster(tiny_ref, n_clusters=8, flavor="leidenalg", key_added="la", copy=True)
    b = mp.tl.cluster(tiny_ref, n_clusters=8, flavor="leidenalg", key_added="la", copy=True)
    assert a.uns["la"]["params"]["flavor"] == "leidenalg"
    assert tiny_ref.uns["cluster"]["params"]["flavor"] == "igraph"
    assert (a.obs["la"] == b.obs["la"]).all()
    # measured on the tiny preset: ARI 1.0 with the igraph labels, 0.98 with the truth
    assert adjusted_rand_score(tiny_ref.obs["cluster"], a.obs["la"]) >= 0.9
    assert adjusted_rand_score(tiny_ref.obs["true_subpopulation"], a.obs["la"]) >= 0.8


@pytest.mark.slow
def test_both_flavors_recover_the_same_clusters_on_the_study(study_ref):
    """igraph's community_leiden and leidenalg's RBConfiguration partition agree.

    Measured on the study preset (11 BM-train lots, 8 clusters by the resolution search):
    both searches stop at resolution 0.2236; ARI between the flavours 1.000; ARI with
    obs['true_subpopulation'] 0.932 for each; F1 of the potency cluster with
    obs['true_potency_cell'] 0.993 for each.
    """
    other = mp.tl.cluster(study_ref, n_clusters=8, flavor="leidenalg", copy=True)
    igraph_labels, leidenalg_labels = study_ref.obs["cluster"], other.obs["cluster"]
    assert other.uns["cluster"]["params"]["flavor"] == "leidenalg"
    assert leidenalg_labels.nunique() == igraph_labels.nunique() == 8
    assert adjusted_rand_score(igraph_labels, leidenalg_labels) >= 0.95
    truth = study_ref.obs["true_subpopulation"]
    assert adjusted_rand_score(truth, igraph_labels) >= 0.9
    assert adjusted_rand_score(truth, leidenalg_labels) >= 0.9
    mp.tl.lot_fractions(other)
    mp.tl.potency_association(other, "vegf")
    found = (leidenalg_labels == other.uns["potency_association"]["potency_cluster"]).to_numpy()
    potency_cells = study_ref.obs["true_potency_cell"].to_numpy()
    f1 = 2 * (potency_cells & found).sum() / (potency_cells.sum() + found.sum())
    assert f1 >= 0.95


def _true_neighbours(X: np.ndarray, k: int) -> np.ndarray:
    """The k nearest other cells of every cell, by brute force in float64 (sorted indices)."""
    X = X.astype(np.float64)
    squared = (X**2).sum(1)
    distances = squared[:, None] + squared[None, :] - 2 * X @ X.T
    np.fill_diagonal(distances, np.inf)
    return np.sort(np.argsort(distances, axis=1)[:, :k], axis=1)


@pytest.mark.parametrize("knn_method", ["exact", "auto"])
def test_exact_and_auto_graphs_hold_every_true_neighbour(tiny_ref, knn_method):
    # below _EXACT_KNN_MAX_CELLS "auto" is the exact search: recall 1.0 against brute force
    adata = mp.tl.cluster(tiny_ref, n_clusters=8, knn_method=knn_method, key_added="knn", copy=True)
    distances = adata.obsp["knn_neighbors_distances"].tocsr()
    found = np.sort(distances.indices.reshape(adata.n_obs, -1), axis=1)
    truth = _true_neighbours(adata.obsm["X_pca"], found.shape[1])
    assert found.shape[1] == 14  # n_neighbors=15 counts the cell itself, as scanpy does
    assert (found == truth).all()


def test_approximate_graph_uses_every_thread_and_leaves_the_settings_as_they_were(tiny_ref):
    import numba
    import scanpy as sc

    from mscpotency._cell_stats import worker_threads

    n_jobs, numba_threads = sc.settings.n_jobs, numba.get_num_threads()
    runs = [
        mp.tl.cluster(tiny_ref, n_clusters=8, knn_method="approximate", key_added="nn", copy=True)
        for _ in range(2)
    ]
    # pynndescent used to set numba's thread count to scanpy's n_jobs (1) for good
    assert sc.settings.n_jobs == n_jobs and numba.get_num_threads() == numba_threads
    assert runs[0].uns["nn"]["params"]["knn_threads"] == worker_threads()
    assert tiny_ref.uns["cluster"]["params"]["knn_threads"] == 1  # the exact search
    sc.settings.n_jobs = 2
    try:  # the exact search keeps the user's n_jobs
        exact = mp.tl.cluster(tiny_ref, n_clusters=8, knn_method="exact", key_added="ex", copy=True)
        assert exact.uns["ex"]["params"]["knn_threads"] == 2 and sc.settings.n_jobs == 2
    finally:
        sc.settings.n_jobs = n_jobs
    graphs = [r.obsp["nn_neighbors_distances"] for r in runs]
    assert (graphs[0] != graphs[1]).nnz == 0  # deterministic for a given number of threads
    assert (runs[0].obs["nn"] == runs[1].obs["nn"]).all()
    assert adjusted_rand_score(tiny_ref.obs["true_subpopulation"], runs[0].obs["nn"]) >= 0.8


def test_labels_equal_scanpys_neighbors_and_leiden_at_the_found_resolution(tiny_ref):
    import scanpy as sc

    adata = tiny_ref.copy()
    resolution = adata.uns["cluster"]["resolution"]
    sc.pp.neighbors(adata, n_neighbors=15, use_rep="X_pca", random_state=0, transformer="sklearn")
    sc.tl.leiden(
        adata,
        resolution=resolution,
        flavor="igraph",
        n_iterations=2,
        directed=False,
        random_state=0,
        key_added="bare",
    )
    ours = tiny_ref.obsp["cluster_neighbors_connectivities"]
    assert abs(ours - adata.obsp["connectivities"]).max() == 0
    assert adjusted_rand_score(tiny_ref.obs["cluster"], adata.obs["bare"]) == 1.0


@pytest.mark.parametrize("flavor", ["igraph", "leidenalg"])
def test_leiden_with_weights_as_an_array_equals_the_edge_attribute(tiny_ref, flavor):
    """tl.cluster passes the weights as an array (no Python float per edge): same labels."""
    from mscpotency.tl._population import _cluster

    connectivities = tiny_ref.obsp["cluster_neighbors_connectivities"]
    graph, weights = _cluster._igraph_of(connectivities, flavor)
    assert graph.es.attributes() == [] and weights.size == graph.ecount()
    if flavor == "leidenalg":  # scanpy's graph: every stored entry, the matrix's own values
        assert graph.ecount() == connectivities.nnz
        assert np.shares_memory(weights, connectivities.data)
    else:  # each pair of cells once
        assert graph.ecount() == connectivities.nnz // 2
    weighted = _cluster._weighted_igraph_of(connectivities, flavor)
    np.testing.assert_array_equal(weighted.es["weight"], weights)
    for resolution in (0.1, 0.5):
        by_array = _cluster._leiden(
            graph, resolution, weights=weights, n_iterations=2, seed=3, flavor=flavor
        )
        by_attribute = _cluster._leiden(weighted, resolution, n_iterations=2, seed=3, flavor=flavor)
        np.testing.assert_array_equal(by_array, by_attribute)
    unweighted = _cluster._leiden(
        graph, 0.5, weights=np.ones_like(weights), n_iterations=2, seed=3, flavor=flavor
    )
    assert not np.array_equal(unweighted, by_array)  # the weights are used


def test_each_pair_once_gives_the_labels_of_scanpys_graph(tiny_ref):
    """igraph's Leiden on each pair of cells once (weights summed) and on scanpy's graph
    (each undirected edge twice): the same modularity, the same labels."""
    from mscpotency.tl._population import _cluster

    connectivities = tiny_ref.obsp["cluster_neighbors_connectivities"]
    once, once_weights = _cluster._igraph_of(connectivities, "igraph")
    twice, twice_weights = _cluster._igraph_of(connectivities, "leidenalg")
    assert 2 * once.ecount() == twice.ecount()
    np.testing.assert_allclose(once_weights.sum(), twice_weights.sum(dtype=np.float64))
    for resolution in (0.05, 0.2, 0.5, 1.0):
        for seed in (0, 1):
            np.testing.assert_array_equal(
                _cluster._leiden(
                    once,
                    resolution,
                    weights=once_weights,
                    n_iterations=2,
                    seed=seed,
                    flavor="igraph",
                ),
                _cluster._leiden(
                    twice,
                    resolution,
                    weights=twice_weights,
                    n_iterations=2,
                    seed=seed,
                    flavor="igraph",
                ),
            )


def test_each_pair_once_sums_both_directions():
    from scipy import sparse

    from mscpotency.tl._population import _cluster

    dense = np.array([[0.5, 0.25, 0.0], [0.75, 0.0, 0.0], [0.0, 0.125, 0.0]], dtype=np.float32)
    once = _cluster._each_pair_once(sparse.csr_matrix(dense))
    expected = np.array([[0.5, 1.0, 0.0], [0.0, 0.0, 0.125], [0.0, 0.0, 0.0]])
    np.testing.assert_array_equal(once.toarray(), expected)
    assert once.dtype == np.float64 and once.nnz == 3


def test_each_pair_once_of_a_symmetric_matrix_equals_the_general_sum(tiny_ref):
    """scanpy's symmetric connectivities take the compiled path: the same matrix as
    triu(A + A.T) plus the diagonal; one entry changed makes the matrix asymmetric."""
    from scipy import sparse

    from mscpotency.tl._population import _cluster

    A = sparse.csr_matrix(tiny_ref.obsp["cluster_neighbors_connectivities"])
    A = A + sparse.diags(np.linspace(0.1, 0.2, A.shape[0]), format="csr").astype(A.dtype)
    A.sort_indices()
    assert _cluster._is_symmetric(A.indptr, A.indices, A.data)
    A64 = A.astype(np.float64)
    general = sparse.triu(A64, k=1) + sparse.triu(A64.T, k=1) + sparse.diags(A64.diagonal())
    once = _cluster._each_pair_once(A)
    assert once.dtype == np.float64 and once.has_sorted_indices
    assert abs(once - general).max() == 0 and once.nnz == sparse.csr_matrix(general).nnz
    B = A.copy()
    B.data[np.flatnonzero(B.indices > np.repeat(np.arange(B.shape[0]), np.diff(B.indptr)))[0]] *= 2
    assert not _cluster._is_symmetric(B.indptr, B.indices, B.data)
