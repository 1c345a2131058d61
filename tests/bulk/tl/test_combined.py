"""The combined consensus kernels against brute force, and its input checks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from scipy import stats

import mscpotency as mp
from mscpotency.bulk.tl import _combined


def test_standardized_ranks_give_spearman():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(9, 5))
    X[:, 2] = np.round(X[:, 2])  # ties
    y = rng.normal(size=(9, 1))
    rho = _combined.standardized_ranks(X).T @ _combined.standardized_ranks(y)
    expected = [stats.spearmanr(X[:, j], y[:, 0]).statistic for j in range(5)]
    np.testing.assert_allclose(rho.ravel(), expected)


def test_standardized_values_give_pearson():
    rng = np.random.default_rng(2)
    X, y = rng.normal(size=(10, 6)), rng.normal(size=(10, 1))
    r = _combined.standardized(X).T @ _combined.standardized(y)
    expected = [stats.pearsonr(X[:, j], y[:, 0]).statistic for j in range(6)]
    np.testing.assert_allclose(r.ravel(), expected)
    spearman = _combined.standardized(X, "spearman")
    np.testing.assert_allclose(spearman, _combined.standardized_ranks(X))


def _clipped_brute_force(x: np.ndarray, sds: float = 2.0) -> np.ndarray:
    """The winsorisation rule, one column at a time, from scipy's MAD."""
    median = np.median(x)
    scale = stats.median_abs_deviation(x, scale="normal")
    if scale == 0:
        scale = np.sqrt(np.pi / 2) * np.mean(np.abs(x - median))
    return np.clip(x, median - sds * scale, median + sds * scale)


def test_winsorized_is_pearson_on_values_clipped_at_two_robust_sds():
    rng = np.random.default_rng(3)
    X, y = rng.standard_t(df=2, size=(10, 8)), rng.normal(size=(10, 1))
    X[:, 3] = [0, 0, 0, 0, 0, 0, 1, 2, 3, 4]  # MAD 0: the mean absolute deviation scales
    y[4, 0] = 9.0  # the outcome is clipped too
    r = _combined.standardized(X, "winsorized").T @ _combined.standardized(y, "winsorized")
    clipped_y = _clipped_brute_force(y[:, 0])
    assert clipped_y[4] < 9.0
    expected = [
        stats.pearsonr(_clipped_brute_force(X[:, j]), clipped_y).statistic for j in range(8)
    ]
    np.testing.assert_allclose(r.ravel(), expected)
    # hand-checked: median 0, mean absolute deviation 1 -> values above 2.5066 clipped
    np.testing.assert_allclose(
        _combined.winsorized(X[:, [3]]).ravel(),
        [0, 0, 0, 0, 0, 0, 1, 2, 2.5066, 2.5066],
        atol=1e-4,
    )


def test_winsorized_keeps_one_outlying_line_from_making_a_correlation():
    rng = np.random.default_rng(4)
    y = np.arange(10.0)[:, None]
    X = rng.normal(size=(10, 200))
    X[9, :100] += 8.0  # one line far out (the one with the largest outcome)
    pearson = (_combined.standardized(X).T @ _combined.standardized(y)).ravel()
    robust = (_combined.standardized(X, "winsorized").T @ _combined.standardized(y)).ravel()
    ranks = (_combined.standardized(X, "spearman").T @ _combined.standardized_ranks(y)).ravel()
    assert np.median(pearson[:100]) > 0.5  # Pearson follows the one line
    # clipped, the line weighs about as much as the top rank does for Spearman
    assert np.median(robust[:100]) < np.median(pearson[:100]) - 0.1
    assert np.median(robust[:100]) < np.median(ranks[:100]) + 0.1
    # on well-behaved features the two nearly agree
    assert np.corrcoef(pearson[100:], robust[100:])[0, 1] > 0.9


