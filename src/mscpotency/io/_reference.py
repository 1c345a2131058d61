"""Write and read a frozen reference (from :func:`mscpotency.tl.freeze_reference`).

The file is an ordinary ``.h5ad``; reading it back recomputes the content hash and refuses a
reference whose content no longer matches it, so a mapped lot's provenance names exactly the
reference it was mapped onto.
"""

from __future__ import annotations

import os
from pathlib import Path

import anndata
from anndata import AnnData

from .._provenance import record
from ..tl._mapping._model import FROZEN, reference_model


def write_reference(adata: AnnData, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write a frozen reference to ``.h5ad`` (gzip-compressed).

    Parameters
    ----------
    adata
        A frozen reference from :func:`mscpotency.tl.freeze_reference`.
    path
        Target file, ending in ``.h5ad``.
    overwrite
        Replace an existing file.

    Returns
    -------
    The path written.
    """
    _require_frozen(adata)
    path = Path(path)
    if path.suffix != ".h5ad":
        msg = f"a frozen reference is written as .h5ad, got {path.name!r}"
        raise ValueError(msg)
    if path.exists() and not overwrite:
        msg = f"{path} exists; pass overwrite=True to replace it."
        raise FileExistsError(msg)
    reference_model(
        adata, label_key=str(adata.uns[FROZEN]["label_key"])
    )  # refuses a modified reference
    adata.write_h5ad(path, compression="gzip")
    return path


@record("io.read_reference")
def read_reference(path: str | os.PathLike) -> AnnData:
    """Read a frozen reference and check its content against its hash.

    Parameters
    ----------
    path
        A file written by :func:`write_reference`.

    Returns
    -------
    The frozen reference, ready for :func:`mscpotency.tl.map_to_reference`.
    """
    path = Path(path)
    if not path.exists():
        msg = f"no frozen reference at {path}"
        raise FileNotFoundError(msg)
    adata = anndata.read_h5ad(path)
    _require_frozen(adata, where=str(path))
    reference_model(adata, label_key=str(adata.uns[FROZEN]["label_key"]))  # verifies the hash
    return adata


def _require_frozen(adata: AnnData, where: str = "this AnnData") -> None:
    stored = adata.uns.get(FROZEN)
    if not isinstance(stored, dict) or "hash" not in stored:
        msg = f"{where} is not a frozen reference (no uns[{FROZEN!r}]['hash']). Make one with `tl.freeze_reference`."
        raise ValueError(msg)
