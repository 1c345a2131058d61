"""scanpy works on the package's results as they are: the graph, the markers."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
import scanpy as sc

import mscpotency as mp


@pytest.fixture(scope="module")
def ref(tiny_ref):
    return tiny_ref.copy()


def test_umap_and_paga_find_the_cluster_graph(ref):
    adata = ref.copy()
    assert adata.uns["neighbors"]["params"]["written_by"] == "mscpotency.tl.cluster"
    assert adata.uns["cluster"]["params"]["scanpy_neighbors"] is True
    np.testing.assert_array_equal(
        adata.obsp["connectivities"].toarray(),
        adata.obsp["cluster_neighbors_connectivities"].toarray(),
    )
    sc.tl.umap(adata, random_state=0)
    assert adata.obsm["X_umap"].shape == (adata.n_obs, 2)
    sc.tl.paga(adata, groups="cluster")
    assert adata.uns["paga"]["connectivities"].shape == (8, 8)
    # the same embedding as through the explicit neighbors_key
    explicit = ref.copy()
    sc.tl.umap(explicit, neighbors_key="cluster_neighbors", random_state=0)
    np.testing.assert_allclose(adata.obsm["X_umap"], explicit.obsm["X_umap"])


def test_users_own_graph_is_kept_with_a_warning(ref):
    adata = ref.copy()
    sc.pp.neighbors(adata, n_neighbors=5, use_rep="X_pca", random_state=0)
    users = adata.obsp["connectivities"].copy()
    with pytest.warns(UserWarning, match="neighbors_key='again_neighbors'"):
        mp.tl.cluster(adata, resolution=0.5, key_added="again")
    assert (adata.obsp["connectivities"] != users).nnz == 0
    assert adata.uns["neighbors"]["params"]["n_neighbors"] == 5
    assert adata.uns["again"]["params"]["scanpy_neighbors"] is False
    # explicit: replaced
    mp.tl.cluster(adata, resolution=0.5, key_added="again", scanpy_neighbors=True)
    assert adata.uns["neighbors"]["params"]["n_neighbors"] == 15
    assert adata.uns["neighbors"]["params"]["key_added"] == "again"


def test_scanpy_neighbors_false_writes_nothing_default(ref):
    adata = ref.copy()
    del adata.uns["neighbors"], adata.obsp["connectivities"], adata.obsp["distances"]
    mp.tl.cluster(adata, resolution=0.5, key_added="again", scanpy_neighbors=False)
    assert "neighbors" not in adata.uns and "connectivities" not in adata.obsp


def test_markers_in_rank_genes_groups_format(ref):
    adata = ref.copy()
    table = adata.uns["potency_markers"]["table"]
    cluster = adata.uns["potency_markers"]["cluster"]
    assert adata.uns["potency_markers"]["rank_genes_groups_key"] == "rank_genes_groups"
    frame = sc.get.rank_genes_groups_df(adata, group=cluster)
    assert frame["names"].tolist() == table["gene"].tolist()
    np.testing.assert_allclose(frame["scores"], table["score"], rtol=1e-6)
    np.testing.assert_allclose(frame["pvals_adj"], table["pvalue_adj"], rtol=1e-6)
    np.testing.assert_allclose(frame["pct_nz_group"], table["pct_in"])
    np.testing.assert_allclose(frame["pct_nz_reference"], table["pct_out"])
    # the true marker of the simulated potency population is among them
    marker = adata.uns["simulation"]["marker_gene"] if "simulation" in adata.uns else "LRRC75A"
    assert marker in set(frame["names"])


def test_markers_agree_with_scanpys_own_rank_genes_groups(ref):
    adata = ref.copy()
    mp.tl.potency_markers(adata, rank_by="score")  # scanpy's order (the default: fold change)
    cluster = adata.uns["potency_markers"]["cluster"]
    ours = sc.get.rank_genes_groups_df(adata, group=cluster)
    sc.tl.rank_genes_groups(
        adata,
        "cluster",
        groups=[cluster],
        reference="rest",
        method="wilcoxon",
        pts=True,
        key_added="scanpy_own",
    )
    theirs = sc.get.rank_genes_groups_df(adata, group=cluster, key="scanpy_own")
    top = len(ours)
    assert ours["names"].tolist() == theirs["names"].head(top).tolist()
    np.testing.assert_allclose(ours["scores"], theirs["scores"].head(top), rtol=1e-4)
    np.testing.assert_allclose(
        ours["logfoldchanges"], theirs["logfoldchanges"].head(top), rtol=1e-3, atol=1e-3
    )


def test_scanpy_plots_draw_the_markers(ref):
    adata = ref.copy()
    sc.pl.rank_genes_groups(adata, n_genes=5, show=False)
    plt.close("all")
    axes = sc.pl.rank_genes_groups_dotplot(adata, n_genes=5, show=False)
    assert axes
    plt.close("all")


def test_symbols_through_scanpys_gene_symbols(ref):
    adata = ref.copy()
    adata.var["gene_symbols"] = [f"SYM_{g}" for g in adata.var_names]
    cluster = adata.uns["potency_markers"]["cluster"]
    frame = sc.get.rank_genes_groups_df(adata, group=cluster, gene_symbols="gene_symbols")
    assert frame["gene_symbols"].tolist() == [f"SYM_{g}" for g in frame["names"]]


def test_users_own_rank_genes_groups_is_kept(ref):
    adata = ref.copy()
    sc.tl.rank_genes_groups(adata, "cluster", groups=["CL0"], method="t-test")
    own = adata.uns["rank_genes_groups"]
    with pytest.warns(UserWarning, match="key='potency_markers_rank_genes_groups'"):
        mp.tl.potency_markers(adata)
    assert adata.uns["rank_genes_groups"] is own
    key = adata.uns["potency_markers"]["rank_genes_groups_key"]
    assert key == "potency_markers_rank_genes_groups"
    frame = sc.get.rank_genes_groups_df(
        adata, group=adata.uns["potency_markers"]["cluster"], key=key
    )
    assert frame["names"].tolist() == adata.uns["potency_markers"]["table"]["gene"].tolist()


def test_rerun_rewrites_its_own_entry_silently(ref):
    adata = ref.copy()
    mp.tl.potency_markers(adata, n_genes=7)  # filterwarnings=error: no warning
    assert (
        len(sc.get.rank_genes_groups_df(adata, group=adata.uns["potency_markers"]["cluster"])) == 7
    )


def test_h5ad_round_trip_keeps_both_formats_and_ownership(ref, tmp_path):
    import anndata as ad

    path = tmp_path / "ref.h5ad"
    ref.write_h5ad(path)
    back = ad.read_h5ad(path)
    cluster = back.uns["potency_markers"]["cluster"]
    frame = sc.get.rank_genes_groups_df(back, group=cluster)
    assert frame["names"].tolist() == back.uns["potency_markers"]["table"]["gene"].tolist()
    sc.tl.umap(back, random_state=0)
    # still recognised as the package's own: rewritten without a warning (filterwarnings=error)
    mp.tl.cluster(back, resolution=0.5, key_added="again")
    mp.tl.potency_markers(back, n_genes=5)
    assert back.uns["neighbors"]["params"]["key_added"] == "again"
