"""Whether candidate markers keep their sign and significance on held-out lines."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import numpy as np
import pandas as pd
from anndata import AnnData

from ... import _registry, _stats
from ..._docs import doc_params
from ..._provenance import record
from .._lines import (
    OnMissing,
    align_lines,
    dense_matrix,
    line_rows,
    outcome_frame,
    require_unique_lines,
)
from ._rank_association import unrankable


def _candidate_signs(candidates) -> tuple[pd.Series, pd.Series | None]:
    """Expected sign per candidate feature (and its training rho, when given)."""
    rho_train = None
    if isinstance(candidates, pd.DataFrame):
        if "sign" not in candidates.columns:
            msg = (
                "a candidates DataFrame needs a 'sign' column (+1/-1 per feature, index = feature); "
                "get one from `bulk.get.consensus`"
            )
            raise KeyError(msg)
        signs = candidates["sign"]
        if "rho" in candidates.columns:
            rho_train = pd.to_numeric(candidates["rho"], errors="coerce")
    elif isinstance(candidates, (pd.Series, Mapping)):
        signs = pd.Series(candidates)
    else:
        msg = (
            "candidates must map each feature to its expected sign (+1/-1): a Series, a dict or a "
            f"DataFrame with a 'sign' column, got {type(candidates).__name__}"
        )
        raise TypeError(msg)
    signs.index = signs.index.astype(str)
    if signs.empty:
        msg = "no candidates to validate"
        raise ValueError(msg)
    if signs.index.duplicated().any():
        msg = f"candidates name {signs.index[signs.index.duplicated()].unique().tolist()} more than once"
        raise ValueError(msg)
    numeric = pd.to_numeric(signs, errors="coerce")
    bad = signs.index[~numeric.isin([1, -1])].tolist()
    if bad:
        msg = f"expected signs must be +1 or -1; candidates {bad[:5]} have {signs.loc[bad[:5]].tolist()}"
        raise ValueError(msg)
    if rho_train is not None:
        rho_train.index = signs.index
    return numeric.astype(int), rho_train


def _check_candidates_present(adata: AnnData, signs: pd.Series, on_absent: str) -> None:
    absent = [f for f in signs.index if f not in adata.var_names]
    if absent and (on_absent == "error" or len(absent) == len(signs)):
        hint = "" if on_absent == "error" else " (none of them is: names do not match)"
        msg = (
            f"{len(absent)} candidates are not features of the held-out data{hint}: "
            f"{absent[:10]}. Use the same platform and feature names, pass annotation= (feature "
            "-> gene) to validate genes on probe-level data, or collapse it with "
            "bulk.pp.collapse_probes / normalize_cage; on_absent='untested' lists candidates "
            "the held-out platform does not measure as untested."
        )
        raise KeyError(msg)


def _matched_data(
    adata: AnnData, signs: pd.Series, annotation, layer: str | None, on_absent: str = "error"
) -> tuple[AnnData, pd.Series, str | None]:
    """The held-out data whose features are the candidates' names, and each candidate's feature.

    With ``annotation`` (feature -> gene) the held-out features are first collapsed to genes
    by :func:`mscpotency.bulk.pp.collapse_probes`' rule; candidates that are features
    (probes, promoters) of data already collapsed are mapped to their gene through
    ``uns['feature_mapping']``.
    """
    if annotation is not None:
        from ..pp import collapse_probes

        adata, layer = collapse_probes(adata, annotation, layer=layer), None
    matched = pd.Series(signs.index, index=signs.index)
    mapping = adata.uns.get("feature_mapping", {})
    table = mapping.get("table") if isinstance(mapping, dict) else None
    absent = ~matched.isin(adata.var_names.astype(str))
    if absent.any() and table is not None:
        genes = table["gene"].astype(str).reindex(matched[absent].to_numpy())
        matched[absent] = np.where(genes.notna(), genes.to_numpy(), matched[absent].to_numpy())
    _check_candidates_present(adata, matched.set_axis(matched.to_numpy()), on_absent)
    if matched.duplicated().any():
        msg = (
            f"candidates {matched.index[matched.duplicated(keep=False)].tolist()[:6]} map to the same "
            "held-out gene; give one candidate per gene"
        )
        raise ValueError(msg)
    return adata, matched, layer


def _candidate_matrix(data: AnnData, matched: pd.Series, layer: str | None, rows) -> np.ndarray:
    """Lines x candidates of the held-out data; NaN columns for candidates it lacks."""
    present = matched.isin(data.var_names.astype(str)).to_numpy()
    measured = dense_matrix(data[:, matched[present].tolist()], layer)[rows]
    X = np.full((measured.shape[0], len(matched)), np.nan)
    X[:, present] = measured
    return X


def _single_outcome(adata: AnnData, outcome) -> tuple[str, pd.DataFrame]:
    """The one outcome to validate against: its name and its lines x 1 frame."""
    frame = outcome_frame(adata, outcome)
    if frame.shape[1] != 1:
        msg = f"validate_markers takes one outcome, got {list(frame.columns)}"
        raise ValueError(msg)
    return str(frame.columns[0]), frame


def _held_out_test(
    X: np.ndarray, y: np.ndarray, signs: pd.Series, *, alternative: str, method: str, **options
) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """The rho and p of every testable candidate (finite, not constant); untestable ones are NaN.

    ``alternative="directional"``: one-sided in each candidate's expected direction.
    """
    non_finite, constant = unrankable(X)
    testable = ~(non_finite | constant)
    rho = np.full(len(signs), np.nan)
    pvalue = np.full(len(signs), np.nan)
    if not testable.any():
        return rho, pvalue, testable, method
    kwargs = {"method": method, **options}
    if alternative == "two-sided":
        result = _stats.spearman_test(X[:, testable], y, alternative="two-sided", **kwargs)
        pvalue[testable] = result.pvalue
    else:
        greater = _stats.spearman_test(X[:, testable], y, alternative="greater", **kwargs)
        less = _stats.spearman_test(X[:, testable], y, alternative="less", **kwargs)
        result = greater
        expected = signs.to_numpy()[testable]
        pvalue[testable] = np.where(expected > 0, greater.pvalue, less.pvalue)
    rho[testable] = result.rho
    return rho, pvalue, testable, result.pvalue_method


def _validation_table(
    signs: pd.Series,
    rho_train: pd.Series | None,
    tested: tuple[np.ndarray, np.ndarray, np.ndarray, str],
    *,
    alpha: float,
    n_lines: int,
) -> pd.DataFrame:
    """One row per candidate: expected sign, held-out rho and p, FDR, validated or not."""
    rho, pvalue, testable, used_method = tested
    table = pd.DataFrame(
        {"expected_sign": signs.to_numpy()}, index=pd.Index(signs.index, name="feature")
    )
    if rho_train is not None:
        table["rho_train"] = rho_train.to_numpy()
    table["rho"] = rho
    table["pvalue"] = pvalue
    table["pvalue_method"] = np.where(testable, used_method, "untestable (constant or missing)")
    table["fdr"] = _stats.benjamini_hochberg(pvalue)
    table["same_sign"] = np.sign(rho) == signs.to_numpy()
    table["significant"] = pvalue < alpha
    table["validated"] = table["same_sign"] & table["significant"]
    table["n_lines"] = n_lines
    return table


def _summary(table: pd.DataFrame, outcome: str, alpha: float) -> pd.DataFrame:
    """Counts, the validations expected by chance alone and those that pass BH at ``alpha``."""
    testable = int(table["pvalue"].notna().sum())
    return pd.DataFrame(
        {
            "candidates": [len(table)],
            "validated": [int(table["validated"].sum())],
            "share": [float(table["validated"].mean())],
            "expected_by_chance": [alpha * testable],
            "validated_fdr": [int((table["validated"] & (table["fdr"] <= alpha)).sum())],
        },
        index=pd.Index([outcome], name="outcome"),
    )


@doc_params
@record("bulk.tl.validate_markers")
def validate_markers(
    adata: AnnData,
    candidates: Mapping[str, int] | pd.Series | pd.DataFrame,
    *,
    outcome: str | Mapping | pd.Series,
    alpha: float = 0.05,
    alternative: Literal["directional", "two-sided"] = "directional",
    layer: str | None = None,
    method: _stats.PvalueMethod = "auto",
    n_permutations: int = 9999,
    exact_max_n: int = _stats.EXACT_MAX_N,
    random_state: int = 0,
    on_missing: OnMissing = "error",
    annotation: pd.DataFrame | pd.Series | None = None,
    on_absent: Literal["error", "untested"] = "error",
    key_added: str = _registry.MARKER_VALIDATION.key,
    copy: bool = False,
) -> AnnData | None:
    """Test candidate markers on held-out lines: same sign, and significant.

    A candidate found on training lines is confirmed when, on new lines, its Spearman rho
    with the outcome has the expected sign and its p-value is below ``alpha``. By default
    the test is one-sided in the expected direction (the hypothesis was fixed on the
    training lines); p-values are exact up to ``exact_max_n`` lines, permutation-based
    above (13 held-out lines: 9,999 permutations by default).

    Parameters
    ----------
    adata
        {adata}
        Here held-out lines x features (same platform and feature names as the candidates).
    candidates
        feature -> expected sign (+1/-1), or a DataFrame indexed by feature with a ``sign``
        column and optionally the training ``rho`` (see :func:`mscpotency.bulk.get.consensus`).
    outcome
        {outcome}
        Here the held-out lines' one outcome: an obs column or a line -> value Series/Mapping.
    alpha
        {alpha}
        Here the level a candidate's p-value must be below.
    alternative
        {alternative}
        Here ``"directional"`` (one-sided in each candidate's expected direction) or
        ``"two-sided"``.
    on_missing
        Lines without an outcome value or without a profile: ``"error"`` or ``"intersect"``.
    annotation
        feature -> gene table (a DataFrame with a ``gene_symbol`` column or a Series) of
        probe-level held-out data: the features are collapsed to genes by
        :func:`mscpotency.bulk.pp.collapse_probes`' rule before gene candidates are tested.
        Candidates that are probes or promoters of held-out data already collapsed are
        mapped to their gene through its ``uns['feature_mapping']`` (the table's ``tested``
        column names the held-out gene).
    on_absent
        Candidates the held-out data does not measure (a gene called on CAGE alone and
        validated on an array without a probe for it): ``"error"`` or ``"untested"`` (kept
        in the table with NaN rho and p, never validated). None measured is always an error.

    Returns
    -------
    ``None``, or the copy when ``copy=True``. Writes ``adata.uns[key_added]`` with
    ``'table'`` : DataFrame (one row per candidate: expected_sign, rho_train (when given),
    rho, pvalue, pvalue_method, fdr, same_sign, significant, validated, n_lines),
    ``'summary'`` : DataFrame (candidates, validated, share, expected_by_chance: ``alpha``
    x testable candidates, the validations chance alone gives; validated_fdr: validated
    with BH FDR <= ``alpha`` among the candidates), ``'outcome'`` : DataFrame
    (lines x outcome used), ``'missing_lines'`` and ``'params'``.
    """
    require_unique_lines(adata)
    if alternative not in ("directional", "two-sided"):
        msg = f"alternative must be 'directional' or 'two-sided', got {alternative!r}"
        raise ValueError(msg)
    signs, rho_train = _candidate_signs(candidates)
    if on_absent not in ("error", "untested"):
        msg = f"on_absent must be 'error' or 'untested', got {on_absent!r}"
        raise ValueError(msg)
    data, matched, data_layer = _matched_data(adata, signs, annotation, layer, on_absent)
    name, frame = _single_outcome(adata, outcome)
    used, missing_lines = align_lines(adata.obs_names, frame, on_missing)
    lines = used[name]
    y = frame.loc[lines, name].to_numpy(dtype=float)
    if np.ptp(y) == 0:
        msg = f"outcome {name!r} is the same for every held-out line; nothing can be validated"
        raise ValueError(msg)
    X = _candidate_matrix(data, matched, data_layer, line_rows(data, lines))
    options = {
        "method": method,
        "n_permutations": n_permutations,
        "exact_max_n": exact_max_n,
        "random_state": random_state,
    }
    tested = _held_out_test(X, y, signs, alternative=alternative, **options)
    table = _validation_table(signs, rho_train, tested, alpha=alpha, n_lines=len(lines))
    if not matched.index.equals(pd.Index(matched.to_numpy())):
        table.insert(0, "tested", matched.to_numpy())
    adata = adata.copy() if copy else adata
    adata.uns[key_added] = {
        "table": table,
        "summary": _summary(table, name, alpha),
        "outcome": frame.loc[lines, [name]].rename_axis(index="line"),
        "missing_lines": missing_lines,
        "params": {
            "outcome": name,
            "alpha": alpha,
            "alternative": alternative,
            "layer": layer,
            **options,
            "on_missing": on_missing,
            "annotation": annotation is not None,
            "on_absent": on_absent,
        },
    }
    return adata if copy else None
