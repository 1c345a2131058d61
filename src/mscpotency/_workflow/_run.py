"""The two jobs end to end, files in and files out: what the CLI and ``reproduce`` run.

``analyse`` -> ``--out``: ``report.html``, ``report.md``, ``figures/``, ``tables/``,
``analysed.h5ad`` (compressed), ``reference.h5ad`` (frozen) and ``reference_lots.h5ad``
(the lot model a release needs). ``release`` -> ``--out``: the same report with the
verdict table first, ``release.csv`` and ``released.h5ad``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from anndata import AnnData

from .. import io
from ._analyse import analyse_adata, freeze, join_lot_table, read_inputs, record_inputs
from ._release import read_lot_model, release, write_lot_model
from ._report import report
from ._settings import AnalysisSettings

logger = logging.getLogger("mscpotency")

#: File names under ``--out``.
REFERENCE_FILE = "reference.h5ad"


def lot_model_path(reference: str | os.PathLike) -> Path:
    """Where ``analyse`` put the lot model of a frozen reference: ``<stem>_lots.h5ad`` beside it."""
    reference = Path(reference)
    return reference.with_name(f"{reference.name.removesuffix('.h5ad')}_lots.h5ad")


def analyse(
    lots: str | os.PathLike,
    lot_table: str | os.PathLike,
    *,
    settings: AnalysisSettings | None = None,
) -> AnnData:
    """Read a lab's lots and lot table and run the reference analysis.

    Parameters
    ----------
    lots
        A folder with one entry per lot (every layout :func:`mscpotency.io.read_lots`
        reads, Cell Ranger's ``<lot>/outs/`` included).
    lot_table
        CSV/TSV/Excel with one row per lot and the potency column ``settings.potency``.
    settings
        Every setting (:class:`mscpotency.AnalysisSettings`); default: the documented defaults.

    Returns
    -------
    The analysed cells; the settings, input fingerprints and warnings in ``uns['workflow']``.
    """
    settings = settings or AnalysisSettings()
    return analyse_adata(read_inputs(lots, lot_table, settings), settings)


def save_reference(adata: AnnData, settings: AnalysisSettings, out: str | os.PathLike) -> Path:
    """Freeze and write the reference, its lot model and the analysed data under ``out``.

    Returns the path of the frozen reference (its lot model lies beside it).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    frozen = freeze(adata, settings)
    path = io.write_reference(frozen, out / REFERENCE_FILE, overwrite=True)
    write_lot_model(adata, frozen, lot_model_path(path))  # records its hash in adata too
    adata.uns["workflow"]["reference_hash"] = str(frozen.uns["reference"]["hash"])
    adata.strings_to_categoricals()
    adata.write_h5ad(out / "analysed.h5ad", compression="gzip")
    return path


def write_analysis(adata: AnnData, settings: AnalysisSettings, out: str | os.PathLike) -> Path:
    """Freeze, write the reference, lot model, analysed data and report under ``out``."""
    save_reference(adata, settings, out)
    return report(adata, out)


def release_lots(
    lots: str | os.PathLike | AnnData,
    reference: str | os.PathLike,
    *,
    lot_model: str | os.PathLike | None = None,
    lot_table: str | os.PathLike | None = None,
    settings: AnalysisSettings | None = None,
    overrides: dict | None = None,
    expected_hash: str | None = None,
) -> tuple[AnnData, AnnData]:
    """Release new lots against a frozen reference: (new lots with results, the lot model).

    ``lots``: a folder of lots (as :func:`analyse`) or AnnData of raw counts. AnalysisSettings
    default to those the reference was analysed with; ``overrides`` (e.g. verdict
    thresholds) are applied on top.
    """
    frozen = io.read_reference(reference, expected_hash=expected_hash)
    from .._registry import FROZEN_REFERENCE

    model = read_lot_model(
        lot_model or lot_model_path(reference), str(frozen.uns[FROZEN_REFERENCE.key]["hash"])
    )
    from ._release import _stored_settings

    settings = (settings or AnalysisSettings(**_stored_settings(model))).replace(
        **(overrides or {})
    )
    if isinstance(lots, AnnData):
        query = lots
    else:
        query = io.read_lots(lots, lot_key=settings.lot_key, min_cells_per_lot=settings.min_cells_per_lot,
                             random_state=settings.random_state)  # fmt: skip
        if lot_table is not None:
            table = io.read_lot_table(lot_table, lot_key=settings.lot_key)
            join_lot_table(query, table, settings.lot_key, lot_table)
        record_inputs(query, settings, lots=lots, lot_table=lot_table)
    query.uns.setdefault("workflow", {}).setdefault("inputs", {})["frozen reference"] = str(
        reference
    )
    release(query, frozen, model, settings=settings, expected_hash=expected_hash)
    return query, model


def write_release(query: AnnData, model: AnnData, out: str | os.PathLike) -> Path:
    """Write the release report, its tables and the mapped lots under ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = report(model, out, query=query)
    query.uns["workflow"]["release"].to_csv(out / "release.csv")
    written = query.copy()
    written.uns["workflow"] = {k: v for k, v in query.uns["workflow"].items() if k != "release"}
    written.strings_to_categoricals()
    written.write_h5ad(out / "released.h5ad", compression="gzip")
    return path


__all__ = [
    "analyse",
    "lot_model_path",
    "release_lots",
    "save_reference",
    "write_analysis",
    "write_release",
]
