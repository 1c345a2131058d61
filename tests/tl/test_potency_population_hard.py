"""The search on the hard preset: every seed's population found with F1 >= 0.9 and its
planted marker first (issue 12), and the pieces that get it there (boundary refinement,
markers ranked by fold change)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from scipy import sparse, stats

import mscpotency as mp
from mscpotency._stored import LowQualityClusterWarning
from mscpotency.tl._population import _local, _search


def _f1(found: np.ndarray, truth: np.ndarray) -> float:
    return float(2 * (found & truth).sum() / (found.sum() + truth.sum()))


def _hard_reference(seed: int, simulated=None, sets=("BM-train",)):
    adata = mp.datasets.hard(random_state=seed) if simulated is None else simulated
    adata = adata[adata.obs["set"].isin(sets).to_numpy()].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        mp.pp.qc(adata)
        mp.pp.preprocess(adata)
        mp.tl.cluster(adata, n_clusters=8)
        mp.tl.lot_fractions(adata)
        mp.tl.potency_association(adata, "vegf")
    return adata


@pytest.mark.slow
@pytest.mark.parametrize("seed", [9, 3, 11])
def test_hard_seeds_that_failed_reach_f1_and_marker_first(seed):
    """Seed 9: the chosen sub-cluster left out the transitional potency cells (F1 0.881
    before boundary refinement); seed 3: the planted marker ranked 2nd by score, behind a
    programme gene up a little in nearly every cell; seed 11: the true population (rho
    0.82) was not significant over all candidates (p 0.051), and is once the lot splits
    are set aside before the test (p 0.033). All now: F1 >= 0.9, marker 1st."""
    adata = _hard_reference(seed)
    mp.tl.potency_population(adata, "vegf", n_permutations=999)
    summary = adata.uns["potency_population"]["summary"]
    assert summary["found"] and summary["changed"]
    assert summary["boundary_added"] > 0
    assert summary["lot_split_lift"] > 0.7
    truth = adata.obs["true_potency_cell"].to_numpy()
    found = (adata.obs["potency_population"] == "potency").to_numpy()
    assert _f1(found, truth) >= 0.9
    mp.tl.potency_markers(
        adata, "potency", cluster_key="potency_population", n_genes=5, rank_by="logfoldchange"
    )
    assert mp.get.potency_markers(adata)["gene"].iloc[0] == "LRRC75A"


@pytest.mark.slow
def test_fifteen_lots_name_the_potency_population_not_its_merge_with_the_neighbour():
    """Seed 15 with its 4 held-out lots pooled in (15 lots): the fixed-k CL1 holds the
    potency population and its transitional neighbour, its rho one rank swap below the
    potency population's own sub-cluster, and the tie went to the fixed-k cluster (F1
    0.69 on the held-out lots). The cluster is two populations (a density valley between them), so the part is
    named (benchmarks/results/potency_population_pooled.md)."""
    adata = _hard_reference(15, sets=("BM-train", "BM-test"))
    assert adata.obs["lot"].nunique() == 15
    mp.tl.potency_population(adata, "vegf")
    summary = adata.uns["potency_population"]["summary"]
    truth = adata.obs["true_potency_cell"].to_numpy()
    fixed = (adata.obs["cluster"] == summary["fixed_k_cluster"]).to_numpy()
    assert _f1(fixed, truth) < 0.7  # the fixed-k cluster is the merge
    assert summary["found"] and summary["population"] != summary["fixed_k_cluster"]
    assert _f1((adata.obs["potency_population"] == "potency").to_numpy(), truth) >= 0.9


@pytest.mark.slow
def test_mapped_held_out_lots_keep_the_transitional_potency_cells():
    """Seed 1: the 4 held-out lots mapped onto the search's labels by label transfer alone
    reached F1 0.881, the transitional potency cells going to the neighbour. The frozen
    reference carries the population's boundary rule and mapping re-decides population and
    neighbour cells by it: F1 >= 0.9 against the truth, more transitional cells kept."""
    simulated = mp.datasets.hard(random_state=1)
    reference = _hard_reference(1, simulated)
    query = simulated[simulated.obs["set"] == "BM-test"].copy()
    mp.tl.potency_population(reference, "vegf", n_permutations=999)
    assert reference.uns["potency_population"]["summary"]["found"]
    bare = reference.copy()
    bare.uns["potency_population"] = dict(bare.uns["potency_population"])
    del bare.uns["potency_population"]["boundary"]
    truth = query.obs["true_potency_cell"].to_numpy()
    transitional = query.obs["true_commitment"].to_numpy() > 0
    result = {}
    for name, ref in (("rule", reference), ("alone", bare)):
        mapped = query.copy()
        with warnings.catch_warnings():  # the fixed-k association is not significant here
            warnings.simplefilter("ignore", UserWarning)
            frozen = mp.tl.freeze_reference(ref, cluster_key="potency_population")
            mp.tl.map_to_reference(mapped, frozen, cluster_key="potency_population")
        assert mapped.uns["predicted"]["boundary"]["applied"] == (name == "rule")
        potency = (mapped.obs["predicted"] == "potency").to_numpy()
        result[name] = (_f1(potency, truth), potency[transitional].mean())
    assert result["rule"][0] >= 0.9 and result["rule"][0] > result["alone"][0]
    assert result["rule"][1] > result["alone"][1] + 0.05


@pytest.mark.slow
def test_mapped_lots_with_their_damaged_cells_flagged_reach_f1():
    """Seed 6, the one seed below 0.9 (0.894 with the query QC'd as `mscpotency map` does):
    its held-out lots keep 92 damaged cells after the fixed QC, 15 of them potency cells,
    and all map onto the reference's cluster of damaged cells. tl.cluster_quality on the
    transferred labels flags exactly the simulated low-quality cells; with them removed,
    as its warning asks, the potency population is recovered with F1 >= 0.9."""
    simulated = mp.datasets.hard(random_state=6)
    reference = _hard_reference(6, simulated)
    query = simulated[simulated.obs["set"] == "BM-test"].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        mp.tl.potency_population(reference, "vegf")
        frozen = mp.tl.freeze_reference(reference, cluster_key="potency_population")
        mp.pp.qc(query)
        mp.tl.map_to_reference(query, frozen, cluster_key="potency_population")
    with pytest.warns(LowQualityClusterWarning, match="CL7"):
        mp.tl.cluster_quality(query, cluster_key="predicted")
    damaged = query.obs["cluster_quality"].to_numpy()
    assert np.array_equal(damaged, query.obs["true_low_quality"].to_numpy())
    truth = query.obs["true_potency_cell"].to_numpy()
    potency = (query.obs["predicted"] == "potency").to_numpy()
    assert (truth & damaged).sum() >= 10 and not potency[damaged].any()
    assert _f1(potency[~damaged], truth[~damaged]) >= 0.9


def _continuum(rng, n_core=300, n_other=600, n_between=150, dims=5):
    """A core population, its neighbour, and cells on a line between them (the truth:
    core and in-between cells up to 80% of the way are the population)."""
    core = rng.normal(size=(n_core, dims)) + np.r_[6.0, np.zeros(dims - 1)]
    other = rng.normal(size=(n_other, dims))
    t = rng.uniform(0.2, 0.8, n_between)
    between = rng.normal(size=(n_between, dims)) * 0.7 + np.outer(
        1 - t, np.r_[6.0, [0] * (dims - 1)]
    )
    X = np.vstack([core, other, between])
    truth = np.r_[np.ones(n_core, bool), np.zeros(n_other, bool), np.ones(n_between, bool)]
    return X, truth


def _knn_graph(X: np.ndarray, k: int = 15) -> sparse.csr_matrix:
    d = ((X[:, None, :] - X[None, :, :]) ** 2).sum(axis=2)
    np.fill_diagonal(d, np.inf)
    nearest = np.argsort(d, axis=1)[:, :k]
    rows = np.repeat(np.arange(X.shape[0]), k)
    graph = sparse.csr_matrix((np.ones(rows.size), (rows, nearest.ravel())), shape=(len(X),) * 2)
    return ((graph + graph.T) > 0).astype(float).tocsr()


def test_boundary_refinement_takes_in_the_continuum_and_leaves_a_separate_tail():
    rng = np.random.default_rng(0)
    X, truth = _continuum(rng)
    graph = _knn_graph(X)
    # a cut that keeps only the core (the Leiden cut on the hard preset); one fixed-k
    # cluster holds the neighbour and the in-between cells
    candidate = np.r_[np.ones(300, bool), np.zeros(750, bool)]
    base = pd.Categorical(np.where(candidate, "A", "B"))
    refined = _search._refined_population(candidate, X, graph, base, 0.975)
    assert _f1(candidate, truth) < 0.85
    assert _f1(refined, truth) >= 0.9
    assert (refined & ~truth).sum() <= 0.03 * (~truth).sum()
    # nothing between two separate populations: the refinement adds (almost) nothing
    far = np.vstack([X[:300], X[300:900]])
    far_graph = _knn_graph(far)
    alone = np.r_[np.ones(300, bool), np.zeros(600, bool)]
    kept = _search._refined_population(
        alone, far, far_graph, pd.Categorical(np.where(alone, "A", "B")), 0.975
    )
    assert (kept != alone).sum() <= 3
    # None switches it off
    assert _search._refined_population(candidate, X, graph, base, None) is candidate
    assert stats.norm.ppf(0.975) == pytest.approx(1.96, abs=1e-3)


def test_a_population_cut_in_two_by_leiden_is_kept_whole(monkeypatch):
    """Issue 13's donor seed 0: the search chose a sub-cluster of the potency cluster and
    its "neighbour" was the rest of the same population, which the refinement cut to a
    sliver (46 of ~800 cells). One Gaussian blob cut in two has no density valley between
    the halves: the population is the whole blob, and its boundary is drawn against the
    next, separate population (which gives nothing to it)."""
    rng = np.random.default_rng(0)
    blob = rng.normal(size=(800, 5))
    other = rng.normal(size=(500, 5)) + np.r_[5.0, [0.0] * 4]
    X = np.vstack([blob, other])
    truth = np.r_[np.ones(800, bool), np.zeros(500, bool)]
    graph = _knn_graph(X)
    base = pd.Categorical(np.where(truth, "A", "B"))  # the fixed-k clusters: right
    for cut in (0.3, 1.0):  # a sub-cluster of about 40% and 15% of the blob
        candidate = np.r_[blob[:, 0] > cut, np.zeros(500, bool)]
        refined, merged = _search._refinement_rounds(candidate, X, graph, base, 0.975)
        assert merged == ["A"]
        assert _f1(refined, truth) >= 0.98 and _f1(candidate, truth) < 0.6
        with monkeypatch.context() as before:  # no test of the neighbour: a sliver
            before.setattr(_search, "_ONE_POPULATION_VALLEY", np.inf)
            sliver = _search._refined_population(candidate, X, graph, base, 0.975)
        assert sliver.sum() < 0.5 * truth.sum()
    # one population: no rule to store; two: a rule against the separate population
    codes = np.asarray(base.codes, dtype=np.int64)
    half = np.r_[blob[:, 0] > 0, np.zeros(500, bool)]
    assert _search._fit_boundary(half, X, graph, codes, 1.96, 10).one_population
    assert not _search._fit_boundary(truth, X, graph, codes, 1.96, 10).one_population
    record = _search._boundary_record(half, X, "X_pca", (graph, base), 0.975)
    assert record is None
    assert _search._boundary_record(truth, X, "X_pca", (graph, base), 0.975)["neighbour"] == "B"


def test_valley_ratio_tells_one_population_from_two_joined_by_a_continuum():
    """The rule's calibration: one unimodal population (Gaussian, skewed, heavy-tailed, a
    mixture of lot-shifted Gaussians) cut anywhere between its 20% and 80% quantiles
    scores above the threshold in every draw of 300 cells; two populations 4 SD apart,
    or joined by a continuum of partly committed cells, score below it."""
    rng = np.random.default_rng(1)
    threshold = _search._ONE_POPULATION_VALLEY
    draws = {
        "normal": lambda n: rng.normal(size=n),
        "skewed": lambda n: rng.gamma(3.0, size=n),
        "heavy": lambda n: rng.standard_t(5, size=n),
        "lots": lambda n: rng.normal(size=n) + rng.normal(0, 0.5, 12)[rng.integers(0, 12, n)],
    }
    for draw in draws.values():
        for _ in range(50):
            x = draw(300)
            cut = np.quantile(x, rng.uniform(0.2, 0.8))
            assert _search._valley_ratio(x[x > cut], x[x <= cut]) > threshold
    a, b = rng.normal(size=400) + 4.0, rng.normal(size=600)
    assert _search._valley_ratio(a, b) < threshold - 0.1
    X, truth = _continuum(rng)
    assert _search._valley_ratio(X[truth, 0], X[~truth, 0]) < threshold
    assert _search._valley_ratio(b, a) == 1.0  # medians in the wrong order: no separation


def test_boundary_quantile_is_recorded_and_none_keeps_the_candidate(tiny_ref):
    off = mp.tl.potency_population(
        tiny_ref, "vegf", n_permutations=199, boundary_quantile=None, copy=True
    )
    summary = off.uns["potency_population"]["summary"]
    assert summary["boundary_added"] == summary["boundary_removed"] == 0
    assert summary["n_cells"] == summary["candidate_n_cells"]
    on = mp.tl.potency_population(tiny_ref, "vegf", n_permutations=199, copy=True)
    assert on.uns["potency_population"]["params"]["boundary_quantile"] == 0.975
    # the refinement never changes the test: same candidates, same p
    assert on.uns["potency_population"]["summary"]["pvalue"] == summary["pvalue"]
    with pytest.raises(ValueError, match="boundary_quantile"):
        mp.tl.potency_population(tiny_ref, boundary_quantile=0.4, copy=True)


def test_markers_by_fold_change_put_specific_significant_genes_first(tiny_ref):
    by_score = mp.tl.potency_markers(tiny_ref, n_genes=tiny_ref.n_vars, copy=True)
    by_lfc = mp.tl.potency_markers(
        tiny_ref, n_genes=tiny_ref.n_vars, rank_by="logfoldchange", copy=True
    )
    score_table = mp.get.potency_markers(by_score).set_index("gene")
    table = mp.get.potency_markers(by_lfc).set_index("gene")
    # the same genes and statistics, another order
    pd.testing.assert_frame_equal(
        table.drop(columns="rank").sort_index(), score_table.drop(columns="rank").sort_index()
    )
    specific = (
        (table["pvalue_adj"] <= 0.05) & (table["pct_in"] >= 0.25) & (table["logfoldchange"] > 0)
    )
    n = int(specific.sum())
    assert n > 0 and specific.iloc[:n].all()
    assert table["logfoldchange"].iloc[:n].is_monotonic_decreasing
    assert table["score"].iloc[n:].is_monotonic_decreasing
    assert by_lfc.uns["potency_markers"]["params"]["rank_by"] == "logfoldchange"


@pytest.mark.slow
def test_on_the_corrected_donor_route_the_search_keeps_the_whole_population():
    """Issue 13's benchmark miss (benchmarks/lot_effects.py, seed 0, lots theta 4 + site
    theta 2 + lot-specific cells held out): the search chose a sub-cluster of the potency
    cluster (rho 0.93 against 0.88) and the refinement cut it to 46 cells, F1 0.10 while
    the fixed-k association had F1 0.998. The rest of that cluster is one population with
    the sub-cluster: it is merged whole and the population found is the true one. The
    miss arose with the fixed QC thresholds (the default then), which are kept here: with
    per-lot MAD thresholds the search chooses the whole cluster directly."""
    adata = mp.datasets.donor(random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        mp.pp.qc(adata, thresholds="fixed")
        mp.pp.preprocess(adata)
        mp.tl.cluster(adata, use_rep="X_pca", n_clusters=9, key_added="cluster_uncorrected")
        mp.pp.integrate(
            adata,
            covariate_keys=("site",),
            covariate_theta=2.0,
            theta=4.0,
            lot_specific_key="cluster_uncorrected",
        )
        mp.tl.cluster(adata, use_rep="X_pca_harmony", n_clusters=9)
        mp.tl.potency_population(adata, "vegf", n_permutations=999)
    summary = adata.uns["potency_population"]["summary"]
    assert summary["found"]
    assert summary["candidate_n_cells"] < 0.7 * summary["n_cells"]  # a piece was chosen
    assert summary["boundary_merged"] == summary["fixed_k_cluster"]  # and made whole
    truth = adata.obs["true_potency_cell"].to_numpy()
    found = (adata.obs["potency_population"] == "potency").to_numpy()
    assert _f1(found, truth) >= 0.95


def _merged_pair(
    seed: int, n_lots: int = 11, per_lot: int = 300, n_genes: int = 600, lot_effect: float = 0.0
):
    """Counts of six distinct types and a pair A1/A2 told apart by a weak programme.

    A1 and A2 share a strong programme (what sets them apart from the six types) and
    differ by 20 genes each at a log-fold change of 1; A1's share of each lot rises with
    potency (6% to 18%), A2's varies at random (4% to 20%). With 6 global PCs (one per
    direction between the seven groups) the global PCA has no room for the weak programme.
    """
    rng = np.random.default_rng(seed)
    base = rng.normal(-np.log(n_genes) - 2.1, 1.0, n_genes)
    programmes = np.zeros((8, n_genes))
    for t in range(6):
        programmes[t, rng.choice(n_genes, 60, replace=False)] = 1.6
    shared = rng.choice(n_genes, 60, replace=False)
    programmes[6:, shared] = 1.6
    weak = rng.choice(np.setdiff1d(np.arange(n_genes), shared), 40, replace=False)
    programmes[6, weak[:20]] = programmes[7, weak[20:]] = 1.0
    potency = rng.permutation(n_lots).astype(float)
    types = []
    for lot in range(n_lots):
        a1, a2 = 0.06 + 0.12 * potency[lot] / (n_lots - 1), rng.uniform(0.04, 0.2)
        share = np.r_[np.full(6, (1 - a1 - a2) / 6), a1, a2]
        types.append(rng.choice(8, per_lot, p=share))
    types = np.concatenate(types)
    lot_shift = rng.normal(0, lot_effect, (n_lots, n_genes))
    mean = np.exp(base + programmes[types] + np.repeat(lot_shift, per_lot, axis=0))
    counts = rng.poisson(mean / mean.sum(axis=1, keepdims=True) * 3000).astype(np.float32)
    adata = AnnData(sparse.csr_matrix(counts))
    adata.obs_names = [f"c{i}" for i in range(adata.n_obs)]
    adata.var_names = [f"g{i}" for i in range(n_genes)]
    lots = np.repeat(np.arange(n_lots), per_lot)
    adata.obs["lot"] = pd.Categorical([f"L{i:02d}" for i in lots])
    adata.obs["vegf"] = potency[lots]
    adata.obs["true_type"] = types
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        mp.pp.preprocess(adata, n_comps=6)
        mp.tl.cluster(adata, n_clusters=7)
    return adata


def _best_part_f1(cells: np.ndarray, partitions, truth: np.ndarray) -> float:
    best = 0.0
    for labels in partitions:
        for label in np.unique(labels):
            part = np.zeros(truth.size, bool)
            part[cells[labels == label]] = True
            best = max(best, _f1(part, truth))
    return best


def test_local_sub_clustering_separates_a_pair_the_global_pca_merges():
    """hard_100k seed 0 in small: the potency population and its neighbour share one
    fixed-k cluster and no sub-cluster of the global graph separates them (best F1 0.63
    there). Re-selecting HVGs, a PCA and a kNN graph on the cluster's own cells does: the
    local Leiden has A1 as one part, and the search names it (found, F1 >= 0.9) where
    without the local view it names nothing or the wrong cells. Over seeds 0-4 the search
    names A1 (F1 1.0) in seeds 1, 2 and 4; in seed 3 A1 is the best candidate but not
    significant; in seed 0 a larger global sub-cluster ties with it (rho 0.955 vs 0.952,
    within ``tolerance``), wins as the larger and is merged whole with its cluster (F1
    0.69): the tie rule, left as it is."""
    adata = _merged_pair(2)
    a1 = adata.obs["true_type"].to_numpy() == 6
    clusters = adata.obs["cluster"].to_numpy()
    pair = clusters == pd.Series(clusters[a1]).mode()[0]
    assert a1[pair].mean() > 0.4 and (adata.obs["true_type"].to_numpy()[pair] == 7).mean() > 0.4
    cells = np.flatnonzero(pair)
    graph = _search._weighted_igraph_of(adata.obsp["cluster_neighbors_connectivities"])
    sub = graph.induced_subgraph(cells)
    leiden = (
        _search._leiden(sub, r, n_iterations=2, seed=0, flavor="igraph") for r in (0.1, 0.25, 0.5)
    )
    assert _best_part_f1(cells, leiden, a1) < 0.8  # the global graph does not separate them
    view = _local.local_view(
        adata.X,
        cells,
        resolutions=(0.1, 0.25, 0.5),
        n_top_genes=2000,
        n_comps=6,
        n_neighbors=15,
        seed=0,
        n_iterations=2,
        flavor="igraph",
    )
    assert _best_part_f1(cells, view.partitions.values(), a1) >= 0.95
    found = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for local in (True, False):
            result = mp.tl.potency_population(
                adata, "vegf", n_permutations=999, local_representation=local, copy=True
            )
            population = (result.obs["potency_population"] == "potency").to_numpy()
            found[local] = (result.uns["potency_population"]["summary"], _f1(population, a1))
    summary, f1 = found[True]
    assert summary["found"] and f1 >= 0.9
    assert "local" in summary["population"]
    assert summary["pvalue"] <= 0.05
    assert found[False][1] < 0.8
    assert found[True][0]["n_candidates"] > found[False][0]["n_candidates"]


def test_local_view_removes_lot_effects_before_its_graph():
    """hard_100k seed 0: inside the cluster that merged the potency population with its
    neighbour, lot effects were the largest local variance and the local Leiden parts
    were lot groups. Here each lot shifts every gene's log-mean (SD 0.3): without the
    lots the best local part has F1 <= 0.56 with A1 (seeds 0-3), with Harmony over the
    lots F1 >= 0.92 (rule chosen on seeds 0-1, confirmed on 2-3)."""
    adata = _merged_pair(2, lot_effect=0.3)
    a1 = adata.obs["true_type"].to_numpy() == 6
    clusters = adata.obs["cluster"].to_numpy()
    cells = np.flatnonzero(clusters == pd.Series(clusters[a1]).mode()[0])
    options = dict(
        resolutions=(0.1, 0.25, 0.5),
        n_top_genes=2000,
        n_comps=6,
        n_neighbors=15,
        seed=0,
        n_iterations=2,
        flavor="igraph",
    )
    lots = adata.obs["lot"].cat.codes.to_numpy()[cells]
    plain = _local.local_view(adata.X, cells, **options)
    corrected = _local.local_view(adata.X, cells, lots=lots, **options)
    assert _best_part_f1(cells, plain.partitions.values(), a1) < 0.7
    assert _best_part_f1(cells, corrected.partitions.values(), a1) >= 0.9


def test_a_refinement_that_loses_the_association_is_undone():
    """The refinement reads no potency: one that grows the candidate into a population whose
    share no longer tracks potency (hard-preset null seeds 11 and 14: +1,500 cells, rho -0.28
    and 0.17) is undone; one that adds a continuum's cells is kept."""
    n_lots = 10
    y = np.arange(n_lots, dtype=float)
    lot_codes = np.repeat(np.arange(n_lots), 200)
    rng = np.random.default_rng(0)
    # the candidate: a share rising with potency (2% to 20% of each lot)
    candidate = np.zeros(lot_codes.size, dtype=bool)
    for lot in range(n_lots):
        cells = np.flatnonzero(lot_codes == lot)
        candidate[rng.choice(cells, 4 + 4 * lot, replace=False)] = True
    assert _search._refinement_kept(candidate, candidate, lot_codes, y, "two-sided", 0.05)
    # a few more cells in every lot: the association stays
    grown = candidate.copy()
    grown[np.flatnonzero(~candidate)[::40]] = True
    assert _search._refinement_kept(candidate, grown, lot_codes, y, "two-sided", 0.05)
    # many cells, most in the low-potency lots: the refined share falls with potency
    swallowed = candidate.copy()
    for lot in range(n_lots):
        outside = np.flatnonzero((lot_codes == lot) & ~candidate)
        swallowed[outside[: 150 - 15 * lot]] = True
    assert not _search._refinement_kept(candidate, swallowed, lot_codes, y, "two-sided", 0.05)
    assert not _search._refinement_kept(candidate, swallowed, lot_codes, y, "greater", 0.05)
    # many cells spread evenly: the refined share no longer tracks potency at all
    flat = candidate.copy()
    for lot in range(n_lots):
        outside = np.flatnonzero((lot_codes == lot) & ~candidate)
        flat[outside[: 150 - 4 * lot + int(rng.integers(-20, 20))]] = True
    assert not _search._refinement_kept(candidate, flat, lot_codes, y, "two-sided", 0.05)


