"""Differentiation propensity of each line: PC1 of its standardised marker panel, sign-oriented.

:func:`fit_propensity` fits the PCA on a panel; :func:`apply_propensity` scores new lines
with a fitted panel's means, SDs and loadings (so held-out lines share the training scale).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import stats

from ... import _registry
from ..._docs import doc_params
from ..._provenance import record
from ..._stored import stored, stored_table
from .._lines import dense_matrix, require_unique_lines


def _marker_list(adata: AnnData, markers: Sequence[str] | None, *, what: str) -> list[str]:
    """Panel genes named by ``markers`` (every gene when ``None``); absent ones are an error."""
    if markers is None:
        return adata.var_names.astype(str).tolist()
    if isinstance(markers, str):
        markers = [markers]
    markers = [str(m) for m in markers]
    if not markers:
        msg = f"{what} is empty; give the lineage marker genes of the panel"
        raise ValueError(msg)
    duplicated = sorted({m for m in markers if markers.count(m) > 1})
    if duplicated:
        msg = f"{what} names {duplicated} more than once"
        raise ValueError(msg)
    absent = [m for m in markers if m not in adata.var_names]
    if absent:
        shown = adata.var_names[:10].tolist()
        msg = (
            f"{len(absent)} of the {len(markers)} {what} are absent from the panel: {absent}. "
            f"The panel has {adata.n_vars} genes (e.g. {shown}); check the gene names or drop those markers."
        )
        raise KeyError(msg)
    return markers


def _panel_values(adata: AnnData, genes: list[str], layer: str | None) -> np.ndarray:
    """Lines x ``genes`` values; a missing or infinite value is an error naming it."""
    X = dense_matrix(adata[:, genes], layer)
    bad = np.argwhere(~np.isfinite(X))
    if bad.size:
        pairs = [(str(adata.obs_names[i]), genes[j]) for i, j in bad[:5]]
        msg = (
            f"the panel has {len(bad)} missing or infinite values (line, gene: {pairs}); impute them "
            "(e.g. undetected Ct at the assay's limit) or drop those genes via markers="
        )
        raise ValueError(msg)
    return X


def _oriented_pc1(Z: np.ndarray, orient_mask: np.ndarray, orient: list[str]):
    """PC1 loadings of the standardised panel, signed so the ``orient`` genes load positively."""
    _, singular, vt = np.linalg.svd(Z, full_matrices=False)
    loading = vt[0]
    if not orient_mask.any():
        msg = f"every orient_by gene ({orient}) is constant; choose genes that vary to orient PC1"
        raise ValueError(msg)
    if loading[orient_mask].mean() < 0:
        loading = -loading
    variance = singular**2
    return loading, variance / variance.sum()


#: Share of the orient_by genes that may load against the propensity before a warning.
DISAGREEING_SHARE = 0.25


#: Above this share of positive -ΔCt values a panel is taken for ΔCt or Ct (lineage genes
#: are less abundant than the reference gene, so their -ΔCt are mostly negative).
POSITIVE_SHARE = 0.75


def _check_values_sign(adata: AnnData, X: np.ndarray) -> None:
    """Warn when the panel looks like ΔCt or Ct (higher = less expressed) instead of -ΔCt.

    A panel read by :func:`mscpotency.bulk.pp.qpcr_panel` is -ΔCt by construction. Otherwise
    lineage genes are less abundant than the reference gene, so their -ΔCt are negative and
    their ΔCt (or Ct) positive: a panel of mostly (> 75%) positive values was probably passed
    with the wrong sign, and PC1 would rank the least differentiated lines highest.
    """
    record_ = adata.uns.get("qpcr")
    if isinstance(record_, dict) and record_.get("unit") == "-dct":
        return
    positive = float(np.mean(X > 0))
    if positive > POSITIVE_SHARE:
        warnings.warn(
            f"fit_propensity: {positive:.0%} of the panel's values are positive, as ΔCt or Ct are "
            "(higher = LESS expressed). The propensity needs -ΔCt (higher = more expressed), or "
            "PC1 ranks the least differentiated lines highest. Read the table with "
            "bulk.pp.qpcr_panel(values='delta_ct' or 'ct'), or negate ΔCt; ignore this for "
            "expression values where higher means more.",
            UserWarning,
            stacklevel=4,
        )


def _check_directions(loadings: pd.DataFrame, orient: list[str]) -> None:
    """Warn when many of the genes that should rise together load against the propensity."""
    oriented = loadings.loc[orient, "loading"]
    against = oriented[oriented < 0]
    if len(orient) >= 3 and len(against) > DISAGREEING_SHARE * len(orient):
        warnings.warn(
            f"fit_propensity: {len(against)} of the {len(orient)} orient_by genes load against the "
            f"propensity (e.g. {against.index[:5].tolist()}): they do not rise together. The panel "
            "may mix lineages (markers=None on a whole embryoid-body panel?) or genes that fall "
            "with differentiation (leave those out of orient_by); give one lineage's markers.",
            UserWarning,
            stacklevel=4,
        )


def _variance_ratios(shares: np.ndarray) -> pd.DataFrame:
    """Share of the panel's variance of the first (at most five, non-null) PCs."""
    keep = min(5, int((shares > 1e-12).sum()) or 1)
    return pd.DataFrame(
        {"variance_ratio": shares[:keep]},
        index=pd.Index([f"PC{i + 1}" for i in range(keep)], name="pc"),
    )


