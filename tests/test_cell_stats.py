"""The bounded-memory cell-level kernels equal the textbook statistics and scanpy's."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from anndata import AnnData
from scipy import sparse, stats

import mscpotency as mp
from mscpotency import _cell_stats


@pytest.fixture
def small_chunks(monkeypatch):
    """Row chunks of a few hundred entries, so every walk crosses many chunk borders."""
    monkeypatch.setattr(_cell_stats, "CHUNK_ENTRIES", 300)
    monkeypatch.setattr(_cell_stats, "STREAM_ENTRIES", 300)


def _tied_matrix(seed: int = 0, n_obs: int = 230, n_genes: int = 17) -> np.ndarray:
    """Sparse-ish values with many ties, negative values and all-zero genes."""
    rng = np.random.default_rng(seed)
    X = rng.integers(-2, 4, size=(n_obs, n_genes)).astype(np.float32) / 2
    X[rng.random(X.shape) < 0.5] = 0
    X[:, 3] = 0  # never detected
    X[:, 4] = 1.5  # constant
    return X


def _mann_whitney_z(X: np.ndarray, group: np.ndarray) -> np.ndarray:
    n1, n2 = group.sum(), (~group).sum()
    u = np.array(
        [stats.mannwhitneyu(X[group, j], X[~group, j]).statistic for j in range(X.shape[1])]
    )
    z = (u - n1 * n2 / 2) / np.sqrt(n1 * n2 * (n1 + n2 + 1) / 12)
    return np.nan_to_num(z)


@pytest.mark.parametrize("share", [0.1, 0.5, 0.9], ids=["small_group", "half", "large_group"])
@pytest.mark.parametrize("layout", ["dense", "csr", "csr_explicit_zeros", "csc"])
def test_rank_sum_z_equals_mann_whitney(small_chunks, share, layout):
    X = _tied_matrix()
    group = np.random.default_rng(1).random(X.shape[0]) < share
    if layout == "dense":
        matrix = X
    elif layout == "csr":
        matrix = sparse.csr_matrix(X)
    elif layout == "csc":
        matrix = sparse.csc_matrix(X)
    else:  # stored zeros must count as zeros (and must not be pruned from the input)
        matrix = sparse.csr_matrix(X)
        matrix.data[::7] = 0
        X = matrix.toarray()
    before = matrix.copy()
    z = _cell_stats.rank_sum_z(matrix, group, max_sorted_entries=40)  # several gene passes
    np.testing.assert_allclose(z, _mann_whitney_z(X, group), rtol=1e-12, atol=1e-12)
    assert z[3] == 0  # no difference where nothing is detected
    if sparse.issparse(matrix):
        assert matrix.nnz == before.nnz and (matrix != before).nnz == 0


def test_galloping_skip_equals_searchsorted():
    rng = np.random.default_rng(3)
    for _ in range(300):
        side = np.sort(rng.integers(0, 40, size=rng.integers(0, 400)).astype(np.float32) / 4)
        low = int(rng.integers(0, side.size + 1))
        high = int(rng.integers(low, side.size + 1))
        value = np.float32(rng.integers(-2, 42) / 4)
        part = side[low:high]
        assert _cell_stats._skip(side, low, high, value, False) == low + np.searchsorted(
            part, value, side="left"
        )
        assert _cell_stats._skip(side, low, high, value, True) == low + np.searchsorted(
            part, value, side="right"
        )


def test_merge_counts_of_a_short_chunk_against_a_long_side():
    """A few values merged into a long, tied side (the shape of one block at 10^6 cells)."""
    rng = np.random.default_rng(4)
    side = np.sort(rng.integers(-3, 200, size=20_000).astype(np.float32) / 8)
    values = np.sort(rng.integers(-3, 200, size=25).astype(np.float32) / 8)
    twice_u = np.zeros(1, dtype=np.int64)
    zeros = np.array([17])
    _cell_stats._merge_counts(
        values, np.array([0, values.size]), side, np.array([0, side.size]), zeros, twice_u
    )
    expected = sum(
        2 * ((side < v).sum() + (zeros[0] if v > 0 else 0)) + (side == v).sum() for v in values
    )
    assert twice_u[0] == expected


@pytest.mark.parametrize("order", ["shuffled", "by_group"])
def test_group_moments_equal_direct_sums(small_chunks, order):
    X = _tied_matrix(seed=2)
    codes = np.random.default_rng(3).integers(0, 5, X.shape[0])
    codes[codes == 2] = 3  # an empty group
    if order == "by_group":  # as lots come: each chunk holds one or two of the groups
        codes = np.sort(codes)
    for matrix in (X, sparse.csr_matrix(X)):
        moments = _cell_stats.group_moments(matrix, codes, 5)
        for g in range(5):
            rows = X[codes == g].astype(np.float64)
            assert moments.n[g] == rows.shape[0]
            np.testing.assert_allclose(moments.sums[g], rows.sum(axis=0, dtype=np.float64))
            np.testing.assert_allclose(moments.nonzero[g], (rows != 0).sum(axis=0))
            if rows.shape[0] > 1:
                np.testing.assert_allclose(
                    moments.var()[g], rows.var(axis=0, ddof=1), rtol=1e-9, atol=1e-12
                )
        assert np.isnan(moments.mean()[2]).all()
        merged = moments.merge(np.array([0, 0, 1, 1, 1]), 2)
        np.testing.assert_allclose(merged.sums[1], X[codes >= 2].sum(axis=0))
        assert merged.n.tolist() == [(codes < 2).sum(), (codes >= 2).sum()]


def test_kernels_reject_bad_groups():
    X = sparse.csr_matrix(_tied_matrix())
    with pytest.raises(ValueError, match="both groups"):
        _cell_stats.rank_sum_z(X, np.ones(X.shape[0], dtype=bool))
    with pytest.raises(ValueError, match="boolean mask over the 230 cells"):
        _cell_stats.rank_sum_z(X, np.ones(5, dtype=bool))
    with pytest.raises(ValueError, match=r"codes must lie in 0\.\.1"):
        _cell_stats.group_moments(X, np.full(X.shape[0], 2), 2)
    with pytest.raises(ValueError, match="one entry per cell"):
        _cell_stats.group_moments(X, np.zeros(3, dtype=int), 2)


@pytest.mark.parametrize("method", ["wilcoxon", "t-test", "t-test_overestim_var"])
def test_potency_markers_equal_scanpys_rank_genes_groups(tiny_ref, small_chunks, method):
    adata = mp.tl.potency_markers(
        tiny_ref, method=method, n_genes=tiny_ref.n_vars, rank_by="score", copy=True
    )
    ours = mp.get.potency_markers(adata).set_index("gene")
    cluster = adata.uns["potency_markers"]["cluster"]
    view = AnnData(
        X=tiny_ref.X,
        obs=pd.DataFrame(
            {"group": pd.Categorical(np.where(tiny_ref.obs["cluster"] == cluster, "in", "out"))},
            index=tiny_ref.obs_names,
        ),
        var=pd.DataFrame(index=tiny_ref.var_names),
    )
    view.uns["log1p"] = {"base": None}
    sc.tl.rank_genes_groups(
        view, "group", groups=["in"], reference="rest", method=method, pts=True, use_raw=False
    )
    theirs = sc.get.rank_genes_groups_df(view, group="in").set_index("names").loc[ours.index]
    # scanpy stores float32: compare at float32 precision
    np.testing.assert_allclose(ours["score"], theirs["scores"], rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(
        ours["logfoldchange"], theirs["logfoldchanges"], rtol=1e-5, atol=1e-4
    )
    np.testing.assert_allclose(ours["pvalue"], theirs["pvals"], rtol=1e-4, atol=1e-300)
    np.testing.assert_allclose(ours["pvalue_adj"], theirs["pvals_adj"], rtol=1e-4, atol=1e-300)
    np.testing.assert_allclose(ours["pct_in"], theirs["pct_nz_group"], rtol=1e-6)
    np.testing.assert_allclose(ours["pct_out"], theirs["pct_nz_reference"], rtol=1e-6)
    # the same ranking where scores are not tied
    top = theirs.sort_values("scores", ascending=False).index[:10]
    assert list(ours.index[:10]) == list(top)


def test_potency_markers_per_lot_check_equals_a_direct_computation(tiny_ref):
    table = mp.get.potency_markers(tiny_ref).set_index("gene")
    cluster = tiny_ref.uns["potency_markers"]["cluster"]
    X = tiny_ref.X.toarray().astype(np.float64)
    inside = (tiny_ref.obs["cluster"] == cluster).to_numpy()
    genes = tiny_ref.var_names.get_indexer(table.index)
    diffs = []
    for lot in tiny_ref.obs["lot"].cat.categories:
        in_lot = (tiny_ref.obs["lot"] == lot).to_numpy()
        if (in_lot & inside).sum() >= 5 and (in_lot & ~inside).sum() >= 5:
            diffs.append(
                X[in_lot & inside][:, genes].mean(axis=0)
                - X[in_lot & ~inside][:, genes].mean(axis=0)
            )
    diffs = np.array(diffs)
    assert (table["n_lots_tested"] == len(diffs)).all()
    np.testing.assert_array_equal(table["n_lots_up"], (diffs > 0).sum(axis=0))
    np.testing.assert_allclose(
        table["median_lot_log2fc"], np.median(diffs, axis=0) / np.log(2), rtol=1e-9
    )


def test_potency_markers_rejects_unknown_method_and_layer(tiny_ref):
    with pytest.raises(ValueError, match="method must be one of"):
        mp.tl.potency_markers(tiny_ref, method="logreg", copy=True)
    with pytest.raises(KeyError, match="layer 'missing' not found"):
        mp.tl.potency_markers(tiny_ref, layer="missing", copy=True)


def test_task_groups_cover_the_blocks_in_order():
    chunks = (5, 0, 7, 3, 9, 1)
    assert _cell_stats._task_groups(chunks, None) == [(i, i + 1) for i in range(6)]
    groups = _cell_stats._task_groups(chunks, 10)
    assert groups == [(0, 3), (3, 5), (5, 6)]  # 12, 12, then the rest
    assert _cell_stats._task_groups(chunks, 1) == [(0, 1), (1, 3), (3, 4), (4, 5), (5, 6)]
