"""Calibrated novelty flags, conformal prediction sets and the cross-technology preset (issue 16).

Truth: ``true_subpopulation`` (a population left out of the reference is novel) and
``true_novel`` (the cross-technology preset's population the reference lacks).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from scipy import sparse, stats

import mscpotency as mp
from mscpotency._frozen import lognormalise, reference_model
from mscpotency.tl._mapping._conformal import class_thresholds, prediction_sets, set_labels
from mscpotency.tl._mapping._harmonise import query_counts
from mscpotency.tl._mapping._novel_groups import group_novelty, query_groups
from mscpotency.tl._mapping._novelty import (
    _counts,
    calibration_set_size,
    depth_model,
    lot_novelty,
    mean_counts,
    novelty_pvalues,
    scoring_sets,
    thinned,
)

from .test_mapping import truth_labels


def _reference(adata: AnnData, n_clusters: int) -> AnnData:
    mp.pp.qc(adata)
    mp.pp.preprocess(adata)
    mp.tl.cluster(adata, n_clusters=n_clusters)
    return adata


def _f1(predicted: np.ndarray, true: np.ndarray) -> float:
    return float(2 * (predicted & true).sum() / (predicted.sum() + true.sum()))


# --- kernels ---------------------------------------------------------------------------------
def test_novelty_pvalues_match_their_definition_and_are_valid():
    rng = np.random.default_rng(0)
    calibration = np.sort(rng.random(999))
    scores = np.array([-1.0, 0.0, calibration[10], 0.5, 2.0, np.nan])
    p = novelty_pvalues(scores, calibration)
    expected = [(1 + (calibration <= s).sum()) / 1000 for s in scores[:-1]]
    np.testing.assert_allclose(p[:-1], expected)
    assert np.isnan(p[-1])
    # exchangeable scores: P(p <= alpha) <= alpha over calibration draws (and close to it)
    flagged = {0.01: [], 0.05: [], 0.2: []}
    for _ in range(300):
        p = novelty_pvalues(rng.random(1000), np.sort(rng.random(199)))
        for alpha, shares in flagged.items():
            shares.append((p <= alpha).mean())
    for alpha, shares in flagged.items():
        assert alpha - 0.005 <= np.mean(shares) <= alpha + 0.002, alpha


def test_lot_novelty_binomial_test():
    lots = np.repeat(["a", "b"], [400, 400])
    novel = np.zeros(800, dtype=bool)
    novel[:40] = True  # lot a: 10% flagged
    novel[400:403] = True  # lot b: 0.75% flagged
    table = lot_novelty(lots, novel, 0.01)
    assert table.loc["a", "n_novel"] == 40 and table.loc["b", "n_novel"] == 3
    assert table.loc["a", "novelty_pvalue"] == pytest.approx(
        stats.binomtest(40, 400, 0.01, alternative="greater").pvalue
    )
    assert table.loc["a", "excess_novel"] and not table.loc["b", "excess_novel"]
    assert (table["expected_share_novel"] == 0.01).all()


def test_group_novelty_flags_whole_groups_beyond_the_rate():
    """One-sided binomial per group against 1.5 x alpha, Bonferroni over groups at 0.05."""
    groups = np.repeat(["a", "b", "c", "d"], [200, 400, 300, 100])
    novel = np.zeros(1000, dtype=bool)
    novel[:36] = True  # a: 18% flagged
    novel[200:240] = True  # b: 10%, twice alpha: p ~ 0.02 at 1.5 alpha, not after Bonferroni
    novel[600:615] = True  # c: 5%, the rate
    novel[900:914] = True  # d: 14%
    table, in_group = group_novelty(groups, novel, 0.05)
    assert table["n_cells"].tolist() == [200, 400, 300, 100]
    np.testing.assert_allclose(table["expected_share_novel"], 0.075)
    expected = [
        stats.binomtest(k, n, 0.075, alternative="greater").pvalue
        for k, n in ((36, 200), (40, 400), (15, 300), (14, 100))
    ]
    np.testing.assert_allclose(table["novelty_pvalue"], expected)
    assert 0.0125 < expected[1] < 0.05 and 0.0125 < expected[3]
    assert table["excess_novel"].tolist() == [True, False, False, False]
    np.testing.assert_array_equal(in_group, groups == "a")
    # against alpha itself (tolerance 1) b's 10% of 400 cells is flagged whole
    strict, _ = group_novelty(groups, novel, 0.05, tolerance=1.0)
    assert strict["excess_novel"].tolist() == [True, True, False, True]


def test_class_conditional_sets_cover_every_label():
    rng = np.random.default_rng(1)
    n_labels, n = 4, 40_000

    def draw(size):
        labels = rng.choice(n_labels, size=size, p=[0.6, 0.25, 0.1, 0.05])
        logits = rng.normal(0, 1, (size, n_labels))
        logits[np.arange(size), labels] += rng.normal(1.5, 1.0, size)
        probabilities = np.exp(logits)
        return probabilities / probabilities.sum(axis=1, keepdims=True), labels

    calibration, calibration_labels = draw(n)
    thresholds = class_thresholds(
        calibration[np.arange(n), calibration_labels], calibration_labels, n_labels, 0.1
    )
    test, test_labels = draw(n)
    in_set = prediction_sets(test, thresholds)
    for label in range(n_labels):
        mine = test_labels == label
        assert in_set[mine, label].mean() >= 0.9 - 0.01, label
    chosen, grown = set_labels(test, in_set)
    assert (chosen[~in_set.any(axis=1)] == -1).all()
    assert (chosen[in_set.any(axis=1)] == test.argmax(axis=1)[in_set.any(axis=1)]).all()
    assert grown[np.arange(n), np.maximum(chosen, 0)][chosen >= 0].all() and (grown >= in_set).all()
    # a label with too few calibration cells to be excluded at this level stays in every set
    few = class_thresholds(np.array([0.9, 0.8]), np.array([0, 0]), 2, 0.1)
    assert (few == 0).all()


def test_thinning_matches_a_shallower_technology():
    """Counts recovered exactly from log-normalised cells; thinning keeps each gene at its rate."""
    rng = np.random.default_rng(2)
    dense = rng.integers(1, 40, (400, 60)) * (rng.random((400, 60)) < 0.3)
    dense[np.arange(400), rng.integers(0, 60, 400)] = 1  # every cell has a count of one
    counts = sparse.csr_matrix(dense.astype(np.float32))
    expression = lognormalise(counts, 1e4)
    recovered, _ = _counts(expression)
    np.testing.assert_array_equal(recovered.toarray(), dense)
    same = thinned(expression, np.ones(60), rng)
    np.testing.assert_allclose(same.toarray(), expression.toarray(), rtol=1e-5)
    same_depth = depth_model(expression, expression)  # the same depth: nothing to match
    assert not same_depth.matched and same_depth.efficiency is None
    unmeasured = depth_model(expression, expression, measured=np.arange(60) >= 3)
    assert not unmeasured.matched
    np.testing.assert_array_equal(unmeasured.efficiency, np.arange(60) >= 3)
    # a technology capturing gene g at efficiency[g]: thinning reproduces its per-gene totals
    efficiency = np.linspace(0.1, 0.7, 60)
    other = sparse.csr_matrix(rng.binomial(dense, efficiency).astype(np.float32))
    model = depth_model(lognormalise(other, 1e4), expression)
    expected_ratio = (efficiency * dense.sum(axis=0)).sum() / dense.sum()
    assert model.matched and model.depth_ratio == pytest.approx(expected_ratio, rel=0.1)
    np.testing.assert_allclose(model.efficiency, efficiency, atol=0.05)
    shallow = _counts(thinned(expression, efficiency, rng))[0].toarray()
    assert np.abs(shallow.sum(axis=0) / dense.sum(axis=0) - efficiency).max() < 0.05
    # genes the query lacks (zero-padded): out of the ratio, and dropped from calibration cells
    lacking = other.toarray()
    lacking[:, :20] = 0
    measured = np.arange(60) >= 20
    partial = depth_model(
        lognormalise(sparse.csr_matrix(lacking), 1e4), expression, measured=measured
    )
    assert (partial.efficiency[:20] == 0).all()
    np.testing.assert_allclose(partial.efficiency[20:], efficiency[20:], atol=0.05)
    kept_ratio = (efficiency * dense.sum(axis=0))[20:].sum() / dense[:, 20:].sum()
    assert partial.depth_ratio == pytest.approx(kept_ratio, rel=0.1)


def _counts_by_hand(expression: sparse.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_counts` cell by cell in plain Python (the definition its kernel implements)."""
    X = sparse.csr_matrix(expression, dtype=np.float64)
    X.eliminate_zeros()
    counts, scale = np.zeros(X.shape), np.zeros(X.shape[0])
    for row in range(X.shape[0]):
        start, stop = X.indptr[row], X.indptr[row + 1]
        values = np.expm1(X.data[start:stop])
        if values.size == 0:
            continue
        ratio = values / values.min()
        whole = [
            m
            for m in range(1, 9)
            if all(abs(r * m - np.rint(r * m)) < 1e-3 * max(r * m, 1.0) for r in ratio)
        ]
        multiple = whole[0] if whole else 1
        counts[row, X.indices[start:stop]] = np.maximum(np.rint(ratio * multiple), 1.0)
        scale[row] = values.min() / multiple
    return counts, scale


