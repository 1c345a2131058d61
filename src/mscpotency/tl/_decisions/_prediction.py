"""Predict a lot's potency from its potency-cluster fraction, with honest intervals.

A lot-level linear model (ordinary least squares) from the potency cluster's fraction,
optionally plus the lot's mean expression of marker genes inside the cluster, to the
potency assay. With ~10 lots the model is judged by leave-one-lot-out cross-validation,
and every prediction carries an interval:

- ``"jackknife+"`` (Barber, Candès, Ramdas & Tibshirani 2021): from the n leave-one-out
  models and their out-of-sample residuals; distribution-free (coverage at least
  ``1 - 2 alpha`` for exchangeable lots, close to ``1 - alpha`` in practice). Needs
  ``floor(alpha (n + 1)) >= 1``, i.e. at least 9 lots for 90% intervals.
- ``"t"``: the classical OLS prediction interval ``yhat ± t(n-p-1) s sqrt(1 + x0'(X'X)^-1 x0)``,
  exact when the residuals are Gaussian and homoscedastic.

Query lots whose features lie outside the training range are flagged: the model is
extrapolating there.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse, stats

from ... import _keys, _registry, _stats
from ..._docs import doc_params
from ..._provenance import record
from ..._stored import params, potency_cluster, stored, stored_table
from ..._validate import finite_outcome, lot_level_values, lots_of, match_lots, require_obs_column
from .._robustness._inputs import Potency, lot_potency

Interval = Literal["jackknife+", "t"]


# --------------------------------------------------------------------------- kernels
@dataclass(frozen=True)
class LinearFit:
    """An OLS fit with everything its prediction intervals need."""

    coef: np.ndarray  # (p + 1,), intercept first
    xtx_inv: np.ndarray  # (p + 1, p + 1)
    sigma: float
    df: int
    loo_coef: np.ndarray  # (n, p + 1): the model without each lot
    loo_prediction: np.ndarray  # (n,): each lot predicted by the model without it
    loo_residual: np.ndarray  # (n,): y - loo_prediction


def _design(X: np.ndarray) -> np.ndarray:
    return np.column_stack([np.ones(X.shape[0]), X])


def fit_linear(X: np.ndarray, y: np.ndarray) -> LinearFit:
    """OLS of ``y`` on ``X`` (lots x features) with its leave-one-lot-out refits."""
    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float)
    n, p = X.shape
    D = _design(X)
    if np.linalg.matrix_rank(D) < p + 1:
        msg = "the features are collinear (or one is constant across lots); drop one."
        raise ValueError(msg)
    df = n - p - 1
    if df < 2:
        msg = f"a model with {p} feature(s) needs at least {p + 3} lots, got {n}."
        raise ValueError(msg)
    coef, *_ = np.linalg.lstsq(D, y, rcond=None)
    residual = y - D @ coef
    sigma = float(np.sqrt(residual @ residual / df))
    xtx_inv = np.linalg.inv(D.T @ D)
    loo_coef = np.empty((n, p + 1))
    keep = ~np.eye(n, dtype=bool)
    for i in range(n):
        loo_coef[i], *_ = np.linalg.lstsq(D[keep[i]], y[keep[i]], rcond=None)
    loo_prediction = (D * loo_coef).sum(axis=1)
    return LinearFit(coef, xtx_inv, sigma, df, loo_coef, loo_prediction, y - loo_prediction)


def jackknife_plus_ranks(n: int, level: float) -> tuple[int, int]:
    """1-based order statistics of the jackknife+ interval, or a ``ValueError`` if n is too small."""
    alpha = 1.0 - level
    low = math.floor(alpha * (n + 1) + 1e-9)
    high = math.ceil((1 - alpha) * (n + 1) - 1e-9)
    if low < 1 or high > n:
        needed = math.ceil(1 / alpha - 1 - 1e-9)
        msg = (
            f"jackknife+ {level:.0%} intervals need at least {needed} lots, got {n}; "
            "use interval='t' or a lower level."
        )
        raise ValueError(msg)
    return low, high


def predict_linear(
    fit: LinearFit, X0: np.ndarray, *, level: float = 0.9, interval: Interval = "jackknife+"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Point prediction and interval bounds for every row of ``X0`` (query lots x features)."""
    if not 0 < level < 1:
        msg = f"level must be between 0 and 1, got {level!r}"
        raise ValueError(msg)
    D0 = _design(np.atleast_2d(np.asarray(X0, dtype=float)))
    prediction = D0 @ fit.coef
    if interval == "t":
        quantile = stats.t.ppf(0.5 + level / 2, fit.df)
        spread = quantile * fit.sigma * np.sqrt(1 + np.einsum("ij,jk,ik->i", D0, fit.xtx_inv, D0))
        return prediction, prediction - spread, prediction + spread
    if interval == "jackknife+":
        n = fit.loo_coef.shape[0]
        low_rank, high_rank = jackknife_plus_ranks(n, level)
        loo = D0 @ fit.loo_coef.T  # queries x lots
        radius = np.abs(fit.loo_residual)
        low = np.sort(loo - radius, axis=1)[:, low_rank - 1]
        high = np.sort(loo + radius, axis=1)[:, high_rank - 1]
        return prediction, low, high
    msg = f"interval must be 'jackknife+' or 't', got {interval!r}"
    raise ValueError(msg)


