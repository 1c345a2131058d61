# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Reference analysis: which cells carry the potency of an MSC product?
#
# This tutorial reproduces the reference analysis of Miura et al. (Stem Cells Transl Med
# 2023;12:379-390) on mscpotency's study-shaped simulation:
#
# 1. pool the cells of 11 bone-marrow MSC lots, normalise, reduce and cluster them;
# 2. count each cluster's share of every lot and compare each lot with the pool;
# 3. correlate every cluster's share with the lots' potency (VEGF secreted under
#    ischemia-like culture) with exact Spearman p-values, and find the potency cluster;
# 4. describe that cluster by its marker genes, checked lot by lot.
#
# The simulator knows the truth (columns `true_*`), so every step can be checked.

# %%
import scanpy as sc

import mscpotency as mp

sc.settings.verbosity = 1

# %% [markdown]
# ## Data
# `mp.datasets.study()` simulates 24 lots in four arms: 11 bone-marrow training lots, 4
# held-out bone-marrow lots, 4 adipose and 5 umbilical-cord lots, ~1,500 cells each. Raw
# counts are in `X` (and `layers['counts']`); `obs['vegf']` is the lot-level potency assay.
# With your own data: `mp.io.read_lots("path/to/lots/")` reads a folder of 10x or h5ad
# files, and `mp.pp.add_lot_table(adata, mp.io.read_lot_table("lots.csv"))` joins the assays.

# %%
study = mp.datasets.study(random_state=0)
adata = study[study.obs["set"] == "BM-train"].copy()
mp.get.lot_table(adata)

# %% [markdown]
# ## Quality control, normalisation, reduction
# QC is reported per lot: nothing is removed without being counted.

# %%
mp.pp.qc(adata)
mp.get.qc(adata)

# %%
mp.pp.preprocess(adata)
mp.tl.cluster(adata, n_clusters=8)
# tl.cluster's graph is also where scanpy looks by default (uns["neighbors"])
sc.tl.umap(adata)
mp.pl.umap(adata, color=["cluster", "lot"], show=False)

# %% [markdown]
# ## Composition of each lot

# %%
mp.tl.lot_fractions(adata)
mp.tl.composition_deviation(adata)
mp.pl.lot_fractions(adata, show=False)

# %%
mp.get.composition_deviation(adata)

# %% [markdown]
# ## Which cluster's share tracks potency?
# With 11 lots the p-values are exact: all 11! orderings of the lots are counted.

# %%
mp.tl.potency_association(adata, "vegf")
mp.get.potency_association(adata)

# %%
mp.pl.potency_association(adata, show=False)

# %%
mp.pl.potency_scatter(adata, show=False)

# %% [markdown]
# ## Markers of the potency cluster
# Cell-level ranks (Wilcoxon) next to a lot-by-lot check: is the gene up in the cluster
# inside every lot?

# %%
mp.tl.potency_markers(adata)
mp.get.potency_markers(adata).head(10)

# %%
mp.pl.potency_markers(adata, show=False)

# %% [markdown]
# The same markers are stored in scanpy's `rank_genes_groups` format, so scanpy's own
# plots and tables read them as they are (genes by `var_names`; pass
# `gene_symbols="gene_symbols"` to show symbols when `var` has them).

# %%
potency_cluster = adata.uns["potency_markers"]["cluster"]
sc.pl.rank_genes_groups_dotplot(adata, n_genes=8, dendrogram=False, show=False)
sc.get.rank_genes_groups_df(adata, group=potency_cluster).head()

# %% [markdown]
# ## Check against the truth, and provenance

# %%
from sklearn.metrics import adjusted_rand_score

potency_cluster = adata.uns["potency_association"]["potency_cluster"]
truth = adata.obs["true_potency_cell"]
found = adata.obs["cluster"] == potency_cluster
print("ARI:", round(adjusted_rand_score(adata.obs["true_subpopulation"], adata.obs["cluster"]), 3))
print(
    "F1 of the potency cluster:", round(2 * (truth & found).sum() / (truth.sum() + found.sum()), 3)
)
assert mp.get.potency_markers(adata)["gene"].iloc[0] == "LRRC75A"

# %%
mp.get.provenance(adata)[["function", "random_state", "input_fingerprint", "seconds"]]
