"""The lot-level statistical kernel: exactness, honesty under the null, intervals."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from mscpotency import _stats


def brute_force_pvalues(X, y, alternative):
    rho = _stats.spearman_rho(X, y)
    null = np.array(
        [_stats.spearman_rho(X, y[list(p)]) for p in itertools.permutations(range(len(y)))]
    )
    eps = 1e-9
    if alternative == "two-sided":
        return (np.abs(null) >= np.abs(rho) - eps).mean(axis=0)
    if alternative == "greater":
        return (null >= rho - eps).mean(axis=0)
    return (null <= rho + eps).mean(axis=0)


@pytest.mark.parametrize("n", [4, 5, 6, 7])
@pytest.mark.parametrize("alternative", ["two-sided", "greater", "less"])
def test_exact_matches_brute_force_with_and_without_ties(n, alternative):
    rng = np.random.default_rng(n)
    X = np.column_stack(
        [
            rng.normal(size=n),  # continuous
            rng.integers(0, 3, size=n).astype(float),  # heavy ties
            np.r_[np.zeros(n - 2), rng.random(2)],  # zeros, as absent clusters give
        ]
    )
    for y in (rng.normal(size=n), rng.integers(0, 3, size=n).astype(float)):
        if np.ptp(y) == 0:
            continue
        exact = _stats.exact_pvalues(X, y, alternative=alternative)
        np.testing.assert_allclose(exact, brute_force_pvalues(X, y, alternative), rtol=1e-12)


def test_exact_matches_scipy_permutation_test():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=7), rng.normal(size=7)
    reference = stats.permutation_test(
        (x,), lambda a: stats.spearmanr(a, y)[0], permutation_type="pairings", n_resamples=np.inf
    ).pvalue
    assert _stats.exact_pvalues(x[:, None], y)[0] == pytest.approx(reference, rel=1e-12)


def test_permutation_distribution_counts_every_ordering():
    values, counts = _stats.permutation_distribution((2, 4, 6, 8, 10), (2, 4, 6, 8, 10))
    assert counts.sum() == math.factorial(5)
    assert values.min() == 2 * 10 + 4 * 8 + 6 * 6 + 8 * 4 + 10 * 2
    assert values.max() == 4 + 16 + 36 + 64 + 100


def test_permutation_pvalues_approach_exact():
    rng = np.random.default_rng(5)
    X, y = rng.normal(size=(9, 4)), rng.normal(size=9)
    exact = _stats.exact_pvalues(X, y)
    sampled = _stats.permutation_pvalues(X, y, n_permutations=40000, random_state=1)
    np.testing.assert_allclose(sampled, exact, atol=0.01)


def test_permutation_is_reproducible_and_seeded():
    rng = np.random.default_rng(6)
    X, y = rng.normal(size=(14, 3)), rng.normal(size=14)
    a = _stats.permutation_pvalues(X, y, n_permutations=999, random_state=7)
    b = _stats.permutation_pvalues(X, y, n_permutations=999, random_state=7)
    c = _stats.permutation_pvalues(X, y, n_permutations=999, random_state=8)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("method", ["exact", "permutation"])
def test_null_pvalues_are_honest(method):
    """Under a null study the share of p < 0.05 stays at (or below) 5%."""
    rng = np.random.default_rng(2024)
    n_studies, n_lots = 600 if method == "exact" else 300, 11
    fractions = rng.dirichlet(np.ones(8) * 5, size=(n_studies, n_lots))
    potency = rng.normal(size=(n_studies, n_lots))
    rejections = 0
    total = 0
    for study in range(n_studies):
        result = _stats.spearman_test(
            fractions[study], potency[study], method=method, n_permutations=499, random_state=study
        )
        rejections += int((result.pvalue < 0.05).sum())
        total += result.pvalue.size
    rate = rejections / total
    mc_error = 3 * math.sqrt(0.05 * 0.95 / total)
    assert rate <= 0.05 + mc_error
    assert rate >= 0.05 - 3 * mc_error  # not absurdly conservative either


def test_spearman_rho_matches_scipy_with_ties():
    rng = np.random.default_rng(9)
    X = rng.integers(0, 4, size=(10, 3)).astype(float)
    y = rng.integers(0, 5, size=10).astype(float)
    expected = [stats.spearmanr(X[:, j], y)[0] for j in range(3)]
    np.testing.assert_allclose(_stats.spearman_rho(X, y), expected)


def test_constant_feature_gives_nan_not_a_number():
    X = np.column_stack([np.ones(6), np.arange(6.0)])
    result = _stats.spearman_test(X, np.arange(6.0))
    assert np.isnan(result.rho[0]) and np.isnan(result.pvalue[0])
    assert result.rho[1] == pytest.approx(1.0)
    assert result.pvalue[1] == pytest.approx(2 / math.factorial(6))


def test_benjamini_hochberg_matches_statsmodels_and_keeps_nan():
    from statsmodels.stats.multitest import multipletests

    p = np.array([0.01, 0.04, 0.03, 0.2, np.nan, 0.5])
    adjusted = _stats.benjamini_hochberg(p)
    finite = np.isfinite(p)
    np.testing.assert_allclose(adjusted[finite], multipletests(p[finite], method="fdr_bh")[1])
    assert np.isnan(adjusted[4])


def test_minimum_attainable_pvalue_for_four_lots_is_above_005():
    assert _stats.minimum_attainable_pvalue(4) == pytest.approx(2 / 24)
    X, y = np.arange(4.0)[:, None], np.arange(4.0)
    assert _stats.exact_pvalues(X, y)[0] == pytest.approx(2 / 24)


def test_bootstrap_ci_contains_rho_and_is_reproducible():
    rng = np.random.default_rng(11)
    y = rng.normal(size=11)
    X = np.column_stack([y + rng.normal(scale=0.3, size=11), rng.normal(size=11)])
    low, high, valid = _stats.bootstrap_ci(X, y, n_bootstrap=500, random_state=1)
    rho = _stats.spearman_rho(X, y)
    assert (low <= rho).all() and (rho <= high).all()
    assert low[0] > 0.3  # the real association stays positive
    assert (valid == 1).all()
    again = _stats.bootstrap_ci(X, y, n_bootstrap=500, random_state=1)
    np.testing.assert_array_equal(low, again[0])


def test_leave_one_out_finds_the_lot_that_drives_rho():
    y = np.arange(10.0)
    x = np.zeros(10)
    x[-1] = 1.0  # only the last lot has the cluster: one lot drives everything
    loo = _stats.leave_one_out(x[:, None], y)
    assert np.isnan(loo[:-1, 0]).sum() == 0
    assert np.isnan(loo[-1, 0])  # without that lot the fraction is constant


def test_clr_rows_sum_to_zero():
    fractions = np.array([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
    out = _stats.clr(fractions)
    np.testing.assert_allclose(out.sum(axis=1), 0, atol=1e-12)
    assert np.isfinite(out).all()


@pytest.mark.parametrize(
    ("X", "y", "match"),
    [
        (np.ones((2, 1)), np.arange(2.0), "at least 3 lots"),
        (np.array([[1.0], [np.nan], [2.0]]), np.arange(3.0), "finite"),
        (np.ones((3, 1)), np.arange(4.0), "lots x features"),
    ],
)
def test_spearman_test_rejects_bad_input(X, y, match):
    with pytest.raises(ValueError, match=match):
        _stats.spearman_test(X, y)


def test_exact_refuses_infeasible_n():
    with pytest.raises(ValueError, match="not feasible"):
        _stats.spearman_test(
            np.random.default_rng(0).normal(size=(17, 1)), np.arange(17.0), method="exact"
        )
