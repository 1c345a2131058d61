"""bulk.tl.rank_association: exact p-values (brute force), FDR, excluded features, missing lines."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from scipy import stats

import mscpotency as mp
from mscpotency import _stats


def lines_adata(X: np.ndarray, y: np.ndarray | None = None, *, prefix: str = "L") -> AnnData:
    n = X.shape[0]
    obs = pd.DataFrame(index=[f"{prefix}{i:02d}" for i in range(n)])
    if y is not None:
        obs["outcome"] = y
    return AnnData(
        X=np.asarray(X, dtype=float),
        obs=obs,
        var=pd.DataFrame(index=[f"F{j}" for j in range(X.shape[1])]),
    )


def brute_force(x: np.ndarray, y: np.ndarray, alternative: str) -> float:
    """Share of all n! orderings of y (itertools.permutations) with a rho at least as extreme."""
    rx, ry = stats.rankdata(x), stats.rankdata(y)
    orderings = np.array(list(itertools.permutations(range(len(y)))))
    permuted = ry[orderings] - ry.mean()
    centred = rx - rx.mean()
    null = permuted @ centred / np.sqrt((permuted**2).sum(axis=1) * (centred**2).sum())
    observed = stats.spearmanr(x, y)[0]
    eps = 1e-9
    if alternative == "two-sided":
        return float((np.abs(null) >= abs(observed) - eps).mean())
    if alternative == "greater":
        return float((null >= observed - eps).mean())
    return float((null <= observed + eps).mean())


@pytest.mark.parametrize("n", [5, 6, 7])
@pytest.mark.parametrize("alternative", ["two-sided", "greater", "less"])
def test_exact_pvalues_match_brute_force_enumeration(n, alternative):
    rng = np.random.default_rng(10 + n)
    X = np.column_stack(
        [
            rng.normal(size=n),  # continuous
            rng.integers(0, 3, size=n).astype(float),  # ties, as at a detection floor
            np.arange(n, dtype=float),  # perfectly ordered
        ]
    )
    y = rng.normal(size=n)
    y[:2] = y[0]  # a tie in the outcome too
    adata = lines_adata(X, y)
    mp.bulk.tl.rank_association(adata, "outcome", alternative=alternative)
    table = mp.bulk.get.rank_association(adata, sort=False)
    assert (table["pvalue_method"] == "exact").all()
    expected = [brute_force(X[:, j], y, alternative) for j in range(X.shape[1])]
    np.testing.assert_allclose(table["pvalue"].to_numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(
        table["rho"].to_numpy(), [stats.spearmanr(X[:, j], y)[0] for j in range(3)]
    )


def test_ten_lines_are_enumerated_exactly():
    """At n = 10 (the deck's training set) the p-values come from all 10! orderings."""
    rng = np.random.default_rng(0)
    y = rng.normal(size=10)
    X = np.column_stack([np.argsort(np.argsort(y)).astype(float), rng.normal(size=(10, 3))])
    adata = lines_adata(X, y)
    mp.bulk.tl.rank_association(adata, "outcome")
    table = mp.bulk.get.rank_association(adata, sort=False)
    assert (table["pvalue_method"] == "exact").all() and (table["n_lines"] == 10).all()
    assert table.loc["F0", "pvalue"] == pytest.approx(2 / math.factorial(10), rel=1e-12)
    np.testing.assert_allclose(table["fdr"], _stats.benjamini_hochberg(table["pvalue"].to_numpy()))
    assert "smallest attainable p = 5.51e-07 (exact)" in adata.uns["rank_association"]["note"]


def test_several_outcomes_fdr_within_each_and_permutation_above_twelve_lines():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(14, 30))
    outcomes = pd.DataFrame(
        {"a": X[:, 0] + 0.1 * rng.normal(size=14), "b": rng.normal(size=14)},
        index=[f"L{i:02d}" for i in range(14)],
    )
    adata = lines_adata(X)
    mp.bulk.tl.rank_association(adata, outcomes, n_permutations=999)
    long = mp.bulk.get.rank_association(adata, sort=False)
    assert list(long.columns[:2]) == ["outcome", "feature"] and len(long) == 60
    for _, part in long.groupby("outcome"):
        np.testing.assert_allclose(
            part["fdr"], _stats.benjamini_hochberg(part["pvalue"].to_numpy())
        )
        assert (part["pvalue_method"] == "permutation").all()
    a = mp.bulk.get.rank_association(adata, outcome="a")
    assert a.index[0] == "F0" and a.loc["F0", "pvalue"] == pytest.approx(1 / 1000)


def test_constant_and_incomplete_features_are_reported_not_silently_dropped():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(8, 6))
    X[:, 1] = 3.0
    X[:, 4] = 0.0
    X[2, 5] = np.nan
    adata = lines_adata(X, rng.normal(size=8))
    with pytest.warns(
        UserWarning, match=r"3 features could not be ranked .*'constant': 2, 'missing values': 1"
    ):
        mp.bulk.tl.rank_association(adata, "outcome")
    excluded = adata.uns["rank_association"]["excluded"]
    assert sorted(excluded["feature"]) == ["F1", "F4", "F5"]
    assert dict(zip(excluded["feature"], excluded["reason"], strict=True)) == {
        "F1": "constant",
        "F4": "constant",
        "F5": "missing values",
    }
    table = mp.bulk.get.rank_association(adata)
    assert sorted(table.index) == ["F0", "F2", "F3"]
    np.testing.assert_allclose(
        np.sort(table["fdr"]), np.sort(_stats.benjamini_hochberg(table["pvalue"].to_numpy()))
    )