def test_the_local_view_is_on_by_default_on_the_pca_graph_and_off_on_a_corrected_one():
    """By default (``local_representation=None``) the search sub-clusters every fixed-k
    cluster in its own representation when the graph is on ``X_pca`` (and so separates
    the merged pair), and not when the graph is on a corrected representation, whose
    correction (of the lots and perhaps of other covariates) the local views would not
    repeat."""
    adata = _merged_pair(2)
    a1 = adata.obs["true_type"].to_numpy() == 6
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        default = mp.tl.potency_population(adata, "vegf", n_permutations=999, copy=True)
    result = default.uns["potency_population"]
    assert result["params"]["local_representation"] is True
    assert result["summary"]["found"] and "local" in result["summary"]["population"]
    assert not result["candidates"].loc[result["summary"]["population"], "lot_split"]
    assert _f1((default.obs["potency_population"] == "potency").to_numpy(), a1) >= 0.9
    corrected = adata.copy()
    corrected.obsm["X_corrected"] = corrected.obsm["X_pca"].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        mp.tl.cluster(corrected, n_clusters=7, use_rep="X_corrected")
        mp.tl.potency_population(corrected, "vegf", n_permutations=999)
    result = corrected.uns["potency_population"]
    assert result["params"]["local_representation"] is False
    assert not result["candidates"].index.str.contains("local").any()


