"""The out-of-core path (Dask) and the memory-lean in-memory kernels give the standard results.

Dask: per-lot .h5ad files read lazily (``io.read_lots_lazy``) go through ``pp.qc`` and
``pp.preprocess`` on a ``dask.distributed.LocalCluster`` and then through clustering and
fractions in memory; the result must equal the in-memory path on the same cells.

In memory: ``pp.qc`` filters CSR matrices in place and ``pp.preprocess`` normalises in row
chunks, computes HVG statistics in row chunks and skips scikit-learn's copy in the PCA;
each must give what the plain scanpy calls give.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from anndata import AnnData
from scipy import sparse
from sklearn.metrics import adjusted_rand_score

import mscpotency as mp
from mscpotency.pp import _preprocess, _qc


# --------------------------------------------------------------------------------------
# the Dask path
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("dask.distributed")
    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


@pytest.fixture(scope="module")
def lot_files(tiny_train, tmp_path_factory):
    """The tiny training lots as one .h5ad file per lot (raw counts in X only)."""
    folder = tmp_path_factory.mktemp("lots")
    for lot in tiny_train.obs["lot"].cat.categories:
        part = tiny_train[tiny_train.obs["lot"] == lot]
        part = AnnData(X=part.X.copy(), obs=part.obs.drop(columns=["lot"]), var=part.var[[]].copy())
        part.obs_names = [name.split("_", 1)[1] for name in part.obs_names]
        part.write_h5ad(folder / f"{lot}.h5ad")
    return folder


@pytest.fixture(scope="module")
def both_paths(client, lot_files, tiny_train):
    """(lazy, in-memory) after QC, preprocess, cluster and fractions."""
    lazy = mp.io.read_lots_lazy(lot_files, chunk_cells=64)
    memory = AnnData(
        X=tiny_train.X.copy(), obs=tiny_train.obs.copy(), var=tiny_train.var[[]].copy()
    )
    results = []
    for adata in (lazy, memory):
        mp.pp.qc(adata)
        mp.pp.preprocess(adata, n_top_genes=300, n_comps=20)
        mp.tl.cluster(adata, n_clusters=8)
        mp.tl.lot_fractions(adata)
        results.append(adata)
    return tuple(results)


def test_lazy_reader_is_chunked_along_cells_and_reads_nothing_yet(client, lot_files, tiny_train):
    import dask.array as da

    lazy = mp.io.read_lots_lazy(lot_files, chunk_cells=64)
    assert isinstance(lazy.X, da.Array)
    assert lazy.X.chunks[1] == (tiny_train.n_vars,) and max(lazy.X.chunks[0]) == 64
    assert lazy.shape == tiny_train.shape
    assert list(lazy.obs["lot"].cat.categories) == list(tiny_train.obs["lot"].cat.categories)
    assert lazy.obs_names.equals(tiny_train.obs_names)  # {lot}_{cell}, as read_lots names them
    assert (lazy.X.compute() != tiny_train.X).nnz == 0
    assert lazy.uns["read_lots_lazy"]["count_source"]["BM01"] == "X"


def test_qc_keeps_the_blocks_of_the_lazy_matrix(client, lot_files, tiny_train):
    """QC's cell filter subsets each block by itself: Dask's boolean indexing re-cut the
    blocks (with a shuffle at 10^6 cells), so every later pass read each block twice."""
    lazy = mp.io.read_lots_lazy(lot_files, chunk_cells=64)
    memory = AnnData(
        X=tiny_train.X.copy(), obs=tiny_train.obs.copy(), var=tiny_train.var[[]].copy()
    )
    min_counts = int(np.percentile(np.asarray(tiny_train.X.sum(axis=1)).ravel(), 20))
    blocks = len(lazy.X.chunks[0])
    for adata in (lazy, memory):
        mp.pp.qc(adata, min_counts=min_counts)
    assert 0.7 * tiny_train.n_obs < lazy.n_obs < 0.9 * tiny_train.n_obs
    assert len(lazy.X.chunks[0]) == blocks and sum(lazy.X.chunks[0]) == lazy.n_obs
    assert not any("shuffle" in name for name in lazy.X.__dask_graph__().layers)
    assert lazy.obs_names.equals(memory.obs_names)
    assert (lazy.X.compute() != memory.X).nnz == 0


def test_lazy_tasks_are_small_enough_to_send_to_worker_processes(both_paths):
    """No task of the log-normalised matrix carries the graph it came from.

    scanpy's Dask ``normalize_total`` made every task a closure over the whole source
    array: 1.6 MB per task at 10^6 cells, most of the time of a run on worker processes
    went into unpickling them. Here every task's size must not grow with the data.
    """
    import cloudpickle

    lazy = both_paths[0]
    graph = dict(lazy.X.__dask_graph__())
    assert len(graph) > 100
    largest = max(len(cloudpickle.dumps(task)) for task in graph.values())
    assert largest < 8_000


def test_subset_cells_equals_in_memory_row_selection():
    import dask.array as da

    from mscpotency import _dask

    rng = np.random.default_rng(0)
    counts = sparse.random(300, 40, density=0.2, format="csr", random_state=1, dtype=np.float32)
    lazy = da.from_array(counts, chunks=(50, 40), asarray=False)
    keep = rng.random(300) < 0.6
    keep[100:150] = False  # a block that loses every cell
    subset = _dask.subset_cells(lazy, keep)
    assert subset.chunks[0][2] == 0 and len(subset.chunks[0]) == 6
    assert (subset.compute() != counts[keep]).nnz == 0
    with pytest.raises(ValueError, match="one entry per row"):
        _dask.subset_cells(lazy, keep[:-1])


def test_dask_path_stays_lazy_and_equals_the_in_memory_path(both_paths):
    import dask.array as da

    lazy, memory = both_paths
    assert isinstance(lazy.X, da.Array) and isinstance(lazy.layers["counts"], da.Array)
    assert isinstance(lazy.obsm["X_pca"], np.ndarray)
    # QC removes the same cells and genes, HVG selects the same genes
    assert lazy.obs_names.equals(memory.obs_names) and lazy.var_names.equals(memory.var_names)
    assert lazy.var["highly_variable"].equals(memory.var["highly_variable"])
    # the same PCA (the covariance eigendecomposition in memory and on Dask), same signs
    scale = np.abs(memory.obsm["X_pca"]).max()
    np.testing.assert_allclose(lazy.obsm["X_pca"], memory.obsm["X_pca"], atol=1e-3 * scale)
    np.testing.assert_allclose(lazy.var["pca_mean"], memory.var["pca_mean"], rtol=1e-5, atol=1e-6)
    # the log-normalised values are the same numbers, only lazy
    assert (lazy.X.compute() != memory.X).nnz == 0


def test_dask_path_recovers_the_same_clusters_and_fractions(both_paths):
    lazy, memory = both_paths
    assert adjusted_rand_score(lazy.obs["cluster"], memory.obs["cluster"]) >= 0.99
    assert adjusted_rand_score(lazy.obs["true_subpopulation"], lazy.obs["cluster"]) >= 0.8
    # identical labels give identical fractions: recompute the in-memory fractions with the
    # lazy path's labels
    relabelled = memory.copy()
    relabelled.obs["cluster"] = lazy.obs["cluster"].to_numpy()
    mp.tl.lot_fractions(relabelled)
    pd.testing.assert_frame_equal(
        lazy.uns["lot_fractions"]["fractions"], relabelled.uns["lot_fractions"]["fractions"]
    )
    pd.testing.assert_frame_equal(
        lazy.uns["lot_fractions"]["counts"], relabelled.uns["lot_fractions"]["counts"]
    )


def test_dask_path_goes_on_to_lot_level_statistics(both_paths):
    lazy = both_paths[0].copy()
    mp.tl.composition_deviation(lazy)
    mp.tl.potency_association(lazy, "vegf")
    potency = lazy.uns["potency_association"]["potency_cluster"]
    share = lazy.obs.loc[lazy.obs["cluster"] == potency, "true_potency_cell"].mean()
    assert share > 0.9


def test_dask_path_finds_the_markers_the_in_memory_path_finds(both_paths, monkeypatch):
    from mscpotency import _cell_stats

    lazy, memory = (adata.copy() for adata in both_paths)
    memory.obs["cluster"] = lazy.obs["cluster"].to_numpy()  # the same labels on both paths
    for adata in (lazy, memory):
        mp.tl.lot_fractions(adata)
        mp.tl.potency_association(adata, "vegf")
    # a small sorted-side budget: several gene passes over the blocks
    monkeypatch.setattr(_cell_stats, "SORTED_ENTRIES", 8_000)
    # the streamed side in tasks of about 3 blocks (~380 entries per cell, 64-cell blocks)
    monkeypatch.setattr(_cell_stats, "STREAM_ENTRIES", 70_000)
    tasks, block_tasks = [], _cell_stats._block_tasks

    def counted(walk, X, *args):
        tasks.append(block_tasks(walk, X, *args))
        return tasks[-1]

    monkeypatch.setattr(_cell_stats, "_block_tasks", counted)
    mp.tl.potency_markers(lazy, n_genes=50)
    mp.tl.potency_markers(memory, n_genes=50)
    blocks = len(lazy.X.chunks[0])
    assert min(len(t) for t in tasks) < blocks / 2  # the streamed passes stacked blocks
    ours, expected = mp.get.potency_markers(lazy), mp.get.potency_markers(memory)
    assert ours["gene"].iloc[0] == "LRRC75A"
    assert list(ours["gene"]) == list(expected["gene"])
    numeric = ours.select_dtypes("number").columns
    pd.testing.assert_frame_equal(ours[numeric], expected[numeric], rtol=1e-5, atol=1e-8)


def test_matrix_chunked_along_genes_is_an_error(client, tiny_train):
    import dask.array as da

    adata = AnnData(
        X=da.from_array(tiny_train.X, chunks=(100, 100), asarray=False), obs=tiny_train.obs.copy()
    )
    adata.var_names = tiny_train.var_names
    with pytest.raises(ValueError, match="chunked along genes"):
        mp.pp.preprocess(adata)


def test_lazy_reader_errors_name_the_problem(client, lot_files, tmp_path, tiny_train):
    pytest.importorskip("dask")
    with pytest.raises(ValueError, match="empty"):
        mp.io.read_lots_lazy({})
    with pytest.raises(ValueError, match="no .h5ad files"):
        mp.io.read_lots_lazy(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        mp.io.read_lots_lazy({"L1": tmp_path / "missing.h5ad"})
    with pytest.raises(ValueError, match="chunk_cells"):
        mp.io.read_lots_lazy(lot_files, chunk_cells=0)
    other = tiny_train[:50, :100].copy()
    other.write_h5ad(tmp_path / "other.h5ad")
    with pytest.raises(ValueError, match="other genes"):
        mp.io.read_lots_lazy({"BM01": lot_files / "BM01.h5ad", "other": tmp_path / "other.h5ad"})
    dense = AnnData(X=tiny_train[:50].X.toarray(), var=tiny_train.var[[]].copy())
    dense.write_h5ad(tmp_path / "dense.h5ad")
    with pytest.raises(ValueError, match="needs CSR"):
        mp.io.read_lots_lazy({"dense": tmp_path / "dense.h5ad"})


# --------------------------------------------------------------------------------------
# in-memory kernels: scanpy's results with less memory
# --------------------------------------------------------------------------------------
@pytest.fixture
def small_chunks(monkeypatch):
    """Small chunks, so that every kernel crosses many chunk borders on tiny data."""
    from mscpotency import _cell_stats

    monkeypatch.setattr(_qc, "_CHUNK_ROWS", 37)
    monkeypatch.setattr(_cell_stats, "CHUNK_ENTRIES", 5_000)  # the HVG statistics


def _reference_qc(adata: AnnData, removed: np.ndarray, min_cells: int) -> AnnData:
    kept = adata[~removed]
    detected = np.asarray((kept.X > 0).sum(axis=0)).ravel()
    return kept[:, detected >= min_cells].copy()


@pytest.mark.parametrize("min_cells", [0, 60], ids=["cells", "cells_and_genes"])
def test_qc_filters_in_place_like_anndata_subsetting(tiny_train, small_chunks, min_cells):
    adata = tiny_train.copy()
    adata.layers["other"] = adata.X.multiply(2).tocsr()
    mp.pp.qc(adata, min_cells_per_gene=min_cells, mad_counts=2)
    source = tiny_train.copy()
    removed = ~source.obs_names.isin(adata.obs_names)
    assert removed.sum() > 0 and (len(adata.uns["qc"]["genes_removed"]) > 0) == (min_cells > 0)
    expected = _reference_qc(source, removed, min_cells)
    assert adata.var_names.equals(expected.var_names)
    for matrix in (adata.X, adata.layers["counts"]):
        assert (matrix != expected.X).nnz == 0 and matrix.has_canonical_format
    assert (adata.layers["other"] != expected.X.multiply(2)).nnz == 0


def test_qc_after_preprocess_keeps_x_and_counts_consistent(tiny_train, small_chunks):
    """X and the counts layer share their sparsity structure after preprocess: QC filters both."""
    adata = tiny_train.copy()
    del adata.layers["counts"]
    mp.pp.preprocess(adata, n_top_genes=300, n_comps=10)
    assert np.shares_memory(adata.X.indices, adata.layers["counts"].indices)
    expected = adata.copy()
    mp.pp.qc(adata, thresholds="fixed", min_genes=300, min_cells_per_gene=100)
    keep = expected.obs_names.isin(adata.obs_names)
    expected = expected[keep][:, expected.var_names.isin(adata.var_names)]
    assert adata.n_obs < tiny_train.n_obs and adata.n_vars < tiny_train.n_vars
    assert (adata.layers["counts"] != expected.layers["counts"]).nnz == 0
    assert (adata.X != expected.X).nnz == 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_normalise_log1p_kernel_equals_scanpy_bit_for_bit(tiny_train, dtype):
    counts = sparse.csr_matrix(tiny_train.X, dtype=dtype, copy=True)
    counts.data[counts.indptr[7] : counts.indptr[8]] = 0  # a cell with no counts: scanpy
    counts.eliminate_zeros()  # divides it by 1 and warns
    expected = AnnData(X=counts.copy())
    with pytest.warns(UserWarning, match="zero counts"):
        sc.pp.normalize_total(expected, target_sum=1e4)
    sc.pp.log1p(expected)
    ours = counts.copy()
    with pytest.warns(UserWarning, match="zero counts"):
        _preprocess._normalize_log1p_inplace(ours, 1e4)
    assert ours.dtype == dtype
    np.testing.assert_array_equal(ours.data, expected.X.data)
    assert (ours != expected.X).nnz == 0


def test_preprocess_normalisation_and_pca_equal_scanpys(tiny_train, small_chunks):
    adata = tiny_train.copy()
    # the ARPACK option is scanpy's PCA bit for bit (the default covariance solver equals
    # it to float precision: tests/pp/test_pca.py)
    mp.pp.preprocess(adata, n_top_genes=300, n_comps=15, pca_solver="arpack")
    expected = AnnData(
        X=tiny_train.X.astype(np.float32), var=pd.DataFrame(index=tiny_train.var_names)
    )
    sc.pp.normalize_total(expected, target_sum=1e4)
    sc.pp.log1p(expected)
    sc.pp.highly_variable_genes(expected, n_top_genes=300, flavor="seurat")
    sc.tl.pca(expected, n_comps=15, mask_var="highly_variable", random_state=0)
    assert (adata.X != expected.X).nnz == 0  # bit for bit
    assert adata.var["highly_variable"].equals(expected.var["highly_variable"])
    for column in ("means", "dispersions", "dispersions_norm"):
        np.testing.assert_allclose(adata.var[column], expected.var[column], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(adata.obsm["X_pca"], expected.obsm["X_pca"])
    np.testing.assert_array_equal(adata.varm["PCs"], expected.varm["PCs"])
    np.testing.assert_allclose(adata.uns["pca"]["variance"], expected.uns["pca"]["variance"])
    hvg = expected.var["highly_variable"].to_numpy()
    np.testing.assert_allclose(
        adata.var["pca_mean"].to_numpy()[hvg],
        np.asarray(expected.X[:, hvg].mean(axis=0)).ravel(),
        rtol=1e-5,
        atol=1e-6,
    )


def test_preprocess_moves_counts_without_copying_and_shares_structure(tiny_train):
    adata = tiny_train.copy()
    del adata.layers["counts"]
    counts = adata.X
    mp.pp.preprocess(adata, n_top_genes=300, n_comps=10)
    assert adata.layers["counts"] is counts
    assert np.shares_memory(adata.X.indptr, counts.indptr) and not np.shares_memory(
        adata.X.data, counts.data
    )
    assert (counts != tiny_train.X).nnz == 0


def test_non_canonical_counts_are_copied_not_shared(tiny_train):
    adata = tiny_train[:300].copy()
    del adata.layers["counts"]
    # a stored zero: X must not share the counts' structure (something may prune it)
    adata.X.data[0] = 0.0
    mp.pp.preprocess(adata, n_top_genes=200, n_comps=5)
    assert not np.shares_memory(adata.X.indices, adata.layers["counts"].indices)


def test_chunked_hvg_equals_scanpys_when_genes_tie_or_bins_hold_one_gene(small_chunks):
    rng = np.random.default_rng(1)
    counts = rng.negative_binomial(2, 0.3, size=(120, 60)).astype(np.float32)
    counts[:, 5] = 0  # an unexpressed gene (zero mean, NaN dispersion)
    counts[:3, 7] = 400  # a gene alone in its mean bin
    adata = AnnData(X=sparse.csr_matrix(counts))
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    ours = _preprocess._seurat_hvg(adata.X, 20)
    sc.pp.highly_variable_genes(adata, n_top_genes=20, flavor="seurat")
    assert (ours["highly_variable"].to_numpy() == adata.var["highly_variable"].to_numpy()).all()
    np.testing.assert_allclose(
        ours["dispersions_norm"], adata.var["dispersions_norm"], rtol=1e-5, equal_nan=True
    )


def test_lazy_reader_keeps_the_gene_symbols_every_file_agrees_on(client, tiny_train, tmp_path):
    ids = [f"ENSG{i:011d}" for i in range(tiny_train.n_vars)]
    for i, lot in enumerate(["BM01", "BM02"]):
        part = tiny_train[(tiny_train.obs["lot"] == lot).to_numpy()]
        var = pd.DataFrame(
            {
                "gene_symbols": tiny_train.var_names.to_numpy(),
                "batch_note": [f"file{i}"] * len(ids),
            },
            index=ids,
        )
        AnnData(X=part.X.copy(), obs=part.obs[[]].copy(), var=var).write_h5ad(
            tmp_path / f"{lot}.h5ad"
        )
    lazy = mp.io.read_lots_lazy(tmp_path)
    assert list(lazy.var.columns) == [
        "gene_symbols"
    ]  # the column the files disagree on is left out
    assert list(lazy.var["gene_symbols"]) == list(tiny_train.var_names)
    memory = AnnData(X=lazy.X.compute(), obs=lazy.obs.copy(), var=lazy.var.copy())
    for adata in (lazy, memory):
        mp.pp.qc(adata, thresholds="mad", min_cells_per_lot=0)
    assert lazy.var["mt"].sum() == 8
    assert lazy.obs_names.equals(memory.obs_names)  # per-lot MAD thresholds on Dask too
    pd.testing.assert_frame_equal(mp.get.qc(lazy), mp.get.qc(memory))