def cv_metrics(y: np.ndarray, loo_prediction: np.ndarray) -> dict[str, float]:
    """Leave-one-lot-out error: RMSE, MAE, Q² (1 - PRESS / total SS) and rho of predictions."""
    y = np.asarray(y, dtype=float)
    error = y - loo_prediction
    press = float(error @ error)
    total = float(((y - y.mean()) ** 2).sum())
    rho = float(_stats.spearman_rho(loo_prediction[:, None], y)[0])
    return {
        "rmse": float(np.sqrt(press / y.size)),
        "mae": float(np.abs(error).mean()),
        "q2": 1.0 - press / total if total > 0 else float("nan"),
        "rho": rho,
    }


def _fit_from_stored(model: dict) -> LinearFit:
    return LinearFit(
        coef=np.asarray(model["coef"], dtype=float),
        xtx_inv=np.asarray(model["xtx_inv"], dtype=float),
        sigma=float(model["sigma"]),
        df=int(model["df"]),
        loo_coef=np.asarray(model["loo_coef"], dtype=float),
        loo_prediction=np.asarray(model["loo_prediction"], dtype=float),
        loo_residual=np.asarray(model["loo_residual"], dtype=float),
    )


# --------------------------------------------------------------------------- features
def _marker_expression(
    adata: AnnData, cluster: str, genes: Sequence[str], fractions_params: dict, layer: str | None
) -> pd.DataFrame:
    """Lots x genes: each lot's mean expression of ``genes`` inside the cluster."""
    missing = [g for g in genes if g not in adata.var_names]
    if missing:
        msg = f"genes {missing} are not in adata.var_names."
        raise KeyError(msg)
    labels = require_obs_column(adata, fractions_params["cluster_key"], what="cluster labels")
    lots = lots_of(adata, fractions_params["lot_key"])
    X = adata.layers[layer] if layer is not None else adata.X
    columns = adata.var_names.get_indexer(list(genes))
    inside = labels.astype(str).to_numpy() == cluster
    sub = X[inside][:, columns]
    sub = sub.toarray() if sparse.issparse(sub) else np.asarray(sub, dtype=float)
    codes = lots.cat.codes.to_numpy()[inside]
    n_lots = lots.cat.categories.size
    sums = np.zeros((n_lots, len(columns)))
    np.add.at(sums, codes, sub)
    n_in = np.bincount(codes, minlength=n_lots)
    empty = lots.cat.categories[n_in == 0].astype(str).tolist()
    if empty:
        msg = (
            f"lots {empty} have no cells in cluster {cluster!r}, so their marker expression "
            "inside it is undefined; fit on the fraction only (genes=None)."
        )
        raise ValueError(msg)
    return pd.DataFrame(
        sums / n_in[:, None],
        index=lots.cat.categories.astype(str),
        columns=[f"expression:{g}" for g in genes],
    )


def _lot_features(
    adata: AnnData,
    cluster: str,
    genes: Sequence[str],
    fractions_key: str,
    layer: str | None,
) -> pd.DataFrame:
    """Lots x (fraction of the cluster, mean expression of each gene inside the cluster)."""
    fractions = stored_table(adata, _registry.LOT_FRACTIONS, "fractions", fractions_key)
    fractions.columns = fractions.columns.astype(str)
    fractions.index = fractions.index.astype(str)
    if cluster not in fractions.columns:
        msg = (
            f"the lot fractions in adata.uns[{fractions_key!r}] have no cluster {cluster!r} "
            f"(they have {list(fractions.columns)}); count query lots with the reference's labels "
            "(e.g. labels transferred by `tl.map_to_reference`)."
        )
        raise ValueError(msg)
    features = pd.DataFrame({f"fraction:{cluster}": fractions[cluster].astype(float)})
    if genes:
        fractions_params = params(adata, _registry.LOT_FRACTIONS, fractions_key)
        expression = _marker_expression(adata, cluster, genes, fractions_params, layer)
        features = features.join(expression, how="left")
    return features


