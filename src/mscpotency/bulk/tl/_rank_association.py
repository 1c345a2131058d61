"""Every baseline feature of a set of lines against a line-level outcome (Spearman, exact p, FDR)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from ... import _stats
from ..._provenance import record

logger = logging.getLogger("mscpotency")

#: Default ``key_added`` of :func:`rank_association`.
RANK_ASSOCIATION = "rank_association"

OnMissing = Literal["error", "intersect"]


def outcome_frame(adata: AnnData, outcome) -> pd.DataFrame:
    """Lines x outcomes from an obs column (or several), a Series/Mapping or a DataFrame.

    Missing values stay ``NaN`` (a line without a value for that outcome); non-numeric
    values and infinities are errors.
    """
    if isinstance(outcome, str):
        outcome = [outcome]
    if isinstance(outcome, pd.DataFrame):
        frame = outcome.copy()
    elif isinstance(outcome, pd.Series):
        frame = outcome.to_frame(name="outcome" if outcome.name is None else str(outcome.name))
    elif isinstance(outcome, Mapping):
        values = list(outcome.values())
        if values and all(isinstance(v, (Mapping, pd.Series)) for v in values):
            frame = pd.DataFrame({str(k): pd.Series(v) for k, v in outcome.items()})
        else:
            frame = pd.Series(outcome, dtype=object).to_frame(name="outcome")
    elif isinstance(outcome, Sequence) and all(isinstance(c, str) for c in outcome):
        missing = [c for c in outcome if c not in adata.obs.columns]
        if missing:
            shown = ", ".join(map(repr, list(adata.obs.columns)[:12]))
            msg = (
                f"adata.obs has no column(s) {missing} (the line-level outcome); columns are: {shown}. "
                "Pass the values as a Series/DataFrame indexed by line, or add them to obs."
            )
            raise KeyError(msg)
        frame = adata.obs[list(outcome)].copy()
    else:
        msg = (
            "outcome must be an obs column name, a list of them, a line -> value Series/Mapping "
            f"or a lines x outcomes DataFrame, got {type(outcome).__name__}"
        )
        raise TypeError(msg)
    if frame.shape[1] == 0 or len(frame) == 0:
        msg = "outcome is empty: give at least one outcome with values for at least 3 lines"
        raise ValueError(msg)
    frame.index = frame.index.astype(str)
    frame.columns = frame.columns.astype(str)
    if frame.index.duplicated().any():
        msg = f"the outcome names lines {frame.index[frame.index.duplicated()].unique().tolist()} more than once"
        raise ValueError(msg)
    if frame.columns.duplicated().any():
        msg = f"outcome names {frame.columns[frame.columns.duplicated()].tolist()} appear more than once"
        raise ValueError(msg)
    numeric = frame.apply(pd.to_numeric, errors="coerce").astype(float)
    for column in frame.columns:
        bad = frame.index[numeric[column].isna() & frame[column].notna()].tolist()
        if bad:
            msg = f"outcome {column!r} is not numeric for lines {bad} (values {frame.loc[bad, column].tolist()[:5]})"
            raise ValueError(msg)
        infinite = frame.index[np.isinf(numeric[column].to_numpy())].tolist()
        if infinite:
            msg = f"outcome {column!r} is infinite for lines {infinite}; every value must be finite or missing (NaN)"
            raise ValueError(msg)
    return numeric


def require_unique_lines(adata: AnnData) -> None:
    """Line names (``obs_names``) must be unique to be matched to an outcome."""
    if not adata.obs_names.is_unique:
        duplicated = adata.obs_names[adata.obs_names.duplicated()].unique()[:5].tolist()
        msg = f"line names (obs_names) are not unique, e.g. {duplicated}; each line must be one row"
        raise ValueError(msg)


def align_lines(
    lines: pd.Index, frame: pd.DataFrame, on_missing: OnMissing, *, minimum: int = 3
) -> tuple[dict[str, list[str]], pd.DataFrame]:
    """The lines used for each outcome, and every line left out with the reason.

    ``on_missing="error"`` fails on any line profiled without a value or with a value but no
    profile; ``"intersect"`` uses, per outcome, the lines with both and reports the rest.
    """
    if on_missing not in ("error", "intersect"):
        msg = f"on_missing must be 'error' or 'intersect', got {on_missing!r}"
        raise ValueError(msg)
    lines = pd.Index(lines.astype(str))
    not_profiled = frame.index.difference(lines, sort=False).tolist()
    rows = [
        (line, outcome, "not profiled")
        for outcome in frame.columns
        for line in not_profiled
        if np.isfinite(frame.at[line, outcome])
    ]
    used: dict[str, list[str]] = {}
    for outcome in frame.columns:
        values = frame[outcome].reindex(lines)
        no_value = lines[values.isna().to_numpy()].tolist()
        rows += [(line, outcome, "no outcome value") for line in no_value]
        used[outcome] = lines[values.notna().to_numpy()].tolist()
    missing = pd.DataFrame(rows, columns=["line", "outcome", "reason"])
    if on_missing == "error" and len(missing):
        parts = []
        without_profile = missing.loc[missing["reason"] == "not profiled", "line"].unique().tolist()
        if without_profile:
            parts.append(
                f"lines {without_profile} have an outcome value but no profile in this data"
            )
        no_value = missing[missing["reason"] == "no outcome value"]
        for outcome, group in no_value.groupby("outcome", sort=False):
            parts.append(
                f"lines {group['line'].tolist()} are profiled but have no {outcome!r} value"
            )
        msg = (
            "lines do not match between the data and the outcome (" + "; ".join(parts) + "). Pass "
            "on_missing='intersect' to use the lines present in both (they are reported), or align them."
        )
        raise ValueError(msg)
    for outcome, chosen in used.items():
        if len(chosen) < minimum:
            msg = (
                f"outcome {outcome!r}: a rank correlation needs at least {minimum} lines with both a "
                f"profile and a value, got {len(chosen)} ({chosen})"
            )
            raise ValueError(msg)
    return used, missing


def dense_matrix(adata: AnnData, layer: str | None) -> np.ndarray:
    """Lines x features values as a float array (bulk data are small)."""
    if layer is not None and layer not in adata.layers:
        msg = f"adata.layers has no {layer!r}; layers are {list(adata.layers)}. Pass layer=None to use X."
        raise KeyError(msg)
    X = adata.layers[layer] if layer is not None else adata.X
    if X is None:
        msg = "adata.X is None; pass the layer that holds the values"
        raise ValueError(msg)
    X = X.toarray() if sparse.issparse(X) else np.asarray(X)
    return X.astype(float)


def _excluded(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Masks of features with a missing/infinite value and of constant features."""
    non_finite = ~np.isfinite(X).all(axis=0)
    constant = np.zeros(X.shape[1], dtype=bool)
    constant[~non_finite] = np.ptp(X[:, ~non_finite], axis=0) == 0
    return non_finite, constant