@pytest.mark.slow
def test_a_population_split_off_by_a_group_of_lots_is_set_aside_for_the_true_one():
    """Hard seed 27: donor effects split SP2 by lot, and the part held by five of the six
    most potent lots has a share with rho 0.88, above the true population's 0.845; named
    as it was, F1 0. In a lot-corrected view of its cluster its cells mix with the rest of
    SP2 (cohesion lift ~0.06): it is set aside before the test, said so, and the true
    population named."""
    adata = _hard_reference(27)
    mp.tl.potency_population(adata, "vegf", n_permutations=999)
    result = adata.uns["potency_population"]
    summary = result["summary"]
    assert summary["found"]
    truth = adata.obs["true_potency_cell"].to_numpy()
    found = (adata.obs["potency_population"] == "potency").to_numpy()
    assert _f1(found, truth) >= 0.9
    skipped = summary["lot_splits_skipped"].split("; ")
    table = result["candidates"]
    chosen = table.loc[table["chosen"]].iloc[0]
    assert not chosen["lot_split"] and chosen["lot_split_lift"] > 0.7
    assert table.loc[skipped, "lot_split"].all()
    assert (table.loc[skipped, "rho"] >= chosen["rho"]).all()
    assert (table.loc[skipped, "lot_split_lift"] <= _search.LOT_SPLIT_MAX_LIFT).all()
    assert table.loc[skipped[0], "lot_split_lift"] < 0.2
    assert "Set aside before the test as not cell states of their own" in result["message"]
    assert f"{skipped[0]} (rho " in result["message"]