def test_winsorized_permutation_null_has_variance_one_over_n_minus_one():
    # exact: every one of the 7! orderings of the lines; the transform is per variable,
    # so the normal score z = r * sqrt(n - 1) keeps unit null variance
    from itertools import permutations

    rng = np.random.default_rng(5)
    n = 7
    x = rng.standard_t(df=2, size=(n, 1))
    x[0, 0] = 30.0
    a = _combined.standardized(x, "winsorized")[:, 0]
    b = _combined.standardized(rng.normal(size=(n, 1)), "winsorized")[:, 0]
    r = np.array([a[list(order)] @ b for order in permutations(range(n))])
    assert r.mean() == pytest.approx(0.0, abs=1e-12)
    assert r.var() == pytest.approx(1 / (n - 1))


def test_mean_agreement_counts_both_platforms_above_the_bar_only():
    # entities x platforms S_p; brute force of the rule in across_platforms' docstring
    stouffer = np.array(
        [
            [2.6, 1.9],  # a marker moderately weaker on one platform
            [2.0, 2.0],  # even, weaker in sum
            [4.5, 0.5],  # an artefact of one platform: fails the bar
            [-3.0, -2.0],  # agrees in the flipped direction
            [3.0, np.nan],  # measured on one platform only
            [1.0, -1.0],  # disagrees
        ]
    )
    up, down = _combined.across_platforms(stouffer, "mean")
    floor = _combined.MEAN_FLOOR
    for i, row in enumerate(stouffer):
        seen = row[np.isfinite(row)]
        for signed, got in ((seen, up[i]), (-seen, down[i])):
            expected = signed.mean() if signed.min() >= floor else signed.min()
            assert got == pytest.approx(expected)
    weakest_up, _ = _combined.across_platforms(stouffer, "weakest")
    np.testing.assert_allclose(weakest_up, np.nanmin(stouffer, axis=1))
    assert up[0] > up[1] and weakest_up[0] < weakest_up[1]  # the order the mean changes
    assert up[2] == pytest.approx(0.5) and up[2] < up[1]  # the artefact stays below
    where = _combined.RuleCells(
        cells=[("a", 0, 1), ("b", 0, 1)],
        rows={"a": np.arange(6), "b": np.array([0, 1, 2, 3, -1, 5])},
        entities=pd.Index([f"e{i}" for i in range(6)]),
        agreement="mean",
    )
    scores = {"a": stouffer[:, :1], "b": np.nan_to_num(stouffer[:, 1:])}
    statistic, _ = _combined.rule_statistic(scores, where)
    np.testing.assert_allclose(statistic[[0, 1, 2, 3, 5]], [2.25, 2.0, 0.5, -2.5, 0.0])
    assert 0 < statistic[4] < 3.0  # one platform's word must be stronger


def test_step_down_qvalues_match_brute_force():
    rng = np.random.default_rng(1)
    statistic = rng.normal(size=40)
    expected_false = np.sort(rng.uniform(0, 5, size=40))[::-1][
        np.argsort(np.argsort(-np.abs(statistic)))
    ]
    q = _combined.qvalues(statistic, expected_false)
    magnitude = np.abs(statistic)
    for g in range(40):
        shorter = [h for h in range(40) if magnitude[h] >= magnitude[g]]  # lists down to g
        brute = max(
            min(1.0, expected_false[h] / (magnitude >= magnitude[h]).sum()) for h in shorter
        )
        assert q[g] == pytest.approx(brute)


def test_rule_statistic_needs_every_platform_to_agree():
    where = _combined.RuleCells(
        cells=[("a", 0, 1), ("b", 0, 1)],
        rows={"a": np.arange(3), "b": np.arange(3)},
        entities=pd.Index(["agree", "one platform", "disagree"]),
    )
    scores = {"a": np.array([[3.0], [4.0], [3.0]]), "b": np.array([[2.0], [0.1], [-3.0]])}
    statistic, _ = _combined.rule_statistic(scores, where)
    np.testing.assert_allclose(statistic, [2.0, 0.1, 0.0])


def _platform(lines, seed):
    rng = np.random.default_rng(seed)
    adata = AnnData(rng.normal(size=(len(lines), 30)), obs=pd.DataFrame(index=lines))
    adata.var_names = [f"g{i}" for i in range(30)]
    return adata


