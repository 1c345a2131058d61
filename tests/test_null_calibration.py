"""Type-I error of every p-value the package offers, under null lot-level simulations.

Each test draws many null studies of 11 lots (potency unrelated to the lots' features),
applies the p-value's kernel and checks that the share of p < alpha is at most alpha plus
three Monte-Carlo standard errors, sqrt(alpha (1 - alpha) / n_studies) (a false failure
has probability ~0.1%). A lower bound of alpha / 3 guards against a kernel that never
rejects (a test that cannot fail).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from mscpotency import _stats
from mscpotency.tl._robustness._pseudobulk import signed_rank_test
from mscpotency.tl._robustness._second_opinion import (
    count_permutation_test,
    quasibinomial_t,
    spatial_fdr,
)

N_LOTS = 11
N_STUDIES = 2000
ALPHAS = (0.05, 0.10)
BASE = np.array([0.22, 0.17, 0.11, 0.14, 0.12, 0.10, 0.08, 0.06])


def _assert_calibrated(pvalues: np.ndarray, name: str) -> None:
    pvalues = np.asarray(pvalues, dtype=float)
    assert np.isfinite(pvalues).all(), name
    n = pvalues.size
    for alpha in ALPHAS:
        rate = float((pvalues < alpha).mean())
        tolerance = 3 * np.sqrt(alpha * (1 - alpha) / n)
        assert rate <= alpha + tolerance, (
            f"{name}: type-I error {rate:.4f} at alpha {alpha} (n = {n})"
        )
        assert rate >= alpha / 3, f"{name}: rejects almost never ({rate:.4f} at alpha {alpha})"


def _null_counts(rng: np.random.Generator, n_lots: int = N_LOTS, cells: int = 1500) -> np.ndarray:
    """Lots x clusters counts: Dirichlet lot-to-lot variation plus multinomial sampling."""
    return np.array([rng.multinomial(cells, rng.dirichlet(60 * BASE)) for _ in range(n_lots)])


def test_spearman_exact_p_is_calibrated_with_continuous_data():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(N_LOTS, N_STUDIES))
    y = rng.normal(size=N_LOTS)  # one outcome, independent columns: each column is one null study
    _assert_calibrated(_stats.exact_pvalues(X, y), "exact Spearman")


def test_spearman_exact_p_is_calibrated_with_ties():
    rng = np.random.default_rng(2)
    X = rng.integers(0, 3, size=(N_LOTS, N_STUDIES)).astype(float)  # three levels: heavy ties
    y = rng.integers(0, 5, N_LOTS).astype(float)  # a tied outcome (an assay with coarse levels)
    keep = np.ptp(X, axis=0) > 0
    _assert_calibrated(_stats.exact_pvalues(X[:, keep], y), "exact Spearman with ties")


def test_spearman_permutation_p_is_calibrated():
    rng = np.random.default_rng(3)
    pvalues = [
        _stats.permutation_pvalues(
            rng.normal(size=(N_LOTS, 1)),
            rng.normal(size=N_LOTS),
            n_permutations=199,
            random_state=seed,
        )[0]
        for seed in range(N_STUDIES)
    ]
    _assert_calibrated(pvalues, "permutation Spearman")


def test_spearman_asymptotic_p_is_calibrated_at_11_lots():
    rng = np.random.default_rng(4)
    rho = _stats.spearman_rho(rng.normal(size=(N_LOTS, N_STUDIES)), rng.normal(size=N_LOTS))
    _assert_calibrated(_stats.asymptotic_pvalues(rho, N_LOTS), "asymptotic Spearman")


def test_clr_spearman_p_is_calibrated_on_compositions():
    rng = np.random.default_rng(5)
    pvalues = []
    for _ in range(N_STUDIES):
        counts = _null_counts(rng)
        features = _stats.clr(counts / counts.sum(axis=1, keepdims=True), counts=counts)
        pvalues.append(_stats.exact_pvalues(features[:, [2]], rng.normal(size=N_LOTS))[0])
    _assert_calibrated(pvalues, "CLR Spearman")


@pytest.mark.parametrize("n_lots", [6, 11])
def test_count_glm_permutation_p_is_calibrated_under_overdispersion(n_lots):
    """6 lots: all 720 orderings (the exact path, as up to 8 lots); 11 lots: 199 random ones."""
    rng = np.random.default_rng(6 + n_lots)
    pvalues = []
    for seed in range(N_STUDIES):
        counts = _null_counts(rng, n_lots)
        result = count_permutation_test(
            counts[:, [2]],
            counts.sum(axis=1),
            rng.normal(size=n_lots),
            n_permutations=199,
            random_state=seed,
        )
        pvalues.append(result["pvalue"][0])
    _assert_calibrated(pvalues, f"count GLM permutation ({n_lots} lots)")


def test_count_glm_asymptotic_p_is_calibrated_under_overdispersion():
    rng = np.random.default_rng(7)
    pvalues = []
    for _ in range(N_STUDIES):
        counts = _null_counts(rng)
        y = rng.normal(size=N_LOTS)
        t = quasibinomial_t(counts[:, 2], counts.sum(axis=1), (y - y.mean()) / y.std(ddof=1))[2][0]
        pvalues.append(2 * stats.t.sf(abs(t), N_LOTS - 2))
    _assert_calibrated(pvalues, "count GLM asymptotic (t, n - 2 df)")


def test_signed_rank_exact_p_is_calibrated():
    rng = np.random.default_rng(8)
    differences = rng.standard_t(3, size=(N_LOTS, N_STUDIES))  # symmetric, heavy-tailed
    _assert_calibrated(signed_rank_test(differences)[1], "exact signed-rank")


def test_signed_rank_p_is_calibrated_with_zeros_and_ties():
    rng = np.random.default_rng(9)
    differences = rng.integers(-2, 3, size=(N_LOTS, N_STUDIES)).astype(float)
    pvalues = signed_rank_test(differences)[1]
    _assert_calibrated(pvalues[np.isfinite(pvalues)], "exact signed-rank with ties")


def test_spatial_fdr_controls_familywise_error_under_the_global_null():
    """Overlapping neighbourhoods (positively correlated shares): P(any FDR < 0.1) <= 0.1 + MC error."""
    rng = np.random.default_rng(10)
    n_studies, n_nhoods, level = 600, 60, 0.1
    any_hit = 0
    for _ in range(n_studies):
        latent = rng.normal(size=(N_LOTS, n_nhoods + 5))
        shares = np.stack(
            [latent[:, i : i + 6].sum(axis=1) for i in range(n_nhoods)], axis=1
        )  # overlapping
        pvalues = _stats.exact_pvalues(shares, rng.normal(size=N_LOTS))
        any_hit += (spatial_fdr(pvalues, rng.uniform(0.5, 2.0, n_nhoods)) < level).any()
    rate = any_hit / n_studies
    assert rate <= level + 3 * np.sqrt(level * (1 - level) / n_studies), rate


def test_bootstrap_ci_of_rho_covers_the_population_rho():
    """potency_association's 95% bootstrap CI over lots: coverage >= 95% - 3 MC errors at 11 lots."""
    rng = np.random.default_rng(11)
    r = 0.5
    population_rho = 6 / np.pi * np.arcsin(r / 2)  # Spearman's rho of a bivariate normal
    n_studies, covered = 150, 0
    for seed in range(n_studies):
        z = rng.multivariate_normal([0, 0], [[1, r], [r, 1]], size=N_LOTS)
        low, high, _ = _stats.bootstrap_ci(z[:, [0]], z[:, 1], n_bootstrap=200, random_state=seed)
        covered += low[0] <= population_rho <= high[0]
    assert covered / n_studies >= 0.95 - 3 * np.sqrt(0.95 * 0.05 / n_studies)