def _fit_pc1(X: np.ndarray, genes: list[str], orient: list[str]):
    """Fit the propensity: loadings table, line scores, variance ratios, constant genes."""
    mean = X.mean(axis=0)
    sd = X.std(axis=0, ddof=1)
    usable = sd > 0
    excluded = [g for g, ok in zip(genes, usable, strict=True) if not ok]
    if excluded:
        warnings.warn(
            f"fit_propensity: panel genes {excluded} are constant across the lines and were "
            "left out of the PCA.",
            UserWarning,
            stacklevel=4,
        )
    if not usable.any():
        msg = "every marker gene is constant across the lines; there is no propensity to score"
        raise ValueError(msg)
    Z = (X[:, usable] - mean[usable]) / sd[usable]
    orients = np.isin(genes, orient)
    pc1, shares = _oriented_pc1(Z, orients[usable], orient)
    loading = np.zeros(len(genes))
    loading[usable] = pc1
    loadings = pd.DataFrame(
        {"loading": loading, "mean": mean, "sd": sd, "orient": orients},
        index=pd.Index(genes, name="gene"),
    )
    return loadings, Z @ pc1, _variance_ratios(shares), excluded


def _score_with(X: np.ndarray, loadings: pd.DataFrame) -> np.ndarray:
    """Line scores on a fitted panel's scale (its means, SDs and loadings)."""
    mean, sd, loading = (loadings[c].to_numpy(dtype=float) for c in ("mean", "sd", "loading"))
    usable = sd > 0
    return ((X[:, usable] - mean[usable]) / sd[usable]) @ loading[usable]


def _write_propensity(
    adata: AnnData, score: np.ndarray, fields: dict, *, key_added: str, copy: bool
) -> AnnData | None:
    """Write the scores (obs and uns, with their ranks) and the fitted fields."""
    rank = stats.rankdata(-score, method="min").astype(int)
    scores = pd.DataFrame(
        {"score": score, "rank": rank}, index=pd.Index(adata.obs_names.astype(str), name="line")
    )
    adata = adata.copy() if copy else adata
    adata.obs[key_added] = score
    adata.uns[key_added] = {"scores": scores, **fields}
    return adata if copy else None


