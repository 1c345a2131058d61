"""Second opinions on the potency association: counts, neighbourhoods, and where they agree.

Spearman on cluster fractions is one view of the data. A reviewer asks whether the call
survives (i) the compositional constraint (CLR-transformed fractions), (ii) a model of
the cluster's cell *counts* that weights lots by how many cells they have, and (iii) a
view that does not depend on the clustering at all:

- :func:`count_association`: quasi-binomial GLM of each cluster's cell count out of the
  lot's cells, with standardised potency as covariate; the p-value comes from permuting
  potency across lots (all n! orderings up to 8 lots, Monte Carlo above), so it is valid
  at n ≈ 10 whatever the overdispersion.
- :func:`neighbourhood_association`: Milo-style neighbourhoods on the kNN graph of
  :func:`mscpotency.tl.cluster` (each a sampled index cell and its graph neighbours); the
  share of each lot's cells in a neighbourhood is tested against potency with the
  package's exact Spearman kernel, with Milo's spatial FDR (or BH).
- :func:`method_agreement`: one table, one row per cluster, with every method's effect
  and p-value and whether they agree.
"""

from __future__ import annotations

from itertools import permutations
from typing import Literal

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse, stats

from ... import _keys, _registry, _stats
from ..._docs import doc_params
from ..._provenance import record
from ..._stored import stored, stored_table
from ..._validate import lots_of, require_min_lots, require_obs_column
from ._inputs import Potency, fractions_lot_key, lot_counts, lot_potency, reference_graph

#: Up to this many lots the count GLM's permutation p enumerates all n! orderings.
COUNT_EXACT_MAX_N = 8