def test_lines_missing_on_one_platform_error_or_intersect():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(9, 5))
    adata = lines_adata(X)
    outcome = pd.Series(
        rng.normal(size=10), index=[f"L{i:02d}" for i in range(10)], name="ectoderm"
    )
    with pytest.raises(
        ValueError,
        match=r"lines \['L09'\] have an outcome value but no profile.*on_missing='intersect'",
    ):
        mp.bulk.tl.rank_association(adata, outcome)
    mp.bulk.tl.rank_association(adata, outcome, on_missing="intersect")
    stored = adata.uns["rank_association"]
    assert stored["missing_lines"].to_dict("records") == [
        {"line": "L09", "outcome": "ectoderm", "reason": "not profiled"}
    ]
    assert (mp.bulk.get.rank_association(adata)["n_lines"] == 9).all()
    expected = stats.spearmanr(X[:, 0], outcome.iloc[:9])[0]
    assert mp.bulk.get.rank_association(adata).loc["F0", "rho"] == pytest.approx(expected)


def test_profiled_line_without_a_value():
    rng = np.random.default_rng(4)
    adata = lines_adata(rng.normal(size=(8, 4)), rng.normal(size=8))
    adata.obs.loc["L03", "outcome"] = np.nan
    with pytest.raises(
        ValueError, match=r"lines \['L03'\] are profiled but have no 'outcome' value"
    ):
        mp.bulk.tl.rank_association(adata, "outcome")
    mp.bulk.tl.rank_association(adata, "outcome", on_missing="intersect")
    assert adata.uns["rank_association"]["missing_lines"]["reason"].tolist() == ["no outcome value"]
    assert np.isnan(adata.uns["rank_association"]["outcomes"].loc["L03", "outcome"])


def test_fewer_than_three_lines():
    adata = lines_adata(np.random.default_rng(5).normal(size=(4, 3)), [1.0, 2.0, np.nan, np.nan])
    with pytest.raises(
        ValueError, match=r"needs at least 3 lines with both a profile and a value, got 2"
    ):
        mp.bulk.tl.rank_association(adata, "outcome", on_missing="intersect")


@pytest.mark.parametrize(
    ("outcome", "error", "match"),
    [
        ("nope", KeyError, r"adata.obs has no column\(s\) \['nope'\]"),
        (
            pd.Series([1.0] * 6, index=[f"L{i:02d}" for i in range(6)]),
            ValueError,
            "the same for every line",
        ),
        (
            pd.Series(["a", "b", "c", "d", "e", "f"], index=[f"L{i:02d}" for i in range(6)]),
            ValueError,
            "not numeric",
        ),
        (
            pd.Series([1, 2, np.inf, 4, 5, 6.0], index=[f"L{i:02d}" for i in range(6)]),
            ValueError,
            "infinite for lines",
        ),
        (3.0, TypeError, "outcome must be an obs column name"),
    ],
)
def test_bad_outcomes(outcome, error, match):
    adata = lines_adata(np.random.default_rng(6).normal(size=(6, 3)))
    with pytest.raises(error, match=match):
        mp.bulk.tl.rank_association(adata, outcome)


def test_bad_options_and_duplicate_lines():
    adata = lines_adata(np.random.default_rng(7).normal(size=(6, 3)), np.arange(6.0))
    with pytest.raises(ValueError, match="on_missing must be 'error' or 'intersect'"):
        mp.bulk.tl.rank_association(adata, "outcome", on_missing="drop")
    with pytest.raises(ValueError, match="method must be"):
        mp.bulk.tl.rank_association(adata, "outcome", method="asymptotic")
    with pytest.raises(KeyError, match="adata.layers has no 'raw'"):
        mp.bulk.tl.rank_association(adata, "outcome", layer="raw")
    twice = adata.copy()
    twice.obs_names = ["L00", "L00", "L02", "L03", "L04", "L05"]
    with pytest.raises(ValueError, match="line names .* are not unique"):
        mp.bulk.tl.rank_association(twice, "outcome")


def test_copy_and_provenance():
    adata = lines_adata(np.random.default_rng(8).normal(size=(7, 4)), np.arange(7.0))
    out = mp.bulk.tl.rank_association(adata, "outcome", copy=True, key_added="ra")
    assert "ra" not in adata.uns
    mp.bulk.tl.rank_association(adata, "outcome", key_added="ra")
    pd.testing.assert_frame_equal(
        mp.bulk.get.rank_association(out, key="ra"), mp.bulk.get.rank_association(adata, key="ra")
    )
    assert mp.get.provenance(adata)["function"].tolist() == ["bulk.tl.rank_association"]
    with pytest.raises(KeyError, match="Run `bulk.tl.rank_association` first"):
        mp.bulk.get.rank_association(adata)
