"""``tl.map_to_reference``: transfer reference labels to new lots, with calibrated confidence.

The steps every backend shares live here: read the reference, harmonise the query's genes
and normalisation, centre it per lot and project it, score how well the reference
represents each cell, place cells on the reference UMAP, summarise per lot and write one
output schema. The label transfer itself is the backend's (:mod:`._transfer`).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
import warnings
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import pandas as pd
from anndata import AnnData

from ... import _keys
from ..._docs import doc_params
from ..._frozen import ReferenceModel, lognormalise, reference_model
from ..._provenance import record
from ..._registry import MAPPING
from ..._validate import lots_of, require_unique_cell_names
from ...io._reference import read_reference
from ._calibration import apply_temperature
from ._conformal import class_thresholds, prediction_sets, set_labels
from ._fast import gaussian_weights
from ._harmonise import Harmonised, harmonise, most_important, query_counts, variance_weights
from ._make_up import UNUSUAL, MakeUp, estimated_make_up, reference_populations
from ._neighbors import knn
from ._novel_groups import group_novelty, query_groups
from ._novelty import (
    background,
    calibration_set_size,
    depth_model,
    held_out_mapping_scores,
    lot_novelty,
    novelty_pvalues,
    novelty_summary,
    padding,
    reference_mean_counts,
    scored_as_a_query,
    scored_in_sets,
    scoring_sets,
)
from ._project import centred
from ._scoring import mapping_score
from ._shipped import install as install_shipped
from ._transfer import (
    MappingInput,
    Transfer,
    TransferOptions,
    backend_options,
    boundary_labels,
)

logger = logging.getLogger("mscpotency")

Method = Literal["fast", "anchors", "scvi"]

#: Default share of the reference embedding's variance that missing genes may carry before
#: a warning; measured in tests/tl/test_mapping.py (``test_missing_gene_thresholds``).
WARN_VARIANCE_MISSING = 0.15
#: Default share above which the query is refused (same measurements).
MAX_VARIANCE_MISSING = 0.35
#: Default share of off-reference cells (overall or in a lot) above which mapping warns;
#: measured in tests/tl/test_mapping.py (``test_off_reference_warning``).
WARN_OFF_REFERENCE = 0.25

#: Default false-flag rate of the novelty p-values (see ``novelty_alpha``).
NOVELTY_ALPHA = 0.01
#: Default level of the conformal prediction sets (see ``set_alpha``).
SET_ALPHA = 0.01
#: The label of cells with an empty prediction set or flagged novel.
UNASSIGNED = "Unassigned"
#: Warn that the query differs from the reference as a whole when its median novelty p-value
#: is below this (known cells exchangeable with the reference's give a median near 0.5).
WARN_MEDIAN_NOVELTY_P = 0.2

#: The arguments stored in ``uns[key_added]['params']`` as given (after method and options).
_PARAMS = (
    "cluster_key",
    "layer",
    "lot_key",
    "calibrate",
    "min_shared_genes",
    "warn_variance_missing",
    "max_variance_missing",
    "min_cells_per_lot",
    "min_score",
    "novelty_alpha",
    "novelty_groups",
    "set_alpha",
    "min_mapping_score",
    "warn_off_reference",
    "expected_hash",
    "n_comps_own",
    "umap_key",
    "knn_method",
    "random_state",
)

#: Columns of a reliability table (also of the empty one an uncalibrated mapping stores).
_RELIABILITY_COLUMNS = ["low", "high", "n_cells", "mean_score", "accuracy"]


def _blas_single_thread(func):
    """Run with one BLAS thread.

    The linear algebra here is many small factorisations (QR/SVD of cells x 30 blocks), for
    which a multi-threaded BLAS spends far more time synchronising than computing (40x
    slower on two busy cores); the heavy lifting (neighbour search) is threaded by
    scikit-learn's own OpenMP pool, which a BLAS pool would only oversubscribe.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any):
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1, user_api="blas"):
            return func(*args, **kwargs)

    return wrapper


