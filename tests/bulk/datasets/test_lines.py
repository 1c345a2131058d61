"""The iPS line simulator: deck-shaped, reproducible, and its truth says what it planted."""

from __future__ import annotations

import time

import numpy as np
import pytest

import mscpotency as mp
from mscpotency import _stats
from mscpotency.bulk.datasets._lines import LinesConfig, PlatformSpec


@pytest.fixture(scope="module")
def data():
    return mp.bulk.datasets.ips_lines()


def test_shaped_like_the_reference_study(data):
    assert set(data) == {"train", "test", "panels", "truth"}
    assert list(data["train"]) == ["mrna", "mirna", "cage"]
    for platform, adata in data["train"].items():
        assert adata.n_obs == 10 and data["test"][platform].n_obs == 13
        assert adata.uns["platform"] == platform
        assert adata.var_names.is_unique and (adata.obs["set"] == "train").all()
        assert list(adata.var_names) == list(data["test"][platform].var_names)
        assert not set(adata.obs_names) & set(data["test"][platform].obs_names)
    assert data["train"]["mrna"].n_vars == 2000 and data["train"]["mirna"].n_vars == 300
    cage = data["train"]["cage"]
    assert cage.var_names.str.match(r"^p[12]@").all()
    assert (cage.var["gene"].astype(str) == cage.var_names.str.split("@").str[1]).all()
    eb = data["panels"]["train"]["embryoid_body"]
    assert eb.var["lineage"].value_counts().to_dict() == {
        "mesoderm": 56,
        "ectoderm": 45,
        "endoderm": 27,
        "pluripotency": 4,
    }
    for method in ("neural_suspension", "neural_adhesion"):
        assert list(data["panels"]["train"][method].var_names) == ["PAX6", "SOX1", "NES"]
        assert data["panels"]["test"][method].n_obs == 13
    assert list(data["truth"]["propensity"].index) == list(eb.obs_names) + list(
        data["panels"]["test"]["embryoid_body"].obs_names
    )


def test_generates_fast_and_reproducibly():
    start = time.perf_counter()
    first = mp.bulk.datasets.ips_lines(random_state=3)
    assert time.perf_counter() - start < 2.0
    second = mp.bulk.datasets.ips_lines(random_state=3)
    other = mp.bulk.datasets.ips_lines(random_state=4)
    for platform in first["train"]:
        np.testing.assert_array_equal(first["train"][platform].X, second["train"][platform].X)
        np.testing.assert_array_equal(first["test"][platform].X, second["test"][platform].X)
        assert not np.array_equal(first["train"][platform].X, other["train"][platform].X)
    np.testing.assert_array_equal(
        first["panels"]["test"]["embryoid_body"].X, second["panels"]["test"]["embryoid_body"].X
    )


def test_flagship_markers_are_planted_with_their_pattern(data):
    var = data["train"]["mrna"].var
    assert var.loc["SALL3", ["true_ectoderm", "true_mesoderm", "true_endoderm"]].tolist() == [
        1,
        -1,
        -1,
    ]
    assert var.loc["SALL3", "true_factor"] == "bias"
    assert var.loc["PF4", "true_mesoderm"] == 1 and var.loc["PF4", "true_factor"] == "mesoderm"
    assert var.loc[
        "ROR2", ["true_neural", "true_neural_suspension", "true_neural_adhesion"]
    ].tolist() == [1, 1, 1]
    markers = data["truth"]["markers"]
    assert {"SALL3", "PF4", "ROR2"} <= set(markers["feature"])
    assert set(markers["platform"]) == {"mrna", "mirna", "cage"}


def test_truth_matches_the_data(data):
    """True correlations show in the 23 lines; unplanted features show none on average."""
    truth = data["truth"]["propensity"]
    for platform in ("mrna", "cage"):
        X = np.vstack([data["train"][platform].X, data["test"][platform].X])
        var = data["train"][platform].var
        y = truth["ectoderm"].to_numpy()
        rho = _stats.spearman_rho(X, y)
        strong = var["true_corr_ectoderm"].abs().to_numpy() >= 0.7
        assert (
            np.mean(np.sign(rho[strong]) == np.sign(var["true_corr_ectoderm"].to_numpy()[strong]))
            > 0.95
        )
        null = (var["true_factor"] == "").to_numpy()
        assert abs(rho[null].mean()) < 0.05


def test_method_specific_markers_are_not_neural_markers(data):
    var = data["train"]["mrna"].var
    suspension = var[var["true_factor"] == "suspension"]
    assert len(suspension) == 6
    assert (suspension["true_neural"] == 0).all() and (
        suspension["true_neural_adhesion"] == 0
    ).all()
    assert (suspension["true_neural_suspension"] != 0).all()


def mean_abs_rho(X, y):
    """Mean |Spearman rho| over the columns that vary (floored miRNAs may not)."""
    return np.nanmean(np.abs(_stats.spearman_rho(X, y)))


@pytest.mark.parametrize(
    ("platform", "target"), [("mrna", "mesoderm"), ("mirna", "endoderm"), ("cage", "ectoderm")]
)
def test_platform_artefact_follows_a_propensity_in_training_lines_only(data, platform, target):
    train, test = data["train"][platform], data["test"][platform]
    technical = (train.var["true_factor"] == "technical").to_numpy()
    assert technical.sum() == (30 if platform == "mirna" else 150)
    assert mean_abs_rho(train.X[:, technical], train.obs[f"true_{target}"].to_numpy()) > 0.45
    assert mean_abs_rho(test.X[:, technical], test.obs[f"true_{target}"].to_numpy()) < 0.35
    # the artefact does not follow an unrelated propensity
    assert mean_abs_rho(train.X[:, technical], train.obs["true_neural"].to_numpy()) < 0.35


def test_mirna_floor_gives_ties_and_undetected_mirnas(data):
    X = data["train"]["mirna"].X
    constant = np.ptp(X, axis=0) == 0
    assert constant.sum() >= 3
    tied = np.array([len(np.unique(X[:, j])) < X.shape[0] for j in range(X.shape[1])])
    assert tied.sum() > constant.sum()


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"n_train": 2}, "at least 3 training lines"),
        ({"bias_weight": 1.2}, r"bias_weight must be in \[0, 1\)"),
        ({"neural_weight": 0.9, "method_weight": 0.6}, "must stay below 1"),
        ({"platforms": (PlatformSpec("a", "rnaseq"),)}, "kind must be 'mrna', 'cage' or 'mirna'"),
        (
            {"platforms": (PlatformSpec("a", "mrna"), PlatformSpec("a", "cage"))},
            "platform names must be unique",
        ),
        ({"n_genes": 100}, "leaves no room"),
    ],
)
def test_config_errors(overrides, match):
    with pytest.raises(ValueError, match=match):
        mp.bulk.datasets.simulate_lines(LinesConfig(**overrides))


def test_custom_config():
    config = mp.bulk.datasets.ips_lines_config(n_train=6, n_test=4, n_genes=600, n_mirnas=120)
    data = mp.bulk.datasets.simulate_lines(config, random_state=1)
    assert data["train"]["mrna"].shape == (6, 600) and data["test"]["mirna"].shape == (4, 120)
    assert data["truth"]["config"]["n_train"] == 6 and data["truth"]["config"]["random_state"] == 1
