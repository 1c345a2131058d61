"""``analyse``: the reference analysis of a lab's own lots, from files to a frozen reference.

read -> pool -> QC -> preprocess -> (lot-effect correction) -> cluster -> lot fractions -> composition deviation ->
potency association -> potency-population search -> markers -> potency model -> freeze.
Every step is a public ``io``/``pp``/``tl`` call, logged in the provenance record; the
resolved :class:`~mscpotency._workflow._settings.AnalysisSettings` and the inputs' fingerprints
are kept in ``uns['workflow']`` for the report.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData

from .. import _registry, io, pp, tl
from .._provenance import fingerprint
from .._settings import progress
from .._validate import finite_outcome
from ..io import _read
from ._settings import AnalysisSettings

logger = logging.getLogger("mscpotency")

#: Key of the workflow's record in ``uns``.
WORKFLOW_KEY = "workflow"


def read_inputs(
    lots: str | os.PathLike, lot_table: str | os.PathLike, settings: AnalysisSettings
) -> AnnData:
    """Read the lots and join the lot table; the potency column must be there and numeric."""
    table = io.read_lot_table(lot_table, lot_key=settings.lot_key)
    if settings.potency not in table.columns:
        msg = (
            f"the lot table {str(lot_table)!r} has no potency column {settings.potency!r}; "
            f"its columns are {list(table.columns)}. Name it with --potency."
        )
        raise KeyError(msg)
    if not pd.api.types.is_numeric_dtype(table[settings.potency]):
        values = table[settings.potency]
        bad = values[values.notna() & pd.to_numeric(values, errors="coerce").isna()]
        msg = (
            f"potency column {settings.potency!r} of {str(lot_table)!r} is not numeric in every "
            f"row: {dict(list(bad.items())[:5])}. Write numbers with a decimal point and no "
            "thousands separator (12.5, 1250), and leave a missing value empty."
        )
        raise ValueError(msg)
    adata = io.read_lots(
        _lots_besides_the_table(lots, lot_table),
        lot_key=settings.lot_key,
        min_cells_per_lot=settings.min_cells_per_lot,
        random_state=settings.random_state,
    )
    join_lot_table(adata, table, settings.lot_key, lot_table)
    present = pd.Index(adata.obs[settings.lot_key].astype(str).unique())
    # before the analysis, not after it: a lot with cells needs a potency value
    finite_outcome(table.loc[present, settings.potency], name=f"potency {settings.potency!r}")
    record_inputs(adata, settings, lots=lots, lot_table=lot_table)
    return adata


def join_lot_table(
    adata: AnnData, table: pd.DataFrame, lot_key: str, lot_table: str | os.PathLike
) -> None:
    """Join the lot table as the command line does, saying in the report what it changed.

    The lot table is the source of lot values: it replaces columns of the same name that
    the lots' own ``obs`` carry. Its lots without cells are left out
    (``uns['workflow']['lots_without_cells']``). Both go to the report's warnings.
    """
    clash = [c for c in table.columns if c in adata.obs.columns]
    pp.add_lot_table(adata, table, lot_key=lot_key, extra_lots="ignore", overwrite=True)
    present = pd.Index(adata.obs[lot_key].astype(str).unique())
    without_cells = table.index.difference(present).tolist()
    if without_cells:
        adata.uns.setdefault(WORKFLOW_KEY, {})["lots_without_cells"] = [
            str(lot) for lot in without_cells
        ]
        record_warning(
            adata,
            f"the lot table {str(lot_table)!r} names {len(without_cells)} lots with no cells "
            f"among the lots read: {without_cells[:20]}; they are left out of every statistic "
            "(check the lots folder and the lot names).",
        )
    if clash:
        record_warning(
            adata,
            f"the lots' own obs columns {clash} were replaced by the lot table's values "
            f"({str(lot_table)!r} is the source of lot values in this analysis).",
        )


def _lots_besides_the_table(lots: str | os.PathLike, lot_table: str | os.PathLike):
    """The lots folder, or its lots without the lot table when the table was saved in it.

    Every entry of a lots folder is read as a lot; a lot table kept there (a natural place
    for it) would be read as a count matrix and fail as "the lots share no gene names".
    """
    folder, table = Path(lots), Path(lot_table)
    if not folder.is_dir() or table.resolve().parent != folder.resolve():
        return lots
    entries = _read._resolve_source(folder)
    kept = {name: path for name, (path, _) in entries.items() if path.resolve() != table.resolve()}
    if len(kept) < len(entries):
        logger.info("analyse: the lot table %r in the lots folder is not read as a lot", str(table))
    return kept


def record_warning(adata: AnnData, text: str) -> None:
    """Log a warning about the inputs and keep it for the report (as collected_warnings does)."""
    text = f"UserWarning: {text}"
    logger.warning(text)
    stored = adata.uns.setdefault(WORKFLOW_KEY, {})
    stored["warnings"] = [*stored.get("warnings", []), text]


def file_digest(path: str | os.PathLike) -> str:
    """BLAKE2b (128 bits) of a file, or of every file under a folder (names and bytes)."""
    path = Path(path)
    digest = hashlib.blake2b(digest_size=16)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def record_inputs(
    adata: AnnData, settings: AnalysisSettings, **inputs: str | os.PathLike | None
) -> None:
    """Store the settings and a fingerprint of each input in ``uns['workflow']``."""
    stored = adata.uns.setdefault(WORKFLOW_KEY, {})
    stored["settings"] = {
        k: ("" if v is None else v) for k, v in dataclasses.asdict(settings).items()
    }
    fingerprints = stored.setdefault("inputs", {})
    for name, path in inputs.items():
        if path is not None:
            fingerprints[name] = f"{Path(path).name}: {file_digest(path)}"
    fingerprints["cells (after reading)"] = fingerprint(adata)


@contextmanager
def collected_warnings(adata: AnnData) -> Iterator[None]:
    """Catch warnings of the steps, log them and keep them for the report (none is lost)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    kept = list(adata.uns.setdefault(WORKFLOW_KEY, {}).get("warnings", []))
    for warning in caught:
        text = f"{warning.category.__name__}: {warning.message}"
        if text not in kept:
            logger.warning(text)
            kept.append(text)
    adata.uns[WORKFLOW_KEY]["warnings"] = kept