# --------------------------------------------------------------------------- count GLM kernel
def quasibinomial_t(
    successes: np.ndarray,
    totals: np.ndarray,
    x: np.ndarray,
    *,
    n_iter: int = 50,
    tol: float = 1e-10,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Quasi-binomial logistic regression ``logit p = a + b x``, vectorised over rows of ``x``.

    Iteratively reweighted least squares with two parameters solved in closed form; the
    dispersion is Pearson's chi-square over ``n - 2``, as in ``statsmodels`` GLM with
    ``scale='X2'``.

    Parameters
    ----------
    successes, totals
        Cells in the cluster and cells in the lot, one per lot (``n``).
    x
        Covariate, ``(n,)`` or ``(B, n)`` for B covariate vectors (e.g. permutations).

    Returns
    -------
    slope, se, t, dispersion
        One per covariate vector.
    """
    y = np.asarray(successes, dtype=float)
    m = np.asarray(totals, dtype=float)
    x = np.atleast_2d(np.asarray(x, dtype=float))
    n = y.size
    if n < 3:
        msg = f"the count model needs at least 3 lots, got {n}"
        raise ValueError(msg)
    share = np.clip(y / m, 0.0, 1.0)
    start = np.log((y + 0.5) / (m - y + 0.5))
    eta = np.broadcast_to(start, x.shape).copy()
    a = np.zeros(x.shape[0])
    b = np.zeros(x.shape[0])
    eps = 1e-10
    for _ in range(n_iter):
        mu = np.clip(1 / (1 + np.exp(-eta)), eps, 1 - eps)
        variance = mu * (1 - mu)
        w = m * variance
        z = eta + (share - mu) / variance
        s0, s1, s2 = w.sum(axis=1), (w * x).sum(axis=1), (w * x * x).sum(axis=1)
        t0, t1 = (w * z).sum(axis=1), (w * x * z).sum(axis=1)
        det = s0 * s2 - s1**2
        with np.errstate(invalid="ignore", divide="ignore"):
            b_new = (s0 * t1 - s1 * t0) / det
            a_new = (t0 - b_new * s1) / s0
        eta = a_new[:, None] + b_new[:, None] * x
        done = np.nanmax(np.abs(b_new - b)) < tol and np.nanmax(np.abs(a_new - a)) < tol
        a, b = a_new, b_new
        if done:
            break
    mu = np.clip(1 / (1 + np.exp(-eta)), eps, 1 - eps)
    variance = mu * (1 - mu)
    w = m * variance
    s0, s1, s2 = w.sum(axis=1), (w * x).sum(axis=1), (w * x * x).sum(axis=1)
    det = s0 * s2 - s1**2
    dispersion = ((y - m * mu) ** 2 / (m * variance)).sum(axis=1) / (n - 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        se = np.sqrt(dispersion * s0 / det)
        t = b / se
    return b, se, t, dispersion


def _permuted(
    y: np.ndarray, n_permutations: int, rng: np.random.Generator
) -> tuple[np.ndarray, bool]:
    """All orderings of ``y`` (n <= COUNT_EXACT_MAX_N) or ``n_permutations`` random ones."""
    n = y.size
    if n <= COUNT_EXACT_MAX_N:
        return y[np.array(list(permutations(range(n))))], True
    return rng.permuted(np.tile(y, (n_permutations, 1)), axis=1), False


def count_permutation_test(
    counts: np.ndarray,
    totals: np.ndarray,
    y: np.ndarray,
    *,
    n_permutations: int = 4999,
    random_state: int | np.random.Generator = 0,
) -> dict[str, np.ndarray | str]:
    """Quasi-binomial slope of every cluster's count on standardised ``y``, with permutation p.

    ``counts`` is lots x clusters. The statistic is the slope's quasi-likelihood t; its
    permutation distribution comes from the same orderings of ``y`` for every cluster.
    """
    counts = np.asarray(counts, dtype=float)
    totals = np.asarray(totals, dtype=float)
    y = np.asarray(y, dtype=float)
    z = (y - y.mean()) / y.std(ddof=1)
    rng = np.random.default_rng(random_state)
    permuted, exact = _permuted(z, n_permutations, rng)
    n_clusters = counts.shape[1]
    out = {
        k: np.full(n_clusters, np.nan)
        for k in ("coef", "se", "t", "dispersion", "pvalue", "pvalue_asymptotic")
    }
    for j in range(n_clusters):
        column = counts[:, j]
        if column.sum() == 0 or np.all(column == totals):
            continue
        b, se, t, phi = quasibinomial_t(column, totals, z)
        out["coef"][j], out["se"][j], out["t"][j], out["dispersion"][j] = b[0], se[0], t[0], phi[0]
        out["pvalue_asymptotic"][j] = 2 * stats.t.sf(abs(t[0]), y.size - 2)
        _, _, t_null, _ = quasibinomial_t(column, totals, permuted)
        t_null = t_null[np.isfinite(t_null)]
        extreme = (np.abs(t_null) >= abs(t[0]) * (1 - 1e-9)).sum()
        out["pvalue"][j] = extreme / t_null.size if exact else (1 + extreme) / (1 + t_null.size)
    out["method"] = "exact" if exact else "permutation"  # type: ignore[assignment]
    return out


# --------------------------------------------------------------------------- tools
@doc_params
@record("tl.count_association")
def count_association(
    adata: AnnData,
    potency: Potency = _keys.POTENCY,
    *,
    fractions_key: str = _registry.LOT_FRACTIONS.key,
    n_permutations: int = 4999,
    random_state: int = 0,
    key_added: str = _registry.COUNT_ASSOCIATION.key,
    copy: bool = False,
) -> AnnData | None:
    """Count model of every cluster: quasi-binomial GLM on potency, permutation p-value.

    Each cluster's cell count in a lot is modelled as quasi-binomial out of the lot's
    cells, ``logit(share) = a + b * z``, with ``z`` the standardised potency and the
    dispersion estimated from Pearson's chi-square (lots vary more than binomial
    sampling). ``b`` is the change in log-odds of a cell being in the cluster per standard
    deviation of potency. Its p-value permutes potency across lots (all n! orderings up to
    8 lots, ``n_permutations`` random ones above) and recomputes the quasi-likelihood t,
    so it does not rest on asymptotics at n ≈ 10; the asymptotic p (t with n - 2 degrees
    of freedom) is shown beside it.

    Parameters
    ----------
    adata
        {adata}
        With ``uns[fractions_key]`` from :func:`mscpotency.tl.lot_fractions`.
    potency
        {potency}
        Or a lot -> value mapping/Series.
    n_permutations
        {n_permutations}
        Used above 8 lots.

    Returns
    -------
    ``None``, or the copy when ``copy=True``. Writes ``adata.uns[key_added]`` with
    ``'table'`` : DataFrame (one row per cluster: coef (log-odds per SD of potency),
    odds_ratio, se, t, dispersion, pvalue, pvalue_method, pvalue_asymptotic, fdr, n_lots)
    and ``'params'``.
    """
    counts = lot_counts(adata, fractions_key)
    lot_key = fractions_lot_key(adata, fractions_key)
    require_min_lots(len(counts), 4, what="the count model (2 parameters and a dispersion)")
    if n_permutations < 99:
        msg = f"n_permutations must be at least 99, got {n_permutations!r}"
        raise ValueError(msg)
    outcome, potency_name = lot_potency(adata, potency, pd.Index(counts.index), lot_key)
    result = count_permutation_test(
        counts.to_numpy(),
        counts.sum(axis=1).to_numpy(),
        outcome.to_numpy(),
        n_permutations=n_permutations,
        random_state=random_state,
    )
    table = pd.DataFrame(
        {
            "coef": result["coef"],
            "odds_ratio": np.exp(result["coef"]),
            "se": result["se"],
            "t": result["t"],
            "dispersion": result["dispersion"],
            "pvalue": result["pvalue"],
            "pvalue_method": result["method"],
            "pvalue_asymptotic": result["pvalue_asymptotic"],
        },
        index=pd.Index(counts.columns, name="cluster"),
    )
    table["fdr"] = _stats.benjamini_hochberg(table["pvalue"].to_numpy())
    table["n_lots"] = len(counts)
    adata = adata.copy() if copy else adata
    adata.uns[key_added] = {
        "table": table,
        "params": {
            "potency": potency_name,
            "fractions_key": fractions_key,
            "n_permutations": n_permutations,
            "random_state": random_state,
            "lot_key": lot_key,
            "pvalue_method": result["method"],
        },
    }
    return adata if copy else None


# --------------------------------------------------------------------------- neighbourhoods
def _neighbourhoods(
    graph: sparse.csr_matrix | None,
    embedding: np.ndarray,
    *,
    prop: float,
    rng: np.random.Generator,
    k: int | None,
) -> tuple[np.ndarray, sparse.csr_matrix, np.ndarray]:
    """Milo's refined sampling and neighbourhoods: index cells, membership, farthest-neighbour distance.

    ``prop`` of the cells are drawn at random; each is moved to the cell of its
    neighbourhood nearest the neighbourhood's median position in ``embedding``. A
    neighbourhood is the index cell and its neighbours on ``graph``, or (``graph`` None) its
    ``k`` nearest cells in ``embedding``. Returns the unique index cells, the cells x
    neighbourhoods membership matrix and each index cell's distance to its farthest member.
    """
    n = embedding.shape[0]
    n_sample = max(1, round(prop * n))
    sampled = np.sort(rng.choice(n, size=n_sample, replace=False))
    if graph is None:
        from sklearn.neighbors import NearestNeighbors

        knn = NearestNeighbors(n_neighbors=k).fit(embedding)

        def members_of(cells: np.ndarray) -> list[np.ndarray]:
            _, idx = knn.kneighbors(embedding[cells])
            return [np.unique(np.append(row, cell)) for row, cell in zip(idx, cells, strict=True)]
    else:
        indptr, indices = graph.indptr, graph.indices

        def members_of(cells: np.ndarray) -> list[np.ndarray]:
            return [np.unique(np.append(indices[indptr[c] : indptr[c + 1]], c)) for c in cells]

    refined = np.array(
        [
            members[
                np.argmin(
                    ((embedding[members] - np.median(embedding[members], axis=0)) ** 2).sum(axis=1)
                )
            ]
            for members in members_of(sampled)
        ]
    )
    index_cells = np.unique(refined)
    members = members_of(index_cells)
    farthest = np.array(
        [
            np.sqrt(((embedding[m] - embedding[c]) ** 2).sum(axis=1)).max()
            for m, c in zip(members, index_cells, strict=True)
        ]
    )
    rows = np.concatenate(members)
    columns = np.repeat(np.arange(index_cells.size), [m.size for m in members])
    membership = sparse.csr_matrix(
        (np.ones(rows.size), (rows, columns)), shape=(n, index_cells.size)
    )
    return index_cells, membership, farthest


def spatial_fdr(pvalues: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Milo's weighted Benjamini-Hochberg: each neighbourhood weighted by ``weights``."""
    pvalues = np.asarray(pvalues, dtype=float)
    weights = np.asarray(weights, dtype=float)
    adjusted = np.full(pvalues.shape, np.nan)
    finite = np.flatnonzero(np.isfinite(pvalues))
    if finite.size == 0:
        return adjusted
    order = finite[np.argsort(pvalues[finite], kind="stable")]
    w = weights[order]
    ranked = w.sum() * pvalues[order] / np.cumsum(w)
    adjusted[order] = np.clip(np.minimum.accumulate(ranked[::-1])[::-1], 0, 1)
    return adjusted