def _measured(
    adata: AnnData, potency: str | Mapping | pd.Series, lots: pd.Index, lot_key: str
) -> tuple[pd.Series, str]:
    """Measured potency of query lots (one lot or all equal is fine here, unlike in a correlation)."""
    if isinstance(potency, str):
        values, name = lot_level_values(adata, potency, lot_key), potency
    else:
        values = pd.Series(potency)
        name = str(values.name) if values.name is not None else "potency"
    values = match_lots(values, lots, name=name)
    return finite_outcome(values, name=name), name


def _check_interval(interval: str, level: float) -> None:
    if interval not in ("jackknife+", "t"):
        msg = f"interval must be 'jackknife+' or 't', got {interval!r}"
        raise ValueError(msg)
    if not 0 < level < 1:
        msg = f"level must be between 0 and 1, got {level!r}"
        raise ValueError(msg)


def _loo_intervals(
    X: np.ndarray, y: np.ndarray, level: float, interval: Interval
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Each training lot's interval from the model (and residuals) fitted without it.

    NaN, and ``False``, when the lots left are too few for the model or the interval.
    """
    n = len(y)
    can_nest = n - 1 >= X.shape[1] + 3
    if can_nest and interval == "jackknife+":
        try:
            jackknife_plus_ranks(n - 1, level)
        except ValueError:
            can_nest = False
    low, high = np.full(n, np.nan), np.full(n, np.nan)
    if not can_nest:
        return low, high, False
    keep = ~np.eye(n, dtype=bool)
    for i in range(n):
        inner = fit_linear(X[keep[i]], y[keep[i]])
        _, low[i], high[i] = (
            v[0] for v in predict_linear(inner, X[i], level=level, interval=interval)
        )
    return low, high, True


def _training_lots(
    features: pd.DataFrame,
    y: np.ndarray,
    fit: LinearFit,
    loo: tuple[np.ndarray, np.ndarray, bool],
    potency_name: str,
    lot_key: str,
) -> pd.DataFrame:
    """One row per training lot: potency, features, fit and leave-one-out prediction."""
    loo_low, loo_high, _ = loo
    lots = features.copy()
    lots.insert(0, potency_name, y)
    residual = y - _design(features.to_numpy(dtype=float)) @ fit.coef
    lots["fitted"] = y - residual
    lots["loo_prediction"] = fit.loo_prediction
    lots["loo_residual"] = fit.loo_residual
    lots["loo_low"], lots["loo_high"] = loo_low, loo_high
    lots["loo_covered"] = (y >= loo_low) & (y <= loo_high)
    lots.index.name = lot_key
    return lots


def _stored_model(fit: LinearFit, features: pd.DataFrame) -> dict:
    """Everything :func:`predict_potency` needs to predict and flag new lots."""
    X = features.to_numpy(dtype=float)
    return {
        "features": list(features.columns),
        "coef": fit.coef,
        "xtx_inv": fit.xtx_inv,
        "sigma": fit.sigma,
        "df": fit.df,
        "loo_coef": fit.loo_coef,
        "loo_prediction": fit.loo_prediction,
        "loo_residual": fit.loo_residual,
        "feature_min": X.min(axis=0),
        "feature_max": X.max(axis=0),
    }


# --------------------------------------------------------------------------- tools
@doc_params
@record("tl.fit_potency_model")
def fit_potency_model(
    adata: AnnData,
    potency: Potency = _keys.POTENCY,
    *,
    cluster: str | None = None,
    genes: Sequence[str] | None = None,
    fractions_key: str = _registry.LOT_FRACTIONS.key,
    association_key: str = _registry.POTENCY_ASSOCIATION.key,
    layer: str | None = None,
    interval: Interval = "jackknife+",
    level: float = 0.9,
    key_added: str = _registry.POTENCY_MODEL.key,
    copy: bool = False,
) -> AnnData | None:
    """Fit a lot-level model of potency with leave-one-lot-out error and prediction intervals.

    Potency is regressed (OLS) on the potency cluster's lot fraction and, with ``genes``,
    on each lot's mean log expression of those genes inside the cluster. Every lot is
    predicted by the model fitted without it (leave-one-lot-out), which gives the
    cross-validated error (RMSE, MAE, Q²) and, for the ``"jackknife+"`` interval, the
    residuals the interval is built from. Apply the model to new lots with
    :func:`mscpotency.tl.predict_potency`.

    Parameters
    ----------
    adata
        {adata}
        Reference lots with ``uns[fractions_key]`` (and ``uns[association_key]`` when
        ``cluster`` is ``None``).
    potency
        {potency}
        Or a lot -> value mapping/Series.
    cluster
        {cluster}
        Its fraction predicts potency.
    genes
        Optional marker genes whose per-lot mean expression inside the cluster (``X`` or
        ``layer``, log-normalised) enters the model as further features.
    layer
        {layer}
        Here log-normalised expression for ``genes``.
    interval
        ``"jackknife+"`` (distribution-free, needs >= 9 lots at 90%) or ``"t"`` (Gaussian OLS).

    Returns
    -------
    ``None``, or the copy when ``copy=True``. Writes ``adata.uns[key_added]`` with
    ``'coefficients'`` : DataFrame (term: estimate, se), ``'lots'`` : DataFrame (one row per
    training lot: potency, features, fitted, loo_prediction, loo_residual, loo_low,
    loo_high, loo_covered), ``'cv'`` : dict (rmse, mae, q2, rho of leave-one-out predictions,
    coverage of leave-one-out intervals, n_lots), ``'model'`` : dict of arrays the
    prediction needs (features, coef, xtx_inv, sigma, df, loo_coef, loo_prediction,
    loo_residual, feature_min, feature_max) and ``'params'``.
    """
    cluster = potency_cluster(adata, cluster=cluster, association_key=association_key)
    _check_interval(interval, level)
    genes = list(genes) if genes is not None else []
    features = _lot_features(adata, cluster, genes, fractions_key, layer)
    lot_key = params(adata, _registry.LOT_FRACTIONS, fractions_key)["lot_key"]
    outcome, potency_name = lot_potency(
        adata, potency, pd.Index(features.index), lot_key, association_key=association_key
    )
    constant = [c for c in features.columns if np.ptp(features[c].to_numpy()) == 0]
    if constant:
        msg = f"features {constant} are the same in every lot; they cannot predict potency."
        raise ValueError(msg)
    X = features.to_numpy(dtype=float)
    y = outcome.to_numpy(dtype=float)
    if interval == "jackknife+":
        jackknife_plus_ranks(len(y), level)
    fit = fit_linear(X, y)
    loo = _loo_intervals(X, y, level, interval)
    lots = _training_lots(features, y, fit, loo, potency_name, lot_key)
    cv = cv_metrics(y, fit.loo_prediction)
    cv["loo_interval_coverage"] = float(lots["loo_covered"].mean()) if loo[2] else float("nan")
    cv["n_lots"] = len(y)
    coefficients = pd.DataFrame(
        {"estimate": fit.coef, "se": fit.sigma * np.sqrt(np.diag(fit.xtx_inv))},
        index=pd.Index(["intercept", *features.columns], name="term"),
    )
    adata = adata.copy() if copy else adata
    adata.uns[key_added] = {
        "coefficients": coefficients,
        "lots": lots,
        "cv": cv,
        "model": _stored_model(fit, features),
        "params": {
            "potency": potency_name,
            "cluster": cluster,
            "genes": genes,
            "fractions_key": fractions_key,
            "layer": layer,
            "interval": interval,
            "level": level,
            "lot_key": lot_key,
        },
    }
    return adata if copy else None


def _query_features(adata: AnnData, model: dict, fractions_key: str) -> pd.DataFrame:
    """The query lots' features, computed as the model's, with every value present."""
    model_params = model["params"]
    features = _lot_features(
        adata,
        str(model_params["cluster"]),
        list(model_params["genes"]),
        fractions_key,
        model_params["layer"],
    )[[str(f) for f in model["model"]["features"]]]
    finite = np.isfinite(features.to_numpy(dtype=float)).all(axis=1)
    if not finite.all():
        msg = f"lots {features.index[~finite].tolist()} have missing features; check their cells and labels."
        raise ValueError(msg)
    return features


def _flag_outside_range(table: pd.DataFrame, model: dict) -> None:
    """Mark the lots whose features lie outside the training lots' range, and which features."""
    names = [str(f) for f in model["features"]]
    X0 = table[names].to_numpy(dtype=float)
    below = X0 < np.asarray(model["feature_min"], dtype=float)
    above = X0 > np.asarray(model["feature_max"], dtype=float)
    outside = below | above
    table["outside_range"] = outside.any(axis=1)
    table["outside_features"] = [
        ",".join(n for n, o in zip(names, row, strict=True) if o) for row in outside
    ]


def _compare_with_measured(table: pd.DataFrame, observed: pd.Series) -> dict[str, float]:
    """Errors of the predictions and whether each interval covers the measured value."""
    table["observed"] = observed.to_numpy()
    table["error"] = table["observed"] - table["prediction"]
    table["covered"] = (table["observed"] >= table["low"]) & (table["observed"] <= table["high"])
    return {
        "rmse": float(np.sqrt((table["error"] ** 2).mean())),
        "mae": float(table["error"].abs().mean()),
        "coverage": float(table["covered"].mean()),
    }


@doc_params
@record("tl.predict_potency")
def predict_potency(
    adata: AnnData,
    model: AnnData | None = None,
    *,
    model_key: str = _registry.POTENCY_MODEL.key,
    fractions_key: str = _registry.LOT_FRACTIONS.key,
    potency: str | Mapping | pd.Series | None = None,
    interval: Interval | None = None,
    level: float | None = None,
    key_added: str = _registry.POTENCY_PREDICTION.key,
    copy: bool = False,
) -> AnnData | None:
    """Predict the potency of every lot in ``adata`` with a model from :func:`fit_potency_model`.

    The query lots' features are computed as for the training lots (fraction of the
    model's cluster in ``uns[fractions_key]``; marker expression inside the cluster), so
    the query's labels must name the reference clusters (e.g. transferred labels). A lot
    whose feature lies outside the training lots' range is flagged ``outside_range``: the
    prediction extrapolates the model. With ``potency`` given (measured values of the
    query lots) the errors and the share of lots inside their interval are reported.

    Parameters
    ----------
    adata
        {adata}
        Query lots with ``uns[fractions_key]``.
    model
        AnnData holding the fitted model in ``uns[model_key]``; default: ``adata`` itself.
    model_key
        Key of the model in ``adata.uns`` (from :func:`mscpotency.tl.fit_potency_model`).
    fractions_key
        {fractions_key}
        Of the query lots.
    potency
        Measured potency of the query lots, if known (obs column or lot -> value table);
        ``None`` predicts without comparing.
    interval
        Interval type; default: the model's.
    level
        {level}
        Default: the model's.

    Returns
    -------
    ``None``, or the copy when ``copy=True``. Writes ``adata.uns[key_added]`` with
    ``'table'`` : DataFrame (one row per lot: features, prediction, low, high,
    outside_range, outside_features and, with ``potency``, observed, error, covered),
    ``'summary'`` : dict (n_lots, n_outside_range and, with ``potency``, rmse, mae,
    coverage) and ``'params'``.
    """
    fitted = stored(adata if model is None else model, _registry.POTENCY_MODEL, model_key)
    model_params = fitted["params"]
    interval = interval or model_params["interval"]
    level = float(level if level is not None else model_params["level"])
    features = _query_features(adata, fitted, fractions_key)
    prediction, low, high = predict_linear(
        _fit_from_stored(fitted["model"]),
        features.to_numpy(dtype=float),
        level=level,
        interval=interval,  # type: ignore[arg-type]
    )
    table = features.copy()
    table["prediction"] = prediction
    table["low"], table["high"] = low, high
    _flag_outside_range(table, fitted["model"])
    lot_key = params(adata, _registry.LOT_FRACTIONS, fractions_key)["lot_key"]
    table.index.name = lot_key
    summary: dict = {"n_lots": len(table), "n_outside_range": int(table["outside_range"].sum())}
    potency_name = None
    if potency is not None:
        observed, potency_name = _measured(adata, potency, pd.Index(table.index), lot_key)
        summary.update(_compare_with_measured(table, observed))
    adata = adata.copy() if copy else adata
    adata.uns[key_added] = {
        "table": table,
        "summary": summary,
        "params": {
            "model_key": model_key,
            "model_from": "adata" if model is None else "model",
            "fractions_key": fractions_key,
            "potency": potency_name,
            "interval": interval,
            "level": level,
            "cluster": model_params["cluster"],
            "model_potency": model_params["potency"],
        },
    }
    return adata if copy else None
