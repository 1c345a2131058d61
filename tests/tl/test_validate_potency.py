"""tl.validate_potency and tl.marker_by_set: exact kernels checked by brute force, tools on the tiny preset."""

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
from mscpotency.tl._mapping import _marker_by_set as mbs
from mscpotency.tl._mapping import _validate_potency as vp


@pytest.fixture(scope="module")
def mapped(tiny_all, tiny_ref) -> AnnData:
    query = tiny_all[tiny_all.obs["set"] != "BM-train"].copy()
    mp.pp.qc(query)
    mp.tl.map_to_reference(query, tiny_ref, method="fast")
    return query


# ----------------------------------------------------------------------------- kernels
def _rho(x, y):
    return stats.spearmanr(x, y)[0]


def test_stratified_exact_test_equals_enumeration():
    rng = np.random.default_rng(3)
    strata = [(rng.random(3), rng.random(3)), (rng.random(4), np.array([1.0, 2.0, 2.0, 5.0]))]
    statistic, pvalue = vp.stratified_exact_test(strata, alternative="greater")
    observed = sum(math.sqrt(len(x) - 1) * _rho(x, y) for x, y in strata)
    assert statistic == pytest.approx(observed)
    null = [
        math.sqrt(2) * _rho(strata[0][0], strata[0][1][list(p)])
        + math.sqrt(3) * _rho(strata[1][0], strata[1][1][list(q)])
        for p in itertools.permutations(range(3))
        for q in itertools.permutations(range(4))
    ]
    assert pvalue == pytest.approx(np.mean(np.array(null) >= observed - 1e-9))
    _, two_sided = vp.stratified_exact_test(strata, alternative="two-sided")
    assert two_sided == pytest.approx(np.mean(np.abs(null) >= abs(observed) - 1e-9))


def test_one_stratum_is_the_exact_spearman_test():
    rng = np.random.default_rng(0)
    x, y = rng.random(7), rng.random(7)
    _, pvalue = vp.stratified_exact_test([(x, y)], alternative="two-sided")
    assert pvalue == pytest.approx(_stats.exact_pvalues(x[:, None], y)[0])
    rho, _values, probabilities = vp.spearman_null(x, y)
    assert rho == pytest.approx(_rho(x, y))
    assert probabilities.sum() == pytest.approx(1.0)
    assert math.isnan(vp.spearman_null(np.ones(4), y[:4])[0])


def test_combinations_match_scipy():
    pvalues = np.array([0.04, 0.3, 0.01])
    statistic, p = vp.fisher_combination(pvalues)
    expected = stats.combine_pvalues(pvalues, method="fisher")
    assert statistic == pytest.approx(expected.statistic) and p == pytest.approx(expected.pvalue)
    weights = np.array([2.0, 2.0, 3.0])
    z, p = vp.stouffer_combination(pvalues, weights, "greater")
    expected = stats.combine_pvalues(pvalues, method="stouffer", weights=weights)
    assert z == pytest.approx(expected.statistic) and p == pytest.approx(expected.pvalue)


def test_fraction_intervals_cover_the_share():
    rng = np.random.default_rng(0)
    n = np.array([100, 1000, 5000])
    estimate = np.array([0.1, 0.2, 0.05])
    replicates, low, high = vp.fraction_intervals(n, estimate, n_bootstrap=4000, level=0.9, rng=rng)
    assert replicates.shape == (4000, 3)
    assert ((low <= estimate) & (estimate <= high)).all()
    # binomial width: wider for small lots
    assert (high - low)[0] > (high - low)[1] > (high - low)[2]
    expected_sd = np.sqrt(estimate * (1 - estimate) / n)
    np.testing.assert_allclose(replicates.std(axis=0), expected_sd, rtol=0.08)


def test_kruskal_permutation_exact_enumeration():
    values = np.array([1.0, 2.5, 3.0, 4.0, 0.5, 6.0, 7.0])
    groups = np.array(["a", "a", "b", "b", "b", "c", "c"])
    h, p, how = mbs.kruskal_permutation(values, groups, n_permutations=99, random_state=0)
    assert how == "exact"
    assert h == pytest.approx(
        stats.kruskal(values[groups == "a"], values[groups == "b"], values[groups == "c"]).statistic
    )
    null = []
    for perm in set(itertools.permutations(groups)):
        perm = np.array(perm)
        null.append(stats.kruskal(*(values[perm == g] for g in "abc")).statistic)
    assert p == pytest.approx(np.mean(np.array(null) >= h - 1e-9))


# ----------------------------------------------------------------------------- tools
def test_validate_potency_tables(mapped, tiny_ref):
    out = mp.tl.validate_potency(mapped, "vegf", n_bootstrap=300, copy=True)
    assert "validate_potency" not in mapped.uns
    stored = out.uns["validate_potency"]
    assert stored["potency_cluster"] == tiny_ref.uns["potency_association"]["potency_cluster"]
    per_set = mp.get.validate_potency(out)
    assert list(per_set.index) == ["BM-test", "AD", "UC"]
    assert per_set.loc["BM-test", "n_lots"] == 3
    assert "cannot reach p < 0.05" in per_set.loc["BM-test", "note"]
    assert per_set.loc["AD", "note"].startswith("2 lots: too few") and np.isnan(
        per_set.loc["AD", "rho"]
    )
    combined = mp.get.validate_potency(out, kind="combined")
    assert list(combined.index) == ["stratified_exact", "fisher", "stouffer"]
    assert combined.loc["stratified_exact", "n_sets"] == 1
    # with one stratum the pooled test is that stratum's exact test
    assert combined.loc["stratified_exact", "pvalue"] == pytest.approx(
        per_set.loc["BM-test", "pvalue"]
    )
    lots = mp.get.validate_potency(out, kind="lots")
    assert len(lots) == mapped.obs["lot"].nunique()
    assert ((lots["ci_low"] <= lots["fraction"]) & (lots["fraction"] <= lots["ci_high"])).all()
    # the mapped share is the true share of potency cells, within sampling error
    true_share = (
        mapped.obs.groupby("lot", observed=True)["true_potency_cell"].mean().loc[lots.index]
    )
    assert np.abs(lots["fraction"] - true_share).max() < 0.05
    assert np.abs(lots["fraction_hard"] - lots["fraction_weighted"]).max() < 0.03
    assert "BM-test" in stored["note"] or "AD" in stored["note"]