def _neighbourhood_size(
    n_neighbors: int | str, connectivities: sparse.csr_matrix, n_lots: int, n_cells: int
) -> tuple[sparse.csr_matrix | None, int | None]:
    """The graph whose neighbours make a neighbourhood, or the k of k nearest cells."""
    if n_neighbors == "graph":
        return connectivities, None
    k = min(max(30, 8 * n_lots), n_cells) if n_neighbors == "auto" else n_neighbors
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 2 <= k <= n_cells:
        msg = f"n_neighbors must be 'auto', 'graph' or an integer in [2, n_cells], got {n_neighbors!r}"
        raise ValueError(msg)
    return None, int(k)


def _one_hot(codes: np.ndarray, n_categories: int) -> sparse.csr_matrix:
    """Cells x categories indicator matrix of integer codes."""
    n = codes.size
    return sparse.csr_matrix((np.ones(n), (np.arange(n), codes)), shape=(n, n_categories))


def _nhood_table(
    adata: AnnData,
    labels: pd.Series,
    index_cells: np.ndarray,
    membership: sparse.csr_matrix,
    result: _stats.AssociationResult,
    adjusted: np.ndarray,
    alpha: float,
) -> pd.DataFrame:
    """One row per neighbourhood: its size, majority cluster and purity, and its test."""
    labels = labels.astype("category")
    categories = np.asarray([str(c) for c in labels.cat.categories])
    per_label = np.asarray(
        (_one_hot(labels.cat.codes.to_numpy(), categories.size).T @ membership).todense()
    )  # clusters x nhoods
    sizes = per_label.sum(axis=0)
    nhoods = pd.DataFrame(
        {
            "index_cell": adata.obs_names[index_cells].astype(str),
            "size": sizes.astype(int),
            "cluster": categories[per_label.argmax(axis=0)],
            "purity": per_label.max(axis=0) / sizes,
            "rho": result.rho,
            "pvalue": result.pvalue,
            "pvalue_method": result.pvalue_method,
            "fdr": adjusted,
        },
        index=pd.Index([f"N{i}" for i in range(index_cells.size)], name="nhood"),
    )
    nhoods["significant"] = nhoods["fdr"] < alpha
    return nhoods