def test_counts_kernel_matches_its_definition():
    """Cells whose smallest count is 1, 2..8, above 8, empty cells and non-count cells."""
    rng = np.random.default_rng(11)
    dense = rng.integers(1, 60, (300, 40)) * (rng.random((300, 40)) < 0.3)
    dense[:, 0] = rng.integers(1, 12, 300)  # smallest counts up to 11 (> 8: read as one)
    dense[5] = 0  # an empty cell
    expression = lognormalise(sparse.csr_matrix(dense.astype(np.float32)), 1e4)
    expression.data[expression.indptr[10] : expression.indptr[20]] += 0.37  # not counts
    recovered, scale = _counts(expression)
    expected, expected_scale = _counts_by_hand(expression)
    np.testing.assert_array_equal(recovered.toarray(), expected)
    np.testing.assert_array_equal(scale, expected_scale)
    cells = np.setdiff1d(np.arange(300), np.arange(10, 20))
    small = dense[cells][:, 0] <= 8
    np.testing.assert_array_equal(recovered.toarray()[cells][small], dense[cells][small])
    assert scale[5] == 0


@pytest.mark.parametrize("threads", [1, 2])
def test_mean_counts_are_the_mean_of_the_recovered_counts(threads, monkeypatch):
    """The compiled pass sums the counts ``_counts`` recovers, whatever the threads."""
    from mscpotency import _cell_stats

    monkeypatch.setattr(_cell_stats, "worker_threads", lambda: threads)
    rng = np.random.default_rng(12)
    dense = rng.integers(1, 60, (301, 40)) * (rng.random((301, 40)) < 0.3)
    dense[:, 0] = rng.integers(1, 12, 301)
    dense[5] = 0  # an empty cell
    expression = lognormalise(sparse.csr_matrix(dense.astype(np.float32)), 1e4)
    expression.data[expression.indptr[10] : expression.indptr[20]] += 0.37  # not counts
    expression.data[expression.indptr[30] + 1] = 0.0  # an explicit zero
    recovered, _ = _counts(expression)
    expected = recovered.toarray().sum(axis=0) / 301
    np.testing.assert_array_equal(mean_counts(expression), expected)
    assert mean_counts(expression[:0]).tolist() == [0.0] * 40
    # a row storing one gene twice (non-canonical CSR) is read whole, as scipy sums it
    doubled = sparse.csr_matrix(
        (np.log1p([1.0, 1.0, 3.0]), [0, 0, 1], [0, 3]), shape=(1, 2), dtype=np.float32
    )
    np.testing.assert_array_equal(mean_counts(doubled), [2.0, 3.0])