def test_stouffer_needs_the_same_lines_on_every_platform():
    lines = [f"L{i}" for i in range(8)]
    y = pd.Series(np.arange(8.0), index=lines, name="y")
    one, two = _platform(lines, 0), _platform(lines[:7], 1)
    mp.bulk.tl.rank_association(one, y)
    mp.bulk.tl.rank_association(two, y, on_missing="intersect")
    with pytest.raises(ValueError, match="same lines"):
        mp.bulk.tl.consensus({"one": one, "two": two}, rules={"r": {"y": 1}}, combine="stouffer")
    result = mp.bulk.tl.consensus(
        {"one": one, "two": two[:, :]},
        rules={"r": {"y": 1}},
        platforms=["one"],
        combine="stouffer",
        alpha=0.5,
        n_permutations=50,
    )
    assert result.summary.loc["r", "n_tested"] == 30
    assert result.params["combine"] == "stouffer"


def test_stouffer_is_reproducible_and_ranks_a_planted_feature_first():
    lines = [f"L{i}" for i in range(10)]
    y = pd.Series(np.arange(10.0), index=lines, name="y")
    platforms = {}
    for seed in (0, 1):
        adata = _platform(lines, seed)
        adata.X[:, 0] = np.arange(10.0) + np.random.default_rng(seed).normal(0, 0.1, 10)
        mp.bulk.tl.rank_association(adata, y)
        platforms[f"p{seed}"] = adata
    first = mp.bulk.tl.consensus(platforms, rules={"r": {"y": 1}}, combine="stouffer", alpha=0.2)
    again = mp.bulk.tl.consensus(platforms, rules={"r": {"y": 1}}, combine="stouffer", alpha=0.2)
    pd.testing.assert_frame_equal(first.table, again.table)
    assert first.table["feature"].iloc[0] == "g0"
    assert first.table["qvalue"].iloc[0] < 0.1


def test_probe_candidates_validate_on_collapsed_held_out_data():
    lines = [f"T{i}" for i in range(8)]
    rng = np.random.default_rng(3)
    X = rng.normal(size=(8, 4))
    X[:, 1] = np.arange(8.0) + 10  # probe b of gene A: the highest mean, kept
    probes = AnnData(X, obs=pd.DataFrame({"y": np.arange(8.0)}, index=lines))
    probes.var_names = ["a", "b", "c", "d"]
    annotation = pd.Series(["A", "A", "B", "C"], index=probes.var_names)
    genes = mp.bulk.pp.collapse_probes(probes, annotation)
    mp.bulk.tl.validate_markers(genes, {"b": 1}, outcome="y")
    table = mp.bulk.get.validate_markers(genes)
    assert table.loc["b", "tested"] == "A" and table.loc["b", "validated"]
    mp.bulk.tl.validate_markers(probes, {"A": 1, "B": -1}, outcome="y", annotation=annotation)
    assert mp.bulk.get.validate_markers(probes).loc["A", "validated"]
    with pytest.raises(KeyError, match="annotation="):
        mp.bulk.tl.validate_markers(probes, {"A": 1}, outcome="y")


def test_an_entity_missing_on_one_platform_is_judged_by_the_others():
    where = _combined.RuleCells(
        cells=[("a", 0, 1), ("b", 0, 1)],
        rows={"a": np.arange(4), "b": np.array([0, -1, 1, 2])},
        entities=pd.Index(["agree", "only a", "disagree", "weak only a"]),
    )
    scores = {"a": np.array([[3.0], [4.0], [3.0], [1.0]]), "b": np.array([[2.0], [-3.0], [0.5]])}
    statistic, cell_z = _combined.rule_statistic(scores, where)
    # one platform's 4.0 is as rare as the weaker of two correlated platforms' t' (k_eff 1.5)
    alone = stats.norm.isf(stats.norm.sf(4.0) ** (1 / (1 + _combined.PLATFORM_CORRELATION)))
    np.testing.assert_allclose(statistic[:3], [2.0, alone, 0.0])
    assert 0 < statistic[1] < 4.0 and 0 <= statistic[3] < 1.0
    assert np.isnan(cell_z[1, 1]) and not np.isnan(cell_z[1, 0])


