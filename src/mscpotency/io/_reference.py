"""Write and read a frozen reference (from :func:`mscpotency.tl.freeze_reference`).

The file is an ordinary ``.h5ad``; reading it back recomputes the content hash and refuses a
reference whose content no longer matches it, so a mapped lot's provenance names exactly the
reference it was mapped onto.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import anndata
from anndata import AnnData

from .._docs import doc_params
from .._frozen import frozen_record, reference_model
from .._provenance import record
from .._registry import FROZEN_REFERENCE


@doc_params
def write_reference(adata: AnnData, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write a frozen reference to ``.h5ad`` (gzip-compressed).

    Parameters
    ----------
    adata
        {adata}
        A frozen reference from :func:`mscpotency.tl.freeze_reference`.
    path
        Target file, ending in ``.h5ad``.
    overwrite
        Replace an existing file.

    Returns
    -------
    The path written.
    """
    stored = _require_frozen(adata)
    path = Path(path)
    if path.suffix != ".h5ad":
        msg = f"a frozen reference is written as .h5ad, got {path.name!r}"
        raise ValueError(msg)
    if path.exists() and not overwrite:
        msg = f"{path} exists; pass overwrite=True to replace it."
        raise FileExistsError(msg)
    reference_model(adata, cluster_key=str(stored["cluster_key"]))  # refuses a modified one
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
    stored = _require_frozen(adata, where=str(path))
    reference_model(adata, cluster_key=str(stored["cluster_key"]))  # verifies the hash
    return adata


def _require_frozen(adata: AnnData, where: str = "this AnnData") -> Mapping:
    """The record of a frozen reference, or a ``ValueError`` saying how to make one."""
    stored = frozen_record(adata)
    if stored is None:
        msg = (
            f"{where} is not a frozen reference (no uns[{FROZEN_REFERENCE.key!r}]['hash']). "
            f"Make one with `{FROZEN_REFERENCE.producer}`."
        )
        raise ValueError(msg)
    return stored