def test_scoring_sets_gather_whole_lots():
    lots = np.repeat(["a", "b", "c", "d", "e", "f"], [400, 380, 420, 390, 410, 100])
    sets = scoring_sets(lots, lots.size, 1000, 0)
    assert np.unique(sets).size == 2
    for lot in np.unique(lots):  # a lot is never split
        assert np.unique(sets[lots == lot]).size == 1
    sizes = np.bincount(sets)
    assert abs(sizes[0] - sizes[1]) <= 420
    assert (scoring_sets(lots, lots.size, 1500, 0) == 0).all()  # up to 1.5 x the size: one set


# --- on the tiny preset ----------------------------------------------------------------------
def test_refitted_loadings_are_computed_once_per_fold_whatever_the_query(tiny_ref, monkeypatch):
    """The fold PCAs depend on the reference only: a second query set reuses them, same result."""
    from mscpotency._frozen import reference_model
    from mscpotency.tl._mapping import _cache, _novelty

    model = reference_model(tiny_ref, cluster_key="cluster")
    options = {"n_comps_own": 20, "knn_method": "exact", "random_state": 0, "n_folds": 3}
    _cache.clear_caches()
    first = _novelty.held_out_mapping_scores(model, lot_size=200, depth=None, **options)
    refits = []
    original = _novelty._refitted_loadings
    monkeypatch.setattr(_novelty, "_refitted_loadings", lambda *a: refits.append(1) or original(*a))
    second = _novelty.held_out_mapping_scores(model, lot_size=80, depth=None, **options)
    assert refits == []  # another lot size: new calibration scores, the same fold PCAs
    _cache.clear_caches()
    fresh = _novelty.held_out_mapping_scores(model, lot_size=80, depth=None, **options)
    assert len(refits) == 3
    np.testing.assert_array_equal(second, fresh)
    assert first.size > 0


