"""The combined consensus: signed agreement across platforms and outcomes, permutation FDR.

For every platform x outcome cell of a rule, a feature's Spearman rho (or, with
``correlation="pearson"``, Pearson's r on the values as given, e.g. log-scale; with
``"winsorized"``, Pearson's r after every feature's and outcome's values are clipped to
their median +/- 2 robust SDs, :func:`winsorized`) becomes a normal score
``z = rho * sqrt(n - 1)`` (the permutation null of each has variance ``1 / (n - 1)``: each
variable is transformed on its own, before any permutation).
Within a platform the outcomes combine as a Stouffer sum with the rule's signs,
``S_p = sum(sign_o * z_po) / sqrt(outcomes)`` (the opposite-lineage pattern is one
combined one-sided test); across platforms the weakest counts, ``T = min_p S_p`` in the
better of the two overall directions, so a feature scores high only when every platform
agrees (an artefact that follows the outcome on one platform only does not carry it).
With ``agreement="mean"`` the features whose weakest platform passes a one-sided 5% bar
(``min_p S_p >= 1.645``, :data:`MEAN_FLOOR`) are ranked by the mean of their platform scores
instead, above every feature that fails the bar (scored by its weakest platform as before):
agreement is still required, but both platforms' strength counts.
An entity that a platform does not measure (an unannotated probe, a gene without a CAGE
promoter) is judged by the platforms that do, its score put on the all-platform scale so
that one platform's word must be stronger (:func:`platform_calibrated`).
Features are ranked by ``|T|``.

The FDR of every list ``|T| >= t`` is estimated by permuting the lines' labels jointly
across platforms and outcomes (the outcome rows move together, every platform sees the
same permutation), which keeps the correlation between genes, between platforms and
between outcomes: expected false calls ``V(t) = mean_b #{|T*_b| >= t}``, FDR
``min(1, V(t) / #{|T| >= t})``, q-values step-down (see :func:`qvalues`). Every feature counts as null in the
permutations, so the estimate is conservative.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, NamedTuple

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import special, stats

from ..._settings import progress
from .._lines import dense_matrix, line_rows

Correlation = Literal["spearman", "pearson", "winsorized"]
Agreement = Literal["weakest", "mean"]

#: The bar every platform's score must pass before ``agreement="mean"`` ranks a feature by
#: the mean of its platform scores (a one-sided 5% normal quantile).
MEAN_FLOOR = 1.645


#: ``correlation="winsorized"`` clips each variable to its median +/- this many robust SDs.
WINSOR_SDS = 2.0


def winsorized(X: np.ndarray, sds: float = WINSOR_SDS) -> np.ndarray:
    """Every column clipped to its median +/- ``sds`` robust SDs (a MAD-based winsorisation).

    The robust SD is ``1.4826 * MAD`` (the median absolute deviation from the median); where
    the MAD is 0 (more than half the values tie at the median, e.g. a CAGE promoter with
    counts in a few lines only), ``1.2533 * mean absolute deviation from the median`` (both
    estimate a normal SD). A non-constant column stays non-constant. At 10 lines one line
    far from the others then weighs as a line ``sds`` SDs out, not more: Pearson's r on the
    clipped values keeps most of Pearson's power on well-behaved data (the ranks of
    Spearman give away more) without letting one outlying line make a correlation.
    """
    X = np.asarray(X, dtype=float)
    median = np.median(X, axis=0)
    deviation = np.abs(X - median)
    scale = np.median(deviation, axis=0) / special.ndtri(0.75)  # 1.4826 * MAD
    scale = np.where(scale > 0, scale, np.sqrt(np.pi / 2) * deviation.mean(axis=0))
    return np.clip(X, median - sds * scale, median + sds * scale)


def standardized_ranks(X: np.ndarray) -> np.ndarray:
    """Column-wise average ranks, centred and scaled to unit norm (Spearman = dot product)."""
    return standardized(X, "spearman")


def standardized(X: np.ndarray, correlation: Correlation = "pearson") -> np.ndarray:
    """Columns centred and scaled to unit norm (Pearson = dot product).

    Ranks first for ``"spearman"``, the values clipped by :func:`winsorized` for
    ``"winsorized"``, the values as given for ``"pearson"``.
    """
    if correlation == "spearman":
        R = stats.rankdata(X, axis=0)
    else:
        R = winsorized(X) if correlation == "winsorized" else X
    R = R - R.mean(axis=0)
    norm = np.sqrt((R**2).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return R / norm


class PlatformData(NamedTuple):
    """One platform's standardised ranks over the common lines and its entity grouping."""

    ranks: np.ndarray  # lines x features (usable only), standardised ranks (or values: Pearson)
    entities: pd.Index  # sorted unique entities
    starts: np.ndarray  # start of each entity's block in the entity-sorted feature order
    order: np.ndarray  # feature order that groups features by entity
    features: np.ndarray  # usable feature names, in the original order


