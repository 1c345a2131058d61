"""Lot-level potency model: leave-one-lot-out error, prediction intervals, extrapolation flag."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

import mscpotency as mp
from mscpotency.tl._decisions._prediction import fit_linear, jackknife_plus_ranks, predict_linear


def _study(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Lot level, shaped like the simulator: fraction counted from 1,500 cells, potency with assay noise."""
    fraction = rng.uniform(0.03, 0.22, n)
    observed = rng.binomial(1500, fraction) / 1500
    return observed, 400 + 4000 * fraction + rng.normal(0, 60, n)


@pytest.mark.parametrize(
    ("interval", "n_lots"), [("jackknife+", 11), ("t", 11), ("jackknife+", 24), ("t", 8)]
)
def test_90_percent_intervals_cover_85_to_95_percent_over_simulated_studies(interval, n_lots):
    rng = np.random.default_rng(2024)
    covered = []
    for _ in range(1500):
        x, y = _study(rng, n_lots + 2)
        fit = fit_linear(x[:n_lots, None], y[:n_lots])
        _, low, high = predict_linear(fit, x[n_lots:, None], level=0.9, interval=interval)
        covered.extend((low <= y[n_lots:]) & (y[n_lots:] <= high))
    coverage = float(np.mean(covered))
    assert 0.85 <= coverage <= 0.95, coverage


def test_t_interval_equals_statsmodels_prediction_interval():
    rng = np.random.default_rng(1)
    x, y = _study(rng, 12)
    fit = fit_linear(x[:10, None], y[:10])
    prediction, low, high = predict_linear(fit, x[10:, None], level=0.9, interval="t")
    ols = sm.OLS(y[:10], sm.add_constant(x[:10])).fit()
    frame = ols.get_prediction(sm.add_constant(x[10:], has_constant="add")).summary_frame(alpha=0.1)
    np.testing.assert_allclose(prediction, frame["mean"])
    np.testing.assert_allclose(low, frame["obs_ci_lower"])
    np.testing.assert_allclose(high, frame["obs_ci_upper"])
    # leave-one-out predictions equal the PRESS residual identity e_i / (1 - h_ii)
    hat = ols.get_influence().hat_matrix_diag
    np.testing.assert_allclose(fit.loo_residual, ols.resid / (1 - hat))


def test_jackknife_plus_needs_enough_lots():
    assert jackknife_plus_ranks(11, 0.9) == (1, 11)
    assert jackknife_plus_ranks(19, 0.9) == (2, 18)
    with pytest.raises(ValueError, match="at least 9 lots, got 8"):
        jackknife_plus_ranks(8, 0.9)


def test_fit_recovers_the_simulated_slope(tiny_ref):
    adata = tiny_ref.copy()
    mp.tl.fit_potency_model(adata, interval="t")
    coefficients = mp.get.fit_potency_model(adata, kind="coefficients")
    cluster = adata.uns["potency_association"]["potency_cluster"]
    slope = coefficients.loc[f"fraction:{cluster}"]
    assert abs(slope["estimate"] - 4000) < 3 * slope["se"]  # the simulator's potency slope
    cv = mp.get.fit_potency_model(adata, kind="cv").iloc[0]
    assert cv["q2"] > 0.5 and cv["rho"] > 0.7 and cv["n_lots"] == 8
    assert cv["rmse"] < 3 * 60  # assay noise sd of the simulator is 60
    lots = mp.get.fit_potency_model(adata)
    np.testing.assert_allclose(lots["vegf"] - lots["loo_prediction"], lots["loo_residual"])
    assert (lots["loo_low"] < lots["loo_prediction"]).all() and (
        lots["loo_prediction"] < lots["loo_high"]
    ).all()


def test_predict_query_lots_with_measured_potency_and_extrapolation_flag(tiny_ref):
    cluster = tiny_ref.uns["potency_association"]["potency_cluster"]
    train_lots = ["BM01", "BM02", "BM03", "BM04", "BM05", "BM06"]
    train = tiny_ref[tiny_ref.obs["lot"].isin(train_lots)].copy()
    mp.tl.lot_fractions(train)
    mp.tl.fit_potency_model(train, cluster=cluster, interval="t")
    query = tiny_ref[~tiny_ref.obs["lot"].isin(train_lots)].copy()
    # a third query lot: BM08 stripped of its potency cells, far below the training range
    depleted = tiny_ref[
        (tiny_ref.obs["lot"] == "BM08") & (tiny_ref.obs["cluster"] != cluster)
    ].copy()
    depleted.obs["lot"] = "DEPLETED"
    depleted.obs_names = "dep_" + depleted.obs_names
    query = _concat(query, depleted)
    mp.tl.lot_fractions(query)
    mp.tl.predict_potency(query, train, potency="vegf")
    table = mp.get.predict_potency(query)
    assert list(table.index) == ["BM07", "BM08", "DEPLETED"]
    assert (
        table.loc["DEPLETED", "outside_range"]
        and table.loc["DEPLETED", "outside_features"] == f"fraction:{cluster}"
    )
    assert not table.loc[["BM07", "BM08"], "outside_range"].any()
    assert table.loc[["BM07", "BM08"], "covered"].all()
    assert (table["low"] < table["prediction"]).all() and (
        table["prediction"] < table["high"]
    ).all()
    assert table.loc["DEPLETED", "prediction"] < table.loc[["BM07", "BM08"], "prediction"].min()
    summary = query.uns["potency_prediction"]["summary"]
    assert summary["n_outside_range"] == 1 and 0 <= summary["coverage"] <= 1
    # a wider level gives a wider interval
    mp.tl.predict_potency(query, train, level=0.99, key_added="wide")
    wide = mp.get.predict_potency(query, key="wide")
    assert ((wide["high"] - wide["low"]) > (table["high"] - table["low"])).all()