@doc_params
@record("bulk.tl.fit_propensity")
def fit_propensity(
    adata: AnnData,
    *,
    markers: Sequence[str] | None = None,
    orient_by: Sequence[str] | None = None,
    layer: str | None = None,
    key_added: str = _registry.PROPENSITY.key,
    copy: bool = False,
) -> AnnData | None:
    """Score each line's differentiation propensity as PC1 of its marker panel.

    The panel (lines x genes, e.g. qRT-PCR -ΔCt after embryoid-body formation: higher =
    more expressed) is standardised per gene; the line scores on the first principal
    component are the propensity. PC1's sign is arbitrary, so it is oriented to make the
    mean loading of the ``orient_by`` genes (the lineage markers, which rise with
    differentiation) positive: higher score = more differentiated. Score held-out lines on
    this scale with :func:`apply_propensity`.

    Two checks warn instead of scoring silently: a panel whose values are mostly (> 75%)
    positive (ΔCt or Ct passed instead of -ΔCt, which flips the propensity; panels read by
    :func:`mscpotency.bulk.pp.qpcr_panel` are -ΔCt), and more than a quarter of the
    ``orient_by`` genes loading against PC1 (mixed lineages, or genes that fall with
    differentiation among ``orient_by``).

    Parameters
    ----------
    adata
        {adata}
        Here lines x panel genes; ``obs_names`` are line names.
    markers
        Panel genes entering the PCA (default: every gene). Genes absent from the panel
        are an error that lists them.
    orient_by
        Genes whose mean loading is made positive (default: ``markers``). Use it when
        ``markers`` also holds genes that fall with differentiation (pluripotency genes).
    key_added
        {key_added}
        Also the obs column of the scores.

    Returns
    -------
    ``None``, or the copy when ``copy=True``. Writes ``adata.obs[key_added]`` (the score of
    each line) and ``adata.uns[key_added]`` with ``'scores'`` : DataFrame (lines x [score,
    rank]; rank 1 = most differentiated), ``'loadings'`` : DataFrame (genes x [loading, mean,
    sd, orient]), ``'variance_ratio'`` : DataFrame (share of the standardised panel's
    variance per PC), ``'pc1_variance_ratio'`` (float), ``'excluded'`` (constant genes left
    out) and ``'params'``.
    """
    require_unique_lines(adata)
    genes = _marker_list(adata, markers, what="marker genes")
    orient = genes if orient_by is None else _marker_list(adata, orient_by, what="orient_by genes")
    outside = [g for g in orient if g not in genes]
    if outside:
        msg = f"orient_by genes {outside} are not among the markers entering the PCA; add them to markers"
        raise ValueError(msg)
    if adata.n_obs < 3:
        msg = f"a propensity score (PC1 across lines) needs at least 3 lines, got {adata.n_obs}"
        raise ValueError(msg)
    X = _panel_values(adata, genes, layer)
    loadings, score, ratios, excluded = _fit_pc1(X, genes, list(orient))
    _check_values_sign(adata, X)
    _check_directions(loadings, list(orient))
    fields = {
        "loadings": loadings,
        "variance_ratio": ratios,
        "pc1_variance_ratio": float(ratios["variance_ratio"].iloc[0]),
        "excluded": excluded,
        "params": {"markers": genes, "orient_by": list(orient), "layer": layer, "reference": False},
    }
    return _write_propensity(adata, score, fields, key_added=key_added, copy=copy)


@doc_params
@record("bulk.tl.apply_propensity")
def apply_propensity(
    adata: AnnData,
    reference: AnnData,
    *,
    propensity_key: str | None = None,
    layer: str | None = None,
    key_added: str = _registry.PROPENSITY.key,
    copy: bool = False,
) -> AnnData | None:
    """Score new lines on a fitted panel's scale: its gene means, SDs and PC1 loadings.

    Held-out lines scored this way share the training lines' scale, so one propensity
    means the same in both sets (a new PCA would give its own, differently scaled axis).

    Parameters
    ----------
    adata
        {adata}
        Here lines x panel genes (every gene of the reference's panel); ``obs_names`` are
        line names.
    reference
        A panel scored by :func:`fit_propensity`.
    propensity_key
        Key of the fitted propensity in ``reference.uns`` (default: ``key_added``).
    key_added
        {key_added}
        Also the obs column of the scores.

    Returns
    -------
    ``None``, or the copy when ``copy=True``. Writes ``adata.obs[key_added]`` and
    ``adata.uns[key_added]`` as :func:`fit_propensity` does, with the reference's loadings
    and variance ratios, no ``'excluded'`` genes and ``'params'['reference']`` ``True``.
    """
    require_unique_lines(adata)
    key = key_added if propensity_key is None else propensity_key
    fitted = stored(reference, _registry.PROPENSITY, key)
    loadings = stored_table(reference, _registry.PROPENSITY, "loadings", key)
    genes = _marker_list(adata, loadings.index.astype(str).tolist(), what="reference panel genes")
    if adata.n_obs < 1:
        msg = "the panel has no lines"
        raise ValueError(msg)
    score = _score_with(_panel_values(adata, genes, layer), loadings.loc[genes])
    orient = loadings.index[loadings["orient"].astype(bool)].astype(str).tolist()
    fields = {
        "loadings": loadings.loc[genes].copy(),
        "variance_ratio": pd.DataFrame(fitted["variance_ratio"]).copy(),
        "pc1_variance_ratio": float(fitted["pc1_variance_ratio"]),
        "excluded": [],
        "params": {"markers": genes, "orient_by": orient, "layer": layer, "reference": True},
    }
    return _write_propensity(adata, score, fields, key_added=key_added, copy=copy)