def test_platform_calibration_matches_tails_and_keeps_full_entities():
    t = np.linspace(1.0, 6.0, 12)  # (a weak one-platform score may reach 0: clipped)
    full = _combined.platform_calibrated(t, np.full(12, 3), 3)
    np.testing.assert_array_equal(full, t)
    c = _combined.PLATFORM_CORRELATION
    for k in (1, 2):
        shrunk = _combined.platform_calibrated(t, np.full(12, k), 3)
        # P(min of k_eff(k) iid N >= t) == P(min of k_eff(3) iid N >= t')
        lhs = stats.norm.logsf(t) * (1 + (k - 1) * c)
        rhs = stats.norm.logsf(shrunk) * (1 + 2 * c)
        np.testing.assert_allclose(lhs, rhs, rtol=1e-8)
        assert (np.diff(shrunk) > 0).all() and (shrunk < t).all()
    assert _combined.platform_calibrated(np.array([3.0]), np.array([0]), 2)[0] == 0.0


def _two_platforms(lines, drop_from_second=()):
    y = pd.Series(np.arange(float(len(lines))), index=lines, name="y")
    platforms = {}
    for seed in (0, 1):
        adata = _platform(lines, seed)
        adata.X[:, 0] = y.to_numpy() + np.random.default_rng(seed).normal(0, 0.1, len(lines))
        adata.X[:, 1] = y.to_numpy() + np.random.default_rng(seed + 5).normal(0, 0.1, len(lines))
        if seed == 1 and drop_from_second:
            adata = adata[:, ~adata.var_names.isin(drop_from_second)].copy()
        mp.bulk.tl.rank_association(adata, y)
        platforms[f"p{seed}"] = adata
    return platforms


def test_stouffer_keeps_a_feature_one_platform_lacks():
    lines = [f"L{i}" for i in range(10)]
    platforms = _two_platforms(lines, drop_from_second=["g1"])
    result = mp.bulk.tl.consensus(
        platforms, rules={"r": {"y": 1}}, combine="stouffer", alpha=0.5, n_permutations=50
    )
    table = result.table.set_index("feature")
    assert result.summary.loc["r", "n_tested"] == 30  # the union, not the 29 on both
    assert table.loc["g0", "n_platforms"] == 2 and table.loc["g1", "n_platforms"] == 1
    assert np.isnan(table.loc["g1", "rho:p1:y"]) and table.loc["g1", "rho:p0:y"] > 0.9
    # the same perfect rank order on one platform only counts for less than on two
    assert table.loc["g1", "statistic"] < table.loc["g0", "statistic"]
    assert list(table.index[:2]) == ["g0", "g1"]


def test_n_top_gives_a_list_of_the_chosen_size_with_its_fdr():
    lines = [f"L{i}" for i in range(10)]
    platforms = _two_platforms(lines)
    result = mp.bulk.tl.consensus(
        platforms, rules={"r": {"y": 1}}, combine="stouffer", n_top=5, n_permutations=50
    )
    table, summary = result.table, result.summary.loc["r"]
    statistic = table["statistic"].to_numpy()
    assert len(table) == 5 == summary["n_called"] and (np.diff(statistic) <= 0).all()
    assert set(table["feature"][:2]) == {"g0", "g1"}
    assert summary["fdr"] == pytest.approx(table["expected_false"].max() / 5)
    assert np.isnan(summary["fdr_level"]) and summary["n_top"] == 5
    assert result.params["n_top"] == 5
    by_q = mp.bulk.tl.consensus(
        platforms, rules={"r": {"y": 1}}, combine="stouffer", alpha=0.5, n_permutations=50
    )
    by_q = by_q.table.set_index("feature")["statistic"]  # q falls with |T|: the same top
    assert 0 < len(by_q) <= 5
    pd.testing.assert_series_equal(table.set_index("feature")["statistic"].iloc[: len(by_q)], by_q)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_top": 5, "combine": "all_significant"}, "needs combine='stouffer'"),
        ({"n_top": 0, "combine": "stouffer"}, "positive integer"),
        ({"n_top": 2.5, "combine": "stouffer"}, "positive integer"),
    ],
)
def test_n_top_is_checked(kwargs, match):
    lines = [f"L{i}" for i in range(8)]
    platforms = _two_platforms(lines)
    with pytest.raises(ValueError, match=match):
        mp.bulk.tl.consensus(platforms, rules={"r": {"y": 1}}, **kwargs)