def _concat(a, b):
    import anndata as ad

    return ad.concat([a, b], merge="same")


def test_model_with_a_marker_gene_and_copy(tiny_ref):
    adata = tiny_ref.copy()
    returned = mp.tl.fit_potency_model(adata, genes=["LRRC75A"], interval="t", copy=True)
    assert "potency_model" not in adata.uns
    coefficients = mp.get.fit_potency_model(returned, kind="coefficients")
    assert list(coefficients.index)[-1] == "expression:LRRC75A"
    lots = mp.get.fit_potency_model(returned)
    cluster = returned.uns["potency_association"]["potency_cluster"]
    inside = returned[returned.obs["cluster"] == cluster]
    manual = pd.Series(
        np.asarray(inside[:, "LRRC75A"].X.todense()).ravel(), index=inside.obs["lot"].to_numpy()
    )
    np.testing.assert_allclose(
        lots["expression:LRRC75A"], manual.groupby(level=0).mean().reindex(lots.index)
    )
    mp.tl.predict_potency(returned)
    assert len(mp.get.predict_potency(returned)) == 8


def test_prediction_validation(tiny_ref):
    adata = tiny_ref.copy()
    with pytest.raises(ValueError, match="jackknife\\+ 90% intervals need at least 9 lots, got 8"):
        mp.tl.fit_potency_model(adata)
    with pytest.raises(ValueError, match="interval must be"):
        mp.tl.fit_potency_model(adata, interval="bootstrap")
    with pytest.raises(ValueError, match="level must be"):
        mp.tl.fit_potency_model(adata, interval="t", level=1.5)
    lots = mp.get.potency_association(adata, kind="lots")
    with pytest.raises(ValueError, match="same for every lot"):
        mp.tl.fit_potency_model(adata, dict.fromkeys(lots.index, 3.0), interval="t")
    missing = lots["vegf"].copy()
    missing.iloc[2] = np.nan
    with pytest.raises(ValueError, match="missing, non-numeric"):
        mp.tl.fit_potency_model(adata, missing, interval="t")
    unknown = lots["vegf"].drop(lots.index[0])
    with pytest.raises(ValueError, match="have cells but no"):
        mp.tl.fit_potency_model(adata, unknown, interval="t")
    tied = lots["vegf"].copy()
    tied.iloc[:4] = tied.iloc[0]  # ties are fine for a least-squares model
    mp.tl.fit_potency_model(adata, tied, interval="t", key_added="tied")
    with pytest.raises(ValueError, match="needs at least 9 lots, got 8"):
        mp.tl.fit_potency_model(
            adata, genes=["LRRC75A", "VEGFA", "THY1", "ENG", "VIM"], interval="t"
        )
    with pytest.raises(KeyError, match="not in adata.var_names"):
        mp.tl.fit_potency_model(adata, genes=["NOTAGENE"], interval="t")
    with pytest.raises(ValueError, match="no cluster 'CLX'"):
        mp.tl.fit_potency_model(adata, cluster="CLX", interval="t")
    flat = adata.copy()
    fractions = flat.uns["lot_fractions"]["fractions"].copy()
    fractions["CL0"] = 0.2
    flat.uns["lot_fractions"]["fractions"] = fractions
    with pytest.raises(ValueError, match="same in every lot"):
        mp.tl.fit_potency_model(flat, cluster="CL0", interval="t")
    with pytest.raises(KeyError, match="tl.fit_potency_model"):
        mp.tl.predict_potency(adata)
    mp.tl.fit_potency_model(adata, interval="t")
    renamed = adata.copy()
    mp.tl.lot_fractions(renamed, cluster_key="set", key_added="by_set")
    with pytest.raises(ValueError, match="count query lots with the reference's labels"):
        mp.tl.predict_potency(renamed, adata, fractions_key="by_set")


@pytest.mark.slow
def test_jackknife_plus_model_on_the_study(study_ref):
    adata = study_ref.copy()
    mp.tl.fit_potency_model(adata)  # 11 lots: jackknife+ 90% is available
    cv = mp.get.fit_potency_model(adata, kind="cv").iloc[0]
    assert cv["q2"] > 0.8 and cv["rmse"] < 2 * 60
    lots = mp.get.fit_potency_model(adata)
    assert lots["loo_covered"].mean() >= 0.7
