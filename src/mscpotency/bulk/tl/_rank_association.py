"""Every baseline feature of a set of lines against a line-level outcome (Spearman, exact p, FDR)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence

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

logger = logging.getLogger("mscpotency")


def unrankable(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Masks of features with a missing/infinite value and of constant features."""
    non_finite = ~np.isfinite(X).all(axis=0)
    constant = np.zeros(X.shape[1], dtype=bool)
    constant[~non_finite] = np.ptp(X[:, ~non_finite], axis=0) == 0
    return non_finite, constant


#: Line totals above this, with only non-negative integers, mean raw sequencing counts.
RAW_COUNT_TOTAL = 1e5


def refuse_raw_counts(X: np.ndarray) -> None:
    """Raw tag/read counts (non-negative integers, library-sized line totals) are refused.

    Lines sequenced to different depths rank their features by depth, not biology.
    """
    finite = X[np.isfinite(X)]
    if not finite.size or (finite < 0).any() or not np.all(finite == np.round(finite)):
        return
    totals = np.nansum(X, axis=1)
    if np.median(totals) > RAW_COUNT_TOTAL:
        msg = (
            f"the values look like raw counts (non-negative integers, median line total "
            f"{np.median(totals):,.0f}): lines sequenced to different depths would be ranked by "
            "depth. Normalise them first (CAGE: bulk.pp.normalize_cage, with the promoter -> gene "
            "table to aggregate genes) or pass the layer that holds normalised values."
        )
        raise ValueError(msg)


def _associate_outcome(
    name: str, lines: list[str], X: np.ndarray, y: np.ndarray, features: pd.Index, **options
) -> tuple[pd.DataFrame, list[tuple[str, str, str]], str]:
    """One outcome over its lines: the table of its rankable features, the excluded ones, a note."""
    alpha = options.pop("alpha")
    if np.ptp(y) == 0:
        msg = (
            f"outcome {name!r} is the same for every line ({y[0]!r}); nothing can correlate with it"
        )
        raise ValueError(msg)
    non_finite, constant = unrankable(X)
    excluded = [
        (name, f, reason)
        for mask, reason in ((non_finite, "missing values"), (constant, "constant"))
        for f in features[mask]
    ]
    keep = ~(non_finite | constant)
    if not keep.any():
        msg = (
            f"outcome {name!r}: every feature is constant or has missing values over lines {lines}"
        )
        raise ValueError(msg)
    result = _stats.spearman_test(X[:, keep], y, **options)
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
            "mean": X[:, keep].mean(axis=0),
        }
    )
    floor = _stats.minimum_attainable_pvalue(len(lines), options["alternative"])
    note = (
        f"{name}: {len(lines)} lines, smallest attainable p = {floor:.3g} ({result.pvalue_method})"
    )
    if floor >= alpha:
        note += f"; no feature can reach p < {alpha} with this few lines"
    return table, excluded, note


def _report_excluded(excluded: pd.DataFrame, key_added: str) -> list[str]:
    """Warn about features that could not be ranked; the note that says how many."""
    if not len(excluded):
        return []
    n = excluded["feature"].nunique()
    counts = excluded.drop_duplicates("feature")["reason"].value_counts().to_dict()
    examples = excluded["feature"].drop_duplicates().tolist()[:5]
    warnings.warn(
        f"rank_association: {n} features could not be ranked and were left out of the test and "
        f"the FDR ({counts}; e.g. {examples}); they are listed in "
        f"adata.uns[{key_added!r}]['excluded'].",
        UserWarning,
        stacklevel=4,
    )
    return [f"{n} features excluded (constant or missing values)"]


@doc_params
@record("bulk.tl.rank_association")
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
    key_added: str = _registry.RANK_ASSOCIATION.key,
    copy: bool = False,
) -> AnnData | None:
    """Spearman association of every feature of a set of lines with line-level outcomes.

    Bulk profiles of undifferentiated lines (microarray, miRNA array, CAGE: one AnnData per
    platform, lines x features) against one or several outcomes (e.g. the differentiation
    propensities from :func:`mscpotency.bulk.tl.fit_propensity`). For each outcome and feature:
    Spearman's rho, an exact p-value (all n! orderings, ties handled exactly) up to
    ``exact_max_n`` lines or a Monte-Carlo permutation p-value above, the asymptotic p beside
    it, and the Benjamini-Hochberg FDR over the features of that outcome. This is the same
    kernel as :func:`mscpotency.tl.potency_association`.

    Raw sequencing counts (non-negative integers with library-sized line totals) are
    refused: normalise them first (:func:`mscpotency.bulk.pp.normalize_cage`).

    Features with a missing value, or constant over the lines used, cannot be ranked: they
    are left out of the test and of the FDR, listed in ``uns[key_added]['excluded']`` and a
    warning says how many.

    Parameters
    ----------
    adata
        {adata}
        Here lines x features; ``obs_names`` are line names.
    outcome
        {outcome}
        Here obs column(s), a line -> value Series/Mapping, a mapping of outcome -> (line ->
        value), or a lines x outcomes DataFrame. ``NaN`` means the line has no value for that
        outcome.
    method
        {method}
        ``"auto"`` is exact up to ``exact_max_n`` lines.
    alpha
        {alpha}
        Here the level of the ``significant`` column (``pvalue < alpha``).
    on_missing
        Lines profiled without an outcome value, or with a value but no profile (a line
        missing on one platform): ``"error"`` (default) names them; ``"intersect"`` uses the
        lines present in both, per outcome, and reports the others.

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
    frame = outcome_frame(adata, outcome)
    used, missing_lines = align_lines(adata.obs_names, frame, on_missing)
    X = dense_matrix(adata, layer)
    refuse_raw_counts(X)
    features = adata.var_names.astype(str)
    test = {
        "method": method,
        "alternative": alternative,
        "n_permutations": n_permutations,
        "exact_max_n": exact_max_n,
        "random_state": random_state,
    }
    tables, excluded_rows, notes = [], [], []
    for name, lines in used.items():
        y = frame.loc[lines, name].to_numpy(dtype=float)
        table, excluded, note = _associate_outcome(
            name, lines, X[line_rows(adata, lines)], y, features, alpha=alpha, **test
        )
        tables.append(table)
        excluded_rows += excluded
        notes.append(note)
    excluded = pd.DataFrame(excluded_rows, columns=["outcome", "feature", "reason"])
    notes += _report_excluded(excluded, key_added)
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