def test_all_lots_as_one_set_track_potency(mapped):
    out = mp.tl.validate_potency(
        mapped, "vegf", set_key=None, alternative="greater", n_bootstrap=200, copy=True
    )
    per_set = mp.get.validate_potency(out)
    assert list(per_set.index) == ["all"] and per_set.loc["all", "n_lots"] == 7
    assert per_set.loc["all", "rho"] > 0.7 and per_set.loc["all", "pvalue"] < 0.05
    assert per_set.loc["all", "min_attainable_p"] == pytest.approx(1 / math.factorial(7))
    again = mp.tl.validate_potency(
        mapped, "vegf", set_key=None, alternative="greater", n_bootstrap=200, copy=True
    )
    pd.testing.assert_frame_equal(
        mp.get.validate_potency(again, kind="lots"), mp.get.validate_potency(out, kind="lots")
    )


def test_exclude_off_reference_cells(mapped):
    query = mapped.copy()
    # off-reference cells are the cells flagged novel (min_mapping_score=None, the default)
    assert query.uns["predicted"]["params"]["min_mapping_score"] is None
    query.obs.loc[query.obs_names[:40], "predicted_novel"] = True
    out = mp.tl.validate_potency(
        query, "vegf", exclude_off_reference=True, n_bootstrap=100, copy=True
    )
    lots = mp.get.validate_potency(out, kind="lots")
    first_lot = query.obs["lot"].astype(str).iloc[0]
    assert lots.loc[first_lot, "share_off_reference"] > 0
    assert lots["n_cells"].sum() == (~query.obs["predicted_novel"]).sum() < query.n_obs - 40 + 1
    # with a fixed cut-off, the mapping score decides
    query.uns["predicted"] = dict(query.uns["predicted"])
    query.uns["predicted"]["params"] = dict(query.uns["predicted"]["params"], min_mapping_score=0.5)
    query.obs.loc[query.obs_names[:40], "predicted_mapping_score"] = 0.0
    out = mp.tl.validate_potency(
        query, "vegf", exclude_off_reference=True, n_bootstrap=100, copy=True
    )
    lots = mp.get.validate_potency(out, kind="lots")
    assert (
        lots["n_cells"].sum()
        == (query.obs["predicted_mapping_score"] >= 0.5).sum()
        < query.n_obs - 40 + 1
    )


def test_validate_potency_errors(mapped, tiny_ref):
    with pytest.raises(KeyError, match="tl.map_to_reference"):
        mp.tl.validate_potency(tiny_ref, "vegf")
    with pytest.raises(ValueError, match="not a reference label"):
        mp.tl.validate_potency(mapped, "vegf", cluster="CL99", copy=True)
    with pytest.raises(ValueError, match="alternative must be"):
        mp.tl.validate_potency(mapped, "vegf", alternative="bigger", copy=True)
    with pytest.raises(ValueError, match="n_bootstrap must be positive"):
        mp.tl.validate_potency(mapped, "vegf", n_bootstrap=0, copy=True)
    with pytest.raises(ValueError, match="have cells but no potency value"):
        mp.tl.validate_potency(mapped, {"BM09": 1.0, "BM10": 2.0}, copy=True)
    # lots without a set were dropped from every set, said only as "too few lots"
    unset = mapped.copy()
    unset.obs["set"] = unset.obs["set"].astype(object).where(unset.obs["set"] != "BM-test")
    with pytest.raises(ValueError, match=r"obs\['set'\] is missing for lots \['BM09'"):
        mp.tl.validate_potency(unset, "vegf", set_key="set", copy=True)
    no_label = mapped.copy()
    no_label.uns["predicted"] = dict(no_label.uns["predicted"], potency_cluster="")
    with pytest.raises(KeyError, match="pass cluster="):
        mp.tl.validate_potency(no_label, "vegf")


def test_marker_by_set(mapped):
    out = mp.tl.marker_by_set(mapped, "LRRC75A", n_permutations=199, copy=True)
    tests = mp.get.marker_by_set(out)
    assert list(tests.index) == ["all sets", "AD vs BM-test", "UC vs BM-test"]
    sets = mp.get.marker_by_set(out, kind="sets")
    # UC potency cells carry the marker at 55% of its effect: lower than in BM
    assert sets.loc["UC", "mean_of_lots"] < sets.loc["BM-test", "mean_of_lots"] - 0.3
    assert tests.loc["UC vs BM-test", "difference"] < 0
    lots = mp.get.marker_by_set(out, kind="lots")
    assert lots["tested"].all() and (lots["n_cells"] > 0).all()
    with pytest.raises(KeyError, match="is not in adata.var_names"):
        mp.tl.marker_by_set(mapped, "NOTAGENE")
    with pytest.raises(ValueError, match="reference_set 'XX' is not a set"):
        mp.tl.marker_by_set(mapped, "LRRC75A", reference_set="XX")