def common_lines(results: Mapping[str, AnnData], key: str, outcomes: list[str]) -> pd.DataFrame:
    """Lines x outcomes every platform used for every outcome; an error where they differ.

    The permutation moves whole rows of outcomes and applies to every platform at once, so
    every platform x outcome cell must stand on the same lines with the same values.
    """
    frames = {}
    for platform, adata in results.items():
        stored = adata.uns[key]["outcomes"]
        absent = [o for o in outcomes if o not in stored.columns]
        if absent:
            msg = f"platform {platform!r} has no rank association for outcomes {absent}"
            raise KeyError(msg)
        frames[platform] = stored[outcomes].dropna(how="any")
    first_name, first = next(iter(frames.items()))
    for platform, frame in frames.items():
        same_lines = frame.index.equals(first.index)
        if not same_lines or not np.allclose(frame.to_numpy(), first.to_numpy()):
            msg = (
                "combine='stouffer' permutes lines jointly across platforms and outcomes, so every "
                f"platform x outcome must use the same lines and values; {platform!r} uses "
                f"{frame.index.tolist()} and {first_name!r} {first.index.tolist()} (or their values "
                "differ). Subset every platform to the common lines and rerun rank_association."
            )
            raise ValueError(msg)
    for outcome in outcomes:
        if np.ptp(first[outcome].to_numpy()) == 0:
            msg = f"outcome {outcome!r} is the same for every line; nothing can correlate with it"
            raise ValueError(msg)
    return first


def platform_data(
    adata: AnnData,
    lines: list[str],
    key: str,
    match: pd.Series,
    correlation: Correlation = "spearman",
) -> PlatformData:
    """Standardised ranks (or values, see :func:`standardized`) of the usable features."""
    layer = adata.uns[key]["params"].get("layer")
    X = dense_matrix(adata, layer)[line_rows(adata, lines)]
    usable = np.isfinite(X).all(axis=0)
    usable[usable] = np.ptp(X[:, usable], axis=0) > 0
    features = adata.var_names.astype(str).to_numpy()[usable]
    entity = match.reindex(features).astype(str).to_numpy()
    order = np.argsort(entity, kind="stable")
    unique, starts = np.unique(entity[order], return_index=True)
    ranks = standardized(X[:, usable], correlation)
    return PlatformData(ranks, pd.Index(unique), starts, order, features)


def entity_scores(z: np.ndarray, data: PlatformData) -> np.ndarray:
    """Per entity and outcome: the score of its feature with the largest ``|z|``."""
    grouped = z[data.order]
    high = np.maximum.reduceat(grouped, data.starts, axis=0)
    low = np.minimum.reduceat(grouped, data.starts, axis=0)
    return np.where(np.abs(high) >= np.abs(low), high, low)


class RuleCells(NamedTuple):
    """Where a rule reads: per cell (platform, outcome column, sign) and the entity rows."""

    cells: list[tuple[str, int, int]]
    rows: dict[str, np.ndarray]  # platform -> row of each entity in its entity index (-1: absent)
    entities: pd.Index
    agreement: Agreement = "weakest"  # how the platforms' scores combine (rule_statistic)