def prediction_interval(settings: AnalysisSettings, n_lots: int) -> str:
    """The prediction interval type for ``n_lots`` reference lots.

    ``settings.prediction_interval``, or for ``"auto"`` jackknife+ where
    ``floor((1 - level)(n + 1)) >= 1`` (enough lots for the level), else ``"t"``.
    """
    if settings.prediction_interval != "auto":
        return settings.prediction_interval
    return "jackknife+" if np.floor((1 - settings.prediction_level) * (n_lots + 1)) >= 1 else "t"


def clustering_representation(adata: AnnData, settings: AnalysisSettings) -> str:
    """The ``obsm`` key clustering uses: the PCA, or the lot-corrected one ``pp.integrate`` wrote."""
    if settings.integrate == "none":
        return "X_pca"
    return adata.uns[_registry.INTEGRATE.key]["params"]["rep_added"]


#: obs key of the uncorrected clustering whose lot-specific states Harmony holds out.
UNCORRECTED_KEY = "cluster_uncorrected"


def integrate(adata: AnnData, settings: AnalysisSettings) -> None:
    """``pp.integrate`` as the settings ask (Harmony: the uncorrected states held out)."""
    s = settings
    pp.integrate(
        adata,
        method=s.integrate,
        batch_key=s.lot_key,
        covariate_keys=() if s.integrate_covariate is None else (s.integrate_covariate,),
        theta=s.integrate_theta,
        lot_specific_key=UNCORRECTED_KEY if s.integrate == "harmony" else None,
        random_state=s.random_state,
    )


def analyse_adata(adata: AnnData, settings: AnalysisSettings) -> AnnData:
    """Run the reference analysis on pooled raw counts (in place) and return them.

    ``adata`` holds raw counts (cells x genes), ``obs[settings.lot_key]`` and
    ``obs[settings.potency]`` (one value per lot). Warnings of the steps are logged and kept
    in ``uns['workflow']['warnings']``.
    """
    import scanpy as sc

    s = settings
    if "settings" not in adata.uns.get(WORKFLOW_KEY, {}):
        record_inputs(adata, s)
    steps = [
        ("qc", lambda: pp.qc(adata, **s.qc_arguments())),
        ("preprocess", lambda: pp.preprocess(adata, n_top_genes=s.n_top_genes, n_comps=s.n_comps,
                                             batch_key=s.batch_key, random_state=s.random_state)),
        ("uncorrected clusters", lambda: tl.cluster(
            adata, n_clusters=s.n_clusters, resolution=s.resolution, use_rep="X_pca",
            random_state=s.random_state, key_added=UNCORRECTED_KEY)),
        ("lot-effect correction", lambda: integrate(adata, s)),
        ("cluster", lambda: tl.cluster(adata, n_clusters=s.n_clusters, resolution=s.resolution,
                                       use_rep=clustering_representation(adata, s),
                                       random_state=s.random_state)),
        ("cluster quality", lambda: tl.cluster_quality(adata, lot_key=s.lot_key)),
        ("umap", lambda: sc.tl.umap(adata, neighbors_key="cluster_neighbors", random_state=s.random_state)),
        ("lot fractions", lambda: tl.lot_fractions(adata, lot_key=s.lot_key, min_cells_per_lot=s.min_cells_per_lot)),
        ("composition deviation", lambda: tl.composition_deviation(adata, random_state=s.random_state)),
        ("association", lambda: tl.potency_association(adata, s.potency, alpha=s.alpha,
                                                       n_permutations=s.n_permutations,
                                                       random_state=s.random_state)),
        ("population search", lambda: tl.potency_population(
            adata, s.potency, lot_key=s.lot_key, alpha=s.alpha, n_permutations=s.n_permutations,
            random_state=s.random_state)),
        ("stability", lambda: tl.association_stability(
            adata, s.potency, lot_key=s.lot_key, alpha=s.alpha, random_state=s.random_state)),
        ("markers", lambda: tl.potency_markers(adata, lot_key=s.lot_key)),
        ("potency model", lambda: tl.fit_potency_model(
            adata, s.potency, level=s.prediction_level,
            interval=prediction_interval(s, adata.obs[s.lot_key].nunique()))),
    ]  # fmt: skip
    skipped = {
        "lot-effect correction": s.integrate == "none",
        "uncorrected clusters": s.integrate != "harmony",
        "population search": not s.search,
        "stability": not s.stability,
    }
    steps = [(name, step) for name, step in steps if not skipped.get(name, False)]
    with collected_warnings(adata):
        for name, step in progress(steps, desc="analyse"):
            logger.info("analyse: %s", name)
            step()
    return adata


def freeze(adata: AnnData, settings: AnalysisSettings) -> AnnData:
    """The frozen reference of an analysed AnnData (what mapping needs, with its hash).

    It ships the calibrations of the settings' mapping backend (``fast`` or ``anchors``),
    so that ``mscpotency map`` does not compute them again in every new process.
    """
    shipped = (settings.mapping_method,) if settings.mapping_method != "scvi" else ()
    with collected_warnings(adata):
        return tl.freeze_reference(adata, lot_key=settings.lot_key, calibrations=shipped)