def _with_reference_hash(func):
    """Add the reference's content hash to the provenance entry the call wrote."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any):
        result = func(*args, **kwargs)
        target = result if isinstance(result, AnnData) else (args[0] if args else kwargs["adata"])
        key = kwargs.get("key_added", MAPPING.key)
        log = target.uns.get(_keys.PACKAGE, {}).get(_keys.LOG)
        if isinstance(target.uns.get(key), dict) and log is not None and len(log):
            entry = json.loads(str(log[-1]))
            if entry.get("function") == MAPPING.producer:
                entry["params"]["reference_hash"] = str(target.uns[key]["reference_hash"])
                target.uns[_keys.PACKAGE][_keys.LOG] = [
                    *list(log)[:-1],
                    json.dumps(entry, sort_keys=True),
                ]
        return result

    return wrapper


@doc_params
@_with_reference_hash
@record("tl.map_to_reference")
@_blas_single_thread
def map_to_reference(
    adata: AnnData,
    reference: AnnData | str | os.PathLike,
    *,
    method: Method = "anchors",
    options: TransferOptions | None = None,
    cluster_key: str = _keys.CLUSTER,
    layer: str | None = _keys.COUNTS_LAYER,
    lot_key: str | None = _keys.LOT,
    calibrate: bool = True,
    min_shared_genes: float = 0.5,
    warn_variance_missing: float = WARN_VARIANCE_MISSING,
    max_variance_missing: float = MAX_VARIANCE_MISSING,
    min_cells_per_lot: int = 50,
    min_score: float = 0.5,
    novelty_alpha: float = NOVELTY_ALPHA,
    novelty_groups: bool | str = False,
    set_alpha: float = SET_ALPHA,
    min_mapping_score: float | None = None,
    warn_off_reference: float = WARN_OFF_REFERENCE,
    expected_hash: str | None = None,
    n_comps_own: int = 20,
    umap_key: str = "X_umap",
    knn_method: Literal["auto", "exact", "approximate"] = "auto",
    random_state: int = 0,
    key_added: str = MAPPING.key,
    copy: bool = False,
) -> AnnData | None:
    """Map query cells (new lots, other tissues) onto a reference and transfer its labels.

    The query's raw counts are normalised exactly as the reference was, aligned to the genes
    of the reference embedding (missing genes zero-padded and reported) and projected onto
    the reference PCA. One of three backends then transfers the labels, each with its own
    options object:

    - ``"fast"`` (:class:`~mscpotency.tl.FastOptions`): weighted votes of the nearest
      reference cells in the reference PCA (what scanpy's ``ingest`` does); right when query
      lots share the reference's batch;
    - ``"anchors"`` (:class:`~mscpotency.tl.AnchorOptions`): Seurat's FindTransferAnchors
      (``pcaproject``) + TransferData on numpy: mutual nearest neighbours as anchors,
      filtered, scored, and anchor-weighted label transfer; robust to lot and tissue effects;
    - ``"scvi"`` (:class:`~mscpotency.tl.ScviOptions`): scVI → scANVI on the reference with
      lots as batches and scArches query surgery (optional dependency ``scvi-tools``).

    Every backend writes the same fields. The probabilities are temperature-scaled on the
    reference (its lots held out in turn and mapped onto the others; for scvi, the reference
    cells scANVI's classifier did not train on), and a mapping score, computed from the
    query's own structure, says how well the reference represents each cell: cells of a
    population the reference lacks score low instead of hiding behind a confident label.

    Parameters
    ----------
    adata
        {adata}
        The cells to map, with raw counts in ``layers[layer]`` (or ``X``).
    reference
        A processed reference (``pp.preprocess``, labels in ``obs[cluster_key]``), a frozen
        one from :func:`mscpotency.tl.freeze_reference`, or the path of a saved frozen one.
        A frozen reference is verified against its content hash (an integrity check, not a
        signature: see ``expected_hash``).
    method
        {method}
        The backend: ``"fast"``, ``"anchors"`` or ``"scvi"`` (above). ``"anchors"`` by
        default: on real data from other technologies it was as accurate as or more than
        ingest and Seurat 4.3 where ``fast`` fell behind (issue 16: accuracy/macro-F1
        0.910/0.814 against 0.819/0.651); on the simulated presets both are within 0.003 of
        each other (``benchmarks/results/mapping_crosstech.md``). Anchors costs more: on
        the study preset (16,314 reference cells, sets of 5,900-7,400 query cells, 2 idle
        cores) 1.4-1.8 s per set against 0.6-0.8 s for fast once the reference's
        calibrations are cached, about 9 s against 5 s for a first call that computes them
        (not onto a reference frozen with ``tl.freeze_reference(..., calibrations=...)``,
        which ships them; Seurat 4.3's transfer with ``k.filter=NA``: 16-19 s per set;
        ``benchmarks/results/mapping_profile.md``); 10^5 query onto 10^5 reference cells,
        cold, 56-70 s on 2 cores (``benchmarks/results/mapping_scale_100000_anchors.md``).
        Pass ``"fast"`` for query lots of the reference's batch.
    options
        The backend's options: :class:`~mscpotency.tl.FastOptions`,
        :class:`~mscpotency.tl.AnchorOptions` or :class:`~mscpotency.tl.ScviOptions`,
        matching ``method``; ``None``: that backend's defaults.
    cluster_key
        {cluster_key}
        Here the reference's: the labels to transfer.
    lot_key
        {lot_key}
        The query's lots: per-lot centring, per-lot summaries and the small-lot warning.
        ``None`` treats the query as one lot.
    calibrate
        Fit a temperature on held-out reference cells and apply it.
    min_shared_genes
        Smallest share of the reference's embedding genes the query must have.
    warn_variance_missing
        Warn when the embedding genes the query lacks carry more than this share of the
        reference embedding's variance (a gene carries its squared loadings weighted by each
        component's variance; missing genes are zero-padded). Default 0.15: on the simulated
        presets, queries below it kept at least 97% of the labels of the full-gene mapping.
    max_variance_missing
        Refuse the query when its missing embedding genes carry more than this share. Default
        0.35: above it, queries kept as few as 60% (42% of the variance missing) and 18% (63%
        missing, the 45% of genes listed first) of their labels.
    min_score
        Cells whose prediction score is below this count as low-confidence.
    novelty_alpha
        False-flag rate of the novelty p-values: cells with ``p <= novelty_alpha`` are
        flagged novel (and labelled ``"Unassigned"``). Default 0.01: a known-population lot
        loses about 1% of its cells to Unassigned, which moves its fractions by well under
        a percentage point, while a population the reference lacks is still flagged (98% of
        left-out SP3 cells on the study preset; measured in ``benchmarks/mapping_crosstech.py``).
    novelty_groups
        Also test the query's groups as wholes: ``True`` clusters the query on its own genes
        (nothing from the reference: 500 most dispersed genes, PCA 30, 15 neighbours,
        Leiden at resolution 1), an ``obs`` key uses those groups (e.g. the query's own
        clusters), ``False`` (default) tests cells only. A group whose cells are flagged
        significantly more often than 1.5 x ``novelty_alpha`` (one-sided binomial,
        Bonferroni over groups at 0.05) is novel as a whole: all its cells are flagged and
        Unassigned. Meant for a population the reference lacks whose cells the p-values flag
        only weakly; known cells are flagged beyond their own p-values only when their group
        is. With p-values valid for every known population a known group is flagged with
        probability below 0.05; across technologies and tissues they are valid over all known
        cells, not population by population, and a group mixing novel and known cells is
        flagged whole, so the control is approximate. Measured at ``alpha = 0.05``
        (``benchmarks/results/novelty_crosstech_groups_notes.md``): cross-technology preset,
        seeds 0-9, left-out population flagged at 91/11/87/93/97/95/96/93/90/57% (11-37%
        cell by cell), known cells at 2.4/3.2/6.0/8.9/3.4/6.9/3.4/6.9/3.3/5.2% (2.1-5.8%);
        its query without the novel population, a known group flagged on 1 seed of 10
        (known cells 5.6% -> 9.7%); study preset with SP3 left out, known cells 4.6% ->
        4.6%, 5.0% -> 15.5% and 2.8% -> 5.0% (seeds 0-2; on seed 1 a known population of
        the other tissues, flagged at 30% cell by cell, was flagged whole). Hence not the
        default. Costs a clustering of the query (about 50 s for
        20,000 cells on 2 cores).
    set_alpha
        Level of the conformal prediction sets: each label's true cells keep it in their set
        with probability at least ``1 - set_alpha``. Default 0.01: above the error rate of
        the labels (about 2% on the presets), a level would have to exclude true labels of
        confidently right cells; at 0.01 sets are mostly single labels, two for cells between
        populations, empty (Unassigned) for about 1% of known cells. Not computed when
        ``calibrate=False`` (no held-out probabilities). A cell keeps its most probable
        label; a non-empty set that lacks it gains it (labelling by the most probable label
        *within* the set handed such cells to the label with the lowest threshold, the
        fuzziest population's: 1-11 false potency cells per seed on the hard preset).
        A query of clearly lower depth than the reference's (another technology) has its
        sets, and its temperature, calibrated on held-out reference cells thinned to its
        depth, as its novelty p-values are: on ``datasets.crosstech`` (40% depth, seeds
        0-2) the true label's coverage at 0.01 went from 0.944-0.968 (anchors) and
        0.964-0.980 (fast) to 0.987-0.995 and 0.985-0.995, the mean set size from
        1.03-1.19 to 1.15-2.26 (more labels cannot be excluded at that depth).
    min_mapping_score
        ``None`` (default): off-reference cells are the cells flagged novel. A number: the
        fixed cut-off of versions before 0.2.0 (cells whose mapping score is below it are
        off-reference), for comparison with earlier runs; it does not carry over between
        data sets (issue 16), and the novelty flags and labels do not depend on it.
    warn_off_reference
        Warn when more than this share of the query's cells, or of a lot's (lots of at least
        ``min_cells_per_lot`` cells), are off-reference, naming the likely causes. Default
        0.25: on the simulated presets a matching query had at most 1.4% off-reference cells
        in any lot, a query with shuffled gene names 98% or more.
    expected_hash
        Pin the reference: its content hash must be this one (32 hexadecimal digits, e.g.
        from a validation report or ``get.freeze_reference(reference)['hash']``), else the
        mapping is refused. The hash covers everything mapping reads from the reference
        (:func:`mscpotency.tl.freeze_reference` says what); pinning is what detects a
        reference whose content was changed and whose stored hash was recomputed to match.
    n_comps_own
        The query's own principal axes used by the mapping score and the anchor filter.
    umap_key
        Reference ``obsm`` key of a UMAP to place query cells on (skipped when absent).
    knn_method
        ``"exact"`` (brute force: deterministic; 10^5 query onto 10^5 reference cells in
        about 15 s on 2 cores), ``"approximate"`` (an inverted file: each query cell
        against the reference cells of its nearest 20% of reference clusters; deterministic,
        recall@30 0.9997 on a 10^5-cell reference) or ``"auto"`` (exact up to 2 x 10^10
        query x reference pairs; the anchors backend's searches up to 10^9).
    key_added
        {key_added}
        Also the prefix of the obs/obsm fields written.

    Returns
    -------
    ``None``, or the copy when ``copy=True``. Writes

    - ``obs[key_added]`` : categorical, the predicted label (the reference's categories and
      ``"Unassigned"``: an empty prediction set or a novel cell);
    - ``obs[key_added + '_score']`` : the largest probability (the prediction score);
    - ``obs[key_added + '_novelty_p']``, ``obs[key_added + '_novel']`` : the novelty
      p-value and the flag at ``novelty_alpha`` (with ``novelty_groups``, also every cell
      of a group novel as a whole);
    - ``obs[key_added + '_novelty_group']`` : categorical, the group each cell was tested
      in (only with ``novelty_groups``);
    - ``obsm[key_added + '_set']`` (DataFrame, cells x labels, booleans) and
      ``obs[key_added + '_set_size']`` : the prediction sets (when calibrated);
    - ``obsm[key_added + '_probabilities']`` : DataFrame (cells x reference labels, rows
      sum to 1);
    - ``obs[key_added + '_mapping_score']`` : in [0, 1], low = not represented by the
      reference (a query larger than 1.5 novelty-calibration folds is scored in sets of
      whole lots of a fold's size, as the calibration cells are);
    - ``obsm[key_added + '_umap']`` : placement on the reference UMAP (when it has one);
    - ``uns[key_added]`` : ``'per_lot'`` DataFrame (cells, mean scores, shares of
      low-confidence, off-reference and Unassigned cells, mean set size, and the novelty
      test: ``n_novel``, ``share_novel``, ``expected_share_novel`` (= ``novelty_alpha``),
      ``novelty_pvalue`` (one-sided binomial), ``excess_novel`` (Bonferroni over lots at
      0.05), ``lot_shift`` (the lot's shift from the reference net of its make-up, in
      within-population standard deviations; NaN unless ``centre="lot_shift"``) and
      ``make_up_ambiguous`` (other make-ups fit the lot about as well: the one needing the
      smallest shift was taken; warned) and ``make_up_unusual`` (a population's share in
      the lot is more than 0.25 above its largest share in any reference lot: the novelty
      flags, calibrated on reference lots, flag such a lot's known cells above the rate;
      said in the excess-novel warning)), ``'novelty'`` (calibration cells, the score
      below which cells are flagged, the query's ``depth_ratio`` and whether the
      calibration cells were thinned to it, ``depth_matched``, the share flagged,
      ``n_scored_beside``: the reference cells a query smaller than a calibration fold was
      scored beside, 0 for a larger one or one with a lot of unusual make-up; with
      ``novelty_groups``, ``'groups'``: per group ``n_cells``, ``n_novel``,
      ``share_novel``, ``novelty_pvalue``, ``excess_novel``), ``'prediction_sets'``
      (``set_alpha`` and each label's threshold and calibration cells), ``'reliability_after'`` and
      ``'reliability_before'`` DataFrames (held-out reference reliability per score bin
      after and before scaling; empty when not calibrated), ``'summary'`` (shares over all
      cells), ``'genes_missing'``, ``'n_genes_shared'``, ``'share_genes_missing'``,
      ``'share_variance_missing'`` (the share of the embedding's variance the missing
      genes carry), ``'warnings'`` (the warnings this mapping issued), ``'reference_hash'``,
      ``'reference_labels'``, ``'potency_cluster'`` (the reference's, if it had one),
      ``'calibration'`` (the temperature and the expected calibration error before and after
      scaling; ``thinned_to_query`` (fast, anchors): the held-out reference cells it was
      fitted on, as the novelty calibration's, were first thinned to the query's depth and
      genes; the prediction sets are calibrated on the same cells), ``'anchors'`` (anchor
      counts, anchors backend), ``'boundary'`` (whether the potency population's boundary
      rule, shipped by a reference of ``tl.potency_population`` labels, re-decided the
      cells labelled the population or its neighbour: ``applied``, ``n_to_population``,
      ``n_to_neighbour``) and ``'params'``.
    """
    options = backend_options(method, options)
    _check_thresholds(
        min_score=min_score,
        novelty_alpha=novelty_alpha,
        set_alpha=set_alpha,
        warn_variance_missing=warn_variance_missing,
        max_variance_missing=max_variance_missing,
        warn_off_reference=warn_off_reference,
        **({} if min_mapping_score is None else {"min_mapping_score": min_mapping_score}),
    )
    _check_novelty_groups(adata, novelty_groups)
    reference, model = _read_reference(
        reference, cluster_key=cluster_key, umap_key=umap_key, expected_hash=expected_hash
    )
    lots = _query_lots(adata, lot_key, min_cells_per_lot)
    harmonised = harmonise(
        adata,
        model.genes,
        layer=layer,
        target_sum=model.target_sum,
        min_shared=min_shared_genes,
        weights=(weights := variance_weights(model.loadings, model.embedding)),
        max_variance_missing=max_variance_missing,
    )
    issued = _warn_missing_genes(model.genes, harmonised, weights, warn_variance_missing)
    mapping, score_map = _prepare(
        adata,
        reference,
        model,
        harmonised,
        lots,
        layer=layer,
        calibrate=calibrate,
        n_comps_own=n_comps_own,
        knn_method=knn_method,
        random_state=random_state,
    )
    transfer = options.transfer(mapping)
    probabilities = transfer.probabilities
    if calibrate:
        probabilities = apply_temperature(probabilities, transfer.calibration["temperature"])
    n_beside = _scored_beside(mapping, transfer.make_up)
    flags = _cell_flags(
        mapping,
        transfer.calibration,
        probabilities,
        _novelty_scores(mapping, score_map, n_beside),
        novelty_alpha=novelty_alpha,
        set_alpha=set_alpha if calibrate else None,
        min_mapping_score=min_mapping_score,
        n_beside=n_beside,
    )
    flags = _grouped(
        flags, adata, novelty_groups, layer, model, novelty_alpha, min_mapping_score, random_state
    )
    codes, in_set, boundary = boundary_labels(model, transfer, flags.codes, flags.in_set)
    flags = replace(flags, codes=codes, in_set=in_set)
    placement = _umap_placement(model, transfer, knn_method, random_state)
    per_lot, summary = _summaries(
        lots, probabilities.max(axis=1), flags, transfer.make_up, min_score, novelty_alpha
    )
    issued += _warn_off_reference(
        per_lot, summary, warn_off_reference, min_cells_per_lot, min_mapping_score, novelty_alpha
    )
    issued += _warn_novel_lots(per_lot, flags, novelty_alpha, min_cells_per_lot)
    issued += _warn_ambiguous_make_up(per_lot, min_cells_per_lot)
    arguments = locals()
    params = {"method": method, "options": options.as_params()}
    params |= {name: arguments[name] for name in _PARAMS}
    params |= {"umap_placed": placement is not None, "reference_frozen": model.frozen}
    adata = adata.copy() if copy else adata
    _write_cells(adata, key_added, probabilities, model.categories, flags, placement)
    adata.uns[key_added] = _stored_result(model, harmonised, transfer, per_lot, summary, params)
    adata.uns[key_added]["novelty"] = novelty_summary(
        flags.calibration, flags.novel, novelty_alpha, mapping.depth, flags.group_table, n_beside
    )
    adata.uns[key_added]["prediction_sets"] = _set_record(model.categories, flags, set_alpha)
    adata.uns[key_added]["warnings"] = issued
    adata.uns[key_added]["boundary"] = boundary
    return adata if copy else None


def _check_thresholds(**thresholds: float) -> None:
    for name, value in thresholds.items():
        if not 0 <= value <= 1:
            msg = f"{name} must lie in [0, 1], got {value!r}"
            raise ValueError(msg)


def _read_reference(
    reference: AnnData | str | os.PathLike,
    *,
    cluster_key: str,
    umap_key: str,
    expected_hash: str | None,
) -> tuple[AnnData, ReferenceModel]:
    """The reference (read from its file when given a path) and what mapping needs from it."""
    if isinstance(reference, (str, os.PathLike)):
        reference = read_reference(reference, expected_hash=expected_hash)
    model = reference_model(
        reference,
        cluster_key=cluster_key,
        layer=_keys.COUNTS_LAYER,
        umap_key=umap_key,
        expected_hash=expected_hash,
    )
    install_shipped(model)
    if UNASSIGNED in {str(c) for c in model.categories}:
        msg = (
            f"the reference has a label {UNASSIGNED!r} in obs[{cluster_key!r}]; mapping "
            "writes it for cells it cannot assign. Rename that label in the reference."
        )
        raise ValueError(msg)
    return reference, model


def _warn_missing_genes(
    genes: pd.Index, harmonised: Harmonised, weights: np.ndarray, threshold: float
) -> list[str]:
    """Warn when the genes the query lacks carry much of the embedding; the warnings issued."""
    if harmonised.share_variance_missing <= threshold:
        return []
    found = ~genes.isin(harmonised.missing)
    msg = (
        f"map_to_reference: the query lacks {len(harmonised.missing)} of the reference's "
        f"{len(genes)} embedding genes ({1 - harmonised.share:.0%}), and they carry "
        f"{harmonised.share_variance_missing:.0%} of the reference embedding's variance (above "
        f"warn_variance_missing={threshold:.0%}). They are zero-padded, and labels and mapping "
        "scores shift with them. Most important missing genes: "
        f"{most_important(genes, found, weights)}. Check the query's gene identifiers "
        "and gene panel against the reference's."
    )
    warnings.warn(msg, UserWarning, stacklevel=6)
    return [msg]


def _warn_off_reference(
    per_lot: pd.DataFrame,
    summary: dict[str, float],
    threshold: float,
    min_cells: int,
    min_mapping_score: float | None,
    novelty_alpha: float,
) -> list[str]:
    """Warn when many cells, overall or in a lot, are off-reference; the warnings issued."""
    lots = per_lot[(per_lot["n_cells"] >= min_cells) & (per_lot["share_off_reference"] > threshold)]
    share = summary["share_off_reference"]
    if share <= threshold and lots.empty:
        return []
    named = ", ".join(f"{lot!r} ({v:.0%})" for lot, v in lots["share_off_reference"].items())
    rule = (
        f"novelty p-value at most novelty_alpha={novelty_alpha}"
        if min_mapping_score is None
        else f"mapping score below min_mapping_score={min_mapping_score}"
    )
    msg = (
        f"map_to_reference: {share:.0%} of the query cells are off-reference ({rule}; above "
        f"warn_off_reference={threshold:.0%}{'; lots: ' + named if named else ''}), with a "
        f"mean prediction score of {summary['mean_score']:.2f}: the reference does not "
        "represent these cells, so their labels are not trustworthy however confident they "
        "look. Likely causes: the "
        "query's gene identifiers do not match the reference's (another annotation, symbols "
        "vs Ensembl IDs, misaligned var_names); the query comes from another tissue or "
        "technology than the reference; or its counts are not raw counts as the reference's "
        "were (e.g. already normalised, scaled or rounded). Per lot: `get.map_to_reference`."
    )
    warnings.warn(msg, UserWarning, stacklevel=6)
    return [msg]


def _warn_novel_lots(
    per_lot: pd.DataFrame, flags: _Flags, novelty_alpha: float, min_cells: int
) -> list[str]:
    """Warn about lots with more novel cells than the rate allows, and a query shifted as a whole."""
    issued = []
    excess = per_lot[per_lot["excess_novel"] & (per_lot["n_cells"] >= min_cells)]
    if not excess.empty:
        named = ", ".join(
            f"{lot!r} ({row.share_novel:.1%}, p = {row.novelty_pvalue:.2g})"
            for lot, row in excess.iterrows()
        )
        issued.append(
            f"map_to_reference: lot(s) {named} hold more cells flagged novel than the "
            f"false-flag rate novelty_alpha={novelty_alpha:.0%} allows (one-sided binomial "
            "test, Bonferroni over lots): cells the reference does not represent, e.g. a "
            "population it lacks. They are labelled 'Unassigned'. Per lot: "
            "`get.map_to_reference`."
        )
        unusual = excess.index[excess["make_up_unusual"]]
        if unusual.size:
            issued[-1] += (
                f" Lot(s) {', '.join(map(repr, unusual))} have a make-up unlike any reference "
                f"lot's (a population's share more than {UNUSUAL} above its largest share in a "
                "reference lot, column make_up_unusual): the flags are calibrated on reference "
                "lots, and in a lot made mostly of one population known cells are flagged "
                "above the rate (study preset: 4-12% at 0.01 in lots of 80-100% potency cells), "
                "so part of such a lot's excess may be its make-up; check its flagged cells' "
                "marker genes."
            )
    median_p = float(np.nanmedian(flags.novelty_p)) if np.isfinite(flags.novelty_p).any() else 1.0
    if median_p < WARN_MEDIAN_NOVELTY_P:
        issued.append(
            f"map_to_reference: the query as a whole scores lower than held-out reference "
            f"cells (median novelty p-value {median_p:.2g}, where cells measured like the "
            "reference's give about 0.5): it differs from the reference beyond new cell "
            "types (another technology or chemistry, depth, or many cells the reference "
            "lacks). The novelty p-values are calibrated for cells measured like the "
            "reference's, so here more known cells than novelty_alpha are flagged; check the "
            "flagged cells' labels and the per-lot table before trusting the flags."
        )
    for msg in issued:
        warnings.warn(msg, UserWarning, stacklevel=6)
    return issued


def _warn_ambiguous_make_up(per_lot: pd.DataFrame, min_cells: int) -> list[str]:
    """Warn about lots whose make-up was decided by the size of their shift alone."""
    ambiguous = per_lot[per_lot["make_up_ambiguous"] & (per_lot["n_cells"] >= min_cells)]
    if ambiguous.empty:
        return []
    named = ", ".join(repr(lot) for lot in ambiguous.index)
    msg = (
        f"map_to_reference: lot(s) {named} fit other make-ups about as well as the one "
        "taken (a lot made almost entirely of one population fits any population once "
        "shifted onto it): the make-up needing the smallest shift from the reference was "
        "taken (column lot_shift of `get.map_to_reference`). Confirm such a lot's identity "
        "by its marker genes, or map it together with lots of usual make-up from the same "
        "site and technology with lot_key=None."
    )
    warnings.warn(msg, UserWarning, stacklevel=6)
    return [msg]


def _query_lots(adata: AnnData, lot_key: str | None, min_cells_per_lot: int) -> np.ndarray | None:
    """The lot of every query cell (or ``None``), warning about lots too small to summarise."""
    require_unique_cell_names(adata)
    if adata.n_obs == 0:
        msg = "the query has no cells"
        raise ValueError(msg)
    if lot_key is None:
        if adata.n_obs < min_cells_per_lot:
            warnings.warn(
                f"map_to_reference: the query has only {adata.n_obs} cells (< {min_cells_per_lot}); "
                "its label fractions and mapping scores are noisy.",
                UserWarning,
                stacklevel=6,
            )
        return None
    lots = lots_of(adata, lot_key)
    counts = lots.value_counts()
    small = counts[counts < min_cells_per_lot].sort_index()
    if len(small):
        named = ", ".join(f"{lot!r} ({n} cells)" for lot, n in small.items())
        warnings.warn(
            f"map_to_reference: query lot(s) {named} have fewer than {min_cells_per_lot} cells; "
            "they are mapped, but their label fractions and mapping scores are noisy. "
            "Pool them with other lots of the same batch or interpret them with care.",
            UserWarning,
            stacklevel=6,
        )
    return lots.astype(str).to_numpy()


def _prepare(
    adata: AnnData,
    reference: AnnData,
    model: ReferenceModel,
    harmonised: Harmonised,
    lots: np.ndarray | None,
    *,
    layer: str | None,
    calibrate: bool,
    n_comps_own: int,
    knn_method: str,
    random_state: int,
) -> tuple[MappingInput, np.ndarray]:
    """The query centred per lot and projected, its own axes, and its mapping score."""
    start = time.perf_counter()
    by_lot = centred(harmonised.expression, centre="lot", reference_mean=model.pca_mean, lots=lots)
    projected = by_lot.dot(model.loadings)  # the query in the reference PCA, centred per lot
    score_map, own, _ = mapping_score(
        by_lot,
        model.loadings,
        n_comps=n_comps_own,
        knn_method=knn_method,
        random_state=random_state,
        projected=projected,
    )
    logger.info("mapping score in %.2f s", time.perf_counter() - start)
    depth = depth_model(
        harmonised.expression,
        model.expression,
        measured=~model.genes.isin(harmonised.missing),
        reference_mean=reference_mean_counts(model),
    )
    mapping = MappingInput(
        adata=adata,
        reference=reference,
        model=model,
        harmonised=harmonised,
        lots=lots,
        by_lot=by_lot,
        projected=projected,
        own_axes=own,
        layer=layer,
        calibrate=calibrate,
        n_comps_own=n_comps_own,
        knn_method=knn_method,
        random_state=random_state,
        depth=depth,
    )
    return mapping, score_map


def _umap_placement(
    model: ReferenceModel, transfer: Transfer, knn_method: str, seed: int
) -> np.ndarray | None:
    """Each query cell at the weighted mean UMAP position of its 15 nearest reference cells.

    The neighbours are found in the space the labels were transferred in; a backend that
    already found them (fast) hands them over, nearest first, and their first 15 are used.
    """
    if model.umap is None:
        return None
    reference_embedding = transfer.reference_embedding
    neighbours = transfer.neighbours
    if neighbours is not None and neighbours[0].shape[1] >= min(15, reference_embedding.shape[0]):
        indices, distances = neighbours[0][:, :15], neighbours[1][:, :15]
    else:
        indices, distances = knn(
            reference_embedding, transfer.query_embedding, 15, method=knn_method, random_state=seed
        )
    weights = gaussian_weights(distances)
    weights /= weights.sum(axis=1, keepdims=True)
    return np.einsum("ij,ijk->ik", weights, model.umap[indices])


@dataclass(frozen=True)
class _Flags:
    """What a mapping says about each cell beyond its probabilities."""

    score_map: np.ndarray  # mapping score
    calibration: np.ndarray  # sorted held-out reference mapping scores
    novelty_p: np.ndarray  # split-conformal novelty p-value
    novel: np.ndarray  # flagged at novelty_alpha
    off_reference: np.ndarray  # novel, or below a fixed min_mapping_score when one is given
    in_set: np.ndarray | None  # (cells, labels) conformal prediction sets (None: not calibrated)
    thresholds: np.ndarray | None  # per label, the probability that keeps it in a set
    n_per_label: np.ndarray | None  # held-out reference cells per label
    codes: np.ndarray  # the label code of each cell, -1 = Unassigned
    groups: np.ndarray | None = None  # the query's groups tested for novelty as a whole
    group_table: pd.DataFrame | None = None  # per group: the test of its flagged cells


def _scored_beside(mapping: MappingInput, make_up: MakeUp | None) -> int:
    """Reference cells a query clearly smaller than a calibration fold is scored beside.

    It fills the query up to a fold's size (:func:`._novelty.padding`): in a lot of 300
    study-preset cells released alone, 10% of them of a population the reference lacks,
    7-17% of its cells were flagged at alpha 0.05 scored alone and 30-63% beside reference
    cells (seed 0, ``benchmarks/results/novelty_lone_lot.md``). Not when a lot's
    make-up is unusual (:data:`._make_up.UNUSUAL`): among reference cells of usual make-up
    a lot made mostly of one population fits their axes poorly, and its known cells were
    flagged far beyond the rate (study preset, lots of 150 cells with 80-100% potency
    cells: 33-52% at alpha 0.01, against 6-10% scored alone). 0: the query is scored alone.

    ``make_up``: the lots' make-up the transfer already estimated (``centre="lot_shift"``,
    from the same cells), or ``None``: estimated here, so the rule does not depend on the
    backend.
    """
    n_beside = padding(mapping.model, mapping.random_state, mapping.by_lot.shape[0])
    if n_beside == 0:
        return 0
    if make_up is None:
        populations = reference_populations(mapping.model)
        make_up = estimated_make_up(mapping.by_lot, mapping.projected, populations)
    return 0 if make_up.unusual.any() else n_beside


def _novelty_scores(mapping: MappingInput, score_map: np.ndarray, n_beside: int) -> np.ndarray:
    """The mapping score computed as the calibration computes it.

    A query larger than the calibration's sets is scored in sets of whole lots of about
    their size (:func:`._novelty.scoring_sets`); a smaller one beside ``n_beside``
    reference cells (:func:`_scored_beside`) when not 0; otherwise ``score_map`` as it is.
    """
    model, harmonised, lots = mapping.model, mapping.harmonised, mapping.lots
    n = score_map.size
    random_state = mapping.random_state
    if n_beside:
        beside = background(
            model,
            np.arange(model.expression.shape[0]),
            n_beside,
            mapping.depth,
            np.random.default_rng([random_state, 7]),
            np.random.default_rng([random_state, 8]),
        )
        return scored_as_a_query(
            harmonised.expression,
            lots,
            model.pca_mean,
            model.loadings,
            mapping.n_comps_own,
            mapping.knn_method,
            random_state,
            beside,
        )
    sets = scoring_sets(lots, n, calibration_set_size(model, random_state), random_state)
    if sets.max() == 0:
        return score_map
    score = scored_in_sets(
        harmonised.expression,
        lots,
        sets,
        model.pca_mean,
        model.loadings,
        mapping.n_comps_own,
        mapping.knn_method,
        random_state,
    )
    return score


def _cell_flags(
    mapping: MappingInput,
    calibration: dict[str, Any],
    probabilities: np.ndarray,
    score_map: np.ndarray,
    *,
    novelty_alpha: float,
    set_alpha: float | None,
    min_mapping_score: float | None,
    n_beside: int = 0,
) -> _Flags:
    """Novelty p-values and flags, conformal prediction sets, and the label each cell keeps.

    ``score_map`` is the query's score as :func:`_novelty_scores` computed it, beside
    ``n_beside`` reference cells (the calibration's sets beside as many).
    """
    model, lots = mapping.model, mapping.lots
    sizes = np.unique(lots, return_counts=True)[1] if lots is not None else [score_map.size]
    scores = held_out_mapping_scores(
        model,
        n_comps_own=mapping.n_comps_own,
        knn_method=mapping.knn_method,
        random_state=mapping.random_state,
        lot_size=int(np.median(sizes)),
        depth=mapping.depth,
        set_size=score_map.size,  # a query smaller than a fold: calibration in sets its size
        n_beside=n_beside,
    )
    novelty_p = novelty_pvalues(score_map, scores)
    novel = novelty_p <= novelty_alpha
    off = novel if min_mapping_score is None else score_map < min_mapping_score
    in_set = thresholds = n_per_label = None
    codes = probabilities.argmax(axis=1)
    if set_alpha is not None and "held_out_labels" in calibration:
        held_out = np.asarray(calibration["held_out_labels"])
        n_per_label = np.bincount(held_out, minlength=len(model.categories))
        thresholds = class_thresholds(
            np.asarray(calibration["held_out_true_probability"]),
            held_out,
            len(model.categories),
            set_alpha,
        )
        in_set = prediction_sets(probabilities, thresholds)
        codes, in_set = set_labels(probabilities, in_set)
    codes = np.where(novel, -1, codes)
    return _Flags(score_map, scores, novelty_p, novel, off, in_set, thresholds, n_per_label, codes)


def _check_novelty_groups(adata: AnnData, novelty_groups: bool | str) -> None:
    """``novelty_groups`` is ``True``, ``False`` or a column of the query's ``obs``."""
    if isinstance(novelty_groups, bool):
        return
    if not isinstance(novelty_groups, str):
        msg = f"novelty_groups must be True, False or an obs key, got {novelty_groups!r}"
        raise TypeError(msg)
    if novelty_groups not in adata.obs:
        msg = (
            f"novelty_groups={novelty_groups!r} is not a column of the query's obs; pass "
            "the key of its clusters (e.g. from tl.cluster on the query), True to cluster "
            "the query on its own genes, or False."
        )
        raise KeyError(msg)


def _grouped(
    flags: _Flags,
    adata: AnnData,
    novelty_groups: bool | str,
    layer: str | None,
    model: ReferenceModel,
    novelty_alpha: float,
    min_mapping_score: float | None,
    random_state: int,
) -> _Flags:
    """The flags with every cell of a group novel as a whole flagged (``novelty_groups``).

    Off-reference cells follow (unless a fixed ``min_mapping_score`` defines them).
    """
    if novelty_groups is False:
        return flags
    if novelty_groups is True:
        expression = lognormalise(query_counts(adata, layer), model.target_sum)
        groups = query_groups(expression, random_state=random_state)
    else:
        groups = adata.obs[novelty_groups].astype(str).to_numpy()
    table, in_group = group_novelty(groups, flags.novel, novelty_alpha)
    novel = flags.novel | in_group
    off = novel if min_mapping_score is None else flags.off_reference  # as _cell_flags
    codes = np.where(novel, -1, flags.codes)
    return replace(
        flags, novel=novel, off_reference=off, codes=codes, groups=groups, group_table=table
    )


def _summaries(
    lots: np.ndarray | None,
    score: np.ndarray,
    flags: _Flags,
    make_up: MakeUp | None,
    min_score: float,
    novelty_alpha: float,
) -> tuple[pd.DataFrame, dict[str, float]]:
    """Per lot and over all cells: scores, shares of low-confidence, novel, unassigned cells.

    Per lot also the lot's estimated shift and whether its make-up was ambiguous or unusual
    (rows of ``make_up``: the lots in sorted order, as the table's); a backend that does not
    estimate them (``centre`` other than ``"lot_shift"``, scvi) leaves NaN and False.
    """
    low_score = score < min_score
    off = flags.off_reference
    set_size = flags.in_set.sum(axis=1) if flags.in_set is not None else np.full(score.size, np.nan)
    frame = pd.DataFrame(
        {
            "lot": lots if lots is not None else np.full(score.size, "all"),
            "score": score,
            "mapping_score": flags.score_map,
            "low_score": low_score,
            "off_reference": off,
            "low_confidence": low_score | off,
            "unassigned": flags.codes < 0,
            "set_size": set_size,
        }
    )
    grouped = frame.groupby("lot", sort=True)
    per_lot = pd.DataFrame(
        {
            "n_cells": grouped.size(),
            "mean_score": grouped["score"].mean(),
            "share_low_score": grouped["low_score"].mean(),
            "mean_mapping_score": grouped["mapping_score"].mean(),
            "share_off_reference": grouped["off_reference"].mean(),
            "share_low_confidence": grouped["low_confidence"].mean(),
            "share_unassigned": grouped["unassigned"].mean(),
            "mean_set_size": grouped["set_size"].mean(),
        }
    )
    per_lot = per_lot.join(lot_novelty(lots, flags.novel, novelty_alpha))
    per_lot["lot_shift"] = np.nan if make_up is None else make_up.shift
    per_lot["make_up_ambiguous"] = False if make_up is None else make_up.ambiguous
    per_lot["make_up_unusual"] = (
        False if make_up is None or make_up.unusual is None else make_up.unusual
    )
    per_lot.index.name = "lot"
    finite = np.isfinite(flags.score_map)
    summary = {
        "n_cells": int(score.size),
        "mean_score": float(score.mean()),
        "share_low_score": float(low_score.mean()),
        "mean_mapping_score": float(flags.score_map[finite].mean()) if finite.any() else np.nan,
        "share_off_reference": float(off.mean()),
        "share_low_confidence": float((low_score | off).mean()),
        "share_novel": float(flags.novel.mean()),
        "median_novelty_p": float(np.nanmedian(flags.novelty_p)) if finite.any() else np.nan,
        "share_unassigned": float((flags.codes < 0).mean()),
        "mean_set_size": float(np.mean(set_size)),
    }
    return per_lot, summary


def _write_cells(
    adata: AnnData,
    key_added: str,
    probabilities: np.ndarray,
    categories: pd.Index,
    flags: _Flags,
    placement: np.ndarray | None,
) -> None:
    """The per-cell fields: label, scores, probabilities, novelty, prediction sets, placement."""
    labels = [*map(str, categories), UNASSIGNED]
    codes = np.where(flags.codes < 0, len(categories), flags.codes)
    adata.obs[key_added] = pd.Categorical.from_codes(codes, categories=labels)
    adata.obs[f"{key_added}_score"] = probabilities.max(axis=1)
    adata.obs[f"{key_added}_mapping_score"] = flags.score_map
    adata.obs[f"{key_added}_novelty_p"] = flags.novelty_p
    adata.obs[f"{key_added}_novel"] = flags.novel
    if flags.groups is not None:
        adata.obs[f"{key_added}_novelty_group"] = pd.Categorical(flags.groups)
    elif f"{key_added}_novelty_group" in adata.obs:  # an earlier mapping's groups
        del adata.obs[f"{key_added}_novelty_group"]
    adata.obsm[f"{key_added}_probabilities"] = pd.DataFrame(
        probabilities, index=adata.obs_names, columns=categories
    )
    if flags.in_set is not None:
        adata.obsm[f"{key_added}_set"] = pd.DataFrame(
            flags.in_set, index=adata.obs_names, columns=categories
        )
        adata.obs[f"{key_added}_set_size"] = flags.in_set.sum(axis=1)
    else:  # sets left by an earlier, calibrated mapping would no longer match
        adata.obsm.pop(f"{key_added}_set", None)
        if f"{key_added}_set_size" in adata.obs:
            del adata.obs[f"{key_added}_set_size"]
    if placement is not None:
        adata.obsm[f"{key_added}_umap"] = placement
    else:  # a placement left by an earlier mapping would no longer match these labels
        adata.obsm.pop(f"{key_added}_umap", None)


def _set_record(categories: pd.Index, flags: _Flags, set_alpha: float) -> dict[str, Any]:
    """``uns[key_added]['prediction_sets']``: the level and each label's threshold."""
    if flags.thresholds is None:
        return {"set_alpha": set_alpha, "calibrated": False}
    return {
        "set_alpha": set_alpha,
        "calibrated": True,
        "thresholds": pd.DataFrame(
            {"threshold": flags.thresholds, "n_calibration_cells": flags.n_per_label},
            index=pd.Index([str(c) for c in categories], name="label"),
        ),
    }


def _stored_result(
    model: ReferenceModel,
    harmonised: Harmonised,
    transfer: Transfer,
    per_lot: pd.DataFrame,
    summary: dict[str, float],
    params: dict[str, Any],
) -> dict[str, Any]:
    """``uns[key_added]``: the tables, the reference it was mapped onto, the calibration."""
    calibration = dict(transfer.calibration)
    calibration.pop("held_out_true_probability", None)  # per-cell arrays: in the sets' record
    calibration.pop("held_out_labels", None)
    empty = pd.DataFrame(columns=_RELIABILITY_COLUMNS)
    after = calibration.pop("reliability_after", empty)
    before = calibration.pop("reliability_before", empty.copy())
    return {
        "per_lot": per_lot,
        "reliability_after": after,
        "reliability_before": before,
        "summary": summary,
        "genes_missing": harmonised.missing,
        "n_genes_shared": harmonised.shared,
        "share_genes_missing": 1.0 - harmonised.share,
        "share_variance_missing": harmonised.share_variance_missing,
        "n_genes_reference": len(model.genes),
        "target_sum": model.target_sum,
        "reference_hash": model.hash,
        "reference_labels": list(model.categories),
        "potency_cluster": model.potency_cluster or "",
        "calibration": calibration,
        "anchors": transfer.anchors,
        "params": params,
    }
