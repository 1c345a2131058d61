"""Novelty of the query's own groups: a population the reference lacks, flagged as a whole.

A cell's novelty p-value (:mod:`._novelty`) has little power on a population that differs
from the reference mostly off its principal axes, measured by another technology: on the
cross-technology preset 11-37% of the left-out population reach ``p <= 0.05``, against
2-6% of known cells. The population is still a group of the query's own structure. Here the
query is clustered on its own genes (nothing from the reference), and a group whose share
of flagged cells is far above the rate known cells are flagged at is novel as a whole: the
one-sided binomial test of its flagged cells against ``Binomial(n_cells, 1.5 alpha)``
(:data:`GROUP_TOLERANCE`; :func:`._novelty.lot_novelty`, the per-lot test), Bonferroni over
groups at :data:`._novelty.LOT_LEVEL`. Every cell of such a group is flagged.

What it controls: a group of known cells is flagged only when its cells are flagged
significantly more often than 1.5 x alpha, so with p-values valid for each known population
the chance that any known group is flagged is below ``LOT_LEVEL``. Across technologies and
tissues the p-values are valid on average over known cells but not population by population
(known populations of the cross-technology preset were flagged at 0.6-21% at
``alpha = 0.05``), so there the control is approximate: measured in
``benchmarks/results/novelty_crosstech_groups.md``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scanpy as sc
from anndata import AnnData
from scipy import sparse

from ._novelty import lot_novelty

#: Genes the query's own clustering keeps (scanpy's ``seurat`` dispersion ranking): chosen
#: on cross-technology seeds 0-2 against 300 (the same share of the novel population
#: flagged, 91/11/87% against 95/11/86%; known cells at most 6.0% against 7.1% at
#: ``alpha = 0.05``), ``benchmarks/results/novelty_crosstech_groups.md``.
GROUP_GENES = 500
#: A group is novel when its share of flagged cells is significantly above this multiple of
#: ``alpha``: the issue's tolerance for known cells (at most 1.5 x alpha flagged). Against
#: ``alpha`` itself, known groups of ~1,000 cells flagged at 1.8 x alpha (other tissues, study
#: preset) passed the test: across tissues and technologies the cells' p-values are valid
#: over all known cells, not population by population.
GROUP_TOLERANCE = 1.5
#: Principal components, neighbours and Leiden resolution of the query's own clustering.
GROUP_COMPS = 30
GROUP_NEIGHBORS = 15
GROUP_RESOLUTION = 1.0


def query_groups(
    expression: sparse.csr_matrix,
    *,
    n_top_genes: int = GROUP_GENES,
    n_comps: int = GROUP_COMPS,
    n_neighbors: int = GROUP_NEIGHBORS,
    resolution: float = GROUP_RESOLUTION,
    random_state: int = 0,
) -> np.ndarray:
    """Leiden clusters of the query on its own log-normalised expression.

    Parameters
    ----------
    expression
        Cells x genes, ``log1p`` of counts scaled to a common total (all the query's genes,
        not only the reference's: a novel programme may lie in genes the reference did not
        select).
    n_top_genes, n_comps, n_neighbors, resolution
        The standard pipeline: the most dispersed genes (scanpy's ``seurat`` flavour),
        scaled, PCA, a kNN graph and Leiden.
    random_state
        Seed of the PCA, the graph and Leiden.

    Returns
    -------
    Each cell's group as a string (``"0"``, ``"1"``, ...).
    """
    n_cells, n_genes = expression.shape
    adata = AnnData(sparse.csr_matrix(expression, dtype=np.float32))
    sc.pp.highly_variable_genes(adata, flavor="seurat", n_top_genes=min(n_top_genes, n_genes))
    X = adata.X[:, adata.var["highly_variable"].to_numpy()].toarray()
    spread = X.std(axis=0, ddof=1)
    X = np.clip((X - X.mean(axis=0)) / np.where(spread > 0, spread, 1.0), None, 10.0)
    small = AnnData(X)
    n_comps = min(n_comps, n_cells - 1, X.shape[1] - 1)
    sc.pp.pca(small, n_comps=n_comps, random_state=random_state)
    sc.pp.neighbors(small, n_neighbors=min(n_neighbors, n_cells - 1), random_state=random_state)
    sc.tl.leiden(
        small,
        resolution=resolution,
        random_state=random_state,
        flavor="igraph",
        n_iterations=2,
        directed=False,
    )
    return small.obs["leiden"].astype(str).to_numpy()


def group_novelty(
    groups: np.ndarray, novel: np.ndarray, alpha: float, *, tolerance: float = GROUP_TOLERANCE
) -> tuple[pd.DataFrame, np.ndarray]:
    """Per group, the test of its flagged cells; and the cells of groups novel as a whole.

    Parameters
    ----------
    groups
        Each cell's group (:func:`query_groups`, or the user's clusters).
    novel
        Each cell flagged by its own novelty p-value at ``alpha``.
    alpha
        The false-flag rate of the cells' p-values.
    tolerance
        The test is against ``Binomial(n_cells, tolerance * alpha)``.

    Returns
    -------
    The table of :func:`._novelty.lot_novelty` over groups (``n_novel``, ``share_novel``,
    ``expected_share_novel`` (the share tested against, ``tolerance * alpha``),
    ``novelty_pvalue``, ``excess_novel``; index ``group``) with ``n_cells``, and a boolean
    per cell: its group is novel as a whole.
    """
    groups = np.asarray(groups).astype(str)
    table = lot_novelty(groups, np.asarray(novel, dtype=bool), min(tolerance * alpha, 1.0))
    table.insert(0, "n_cells", pd.Series(groups).value_counts().reindex(table.index).to_numpy())
    table.index.name = "group"
    return table, np.isin(groups, table.index[table["excess_novel"]].to_numpy())
