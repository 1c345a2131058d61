"""``release``: new lots against a frozen reference, with one verdict per lot and its rule.

map -> cells mapped onto a reference cluster of damaged cells (``tl.cluster_quality``) -> lot
fractions on the mapped labels -> each lot's potency-like share with a confidence
interval carrying label uncertainty -> predicted potency with a prediction interval (the
model fitted on the reference lots) and an extrapolation flag -> comparability (tolerance
limits of the reference lots) -> mapping QC -> a verdict in plain words.

The reference analysis leaves two files: the frozen reference (cells, for mapping; see
:func:`mscpotency.tl.freeze_reference`) and a small *lot model* (the reference lots' cluster
counts, potency association and fitted potency model, tied to the frozen reference's hash
and stamped with a content hash of its own), written by :func:`write_lot_model`.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import stats

from .. import _keys, _registry, get, pp, tl
from .._stored import potency_cluster
from ._analyse import WORKFLOW_KEY, collected_warnings, record_inputs, record_warning
from ._settings import AnalysisSettings

logger = logging.getLogger("mscpotency")

#: What the lot model keeps of the analysed reference (``uns`` keys).
LOT_MODEL_KEYS = ("lot_fractions", "potency_association", "potency_markers", "potency_model")

#: Kept too where the analysis made them (the summary reports them).
OPTIONAL_KEYS = ("potency_population", "association_stability")

#: The verdicts, from best to worst.
VERDICTS = ("PASS", "REVIEW", "FAIL")


# ----------------------------------------------------------------------------- lot model
def write_lot_model(adata: AnnData, frozen: AnnData, path: str | os.PathLike) -> Path:
    """Write what a release needs of the reference lots (tiny, compressed ``.h5ad``).

    The lot table, the reference lots' cluster counts, the potency association, the fitted
    potency model and the resolved settings, with the frozen reference's hash: a release
    refuses a lot model that belongs to another reference. The file is stamped with its own
    content hash (:func:`lot_model_hash`), which is also recorded in
    ``adata.uns['workflow']['lot_model_hash']`` (the report names it).
    """
    model = AnnData(obs=get.lot_table(adata))
    for key in (*LOT_MODEL_KEYS, *OPTIONAL_KEYS, _keys.PACKAGE):  # the package key: the log
        if key in adata.uns:
            model.uns[key] = adata.uns[key]
    model.uns[WORKFLOW_KEY] = {
        **adata.uns.get(WORKFLOW_KEY, {}),
        "reference_hash": str(frozen.uns[_registry.FROZEN_REFERENCE.key]["hash"]),
    }
    model.obs = model.obs.astype(
        {c: str for c in model.obs.columns if model.obs[c].dtype == object}
    )
    path = Path(path)
    model.write_h5ad(path, compression="gzip")
    written = ad.read_h5ad(path)  # the hash covers what a release will read back
    stamp = lot_model_hash(written)
    written.uns[WORKFLOW_KEY]["lot_model_hash"] = stamp
    written.write_h5ad(path, compression="gzip")
    adata.uns.setdefault(WORKFLOW_KEY, {})["lot_model_hash"] = stamp
    return path


def lot_model_hash(model: AnnData) -> str:
    """The lot model's content hash: its lot table and every ``uns`` entry but the hash itself.

    32 hexadecimal digits (BLAKE2b) over a canonical walk of the content (mappings by sorted
    key, tables column by column, arrays with dtype and shape, numbers by value), so it is the
    same after a write and a read. :func:`read_lot_model` refuses a file whose content no
    longer hashes to the value stamped in it.
    """
    h = hashlib.blake2b(digest_size=16)
    _digest(h, model.obs)
    uns = {k: v for k, v in model.uns.items() if k != WORKFLOW_KEY}
    uns[WORKFLOW_KEY] = {
        k: v for k, v in model.uns.get(WORKFLOW_KEY, {}).items() if k != "lot_model_hash"
    }
    _digest(h, uns)
    return h.hexdigest()


def _digest(h: Any, value: Any) -> None:
    """Feed ``value`` to the hash ``h`` in a canonical form (see :func:`lot_model_hash`)."""
    if isinstance(value, Mapping):
        for key in sorted(value, key=str):
            h.update(f"k:{key}\x1f".encode())
            _digest(h, value[key])
    elif isinstance(value, pd.DataFrame):
        h.update(b"df:")
        _digest(h, np.asarray(value.index.astype(str)))
        for column in value.columns:
            h.update(f"c:{column}\x1f".encode())
            _digest(h, value[column].to_numpy())
    elif isinstance(value, (np.ndarray, list, tuple, pd.Series, pd.Index)):
        array = np.asarray(value)
        if array.dtype.kind in "biufc":
            h.update(f"a:{array.dtype.str}:{array.shape}\x1f".encode())
            h.update(np.ascontiguousarray(array).tobytes())
        else:  # strings, categories, mixed: by text
            h.update(f"t:{array.shape}\x1f".encode())
            h.update("\x1f".join(map(str, array.ravel().tolist())).encode())
    elif isinstance(value, (bool, np.bool_)):
        h.update(f"b:{bool(value)}\x1e".encode())
    elif isinstance(value, (int, np.integer)):
        h.update(f"i:{int(value)}\x1e".encode())
    elif isinstance(value, (float, np.floating)):
        h.update(f"f:{float(value)!r}\x1e".encode())
    else:
        h.update(f"s:{value}\x1e".encode())


def read_lot_model(path: str | os.PathLike, reference_hash: str) -> AnnData:
    """Read a lot model and check that it belongs to the reference of ``reference_hash``."""
    path = Path(path)
    if not path.is_file():
        msg = (
            f"lot model {str(path)!r} does not exist; `mscpotency analyse` writes it next to "
            "the frozen reference (reference_lots.h5ad); name it with --lot-model."
        )
        raise FileNotFoundError(msg)
    model = ad.read_h5ad(path)
    missing = [k for k in LOT_MODEL_KEYS if k not in model.uns]
    stored_hash = model.uns.get(WORKFLOW_KEY, {}).get("reference_hash")
    if missing or stored_hash is None:
        msg = f"{str(path)!r} is not a lot model written by `mscpotency analyse` (missing {missing or ['reference_hash']})."
        raise ValueError(msg)
    if str(stored_hash) != reference_hash:
        msg = (
            f"lot model {str(path)!r} belongs to the reference with hash {stored_hash}, not to "
            f"the one given ({reference_hash}); use the pair written by the same analysis."
        )
        raise ValueError(msg)
    _check_lot_model_hash(model, path)
    return model


def _check_lot_model_hash(model: AnnData, path: Path) -> None:
    """Refuse a lot model without its content hash, or whose content no longer matches it."""
    stamped = model.uns[WORKFLOW_KEY].get("lot_model_hash")
    if stamped is None:
        msg = (
            f"lot model {str(path)!r} carries no content hash (written by an earlier "
            "mscpotency); run `mscpotency analyse` again to write a stamped pair."
        )
        raise ValueError(msg)
    digest = lot_model_hash(model)
    if str(stamped) != digest:
        msg = (
            f"lot model {str(path)!r} was modified after it was written: its content hashes to "
            f"{digest}, not to the {stamped} stamped in it. Use the file `mscpotency analyse` "
            "wrote; a lot model is never edited by hand."
        )
        raise ValueError(msg)


# ----------------------------------------------------------------------------- kernels
def share_interval(probabilities: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """A lot's potency-like share and its interval, carrying label and sampling uncertainty.

    ``probabilities`` holds each cell's probability of the potency label. The share is their
    mean ``p``. Resampling the lot's ``n`` cells with replacement and drawing each resampled
    cell's label from its probability gives a count of potency-like cells that is exactly
    ``Binomial(n, p)`` (each draw is a label of a uniformly chosen cell: Bernoulli(``p``)),
    so the interval is the Clopper-Pearson interval of ``k = n p`` successes in ``n``
    (beta quantiles, valid for a fractional ``k``). Certain labels (all 0/1) give the usual
    exact binomial interval of the observed count, which covers the lot's population share
    at least at ``level``; with calibrated uncertain labels the interval is conservative
    (the mean probability varies less than certain labels would). It does not correct a
    mapping that is biased (miscalibrated): the off-reference and low-confidence shares of
    the release table say when to distrust the labels.
    """
    p = np.asarray(probabilities, dtype=float)
    n = p.size
    if n == 0:
        return np.nan, np.nan, np.nan
    share = float(p.mean())
    k, tail = share * n, (1 - level) / 2
    low = 0.0 if k <= 0 else float(stats.beta.ppf(tail, k, n - k + 1))
    high = 1.0 if k >= n else float(stats.beta.ppf(1 - tail, k + 1, n - k))
    return share, low, high


def verdict_rule(settings: AnalysisSettings) -> str:
    """The rule, in words, that :func:`verdict` applies with these settings."""
    s = settings
    fail, review = (
        [],
        [
            f"more than {s.max_off_reference:.0%} of its cells are off the reference",
            "more of its cells are flagged novel than the novelty rate allows (the mapping's "
            "per-lot excess-novel test)",
            "its composition lies outside the reference lots' tolerance limits "
            f"({s.tolerance_coverage:.0%} coverage, {s.tolerance_level:.0%} confidence)",
            "its potency prediction extrapolates beyond the reference lots' range",
        ],
    )
    if s.min_share is not None:
        fail.append(f"its whole {s.share_level:.0%} share interval lies below {s.min_share:.1%}")
        review.append(f"its share interval contains {s.min_share:.1%}")
    if s.min_potency is not None:
        fail.append(
            f"its whole {s.prediction_level:.0%} prediction interval lies below {s.min_potency:g}"
        )
        review.append(f"its prediction interval contains {s.min_potency:g}")
    text = (
        "FAIL if " + " or ".join(fail) + "; "
        if fail
        else "No FAIL rule (no minimum share or potency set); "
    )
    review.append(f"it has fewer than {s.min_cells_per_lot} cells after QC (not assessed)")
    return text + "REVIEW if " + "; or ".join(review) + "; PASS otherwise."


def verdict(row: pd.Series, settings: AnalysisSettings) -> tuple[str, str]:
    """(verdict, reasons) of one lot of the release table, by :func:`verdict_rule`.

    A lot with fewer cells after QC than ``min_cells_per_lot`` is not assessed, and is for
    review, never passed, whether or not a share and prediction were computed for it (QC
    keeps a small lot with a warning, and its share is then computed).
    """
    s, fails, reviews = settings, [], []
    if "n_cells" in row.index and row["n_cells"] < s.min_cells_per_lot:
        return "REVIEW", (
            f"not assessed: fewer than {s.min_cells_per_lot} cells after QC "
            f"(min_cells_per_lot; {int(row['n_cells'])} cells): its share and prediction are "
            "shown but too uncertain to pass it"
        )
    if pd.isna(row["prediction"]) or pd.isna(row["comparable"]):
        return "REVIEW", (
            f"not assessed: fewer than {s.min_cells_per_lot} cells after QC "
            "(min_cells_per_lot), so no share, prediction or comparability"
        )
    if s.min_share is not None:
        if row["share_high"] < s.min_share:
            fails.append(
                f"share {row['share']:.1%} (up to {row['share_high']:.1%}) below {s.min_share:.1%}"
            )
        elif row["share_low"] <= s.min_share:
            reviews.append(f"share interval contains the minimum {s.min_share:.1%}")
    if s.min_potency is not None:
        if row["prediction_high"] < s.min_potency:
            fails.append(
                f"predicted potency {row['prediction']:.3g} (up to {row['prediction_high']:.3g}) below {s.min_potency:g}"
            )
        elif row["prediction_low"] <= s.min_potency:
            reviews.append(f"prediction interval contains the minimum {s.min_potency:g}")
    if row["off_reference"] > s.max_off_reference:
        reviews.append(f"{row['off_reference']:.0%} of cells off the reference")
    if _is_true(row.get("excess_novel")):
        reviews.append(_excess_novel_reason(row))
    if not row["comparable"]:
        reviews.append(f"not comparable: {row['comparability']}")
    if row["extrapolating"]:
        reviews.append("prediction extrapolates the reference range")
    if fails:
        return "FAIL", "; ".join(fails + reviews)
    if reviews:
        return "REVIEW", "; ".join(reviews)
    return "PASS", "every check within its limit"


def _is_true(value: Any) -> bool:
    """Whether a table cell holds True (NaN and None, not assessed, are not)."""
    return value is not None and not pd.isna(value) and bool(value)


def _excess_novel_reason(row: pd.Series) -> str:
    """Why a lot failing the excess-novel test is for review (with the make-up caveat)."""
    reason = (
        f"{row['share_novel']:.1%} of cells flagged novel, more than the novelty rate allows "
        "(excess-novel test): cells the reference may not represent"
    )
    if _is_true(row.get("make_up_unusual")):
        reason += (
            " (its make-up is unlike any reference lot's, and part of the excess may be its "
            "make-up)"
        )
    return reason


# ----------------------------------------------------------------------------- the release
def release(
    query: AnnData,
    reference: str | os.PathLike,
    lot_model: AnnData,
    *,
    settings: AnalysisSettings | None = None,
    expected_hash: str | None = None,
) -> pd.DataFrame:
    """Map new lots onto a frozen reference and give each a verdict (``query`` in place).

    Parameters
    ----------
    query
        Raw counts of the new lots (cells x genes, ``obs[settings.lot_key]``); measured
        potency in ``obs[settings.potency]`` is used for validation where present.
    reference
        Path of the frozen reference (:func:`mscpotency.io.write_reference`).
    lot_model
        The reference lots' model (:func:`read_lot_model`).
    settings
        Thresholds and levels (default: the settings the reference was analysed with).
    expected_hash
        The reference hash the lab approved; any other reference is refused.

    Returns
    -------
    The release table (one row per lot; also in ``query.uns['workflow']['release']``).
    """
    s = settings or AnalysisSettings(**_stored_settings(lot_model))
    if "settings" not in query.uns.get(WORKFLOW_KEY, {}):
        record_inputs(query, s)
    with collected_warnings(query):
        pp.qc(query, **s.qc_arguments())
        tl.map_to_reference(query, reference, method=s.mapping_method, lot_key=s.lot_key,
                            expected_hash=expected_hash, warn_off_reference=s.max_off_reference,
                            random_state=s.random_state)  # fmt: skip
        key = _registry.MAPPING.key
        tl.cluster_quality(query, cluster_key=key, lot_key=s.lot_key)
        tl.lot_fractions(query, lot_key=s.lot_key, cluster_key=key,
                         weights_key=f"{key}_probabilities", min_cells_per_lot=s.min_cells_per_lot)  # fmt: skip
        measured = s.potency if _measured(query, s.potency, s.lot_key) else None
        tl.predict_potency(query, lot_model, potency=measured)
        tl.comparability(query, lot_model, coverage=s.tolerance_coverage, level=s.tolerance_level)
        if measured is not None and query.obs[s.lot_key].nunique() >= 3:
            set_key = "set" if "set" in query.obs and query.obs["set"].nunique() > 1 else None
            tl.validate_potency(query, measured, lot_key=s.lot_key, set_key=set_key,
                                random_state=s.random_state)  # fmt: skip
    table = release_table(query, lot_model, s)
    query.uns[WORKFLOW_KEY]["release"] = table
    query.uns[WORKFLOW_KEY]["verdict_rule"] = verdict_rule(s)
    query.uns[WORKFLOW_KEY]["reference_hash"] = str(query.uns[key]["reference_hash"])
    return table


def _stored_settings(lot_model: AnnData) -> dict:
    stored = dict(lot_model.uns.get(WORKFLOW_KEY, {}).get("settings", {}))
    names = set(AnalysisSettings.__dataclass_fields__)
    return {k: (None if v == "" else _plain(v)) for k, v in stored.items() if k in names}


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


def _measured(query: AnnData, potency: str, lot_key: str) -> bool:
    """Whether every lot has a measured potency to validate against; said when some lack it.

    With some lots blank or not numbers (e.g. decimal commas), the validation against
    measured potency is skipped, and the report's warnings name those lots.
    """
    if potency not in query.obs:
        return False
    values = query.obs.groupby(lot_key, observed=True)[potency].first()
    missing = values.index[pd.to_numeric(values, errors="coerce").isna()].astype(str).tolist()
    if missing:
        record_warning(
            query,
            f"the validation against measured potency ({potency!r}) was skipped: lots "
            f"{missing[:20]} have no numeric value (blank, or written as text such as a decimal "
            "comma); give every lot a number to validate.",
        )
        return False
    if not pd.api.types.is_numeric_dtype(query.obs[potency]):
        record_warning(
            query,
            f"the validation against measured potency ({potency!r}) was skipped: the column "
            "holds text; convert it to numbers to validate.",
        )
        return False
    return True


def release_table(query: AnnData, lot_model: AnnData, settings: AnalysisSettings) -> pd.DataFrame:
    """One row per new lot: share and interval, prediction, comparability, mapping QC, verdict.

    ``low_quality``: the share of the lot's cells whose transferred label is a cluster of
    low-quality cells (:func:`mscpotency.tl.cluster_quality`); they stay in the share's
    denominator, as the reference lots' damaged cells stay in theirs.
    """
    s, key = settings, _registry.MAPPING.key
    cluster = potency_cluster(lot_model, if_not_significant="ignore")
    probabilities = query.obsm[f"{key}_probabilities"]
    lots = query.obs[s.lot_key].astype(str)
    shares = {
        lot: share_interval(probabilities.loc[lots == lot, cluster].to_numpy(), s.share_level)
        for lot in pd.unique(lots)
    }
    table = pd.DataFrame(shares, index=["share", "share_low", "share_high"]).T
    table.index.name = s.lot_key
    prediction = _by_lot(get.predict_potency(query), s.lot_key)
    comparability = get.comparability(query)
    mapping = get.map_to_reference(query)
    mapping = _by_lot(mapping, s.lot_key)
    table["n_cells"] = mapping["n_cells"].reindex(table.index)
    table["prediction"] = prediction["prediction"].reindex(table.index)
    table["prediction_low"] = prediction["low"].reindex(table.index)
    table["prediction_high"] = prediction["high"].reindex(table.index)
    table["extrapolating"] = prediction["outside_range"].reindex(table.index)
    if "observed" in prediction:
        table["measured_potency"] = prediction["observed"].reindex(table.index)
    table["tolerance_low"] = comparability["potency_low"].reindex(table.index)
    table["tolerance_high"] = comparability["potency_high"].reindex(table.index)
    table["outside_by"] = _outside_by(
        table["share"], table["tolerance_low"], table["tolerance_high"]
    )
    table["comparable"] = comparability["comparable"].reindex(table.index)  # NaN: not assessed
    table["comparability"] = comparability["reason"].reindex(table.index)
    table["off_reference"] = mapping["share_off_reference"].reindex(table.index)
    table["share_novel"] = mapping["share_novel"].reindex(table.index)
    table["excess_novel"] = mapping["excess_novel"].reindex(table.index)
    table["make_up_unusual"] = mapping["make_up_unusual"].reindex(table.index)
    table["low_confidence"] = mapping["share_low_confidence"].reindex(table.index)
    damaged = query.obs[_registry.CLUSTER_QUALITY.key].groupby(lots, observed=True).mean()
    table["low_quality"] = damaged.reindex(table.index)
    decided = table.apply(lambda row: verdict(row, s), axis=1, result_type="expand")
    table["verdict"], table["reasons"] = decided[0], decided[1]
    table.attrs["cluster"] = cluster
    return table


def _by_lot(table: pd.DataFrame, lot_key: str) -> pd.DataFrame:
    """``table`` indexed by lot name (str), whether the lots are a column or the index."""
    table = table.set_index(lot_key) if lot_key in table.columns else table
    return table.set_axis(table.index.astype(str), axis=0)


def _outside_by(share: pd.Series, low: pd.Series, high: pd.Series) -> pd.Series:
    """How far (share units) a share lies outside its tolerance limits (0 inside)."""
    return (share - high).clip(lower=0) - (low - share).clip(lower=0)