def _clusters_of_nhoods(
    nhoods: pd.DataFrame, categories: list[str], cluster_key: str
) -> pd.DataFrame:
    """Per cluster: its neighbourhoods, their median rho and the shares significant by sign."""
    calls = pd.DataFrame(
        {
            "cluster": nhoods["cluster"],
            "rho": nhoods["rho"],
            "positive": (nhoods["significant"] & (nhoods["rho"] > 0)).astype(float),
            "negative": (nhoods["significant"] & (nhoods["rho"] < 0)).astype(float),
        }
    )
    grouped = calls.groupby("cluster", observed=True)
    clusters = pd.DataFrame(
        {
            "n_nhoods": grouped.size(),
            "median_rho": grouped["rho"].median(),
            "share_positive": grouped["positive"].mean(),
            "share_negative": grouped["negative"].mean(),
        }
    ).reindex(categories)
    clusters["n_nhoods"] = clusters["n_nhoods"].fillna(0).astype(int)
    clusters.index.name = cluster_key
    return clusters


def _mean_rho_per_cell(membership: sparse.csr_matrix, rho: np.ndarray) -> np.ndarray:
    """Mean rho of the neighbourhoods each cell is in (NaN in none)."""
    n_in = np.asarray(membership.sum(axis=1)).ravel()
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_in > 0, membership @ np.nan_to_num(rho, nan=0.0) / n_in, np.nan)