#: How much of a second platform's evidence an entity's weakest-platform score is worth
#: when the platforms measure the same biology (see :func:`platform_calibrated`).
PLATFORM_CORRELATION = 0.5


def rule_cells(
    pattern: Mapping[str, int],
    platforms: list[str],
    data: dict,
    outcomes: list[str],
    agreement: Agreement = "weakest",
):
    """The cells of a rule and the entities measured on at least one of its platforms.

    An entity absent from a platform (an unannotated probe, a gene without a CAGE promoter)
    is judged by the platforms that measure it (its row there is -1), not dropped.
    """
    union = data[platforms[0]].entities
    for platform in platforms[1:]:
        union = union.union(data[platform].entities, sort=False)
    union = union.sort_values()
    rows = {p: data[p].entities.get_indexer(union) for p in platforms}
    cells = [(p, outcomes.index(o), int(s)) for p in platforms for o, s in pattern.items()]
    return RuleCells(cells, rows, union, agreement)


def platform_calibrated(magnitude: np.ndarray, measured: np.ndarray, n_platforms: int):
    """The weakest-platform score of entities seen on fewer platforms, on the full scale.

    Under the null, the minimum of ``k`` platform scores is about as rare as the minimum
    of ``k_eff = 1 + (k - 1) * c`` independent normal scores (``c``:
    :data:`PLATFORM_CORRELATION`; the platforms share the line's biology, so their scores
    correlate). A score ``t`` from ``k`` of ``K`` platforms becomes the ``t'`` whose tail is
    as rare among entities on all ``K``: ``log sf(t') = k_eff(k) / k_eff(K) * log sf(t)``.
    Entities on every platform keep their score; those on fewer must be stronger.
    """
    out = np.where(measured > 0, magnitude, 0.0)
    partial = (measured < n_platforms) & (out > 0)  # only these need the (slow) transform
    k_eff = 1 + (measured[partial] - 1) * PLATFORM_CORRELATION
    k_full = 1 + (n_platforms - 1) * PLATFORM_CORRELATION
    shrunk = -special.ndtri_exp(k_eff / k_full * special.log_ndtr(-out[partial]))
    out[partial] = np.maximum(shrunk, 0.0)
    return out


def across_platforms(
    stouffer: np.ndarray, agreement: Agreement = "weakest"
) -> tuple[np.ndarray, np.ndarray]:
    """Per entity, the platforms' agreement in the pattern's direction and in the flipped one.

    ``stouffer``: entities x platforms ``S_p`` (NaN where a platform lacks the entity).
    ``"weakest"``: ``min_p S_p`` (and ``min_p -S_p``). ``"mean"``: where the weakest passes
    :data:`MEAN_FLOOR`, the mean of ``S_p`` over the platforms that measure the entity (at
    least the weakest, so these entities rank above every one below the bar); elsewhere the
    weakest, as with ``"weakest"``.
    """
    finite = np.isfinite(stouffer)
    measured = np.maximum(finite.sum(axis=1), 1)
    out = []
    for signed in (stouffer, -stouffer):
        weakest = np.where(finite, signed, np.inf).min(axis=1)
        if agreement == "mean":
            mean = np.where(finite, signed, 0.0).sum(axis=1) / measured
            weakest = np.where(weakest >= MEAN_FLOOR, mean, weakest)
        out.append(weakest)
    return out[0], out[1]