def test_lot_sizes_that_split_the_held_out_lots_alike_share_one_calibration(tiny_ref, monkeypatch):
    """Keyed by what is scored: any lot size >= the largest reference lot leaves lots whole."""
    from mscpotency._frozen import reference_model
    from mscpotency.tl._mapping import _cache, _novelty

    model = reference_model(tiny_ref, cluster_key="cluster")
    largest = int(np.unique(model.lots, return_counts=True)[1].max())
    options = {"n_comps_own": 20, "knn_method": "exact", "random_state": 0, "n_folds": 3}
    _cache.clear_caches()
    first = _novelty.held_out_mapping_scores(model, lot_size=largest, depth=None, **options)
    scored = []
    original = _novelty.scored_as_a_query
    monkeypatch.setattr(_novelty, "scored_as_a_query", lambda *a: scored.append(1) or original(*a))
    again = _novelty.held_out_mapping_scores(model, lot_size=3 * largest, depth=None, **options)
    assert scored == []  # every held-out lot whole in both: the same cells, the same sets
    np.testing.assert_array_equal(first, again)
    smaller = _novelty.held_out_mapping_scores(model, lot_size=largest // 3, depth=None, **options)
    assert len(scored) == 3  # lots split into parts: scored anew
    _cache.clear_caches()
    fresh = _novelty.held_out_mapping_scores(model, lot_size=3 * largest, depth=None, **options)
    np.testing.assert_array_equal(fresh, again)
    assert not np.array_equal(np.sort(smaller), np.sort(again))


@pytest.fixture(scope="module")
def seeds_mapped(tiny_ref, tiny_query) -> list[tuple[AnnData, AnnData]]:
    """(mapped query, reference) of the tiny preset for seeds 0 and 1 (default backend)."""
    out = [(mp.tl.map_to_reference(tiny_query, tiny_ref, copy=True), tiny_ref)]
    other = mp.datasets.tiny(random_state=1)
    reference = _reference(other[other.obs["set"] == "BM-train"].copy(), 8)
    query = other[other.obs["set"] != "BM-train"].copy()
    mp.pp.qc(query)
    out.append((mp.tl.map_to_reference(query, reference, copy=True), reference))
    return out


@pytest.fixture(scope="module")
def tiny_query(tiny_all) -> AnnData:
    query = tiny_all[tiny_all.obs["set"] != "BM-train"].copy()
    mp.pp.qc(query)
    return query


def test_known_cells_are_flagged_at_most_at_the_rate(seeds_mapped):
    """Known cells (held-out lots of the reference's populations): flagged share <= 1.5 alpha."""
    for alpha in (0.01, 0.05):
        shares = [(m.obs["predicted_novelty_p"] <= alpha).mean() for m, _ in seeds_mapped]
        assert np.mean(shares) <= 1.5 * alpha, (alpha, shares)
    for mapped, _ in seeds_mapped:
        per_lot = mp.get.map_to_reference(mapped)
        assert not per_lot["excess_novel"].any()
        assert mapped.uns["predicted"]["warnings"] == []


def test_prediction_sets_cover_the_true_label(seeds_mapped):
    """Held-out lots: coverage of the true label >= 1 - set_alpha - 0.02 (per seed, per label)."""
    for mapped, reference in seeds_mapped:
        truth = truth_labels(reference, mapped)
        in_set = mapped.obsm["predicted_set"]
        known = np.isin(truth, in_set.columns)
        columns = in_set.columns.get_indexer(truth[known])
        covered = in_set.to_numpy()[np.flatnonzero(known), columns]
        assert covered.mean() >= 0.99 - 0.02
        record = mapped.uns["predicted"]["prediction_sets"]
        assert record["set_alpha"] == 0.01
        # a label with fewer than 1 / 0.01 - 1 held-out cells cannot be excluded at this level
        thresholds = record["thresholds"]
        few = thresholds["n_calibration_cells"] < 99
        assert (thresholds.loc[few, "threshold"] == 0).all()
        assert (thresholds.loc[~few, "threshold"] > 0).all()
        assert in_set.loc[:, few.to_numpy()].all().all()


def test_a_left_out_population_is_flagged_and_unassigned(tiny_train, tiny_query):
    reference = _reference(tiny_train[tiny_train.obs["true_subpopulation"] != "SP3"].copy(), 7)
    # (a lot with 20% of SP3 cells also passes warn_off_reference: a second, true warning)
    with pytest.warns(UserWarning) as record:
        mapped = mp.tl.map_to_reference(tiny_query, reference, novelty_alpha=0.05, copy=True)
    novel = (mapped.obs["true_subpopulation"] == "SP3").to_numpy()
    flagged = mapped.obs["predicted_novel"].to_numpy()
    assert flagged[novel].mean() >= 0.8
    assert flagged[~novel].mean() <= 1.5 * 0.05
    labels = mapped.obs["predicted"].astype(str).to_numpy()
    assert (labels[flagged] == "Unassigned").all()
    # per lot: the share flagged tracks the true share of the left-out population
    per_lot = mp.get.map_to_reference(mapped)
    true_share = mapped.obs.groupby("lot", observed=True)["true_potency_cell"].mean()
    assert stats.spearmanr(per_lot["share_novel"], true_share.loc[per_lot.index])[0] > 0.8
    assert per_lot.loc[true_share.loc[per_lot.index] >= 0.1, "excess_novel"].all()
    excess = [str(w.message) for w in record if "flagged novel" in str(w.message)]
    assert all(f"'{lot}'" in excess[0] for lot in per_lot.index[per_lot["excess_novel"]])
    assert excess[0] in mapped.uns["predicted"]["warnings"]


def test_fixed_cut_off_is_still_an_option(tiny_query, tiny_ref):
    mapped = mp.tl.map_to_reference(
        tiny_query, tiny_ref, method="fast", calibrate=False, min_mapping_score=0.5, copy=True
    )
    score = mapped.obs["predicted_mapping_score"].to_numpy()
    per_lot = mp.get.map_to_reference(mapped)
    lots = mapped.obs["lot"].astype(str).to_numpy()
    expected = pd.Series(score < 0.5).groupby(lots).mean()
    np.testing.assert_allclose(per_lot["share_off_reference"], expected.loc[per_lot.index])
    # not calibrated: no prediction sets; labels are the argmax unless flagged novel
    assert "predicted_set" not in mapped.obsm and "predicted_set_size" not in mapped.obs
    assert not mapped.uns["predicted"]["prediction_sets"]["calibrated"]
    assigned = (mapped.obs["predicted"] != "Unassigned").to_numpy()
    assert (assigned == ~mapped.obs["predicted_novel"].to_numpy()).all()


def test_small_reference_and_small_query_lots(tiny_all):
    """A 3-lot, ~400-cell reference and query lots of 50 cells map, with sets and p-values."""
    train = tiny_all[tiny_all.obs["lot"].isin(["BM01", "BM02", "BM03"]).to_numpy()].copy()
    reference = _reference(train, 8)
    lots = ["BM09", "BM10", "AD01"]
    query = tiny_all[tiny_all.obs["lot"].isin(lots).to_numpy()].copy()
    keep = query.obs.groupby("lot", observed=True).cumcount().to_numpy() < 60
    query = query[keep].copy()
    mp.pp.qc(query)  # the reference's rule: per-lot MADs remove a few cells of each lot
    keep = query.obs.groupby("lot", observed=True).cumcount().to_numpy() < 50
    query = query[keep].copy()
    assert query.obs["lot"].value_counts().max() <= 50
    mapped = mp.tl.map_to_reference(query, reference, copy=True)
    truth = truth_labels(reference, mapped)
    labels = mapped.obs["predicted"].astype(str).to_numpy()
    assert (labels == truth).mean() > 0.85
    assert np.isfinite(mapped.obs["predicted_novelty_p"]).all()
    assert mapped.obs["predicted_novel"].mean() <= 0.05
    assert mapped.uns["predicted"]["novelty"]["n_calibration_cells"] == reference.n_obs


def test_a_lot_released_alone_is_scored_beside_reference_cells(tiny_train, tiny_query):
    """One lot mapped alone, its own axes fitted on ~150 cells, had 0-37% of a population
    the reference lacks flagged at 0.05 (mean 26% over these four lots); scored beside
    reference cells that fill it up to a calibration fold's size, 83-100%."""
    reference = _reference(tiny_train[tiny_train.obs["true_subpopulation"] != "SP3"].copy(), 7)
    new_flagged, known_flagged, sizes = [], [], []
    for lot in ("BM10", "AD01", "AD02", "UC02"):
        query = tiny_query[(tiny_query.obs["lot"] == lot).to_numpy()].copy()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            mapped = mp.tl.map_to_reference(query, reference, novelty_alpha=0.05, copy=True)
        novel = (mapped.obs["true_subpopulation"] == "SP3").to_numpy()
        flagged = mapped.obs["predicted_novel"].to_numpy()
        new_flagged.append(flagged[novel].mean())
        known_flagged.append(flagged[~novel].mean())
        sizes.append((query.n_obs, mapped.uns["predicted"]["novelty"]["n_scored_beside"]))
        if novel.mean() >= 0.1:
            assert mp.get.map_to_reference(mapped).loc[lot, "excess_novel"], lot
    assert np.mean(new_flagged) >= 0.8 and min(new_flagged) >= 0.5, new_flagged
    assert np.mean(known_flagged) <= 1.5 * 0.05, known_flagged
    # each lot scored beside as many reference cells as fill it up to a calibration fold
    fold = calibration_set_size(reference_model(reference, cluster_key="cluster"), 0)
    assert all(n + beside == fold and beside > n for n, beside in sizes), (sizes, fold)


# --- the cross-technology preset -------------------------------------------------------------
@pytest.fixture(scope="module")
def crosstech() -> tuple[AnnData, AnnData]:
    data = mp.datasets.crosstech()
    reference = _reference(data[data.obs["set"] == "reference"].copy(), 8)
    query = data[data.obs["set"] != "reference"].copy()
    mp.pp.qc(query)
    return reference, query


def test_crosstech_preset_truth():
    data = mp.datasets.crosstech(random_state=3)
    reference = data.obs["technology"] == "reference"
    assert not data.obs.loc[reference, "true_novel"].any()
    assert 0.02 < data.obs.loc[~reference, "true_novel"].mean() < 0.15
    depth = np.asarray(data.layers["counts"].sum(axis=1)).ravel()
    ratio = np.median(depth[~reference.to_numpy()]) / np.median(depth[reference.to_numpy()])
    assert 0.25 < ratio < 0.6  # the other technology captures fewer molecules
    share = data.obs.groupby("lot", observed=True)["true_potency_cell"].mean()
    fraction = data.obs.groupby("lot", observed=True)["true_potency_fraction"].first()
    np.testing.assert_allclose(share, fraction.loc[share.index])
    again = mp.datasets.crosstech(random_state=3)
    assert (again.layers["counts"] != data.layers["counts"]).nnz == 0
    with pytest.raises(ValueError, match="novel must be one of"):
        mp.datasets.crosstech(mp.datasets.crosstech_config(), novel="SP42")
    with pytest.raises(ValueError, match="depth"):
        mp.datasets.TechnologySpec(depth=0)


def test_default_backend_on_another_technology(crosstech):
    """The default backend: potency-like F1 >= 0.9 and per-lot share rho >= 0.9 against truth."""
    reference, query = crosstech
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # SP9 may pass the per-lot excess test
        mapped = mp.tl.map_to_reference(query, reference, copy=True)
    assert mapped.uns["predicted"]["params"]["method"] == "anchors"
    truth = truth_labels(reference, mapped)
    potency = pd.crosstab(truth, mapped.obs["true_subpopulation"].astype(str))["SP3"].idxmax()
    labels = mapped.obs["predicted"].astype(str).to_numpy()
    assert _f1(labels == potency, truth == potency) >= 0.9
    # per lot, among the cells not flagged novel (validate_potency(exclude_off_reference=True))
    # against the true share among the cells of known populations
    lots = mapped.obs["lot"].astype(str).to_numpy()
    kept = ~mapped.obs["predicted_novel"].to_numpy()
    share = pd.Series(labels[kept] == potency).groupby(lots[kept]).mean()
    known = ~mapped.obs["true_novel"].to_numpy()
    true_share = (
        pd.Series(mapped.obs["true_potency_cell"].to_numpy()[known]).groupby(lots[known]).mean()
    )
    assert stats.spearmanr(share, true_share.loc[share.index])[0] >= 0.9
    # the novel population is ranked low and flagged far more often than known cells
    novel = mapped.obs["true_novel"].to_numpy()
    flagged = mapped.obs["predicted_novel"].to_numpy()
    assert flagged[novel].mean() > 10 * flagged[~novel].mean()
    # calibration cells thinned to the query's depth and scored in sets of its size: known
    # cells are flagged at about the rate, neither far above (unmatched: 9% at 0.05) nor far
    # below (scored as one set: 0.2% at 0.05, on the same technology)
    record = mapped.uns["predicted"]["novelty"]
    assert record["depth_matched"] and 0.3 < record["depth_ratio"] < 0.6
    p = mapped.obs["predicted_novelty_p"].to_numpy()
    for alpha in (0.01, 0.05):
        assert (p[~novel] <= alpha).mean() <= 1.5 * alpha, alpha
    assert (p[~novel] <= 0.05).mean() >= 0.2 * 0.05  # at 0.01 too few cells for a lower bound


def test_prediction_sets_cover_the_true_label_on_another_technology(crosstech):
    """Sets calibrated on held-out reference cells at the reference's depth covered the true
    label of 0.944-0.968 of a 40%-depth query's known cells at set_alpha 0.01 (anchors, seeds
    0-2); calibrated on held-out cells thinned to the query's depth, 0.987-0.995."""
    reference, query = crosstech
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # SP9 may pass the per-lot excess test
        mapped = mp.tl.map_to_reference(query, reference, copy=True)
    truth = truth_labels(reference, mapped)
    known = ~mapped.obs["true_novel"].to_numpy()
    in_set = mapped.obsm["predicted_set"]
    columns = in_set.columns.get_indexer(truth[known])
    assert (columns >= 0).all()  # every known cell's true label is a reference label
    covered = in_set.to_numpy()[np.flatnonzero(known), columns]
    assert covered.mean() >= 0.99 - 0.02
    assert mapped.uns["predicted"]["calibration"]["thinned_to_query"]


def test_novelty_groups_flag_a_novel_population_whole(crosstech):
    """Seed 0 of the cross-technology preset: the query's own clusters find SP9, the group test
    flags its cluster whole (91% of SP9 at 0.05, known cells 2.4%). Not the default: on seed 3
    the known SP8, flagged at 21% by its cells' p-values, is flagged whole too (known cells
    8.9%), and on the study preset seed 1 known cells went from 5.0% to 15.5%
    (benchmarks/results/novelty_crosstech_groups_notes.md)."""
    reference, query = crosstech
    novel = query.obs["true_novel"].to_numpy()
    groups = query_groups(lognormalise(query_counts(query, "counts"), 1e4))
    assert max(_f1(groups == g, novel) for g in np.unique(groups)) >= 0.8
    with pytest.warns(UserWarning):
        mapped = mp.tl.map_to_reference(
            query, reference, method="fast", novelty_alpha=0.05, novelty_groups=True, copy=True
        )
    flagged = mapped.obs["predicted_novel"].to_numpy()
    assert flagged[novel].mean() >= 0.8 and flagged[~novel].mean() <= 1.5 * 0.05
    np.testing.assert_array_equal(mapped.obs["predicted_novelty_group"].astype(str), groups)
    table = mapped.uns["predicted"]["novelty"]["groups"]
    whole = table.index[table["excess_novel"]]
    assert len(whole) == 1 and novel[groups == whole[0]].mean() > 0.8
    # cells are flagged by their own p-value or by their group, nothing else
    own = (mapped.obs["predicted_novelty_p"] <= 0.05).to_numpy()
    np.testing.assert_array_equal(flagged, own | (groups == whole[0]))
    assert (mapped.obs["predicted"].astype(str).to_numpy()[flagged] == "Unassigned").all()
    assert mapped.uns["predicted"]["params"]["novelty_groups"] is True


def test_novelty_groups_from_obs_and_without_a_novel_population(tiny_query, tiny_ref):
    """Lots as the groups: the per-lot test at 1.5 x alpha; no known lot is flagged whole."""
    plain = mp.tl.map_to_reference(tiny_query, tiny_ref, method="fast", copy=True)
    mapped = mp.tl.map_to_reference(
        tiny_query, tiny_ref, method="fast", novelty_groups="lot", copy=True
    )
    table = mapped.uns["predicted"]["novelty"]["groups"]
    per_lot = mp.get.map_to_reference(plain)
    np.testing.assert_array_equal(table["n_novel"], per_lot.loc[table.index, "n_novel"])
    np.testing.assert_array_equal(table["n_cells"], per_lot.loc[table.index, "n_cells"])
    expected = [
        stats.binomtest(int(k), int(n), 1.5 * 0.01, alternative="greater").pvalue
        for k, n in zip(table["n_novel"], table["n_cells"], strict=True)
    ]
    np.testing.assert_allclose(table["novelty_pvalue"], expected)
    assert not table["excess_novel"].any()
    np.testing.assert_array_equal(mapped.obs["predicted_novel"], plain.obs["predicted_novel"])
    assert (
        "novelty_group" not in "".join(plain.obs.columns)
        and "groups" not in (plain.uns["predicted"]["novelty"])
    )
    with pytest.raises(KeyError, match="not a column of the query's obs"):
        mp.tl.map_to_reference(tiny_query, tiny_ref, method="fast", novelty_groups="nope")
    with pytest.raises(TypeError, match="novelty_groups must be True, False or an obs key"):
        mp.tl.map_to_reference(tiny_query, tiny_ref, method="fast", novelty_groups=1)


@pytest.mark.xfail(
    strict=True,
    reason="issue 16 not met on another technology: with depth- and size-matched calibration "
    "known cells are flagged within 1.5 x alpha (2.1-4.8% at 0.05, seeds 0-2) but only 11-25% "
    "of SP9 (novelty AUROC 0.66-0.78). SP9 lies off the reference PCs (7% of its shift "
    "spanned) yet adds a variance of ~0.97 along its direction in a scoring set of ~1,180 "
    "cells, below the ~2.7 of the largest noise direction at 40% depth, so no PCA of the query "
    "finds it (best own axis AUROC 0.74); kNN distance, reconstruction residual and whitened "
    "residual PCA reach AUROC <= 0.8 against 0.98 for SP9's true direction; scoring the "
    "calibration folds inside the whole query (transductive) flags 19-50% at known 3.2-4.4% "
    "(benchmarks/results/novelty_crosstech_diagnosis.md). A cross-fitted score on the 200 "
    "genes co-varying most in excess of the depth-matched reference flags 56/1/65% (seeds "
    "0-2) and 65/96/87% (seeds 3-5) at known 0.4-3.0%: SP9's excess covariance stays in the "
    "noise on seed 1 (benchmarks/results/novelty_crosstech_genes.md). Testing the query's own "
    "clusters as wholes (novelty_groups=True, opt-in) flags 91/11/87/93/97/95% of SP9 (seeds "
    "0-5) at known 2.4/3.2/6.0/8.9/3.4/6.9%: on seed 1 SP9's cells are flagged at 11% (its "
    "best cluster at 9%), as often as known populations elsewhere (9-10% on seeds 2 and 5), "
    "and on seed 3 the known SP8 is flagged at 21% cell by cell, more than SP9 (14%), so it "
    "is flagged whole too (benchmarks/results/novelty_crosstech_groups_notes.md). Seurat 4.3 "
    "on the same counts ranks SP9 no better (MappingScore AUROC 0.68-0.79); the label "
    "confidence ranks it best (AUROC 0.86-0.94), yet a cut-off on it knowing the truth flags "
    "31-59% at 5% of known cells (benchmarks/results/mapping_crosstech.md)",
)
def test_novelty_on_another_technology_meets_the_issue(crosstech):
    reference, query = crosstech
    with pytest.warns(UserWarning):
        mapped = mp.tl.map_to_reference(
            query, reference, method="fast", novelty_alpha=0.05, copy=True
        )
    novel = mapped.obs["true_novel"].to_numpy()
    flagged = mapped.obs["predicted_novel"].to_numpy()
    assert flagged[novel].mean() >= 0.8 and flagged[~novel].mean() <= 1.5 * 0.05