@doc_params
@record("tl.neighbourhood_association")
def neighbourhood_association(
    adata: AnnData,
    potency: Potency = _keys.POTENCY,
    *,
    prop: float = 0.1,
    n_neighbors: int | Literal["auto", "graph"] = "auto",
    use_rep: str | None = None,
    cluster_key: str = _keys.CLUSTER,
    lot_key: str = _keys.LOT,
    fdr: Literal["spatial", "bh"] = "spatial",
    alpha: float = 0.1,
    method: _stats.PvalueMethod = "auto",
    alternative: _stats.Alternative = "two-sided",
    n_permutations: int = 9999,
    random_state: int = 0,
    key_added: str = _registry.NEIGHBOURHOOD_ASSOCIATION.key,
    copy: bool = False,
) -> AnnData | None:
    """Cluster-free check: which kNN neighbourhoods of cells track potency across lots.

    As in Milo (Dann et al. 2022), ``prop`` of the cells are sampled and each moved to the
    cell nearest the median (in the graph's embedding) of its neighbourhood; a
    neighbourhood is that index cell and its neighbours on the kNN graph of
    :func:`mscpotency.tl.cluster`. Unlike Milo's negative-binomial GLM, each
    neighbourhood's share of every lot's cells is tested against the continuous potency
    with the package's Spearman kernel (exact over all n! orderings at small n), and the
    p-values are adjusted by Milo's spatial FDR (weighted by the inverse distance to the
    index cell's farthest neighbour) or by BH. Neighbourhoods are then labelled by their
    majority cluster, so the clustering can be checked against a view that never used it.

    Parameters
    ----------
    adata
        {adata}
        Clustered by :func:`mscpotency.tl.cluster` (its graph and embedding).
    potency
        {potency}
        Or a lot -> value mapping/Series.
    prop
        Share of cells sampled as index cells (Milo: 0.05-0.1).
    n_neighbors
        Size of a neighbourhood: ``"graph"`` takes the index cell's neighbours on the
        graph of :func:`mscpotency.tl.cluster` (~15-30 cells, often too few per lot);
        an integer k takes its k nearest cells in the graph's embedding; ``"auto"`` (default)
        uses k = max(30, 8 x number of lots), so an average lot has ~8 cells in a
        neighbourhood, as Milo advises (graph k large enough for the number of samples).
    use_rep
        {use_rep}
        Here the embedding the neighbourhoods are built in; default: the one
        ``tl.cluster`` used. Donor effects make each lot's cells sit apart locally in an
        uncorrected embedding (on the simulator ~60% of a cell's neighbours come from its
        own lot), so neighbourhoods then mix few lots and the test loses power (it stays
        valid). A lot-integrated embedding (ComBat then PCA, Harmony, scVI) restores it.
    cluster_key
        {cluster_key}
        Its graph builds the neighbourhoods and its labels summarise them.
    fdr
        ``"spatial"`` (Milo's weighted BH) or ``"bh"``.
    key_added
        {key_added}
        Also the ``obsm`` key of the membership and the prefix of the ``obs`` column.

    Returns
    -------
    ``None``, or the copy when ``copy=True``. Writes ``adata.obsm[key_added]`` (sparse
    cells x neighbourhoods membership), ``adata.obs[key_added + '_rho']`` (mean rho of the
    neighbourhoods a cell is in; NaN in none) and ``adata.uns[key_added]`` with
    ``'nhoods'`` : DataFrame (one row per neighbourhood: index_cell, size, cluster,
    purity, rho, pvalue, pvalue_method, fdr, significant), ``'clusters'`` : DataFrame (one
    row per cluster: n_nhoods, median_rho, share_positive, share_negative, i.e. the shares
    of its neighbourhoods significant with each sign) and ``'params'``.
    """
    if not 0 < prop <= 1:
        msg = f"prop must be in (0, 1], got {prop!r}"
        raise ValueError(msg)
    if fdr not in ("spatial", "bh"):
        msg = f"fdr must be 'spatial' or 'bh', got {fdr!r}"
        raise ValueError(msg)
    labels = require_obs_column(
        adata, cluster_key, what="cluster labels", hint="Run `tl.cluster` first."
    )
    connectivities, _, cluster_params = reference_graph(adata, cluster_key)
    use_rep = str(cluster_params.get("use_rep", "X_pca")) if use_rep is None else use_rep
    if use_rep not in adata.obsm:
        msg = f"adata.obsm has no {use_rep!r}; run `pp.preprocess` and `tl.cluster`, or pass use_rep=."
        raise KeyError(msg)
    lots = lots_of(adata, lot_key)
    lot_names = pd.Index(lots.cat.categories.astype(str))
    require_min_lots(lot_names.size)
    outcome, potency_name = lot_potency(adata, potency, lot_names, lot_key)
    embedding = np.asarray(adata.obsm[use_rep], dtype=float)
    rng = np.random.default_rng(random_state)
    graph, k = _neighbourhood_size(n_neighbors, connectivities, lot_names.size, adata.n_obs)
    index_cells, membership, farthest = _neighbourhoods(graph, embedding, prop=prop, rng=rng, k=k)
    lot_codes = lots.cat.codes.to_numpy()
    per_lot = np.asarray((_one_hot(lot_codes, lot_names.size).T @ membership).todense())
    fractions = per_lot / np.bincount(lot_codes, minlength=lot_names.size)[:, None]
    result = _stats.spearman_test(
        fractions,  # lots x nhoods
        outcome.to_numpy(),
        method=method,
        alternative=alternative,
        n_permutations=n_permutations,
        random_state=random_state,
    )
    # Milo's weight: inverse distance from the index cell to its farthest (k-th) neighbour
    adjusted = (
        spatial_fdr(result.pvalue, 1.0 / np.maximum(farthest, 1e-12))
        if fdr == "spatial"
        else _stats.benjamini_hochberg(result.pvalue)
    )
    nhoods = _nhood_table(adata, labels, index_cells, membership, result, adjusted, alpha)
    categories = [str(c) for c in labels.astype("category").cat.categories]
    adata = adata.copy() if copy else adata
    adata.obs[f"{key_added}_rho"] = _mean_rho_per_cell(membership, result.rho)
    adata.obsm[key_added] = membership
    adata.uns[key_added] = {
        "nhoods": nhoods,
        "clusters": _clusters_of_nhoods(nhoods, categories, cluster_key),
        "params": {
            "potency": potency_name,
            "prop": prop,
            "cluster_key": cluster_key,
            "lot_key": lot_key,
            "fdr": fdr,
            "alpha": alpha,
            "method": result.pvalue_method,
            "alternative": alternative,
            "n_permutations": n_permutations,
            "random_state": random_state,
            "use_rep": use_rep,
            "n_neighbors": n_neighbors,
            "n_nhoods": int(index_cells.size),
        },
    }
    return adata if copy else None


