"""Comparability of new lots with reference lots: tolerance intervals on composition."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import mscpotency as mp
from mscpotency.tl._decisions._comparability import comparability_kernel, tolerance_factor

REFERENCE = ["BM01", "BM02", "BM03", "BM04", "BM05", "BM06"]

#: Simulator-like compositions: 8 clusters, the potency cluster (index 2) spread over lots.
BASE = np.array([0.22, 0.17, 0.11, 0.14, 0.12, 0.10, 0.08, 0.06])


def _lots(rng, n, potency_range=(0.03, 0.22), cells=1500):
    rest = np.delete(BASE, 2) / np.delete(BASE, 2).sum()
    out = []
    for share in rng.uniform(*potency_range, n):
        out.append(
            rng.multinomial(cells, np.insert(rng.dirichlet(60 * rest) * (1 - share), 2, share))
        )
    return np.array(out)


def test_tolerance_factors_match_published_tables():
    # two-sided 95% coverage / 95% confidence, n = 10: 3.379; one-sided: 2.911 (NIST/SEMATECH handbook)
    assert tolerance_factor(10) == pytest.approx(3.379, abs=0.01)
    assert tolerance_factor(10, sided=1) == pytest.approx(2.911, abs=0.002)
    assert tolerance_factor(30) < tolerance_factor(10)
    with pytest.raises(ValueError, match="at least 2 values"):
        tolerance_factor(1)
    with pytest.raises(ValueError, match="sided must be"):
        tolerance_factor(10, sided=3)


def test_kernel_passes_reference_like_lots_and_flags_depleted_ones_over_many_studies():
    rng = np.random.default_rng(11)
    passed, flagged, n_studies = [], [], 600
    for _ in range(n_studies):
        reference = _lots(rng, 11)
        new = np.vstack([_lots(rng, 3), _lots(rng, 1, potency_range=(0.002, 0.006))])
        result = comparability_kernel(reference, new, 2)
        passed.extend(result["comparable"][:3])
        flagged.append(not result["comparable"][3] and not result["potency_within"][3])
    assert np.mean(passed) >= 0.93  # 95/95 limits on two attributes
    assert np.mean(flagged) >= 0.97


@pytest.fixture(scope="module")
def with_new_lots(tiny_ref):
    """Reference BM01-06; new lots BM07, BM08 and DEPLETED, the cells of BM05-08 without the potency cluster.

    The tiny lots have 150 cells and six reference lots give wide tolerance limits (k ~ 4.4),
    so the depleted lot lacks the potency cluster entirely; the study-sized test below
    removes 95% of one lot's potency cells instead.
    """
    cluster = tiny_ref.uns["potency_association"]["potency_cluster"]
    keep = tiny_ref.obs["lot"].isin(["BM05", "BM06", "BM07", "BM08"]) & (
        tiny_ref.obs["cluster"] != cluster
    )
    depleted = tiny_ref[keep.to_numpy()].copy()
    depleted.obs["lot"] = "DEPLETED"
    depleted.obs_names = "dep_" + depleted.obs_names
    adata = ad.concat([tiny_ref, depleted], merge="same")
    adata.obs["lot"] = adata.obs["lot"].astype("category")
    adata.uns["potency_association"] = tiny_ref.uns["potency_association"]
    mp.tl.lot_fractions(adata)
    return adata, cluster


def test_depleted_lot_is_flagged_and_reference_like_lots_pass(with_new_lots):
    adata, cluster = with_new_lots
    adata = adata.copy()
    mp.tl.comparability(adata, REFERENCE)
    table = mp.get.comparability(adata)
    assert list(table.index) == ["BM07", "BM08", "DEPLETED"]
    assert table.loc[["BM07", "BM08"], "comparable"].all()
    assert not table.loc["DEPLETED", "comparable"] and not table.loc["DEPLETED", "potency_within"]
    assert "below the reference range" in table.loc["DEPLETED", "reason"]
    assert table.loc["DEPLETED", "potency_fraction"] < table.loc["DEPLETED", "potency_low"]
    limits = mp.get.comparability(adata, kind="limits")
    assert list(limits.index) == [*adata.obs["cluster"].cat.categories, "composition_distance"]
    assert (limits["n_reference"] == 6).all()
    reference_values = mp.get.comparability(adata, kind="values")
    inside = reference_values.loc[REFERENCE, cluster]
    assert (
        (inside >= limits.loc[cluster, "low_value"]) & (inside <= limits.loc[cluster, "high_value"])
    ).all()
    assert adata.uns["comparability"]["cluster"] == cluster


def test_reference_as_anndata_gives_the_same_verdicts(with_new_lots):
    adata, _ = with_new_lots
    reference = adata[adata.obs["lot"].isin(REFERENCE)].copy()
    mp.tl.lot_fractions(reference)
    new = adata[~adata.obs["lot"].isin(REFERENCE)].copy()
    mp.tl.lot_fractions(new)
    returned = mp.tl.comparability(new, reference, copy=True)
    assert "comparability" not in new.uns
    in_one = adata.copy()
    mp.tl.comparability(in_one, REFERENCE)
    pd.testing.assert_frame_equal(mp.get.comparability(returned), mp.get.comparability(in_one))


def test_fraction_scale_is_offered_and_wider_limits_pass_more(with_new_lots):
    adata, cluster = with_new_lots
    adata = adata.copy()
    mp.tl.comparability(adata, REFERENCE, scale="fraction", key_added="linear")
    limits = mp.get.comparability(adata, key="linear", kind="limits")
    assert limits.loc[cluster, "scale"] == "fraction"
    mp.tl.comparability(adata, REFERENCE, coverage=0.99, level=0.99, key_added="loose")
    mp.tl.comparability(adata, REFERENCE, key_added="default")
    loose = mp.get.comparability(adata, key="loose", kind="limits")
    default = mp.get.comparability(adata, key="default", kind="limits")
    assert (loose["k"] > default["k"]).all()


def test_comparability_validation(with_new_lots):
    adata, _ = with_new_lots
    adata = adata.copy()
    with pytest.raises(ValueError, match="at least 5 reference lots, got 4"):
        mp.tl.comparability(adata, REFERENCE[:4])
    with pytest.raises(ValueError, match="reference lots \\['BM99'\\] are not in"):
        mp.tl.comparability(adata, [*REFERENCE, "BM99"])
    with pytest.raises(ValueError, match="no new lots"):
        mp.tl.comparability(adata, list(adata.obs["lot"].cat.categories))
    with pytest.raises(TypeError, match="list of lot names"):
        mp.tl.comparability(adata, "BM01")
    with pytest.raises(ValueError, match="unknown cluster"):
        mp.tl.comparability(adata, REFERENCE, cluster="CLX")
    with pytest.raises(ValueError, match="scale must be"):
        mp.tl.comparability(adata, REFERENCE, scale="log")
    with pytest.raises(ValueError, match="pseudocount"):
        mp.tl.comparability(adata, REFERENCE, pseudocount=0)
    with pytest.raises(KeyError, match="tl.lot_fractions"):
        mp.tl.comparability(adata, REFERENCE, fractions_key="absent")
    reference = adata[adata.obs["lot"].isin(REFERENCE)].copy()
    mp.tl.lot_fractions(reference)
    new = adata[~adata.obs["lot"].isin(REFERENCE)].copy()
    mp.tl.lot_fractions(new, cluster_key="set")
    with pytest.raises(ValueError, match="clusters \\['BM-train'\\] that the reference lots lack"):
        mp.tl.comparability(new, reference)
    with pytest.raises(KeyError, match="tl.comparability"):
        mp.get.comparability(adata, key="absent")


@pytest.mark.slow
def test_study_lot_missing_most_potency_cells_is_flagged(study_ref):
    """Study-sized lots (1,500 cells): 8 reference lots, 3 new lots and one with 95% of its potency cells removed."""
    cluster = study_ref.uns["potency_association"]["potency_cluster"]
    lots = list(study_ref.obs["lot"].cat.categories)
    reference, new = lots[:8], lots[8:]
    source = study_ref[study_ref.obs["lot"] == new[0]]
    potency_cells = np.flatnonzero(source.obs["cluster"] == cluster)
    keep = np.setdiff1d(np.arange(source.n_obs), potency_cells[: int(0.95 * potency_cells.size)])
    depleted = source[keep].copy()
    depleted.obs["lot"] = "DEPLETED"
    depleted.obs_names = "dep_" + depleted.obs_names
    adata = ad.concat([study_ref, depleted], merge="same")
    adata.obs["lot"] = adata.obs["lot"].astype("category")
    mp.tl.lot_fractions(adata)
    mp.tl.comparability(adata, reference, cluster=cluster)
    table = mp.get.comparability(adata)
    assert table.loc[new, "comparable"].all()
    assert not table.loc["DEPLETED", "potency_within"] and not table.loc["DEPLETED", "comparable"]
