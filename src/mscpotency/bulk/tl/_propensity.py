"""Differentiation propensity of each line: PC1 of its standardised marker panel, sign-oriented."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import stats

from ..._provenance import record
from ..._validate import require_uns
from ._rank_association import dense_matrix, require_unique_lines

#: Default ``key_added`` of :func:`propensity_score`.
PROPENSITY = "propensity"


def _marker_list(adata: AnnData, markers: Sequence[str] | None, *, what: str) -> list[str]:
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


@record("tl.propensity_score")
def propensity_score(
    adata: AnnData,
    *,
    markers: Sequence[str] | None = None,
    orient_by: Sequence[str] | None = None,
    layer: str | None = None,
    reference: AnnData | None = None,
    key_added: str = PROPENSITY,
    copy: bool = False,
) -> AnnData | None:
    """Score each line's differentiation propensity as PC1 of its marker panel.

    The panel (lines x genes, e.g. qRT-PCR -ΔCt after embryoid-body formation: higher =
    more expressed) is standardised per gene; the line scores on the first principal
    component are the propensity. PC1's sign is arbitrary, so it is oriented to make the
    mean loading of the ``orient_by`` genes (the lineage markers, which rise with
    differentiation) positive: higher score = more differentiated.

    Parameters
    ----------
    adata
        Lines x panel genes; ``obs_names`` are line names.
    markers
        Panel genes entering the PCA (default: every gene). Genes absent from the panel
        are an error that lists them.
    orient_by
        Genes whose mean loading is made positive (default: ``markers``). Use it when
        ``markers`` also holds genes that fall with differentiation (pluripotency genes).
    layer
        Layer with the values (default: ``X``).
    reference
        A panel already scored with the same ``key_added``: its gene means, SDs and
        loadings score these lines on the reference's scale (held-out lines) instead of
        fitting a new PCA.
    key_added
        obs column and ``adata.uns`` key of the result.
    copy
        Return a copy instead of writing in place.

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
    excluded: list[str] = []
    if reference is not None:
        stored = require_uns(reference, key_added, tool="tl.propensity_score")
        if not isinstance(stored, dict) or "loadings" not in stored:
            msg = f"reference.uns[{key_added!r}] is not a propensity score; run `tl.propensity_score` on it"
            raise KeyError(msg)
        fitted: pd.DataFrame = pd.DataFrame(stored["loadings"])
        markers_used = _marker_list(
            adata, fitted.index.astype(str).tolist(), what="reference panel genes"
        )
        if markers is not None and set(map(str, markers)) != set(markers_used):
            msg = "markers differ from the reference's panel genes; leave markers=None with a reference"
            raise ValueError(msg)
        orient = fitted.index[fitted["orient"].astype(bool)].astype(str).tolist()
        if adata.n_obs < 1:
            msg = "the panel has no lines"
            raise ValueError(msg)
    else:
        markers_used = _marker_list(adata, markers, what="marker genes")
        orient = (
            markers_used
            if orient_by is None
            else _marker_list(adata, orient_by, what="orient_by genes")
        )
        outside = [g for g in orient if g not in markers_used]
        if outside:
            msg = f"orient_by genes {outside} are not among the markers entering the PCA; add them to markers"
            raise ValueError(msg)
        if adata.n_obs < 3:
            msg = f"a propensity score (PC1 across lines) needs at least 3 lines, got {adata.n_obs}"
            raise ValueError(msg)
    X = dense_matrix(adata[:, markers_used], layer)
    bad = np.argwhere(~np.isfinite(X))
    if bad.size:
        pairs = [(str(adata.obs_names[i]), markers_used[j]) for i, j in bad[:5]]
        msg = (
            f"the panel has {len(bad)} missing or infinite values (line, gene: {pairs}); impute them "
            "(e.g. undetected Ct at the assay's limit) or drop those genes via markers="
        )
        raise ValueError(msg)

    if reference is not None:
        mean = fitted.loc[markers_used, "mean"].to_numpy(dtype=float)
        sd = fitted.loc[markers_used, "sd"].to_numpy(dtype=float)
        loading = fitted.loc[markers_used, "loading"].to_numpy(dtype=float)
        usable = sd > 0
        score = ((X[:, usable] - mean[usable]) / sd[usable]) @ loading[usable]
        ratios = pd.DataFrame(stored["variance_ratio"]).copy()
        pc1 = float(stored["pc1_variance_ratio"])
        loadings = fitted.loc[markers_used].copy()
    else:
        mean = X.mean(axis=0)
        sd = X.std(axis=0, ddof=1)
        usable = sd > 0
        excluded = [g for g, ok in zip(markers_used, usable, strict=True) if not ok]
        if excluded:
            warnings.warn(
                f"propensity_score: panel genes {excluded} are constant across the lines and were "
                "left out of the PCA.",
                UserWarning,
                stacklevel=3,
            )
        if not usable.any():
            msg = "every marker gene is constant across the lines; there is no propensity to score"
            raise ValueError(msg)
        Z = (X[:, usable] - mean[usable]) / sd[usable]
        _, singular, vt = np.linalg.svd(Z, full_matrices=False)
        loading = np.zeros(len(markers_used))
        loading[usable] = vt[0]
        orient_mask = np.isin(markers_used, orient) & usable
        if not orient_mask.any():
            msg = (
                f"every orient_by gene ({orient}) is constant; choose genes that vary to orient PC1"
            )
            raise ValueError(msg)
        if loading[orient_mask].mean() < 0:
            loading = -loading
        score = Z @ loading[usable]
        variance = singular**2
        shares = variance / variance.sum()
        keep = min(5, int((shares > 1e-12).sum()) or 1)
        ratios = pd.DataFrame(
            {"variance_ratio": shares[:keep]},
            index=pd.Index([f"PC{i + 1}" for i in range(keep)], name="pc"),
        )
        pc1 = float(shares[0])
        loadings = pd.DataFrame(
            {"loading": loading, "mean": mean, "sd": sd, "orient": np.isin(markers_used, orient)},
            index=pd.Index(markers_used, name="gene"),
        )
    rank = stats.rankdata(-score, method="min").astype(int)
    scores = pd.DataFrame(
        {"score": score, "rank": rank}, index=pd.Index(adata.obs_names.astype(str), name="line")
    )
    adata = adata.copy() if copy else adata
    adata.obs[key_added] = score
    adata.uns[key_added] = {
        "scores": scores,
        "loadings": loadings,
        "variance_ratio": ratios,
        "pc1_variance_ratio": pc1,
        "excluded": excluded,
        "params": {
            "markers": markers_used,
            "orient_by": list(orient),
            "layer": layer,
            "reference": reference is not None,
        },
    }
    return adata if copy else None