# --------------------------------------------------------------------------- agreement
def _call(effect: pd.Series, pvalue: pd.Series, alpha: float) -> np.ndarray:
    effect = np.asarray(effect, dtype=float)
    pvalue = np.asarray(pvalue, dtype=float)
    significant = np.isfinite(pvalue) & (pvalue < alpha)
    return np.where(significant & (effect > 0), "+", np.where(significant & (effect < 0), "-", "0"))


def _fraction_and_clr_columns(
    adata: AnnData, association: dict, alpha: float
) -> tuple[pd.DataFrame, dict[str, np.ndarray], str]:
    """Spearman on fractions (stored) and on CLR of the same lots' counts (computed here)."""
    association_params = association["params"]
    table_assoc: pd.DataFrame = association["table"]
    lots_table: pd.DataFrame = association["lots"]
    clusters = [str(c) for c in table_assoc.index]
    counts = lot_counts(adata, association_params["fractions_key"])
    counts = counts.loc[lots_table.index.astype(str), clusters].to_numpy(dtype=float)
    clr_result = _stats.spearman_test(
        _stats.clr(counts, counts=counts),
        lots_table[str(association_params["potency"])].to_numpy(dtype=float),
        method=association_params.get("method", "auto"),
        alternative=association_params.get("alternative", "two-sided"),
        n_permutations=int(association_params.get("n_permutations", 9999)),
        random_state=int(association_params.get("random_state", 0)),
    )
    table = pd.DataFrame(index=pd.Index(clusters, name="cluster"))
    table["rho_fraction"] = table_assoc["rho"].to_numpy(dtype=float)
    table["p_fraction"] = table_assoc["pvalue"].to_numpy(dtype=float)
    table["rho_clr"] = clr_result.rho
    table["p_clr"] = clr_result.pvalue
    calls = {
        "call_fraction": _call(table["rho_fraction"], table["p_fraction"], alpha),
        "call_clr": _call(table["rho_clr"], table["p_clr"], alpha),
    }
    return table, calls, clr_result.pvalue_method