@record("tl.rank_association")
def rank_association(
    adata: AnnData,
    outcome: str | Sequence[str] | Mapping | pd.Series | pd.DataFrame,
    *,
    layer: str | None = None,
    method: _stats.PvalueMethod = "auto",
    alternative: _stats.Alternative = "two-sided",
    alpha: float = 0.05,
    n_permutations: int = 9999,
    exact_max_n: int = _stats.EXACT_MAX_N,
    random_state: int = 0,
    on_missing: OnMissing = "error",
    key_added: str = RANK_ASSOCIATION,
    copy: bool = False,
) -> AnnData | None:
    """Spearman association of every feature of a set of lines with line-level outcomes.

    Bulk profiles of undifferentiated lines (microarray, miRNA array, CAGE: one AnnData per
    platform, lines x features) against one or several outcomes (e.g. the differentiation
    propensities from :func:`mscpotency.bulk.tl.propensity_score`). For each outcome and feature:
    Spearman's rho, an exact p-value (all n! orderings, ties handled exactly) up to
    ``exact_max_n`` lines or a Monte-Carlo permutation p-value above, the asymptotic p beside
    it, and the Benjamini-Hochberg FDR over the features of that outcome. This is the same
    kernel as :func:`mscpotency.tl.potency_association`.

    Features with a missing value, or constant over the lines used, cannot be ranked: they
    are left out of the test and of the FDR, listed in ``uns[key_added]['excluded']`` and a
    warning says how many.

    Parameters
    ----------
    adata
        Lines x features; ``obs_names`` are line names.
    outcome
        obs column(s), a line -> value Series/Mapping, a mapping of outcome -> (line -> value),
        or a lines x outcomes DataFrame. ``NaN`` means the line has no value for that outcome.
    layer
        Layer with the values (default: ``X``).
    method
        ``"auto"`` (exact up to ``exact_max_n`` lines), ``"exact"`` or ``"permutation"``.
    alternative
        ``"two-sided"``, ``"greater"`` or ``"less"``.
    alpha
        Level of the ``significant`` column (``pvalue < alpha``).
    n_permutations
        Monte-Carlo permutations when not exact.
    exact_max_n
        Largest number of lines that ``"auto"`` enumerates exactly.
    random_state
        Seed of the permutations.
    on_missing
        Lines profiled without an outcome value, or with a value but no profile (a line
        missing on one platform): ``"error"`` (default) names them; ``"intersect"`` uses the
        lines present in both, per outcome, and reports the others.
    key_added
        ``adata.uns`` key of the result.
    copy
        Return a copy instead of writing in place.

    Returns
    -------
    ``None``, or the copy when ``copy=True``. Writes ``adata.uns[key_added]`` with
    ``'table'`` : DataFrame (one row per outcome and feature: outcome, feature, rho, pvalue,
    pvalue_method, pvalue_asymptotic, fdr, direction (+1/-1/0), significant, n_lines, mean),
    ``'outcomes'`` : DataFrame (lines x outcomes, the values used; ``NaN`` where not used),
    ``'excluded'`` : DataFrame (outcome, feature, reason: ``'constant'`` or
    ``'missing values'``), ``'missing_lines'`` : DataFrame (line, outcome, reason: lines left
    out), ``'note'`` (lines per outcome and the smallest attainable p) and ``'params'``.
    """
    require_unique_lines(adata)
    if not 0 < alpha < 1:
        msg = f"alpha must be between 0 and 1, got {alpha}"
        raise ValueError(msg)
    if alternative not in ("two-sided", "greater", "less"):
        msg = f"alternative must be 'two-sided', 'greater' or 'less', got {alternative!r}"
        raise ValueError(msg)
    if method not in ("auto", "exact", "permutation"):
        msg = f"method must be 'auto', 'exact' or 'permutation', got {method!r}"
        raise ValueError(msg)
    frame = outcome_frame(adata, outcome)
    used, missing_lines = align_lines(adata.obs_names, frame, on_missing)
    X = dense_matrix(adata, layer)
    features = adata.var_names.astype(str)
    position = pd.Series(np.arange(adata.n_obs), index=adata.obs_names.astype(str))
    tables, excluded_rows, notes = [], [], []
    for name, lines in used.items():
        rows = position.loc[lines].to_numpy()
        Xo = X[rows]
        y = frame.loc[lines, name].to_numpy(dtype=float)
        if np.ptp(y) == 0:
            msg = f"outcome {name!r} is the same for every line ({y[0]!r}); nothing can correlate with it"
            raise ValueError(msg)
        non_finite, constant = _excluded(Xo)
        for mask, reason in ((non_finite, "missing values"), (constant, "constant")):
            excluded_rows += [(name, f, reason) for f in features[mask]]
        keep = ~(non_finite | constant)
        if not keep.any():
            msg = f"outcome {name!r}: every feature is constant or has missing values over lines {lines}"
            raise ValueError(msg)
        result = _stats.spearman_test(
            Xo[:, keep],
            y,
            method=method,
            alternative=alternative,
            n_permutations=n_permutations,
            exact_max_n=exact_max_n,
            random_state=random_state,
        )
        table = pd.DataFrame(
            {
                "outcome": name,
                "feature": features[keep],
                "rho": result.rho,
                "pvalue": result.pvalue,
                "pvalue_method": result.pvalue_method,
                "pvalue_asymptotic": result.pvalue_asymptotic,
                "fdr": result.fdr,
                "direction": np.sign(result.rho).astype(int),
                "significant": result.pvalue < alpha,
                "n_lines": result.n_lots,
                "mean": Xo[:, keep].mean(axis=0),
            }
        )
        tables.append(table)
        floor = _stats.minimum_attainable_pvalue(len(lines), alternative)
        notes.append(
            f"{name}: {len(lines)} lines, smallest attainable p = {floor:.3g} ({result.pvalue_method})"
        )
        if floor >= alpha:
            notes[-1] += f"; no feature can reach p < {alpha} with this few lines"
    excluded = pd.DataFrame(excluded_rows, columns=["outcome", "feature", "reason"])
    if len(excluded):
        notes.append(
            f"{excluded['feature'].nunique()} features excluded (constant or missing values)"
        )
        counts = excluded.drop_duplicates("feature")["reason"].value_counts().to_dict()
        examples = excluded["feature"].drop_duplicates().tolist()[:5]
        warnings.warn(
            f"rank_association: {excluded['feature'].nunique()} features could not be ranked and were "
            f"left out of the test and the FDR ({counts}; e.g. {examples}); they are listed in "
            f"adata.uns[{key_added!r}]['excluded'].",
            UserWarning,
            stacklevel=3,
        )
    if len(missing_lines):
        logger.info("rank_association: lines left out: %s", missing_lines.to_dict("records"))
    values = pd.DataFrame(
        {name: frame[name].reindex(lines) for name, lines in used.items()},
        index=pd.Index(adata.obs_names.astype(str), name="line"),
    )
    adata = adata.copy() if copy else adata
    adata.uns[key_added] = {
        "table": pd.concat(tables, ignore_index=True),
        "outcomes": values,
        "excluded": excluded,
        "missing_lines": missing_lines,
        "note": "; ".join(notes),
        "params": {
            "outcomes": list(used),
            "layer": layer,
            "method": method,
            "alternative": alternative,
            "alpha": alpha,
            "n_permutations": n_permutations,
            "exact_max_n": exact_max_n,
            "random_state": random_state,
            "on_missing": on_missing,
            "platform": str(adata.uns.get("platform", "")),
        },
    }
    return adata if copy else None