@pytest.mark.slow
def test_on_a_null_study_a_lot_split_is_set_aside_and_nothing_is_named():
    """Study preset, potency unrelated to composition (seed 6): a part of a cluster held by
    some lots (rho 0.87, selection-aware p 0.024) had been named; its cells mix with the
    rest of their cluster once lot effects are removed (cohesion lift ~0.004), so it is
    set aside before the test, no other candidate is significant, and nothing is named."""
    adata = _hard_reference(6, simulated=mp.datasets.study(random_state=6, potency_slope=0))
    with pytest.warns(_search.PopulationNotFoundWarning, match="Set aside before the test"):
        mp.tl.potency_population(adata, "vegf", n_permutations=999)
    result = adata.uns["potency_population"]
    summary = result["summary"]
    assert not summary["found"]
    assert summary["lot_splits_skipped"]
    split = result["candidates"].loc[summary["lot_splits_skipped"].split("; ")[0]]
    assert split["lot_split_lift"] < 0.1 and split["rho"] > 0.8
    assert (adata.obs["potency_population"] == "potency").sum() == 0


def test_cohesion_lift_is_one_for_a_closed_group_and_near_zero_for_a_random_one():
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(size=(200, 5)), rng.normal(size=(300, 5)) + 8.0])
    view = _local.LocalView(
        cells=np.arange(500),
        embedding=X,
        connectivities=_knn_graph(X),
        partitions={},
        n_hvg=5,
    )
    group = np.r_[np.ones(200, bool), np.zeros(300, bool)]
    assert _local.cohesion_lift(view, group) == pytest.approx(1.0)
    random = rng.permutation(group)
    assert abs(_local.cohesion_lift(view, random)) < 0.15
    assert np.isnan(_local.cohesion_lift(view, np.ones(500, bool)))