def _add_count_columns(adata: AnnData, table: pd.DataFrame, count_key: str, alpha: float):
    """The count model's slope and permutation p per cluster; returns its call."""
    counts = stored_table(adata, _registry.COUNT_ASSOCIATION, "table", count_key)
    counts.index = counts.index.astype(str)
    table["coef_count"] = counts["coef"].reindex(table.index).to_numpy()
    table["p_count"] = counts["pvalue"].reindex(table.index).to_numpy()
    return _call(table["coef_count"], table["p_count"], alpha)


def _add_neighbourhood_columns(
    adata: AnnData, table: pd.DataFrame, neighbourhood_key: str, min_share: float
) -> np.ndarray:
    """The neighbourhoods' median rho and shares significant by sign; returns their call."""
    nhoods = stored_table(adata, _registry.NEIGHBOURHOOD_ASSOCIATION, "clusters", neighbourhood_key)
    nhoods.index = nhoods.index.astype(str)
    nhoods = nhoods.reindex(table.index)
    table["nhood_median_rho"] = nhoods["median_rho"].to_numpy()
    table["nhood_share_positive"] = nhoods["share_positive"].to_numpy()
    table["nhood_share_negative"] = nhoods["share_negative"].to_numpy()
    return np.where(
        table["nhood_share_positive"] >= min_share,
        "+",
        np.where(table["nhood_share_negative"] >= min_share, "-", "0"),
    )


def _add_agreement(table: pd.DataFrame, calls: dict[str, np.ndarray]) -> None:
    """Every method's call, whether they agree, the common call and whether effects share a sign."""
    for name, values in calls.items():
        table[name] = np.asarray(values)
    table["n_methods"] = len(calls)
    table["agree"] = table[list(calls)].nunique(axis=1) == 1
    table["call"] = np.where(table["agree"], table["call_fraction"], "mixed")
    effects = [
        c for c in ("rho_fraction", "rho_clr", "coef_count", "nhood_median_rho") if c in table
    ]
    signs = np.sign(table[effects].to_numpy(dtype=float))
    table["same_direction"] = (np.abs(signs.sum(axis=1)) == len(effects)) & (signs != 0).all(axis=1)


