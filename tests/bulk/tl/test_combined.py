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
