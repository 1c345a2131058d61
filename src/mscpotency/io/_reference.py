"""Write and read a frozen reference (from :func:`mscpotency.tl.freeze_reference`).

The file is an ordinary ``.h5ad``; reading it back recomputes the content hash and refuses a
reference whose content no longer matches it (or, when pinned, is not the expected one), so
a mapped lot's provenance names exactly the reference it was mapped onto.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import anndata
import h5py
from anndata import AnnData

from .._docs import doc_params
from .._frozen import expected_hash_value, frozen_record, reference_model
from .._provenance import record
from .._registry import FROZEN_REFERENCE
from .._validate import unreadable_file


@doc_params
def write_reference(adata: AnnData, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write a frozen reference to ``.h5ad`` (compressed: byte shuffle + gzip).

    The reference is verified against its hash first, and written to a temporary file in
    the target folder that then replaces ``path``, so an interrupted write never leaves a
    truncated reference under that name.

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
    if not path.parent.is_dir():
        msg = f"cannot write {path}: the folder {path.parent} does not exist; create it first."
        raise FileNotFoundError(msg)
    reference_model(adata, cluster_key=str(stored["cluster_key"]))  # refuses a modified one
    handle, partial = tempfile.mkstemp(suffix=".h5ad.partial", dir=path.parent)
    os.close(handle)
    try:
        _write_compact(adata, partial)
        umask = os.umask(0)  # read the file-creation mask (and restore it at once)
        os.umask(umask)
        os.chmod(partial, 0o666 & ~umask)  # mkstemp's 0600 would keep a shared file private
        os.replace(partial, path)
    finally:
        Path(partial).unlink(missing_ok=True)
    return path


@record("io.read_reference")
def read_reference(path: str | os.PathLike, *, expected_hash: str | None = None) -> AnnData:
    """Read a frozen reference and check its content against its hash.

    The content hash covers everything mapping reads from the reference (genes, labels,
    potency cluster, lots, parameters, PCA, embedding, expression, UMAP; see
    :func:`mscpotency.tl.freeze_reference`); a reference edited after freezing is refused.
    It is an integrity check, not a signature: a reference whose content was changed and
    whose stored hash was recomputed to match reads without complaint, unless you pin the
    hash you expect with ``expected_hash``.

    Parameters
    ----------
    path
        A file written by :func:`write_reference`.
    expected_hash
        The content hash this reference must have (32 hexadecimal digits, e.g. from a
        validation report or ``get.freeze_reference(reference)['hash']``); any other hash
        is refused. ``None``: accept any reference that matches its own stored hash.

    Returns
    -------
    The frozen reference, ready for :func:`mscpotency.tl.map_to_reference`.
    """
    expected_hash = expected_hash_value(expected_hash)  # a malformed one before any reading
    path = Path(path)
    if not path.exists():
        msg = f"no frozen reference at {path}"
        raise FileNotFoundError(msg)
    if path.is_dir():
        msg = f"{path} is a folder; pass the .h5ad file written by `io.write_reference`."
        raise IsADirectoryError(msg)
    try:
        adata = anndata.read_h5ad(path)
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as error:
        msg = unreadable_file(path, "a frozen reference", error)
        msg += " A frozen reference can also be written again with `io.write_reference`."
        raise ValueError(msg) from error
    stored = _require_frozen(adata, where=str(path))
    try:
        reference_model(adata, cluster_key=str(stored["cluster_key"]), expected_hash=expected_hash)
    except ValueError as error:  # name the file the refused reference came from
        raise ValueError(f"{path}: {error}") from None
    return adata


#: h5py filters of the expression matrix: byte shuffle then gzip (its integer counts
#: compress 1.5x better shuffled; benchmarks/reference_size.py); every other array: gzip.
_SHUFFLED = {"compression": "gzip", "shuffle": True}
_PLAIN = {"compression": "gzip"}


def _write_compact(adata: AnnData, path: str) -> None:
    """``adata`` as an ordinary ``.h5ad``: ``X`` shuffled and gzip-compressed, the rest gzip."""
    rest = AnnData(
        obs=adata.obs,
        var=adata.var,
        uns=dict(adata.uns),
        obsm=dict(adata.obsm),
        varm=dict(adata.varm),
    )
    with h5py.File(path, "w") as handle:
        anndata.io.write_elem(handle, "/", rest, dataset_kwargs=dict(_PLAIN))
        anndata.io.write_elem(handle, "X", adata.X, dataset_kwargs=dict(_SHUFFLED))


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