def rule_statistic(
    scores: dict[str, np.ndarray], where: RuleCells
) -> tuple[np.ndarray, np.ndarray]:
    """Signed agreement statistic of every entity, and the cells' signed scores.

    Per platform the Stouffer score over the rule's outcomes, ``S_p = sum(sign_o * z) /
    sqrt(outcomes)``; across the platforms that measure the entity the weakest:
    ``|T| = max(min_p S_p, min_p -S_p, 0)`` with the sign of the direction that wins (0
    when the platforms disagree), or with ``where.agreement == "mean"`` the mean of ``S_p``
    where the weakest passes :data:`MEAN_FLOOR` (:func:`across_platforms`); put on the
    all-platform scale by :func:`platform_calibrated` where a platform lacks the entity.
    Returns (signed ``T``, entities x cells of ``sign_o * z``, NaN where a platform lacks
    the entity).
    """
    n_entities = len(where.entities)
    if not where.cells:
        return np.zeros(n_entities), np.zeros((n_entities, 0))
    blocks = []
    for platform, rows in where.rows.items():  # cells are platform-major
        cells = [(j, sign) for p, j, sign in where.cells if p == platform]
        columns = [j for j, _ in cells]
        block = scores[platform][np.maximum(rows, 0)][:, columns] * [s for _, s in cells]
        block[rows < 0] = np.nan
        blocks.append(block)
    cell_z = np.hstack(blocks)
    per_platform = np.stack(blocks, axis=1)
    stouffer = per_platform.sum(axis=2) / np.sqrt(per_platform.shape[2])  # NaN where absent
    measured = np.isfinite(stouffer).sum(axis=1)
    up, down = across_platforms(stouffer, where.agreement)
    magnitude = np.maximum(np.maximum(up, down), 0.0)  # platforms that disagree score 0
    magnitude = platform_calibrated(np.where(measured > 0, magnitude, 0.0), measured, len(blocks))
    return np.where(up >= down, magnitude, -magnitude), cell_z


def all_scores(data: dict, Y: np.ndarray, n_lines: int) -> dict[str, np.ndarray]:
    """Per platform: entities x outcomes normal scores ``rho * sqrt(n - 1)``."""
    scale = np.sqrt(n_lines - 1)
    return {p: entity_scores((d.ranks.T @ Y) * scale, d) for p, d in data.items()}


def permutation_counts(
    observed: dict[str, np.ndarray],
    data: dict,
    where: dict[str, RuleCells],
    Y: np.ndarray,
    *,
    n_permutations: int,
    random_state: int,
) -> dict[str, np.ndarray]:
    """Per rule and observed entity: the mean number of permuted ``|T*| >= |T|``.

    Line labels are permuted jointly: one permutation of the outcome rows for every
    platform and outcome.
    """
    rng = np.random.default_rng(random_state)
    thresholds = {r: np.sort(np.abs(s)) for r, s in observed.items()}
    counts = {r: np.zeros(len(s)) for r, s in observed.items()}
    n = Y.shape[0]
    for _ in progress(range(n_permutations), desc="consensus permutations"):
        scores = all_scores(data, Y[rng.permutation(n)], n)
        for rule, cells in where.items():
            null = np.sort(np.abs(rule_statistic(scores, cells)[0]))
            counts[rule] += len(null) - np.searchsorted(null, thresholds[rule], side="left")
    expected = {}
    for rule, s in observed.items():
        position = np.searchsorted(thresholds[rule], np.abs(s), side="left")
        expected[rule] = counts[rule][position] / n_permutations
    return expected


def qvalues(statistic: np.ndarray, expected_false: np.ndarray) -> np.ndarray:
    """Step-down permutation q-values: the largest FDR estimate of any list down to a feature.

    ``FDR(t) = min(1, V(t) / #{|T| >= t})`` at each feature's own ``t = |T|``; a feature's
    q-value is the largest FDR among the lists from the top down to it (the cumulative
    maximum from the top), so a list ``q <= alpha`` is the longest top list whose every
    shorter list also has an estimated FDR at most ``alpha``. This is more conservative
    than the step-up minimum, which picks the luckiest threshold when few features are
    called and gene-gene correlation makes ``V`` vary.
    """
    magnitude = np.abs(statistic)
    if magnitude.size == 0:
        return np.zeros(0)
    ascending = np.sort(magnitude)
    called = len(magnitude) - np.searchsorted(ascending, magnitude, side="left")
    fdr = np.minimum(1.0, expected_false / np.maximum(called, 1))
    order = np.argsort(-magnitude, kind="stable")
    stepped = np.maximum.accumulate(fdr[order])
    out = np.empty_like(fdr)
    out[order] = stepped
    return out
