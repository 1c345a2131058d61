"""Lines x features: the outcome of each line, which lines to use, and their values.

Shared by the bulk tools, accessors and plots (so ``get`` and ``pl`` need no tool module).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

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


def line_rows(adata: AnnData, lines: Sequence[str]) -> np.ndarray:
    """Row positions of ``lines`` (line names) in ``adata``."""
    position = pd.Series(np.arange(adata.n_obs), index=adata.obs_names.astype(str))
    return position.loc[list(lines)].to_numpy()