def _agreement_summary(table: pd.DataFrame, n_methods: int, cluster: str) -> dict:
    """How many methods call the potency cluster positive, and one sentence."""
    if cluster not in table.index:
        return {
            "potency_cluster": cluster,
            "n_methods": n_methods,
            "n_positive": 0,
            "positive_methods": "",
            "same_direction": False,
            "text": "no potency cluster named by the association.",
        }
    row = table.loc[cluster]
    calls = [c for c in table.columns if c.startswith("call_")]
    agreeing = [c.removeprefix("call_") for c in calls if row[c] == "+"]
    positive = bool(row["same_direction"] and row["rho_fraction"] > 0)
    text = (
        f"{cluster}: {len(agreeing)}/{n_methods} methods call a significant positive "
        f"association ({', '.join(agreeing) if agreeing else 'none'}); every method's effect "
        f"is {'positive' if positive else 'not of one sign'}."
    )
    return {
        "potency_cluster": cluster,
        "n_methods": n_methods,
        "n_positive": len(agreeing),
        "positive_methods": ", ".join(agreeing),
        "same_direction": bool(row["same_direction"]),
        "text": text,
    }


@doc_params
@record("tl.method_agreement")
def method_agreement(
    adata: AnnData,
    *,
    association_key: str = _registry.POTENCY_ASSOCIATION.key,
    count_key: str | None = _registry.COUNT_ASSOCIATION.key,
    neighbourhood_key: str | None = _registry.NEIGHBOURHOOD_ASSOCIATION.key,
    alpha: float = 0.05,
    min_share: float = 0.5,
    key_added: str = _registry.METHOD_AGREEMENT.key,
    copy: bool = False,
) -> AnnData | None:
    """One table of every method's verdict per cluster, and where they agree.

    Methods: Spearman on fractions (:func:`mscpotency.tl.potency_association`), Spearman
    on CLR-transformed counts (computed here on the same lots and potency, exact p),
    the quasi-binomial count model (:func:`count_association`, permutation p) and the
    neighbourhood test (:func:`neighbourhood_association`; a cluster is called when at
    least ``min_share`` of its neighbourhoods are significant with one sign). Each
    method calls a cluster ``+`` (significant, positive), ``-`` or ``0``; the methods
    *agree* on a cluster when every call is the same.

    Parameters
    ----------
    adata
        {adata}
        With the stored results (``count_key``/``neighbourhood_key`` ``None`` to leave a
        method out).
    association_key
        {association_key}
        It must use the fraction transform.
    count_key
        Key of :func:`count_association`.
    neighbourhood_key
        Key of :func:`neighbourhood_association`.
    alpha
        {alpha}
        For the per-method calls (neighbourhoods use their own FDR level).
    min_share
        Share of a cluster's neighbourhoods that must be significant with one sign.

    Returns
    -------
    ``None``, or the copy when ``copy=True``. Writes ``adata.uns[key_added]`` with
    ``'table'`` : DataFrame (one row per cluster: rho_fraction, p_fraction, rho_clr,
    p_clr, coef_count, p_count, nhood_median_rho, nhood_share_positive,
    nhood_share_negative, a call column per method, n_methods, agree, call, same_direction:
    every method's effect has one sign), ``'summary'`` : dict (potency_cluster, n_methods,
    n_positive, positive_methods, same_direction, text: one sentence),
    ``'potency_cluster'`` and ``'params'``.
    """
    association = stored(adata, _registry.POTENCY_ASSOCIATION, association_key)
    transform = association["params"].get("transform", "fraction")
    if transform != "fraction":
        msg = (
            f"adata.uns[{association_key!r}] used transform={transform!r}; "
            "method_agreement needs the fraction association (it computes CLR itself)."
        )
        raise ValueError(msg)
    table, calls, clr_method = _fraction_and_clr_columns(adata, association, alpha)
    if count_key is not None:
        calls["call_count"] = _add_count_columns(adata, table, count_key, alpha)
    if neighbourhood_key is not None:
        calls["call_neighbourhood"] = _add_neighbourhood_columns(
            adata, table, neighbourhood_key, min_share
        )
    _add_agreement(table, calls)
    cluster = str(association.get("potency_cluster", ""))
    adata = adata.copy() if copy else adata
    adata.uns[key_added] = {
        "table": table,
        "potency_cluster": cluster,
        "summary": _agreement_summary(table, len(calls), cluster),
        "params": {
            "association_key": association_key,
            "count_key": count_key,
            "neighbourhood_key": neighbourhood_key,
            "alpha": alpha,
            "min_share": min_share,
            "clr_pvalue_method": clr_method,
        },
    }
    return adata if copy else None