def test_pearson_mean_consensus_ranks_planted_features_and_records_its_options():
    lines = [f"L{i}" for i in range(10)]
    platforms = _two_platforms(lines)
    kwargs = {"rules": {"r": {"y": 1}}, "combine": "stouffer", "n_top": 5, "n_permutations": 50}
    options = {"correlation": "pearson", "agreement": "mean"}
    result = mp.bulk.tl.consensus(platforms, **kwargs, **options)
    again = mp.bulk.tl.consensus(platforms, **kwargs, **options)
    pd.testing.assert_frame_equal(result.table, again.table)
    table = result.table.set_index("feature")
    assert set(table.index[:2]) == {"g0", "g1"}
    y = np.arange(10.0)
    for p, adata in platforms.items():  # the cells' rho are Pearson's r on the values
        expected = stats.pearsonr(adata[:, "g0"].X.ravel(), y).statistic
        assert table.loc["g0", f"rho:{p}:y"] == pytest.approx(expected)
    assert {k: result.params[k] for k in options} == options
    default = mp.bulk.tl.consensus(platforms, **kwargs)
    assert default.params["correlation"] == "winsorized"
    assert default.params["agreement"] == "mean"
    old = mp.bulk.tl.consensus(platforms, rules={"r": {"y": 1}}, combine="all_significant")
    assert old.params["correlation"] is None and old.params["agreement"] is None


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"correlation": "pearson", "combine": "all_significant"}, "needs combine='stouffer'"),
        ({"agreement": "mean", "combine": "all_significant"}, "needs combine='stouffer'"),
        (
            {"correlation": "kendall", "combine": "stouffer"},
            "correlation must be one of 'spearman', 'pearson', 'winsorized'",
        ),
        ({"agreement": "max", "combine": "stouffer"}, "agreement must be one of 'weakest', 'mean'"),
    ],
)
def test_combined_options_are_checked(kwargs, match):
    platforms = _two_platforms([f"L{i}" for i in range(8)])
    with pytest.raises(ValueError, match=match):
        mp.bulk.tl.consensus(platforms, rules={"r": {"y": 1}}, **kwargs)


def test_candidates_the_held_out_platform_lacks_can_be_listed_untested():
    lines = [f"T{i}" for i in range(10)]
    held_out = _platform(lines, 4)
    held_out.X[:, 0] = np.arange(10.0)
    held_out.obs["y"] = np.arange(10.0)
    candidates = {"g0": 1, "CAGE only": 1}
    with pytest.raises(KeyError, match="on_absent='untested'"):
        mp.bulk.tl.validate_markers(held_out, candidates, outcome="y")
    mp.bulk.tl.validate_markers(held_out, candidates, outcome="y", on_absent="untested")
    table = mp.bulk.get.validate_markers(held_out)
    assert table.loc["g0", "validated"] and table.loc["g0", "rho"] == pytest.approx(1.0)
    assert np.isnan(table.loc["CAGE only", "pvalue"]) and not table.loc["CAGE only", "validated"]
    summary = mp.bulk.get.validate_markers(held_out, kind="summary")
    assert summary["expected_by_chance"].item() == pytest.approx(0.05)  # one testable
    with pytest.raises(KeyError, match="names do not match"):
        mp.bulk.tl.validate_markers(held_out, {"x": 1}, outcome="y", on_absent="untested")
