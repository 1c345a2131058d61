"""The record of every public ``pp``/``tl`` call.

Each call appends one JSON entry to ``adata.uns["mscpotency"]["log"]``: the function, its
parameters, the package versions, the random seed, a fingerprint of the input and the
time it took (a tool without one AnnData, as ``bulk.tl.consensus``, puts the entry in the
result it returns). :func:`mscpotency.get.provenance` reads the log back as a DataFrame and
:func:`mscpotency.replay` re-runs it on the same input.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import hashlib
import inspect
import json
import logging
import os
import platform
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from importlib import metadata
from typing import Any, Literal, TypeVar

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from . import _checks, _keys

logger = logging.getLogger("mscpotency")

F = TypeVar("F", bound=Callable[..., Any])

_TRACKED_PACKAGES = (
    "mscpotency",
    "anndata",
    "scanpy",
    "numpy",
    "scipy",
    "pandas",
    "scikit-learn",
    "leidenalg",
    "igraph",
    "pynndescent",
    "umap-learn",
)
#: At most this many matrix values enter the fingerprint (evenly strided), so that
#: fingerprinting stays cheap at 10^6 cells.
_FINGERPRINT_MAX_VALUES = 1 << 20

_depth: contextvars.ContextVar[int] = contextvars.ContextVar("mscpotency_call_depth", default=0)


@functools.cache
def package_versions() -> dict[str, str]:
    """Versions of the packages whose behaviour shapes a result (``"not installed"`` if absent)."""
    versions = {"python": platform.python_version()}
    for name in _TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _hash_array(h: hashlib.blake2b, values: np.ndarray) -> None:
    values = np.ascontiguousarray(values)
    if values.size > _FINGERPRINT_MAX_VALUES:
        step = values.size // _FINGERPRINT_MAX_VALUES + 1
        values = np.ascontiguousarray(values.ravel()[::step])
    h.update(str(values.dtype).encode())
    h.update(values.tobytes())


def fingerprint(adata: AnnData) -> str:
    """A short content hash of an AnnData's matrix and names.

    Hashes the shape, the cell and gene names, the sparsity structure and (evenly
    strided, at most ~1 million per array) values of ``X``. Two inputs with the same fingerprint are the
    same data for every practical purpose; the hash is cheap at 10^6 cells.
    """
    h = hashlib.blake2b(digest_size=12)
    h.update(repr(adata.shape).encode())
    h.update("\x1f".join(map(str, adata.obs_names)).encode())
    h.update("\x1f".join(map(str, adata.var_names)).encode())
    X = adata.X
    if X is None:
        h.update(b"X=None")
    elif sparse.issparse(X):
        X = X.tocsr() if not sparse.isspmatrix_csr(X) and not isinstance(X, sparse.csr_array) else X
        _hash_array(h, X.indptr)
        _hash_array(h, X.indices)
        _hash_array(h, X.data)
    elif isinstance(X, np.ndarray):
        _hash_array(h, X)
    else:  # dask and other lazy arrays: their task-graph token is a content-derived name
        try:
            from dask.base import tokenize

            h.update(tokenize(X).encode())
        except ImportError:  # pragma: no cover - lazy arrays come with dask
            h.update(repr(type(X)).encode())
    return h.hexdigest()


#: Larger mappings and Series are recorded by size and content hash, not item by item.
_MAX_RECORDED_ITEMS = 10000


def _items_hash(value: Mapping | pd.Series) -> str:
    h = hashlib.blake2b(digest_size=12)
    for key, item in value.items():
        h.update(f"{key}\x1f{item}\x1e".encode())
    return h.hexdigest()


def to_jsonable(value: Any) -> Any:
    """Turn a parameter value into something ``json.dumps`` writes and a replay can read."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if isinstance(value, AnnData):
        return {"__anndata__": fingerprint(value), "shape": list(value.shape)}
    if isinstance(value, (pd.Series, Mapping)) and len(value) > _MAX_RECORDED_ITEMS:
        # e.g. a barcode -> lot table of 10^5 cells: its size and a content hash, not every item
        return {"__items__": len(value), "hash": _items_hash(value)}
    if isinstance(value, pd.Series):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, pd.DataFrame):
        if value.size <= 10000:  # small tables (lot -> outcomes) are recorded whole: replayable
            return {str(c): to_jsonable(value[c]) for c in value.columns}
        return {"__dataframe__": list(value.shape), "columns": [str(c) for c in value.columns]}
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):  # e.g. bulk.tl.SignRule
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, np.ndarray) and value.size <= 1000:
        return [to_jsonable(v) for v in value.tolist()]
    if isinstance(value, (list, tuple, set, frozenset, pd.Index)) and len(value) <= 10000:
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.random.Generator):
        return {"__repr__": "numpy.random.Generator (state not recorded)"}
    return {"__repr__": repr(value)[:200]}


def _entry(func_name: str, params: dict[str, Any], input_fp: str | None, seconds: float) -> str:
    seed = next((params[k] for k in ("random_state", "seed", "rng") if k in params), None)
    entry = {
        "function": func_name,
        "params": params,
        "random_state": seed,
        "input_fingerprint": input_fp,
        "versions": package_versions(),
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(seconds, 4),
    }
    return json.dumps(entry, sort_keys=True)


def append_log(adata: AnnData, entry_json: str) -> None:
    """Append one JSON entry to ``adata.uns['mscpotency']['log']``."""
    root = adata.uns.setdefault(_keys.PACKAGE, {})
    log = root.get(_keys.LOG, [])
    root[_keys.LOG] = [*list(log), entry_json]


#: Attribute of a recorded tool's wrapper: its public name (``"tl.cluster"``).
RECORDED = "__mscpotency_record__"
#: Attribute of a recorded tool's wrapper: what it does with a view (``record(views=...)``).
VIEWS = "__mscpotency_views__"


def record(
    public_name: str, *, views: Literal["refuse", "actualise"] = "refuse"
) -> Callable[[F], F]:
    """Decorate a public ``pp``/``tl``/``io``/``bulk.tl`` function so every call is logged.

    Before the call, the arguments are checked (:mod:`mscpotency._checks`: ``Literal``
    options and the numeric ranges of :data:`mscpotency._checks.RULES`) and the input
    AnnData is guarded: a backed AnnData (``read_h5ad(..., backed=...)``) is refused, so a
    user's file is never modified; a view (``adata[mask]``) that the tool would write into
    in place (it has ``copy`` and ``copy=False``) is refused with a message to pass
    ``adata[mask].copy()``, unless ``views="actualise"``: then the view is made an actual
    AnnData in place first (as AnnData does on the first write), the result lands in it
    and the parent object is left as it is.

    The input fingerprint is taken before the call; the entry is written into the AnnData
    the call returns (``copy=True``, readers) or, when it returns ``None``, into the
    AnnData it modified in place. A tool that neither takes nor returns one AnnData
    returns an object with a ``with_provenance(entry)`` method, which gets the entry (as
    a dict) and returns the object that the call then returns. Calls made from inside
    another recorded call are not logged (nor guarded) again: the outer call covers them.
    """

    def decorate(func: F) -> F:
        signature = inspect.signature(func)
        func.__mscpotency_name__ = public_name  # type: ignore[attr-defined]

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            _checks.check_arguments(func, args, kwargs)
            if _depth.get() > 0:
                return func(*args, **kwargs)
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            arguments = dict(bound.arguments)
            first_name = next(iter(arguments))
            first = arguments[first_name]
            if isinstance(first, AnnData):
                writes = "copy" in signature.parameters and not arguments["copy"]
                _guard_input(public_name, first, writes=writes, views=views)
            input_fp = fingerprint(first) if isinstance(first, AnnData) else None
            params = {
                k: to_jsonable(v)
                for k, v in arguments.items()
                if k != first_name or input_fp is None
            }
            token = _depth.set(1)
            start = time.perf_counter()
            try:
                result = func(*args, **kwargs)
            finally:
                _depth.reset(token)
            seconds = time.perf_counter() - start
            entry = _entry(public_name, params, input_fp, seconds)
            target = result if isinstance(result, AnnData) else first
            if isinstance(target, AnnData):
                append_log(target, entry)
            elif callable(getattr(result, "with_provenance", None)):
                # a tool without one AnnData in or out (bulk.tl.consensus) returns a typed
                # result that carries its own record (inputs appear as their fingerprints)
                result = result.with_provenance(json.loads(entry))
            logger.info("%s finished in %.2f s", public_name, seconds)
            return result

        setattr(wrapper, _checks.CHECKED, True)
        setattr(wrapper, RECORDED, public_name)
        setattr(wrapper, VIEWS, views)
        return wrapper  # type: ignore[return-value]

    return decorate


def _guard_input(
    public_name: str, adata: AnnData, *, writes: bool, views: Literal["refuse", "actualise"]
) -> None:
    """Refuse a backed input, and a view the tool would write into (or make it actual)."""
    if adata.isbacked:
        msg = (
            f"{public_name}: adata is backed by the file {str(adata.filename)!r} "
            "(read_h5ad(..., backed=...)). mscpotency never writes into your file and does "
            "not compute on backed data: load it into memory first with "
            "`adata = adata.to_memory()` (the file stays as it is)."
        )
        raise ValueError(msg)
    if not (adata.is_view and writes):
        return
    if views == "refuse":
        msg = (
            f"{public_name}: adata is a view (a subset such as adata[mask]); a result written "
            "into it in place would be lost or only partly written. Pass a copy, "
            f"`{public_name}(adata[mask].copy(), ...)`, or use copy=True."
        )
        raise ValueError(msg)
    logger.info("%s: adata is a view; it is made an actual AnnData first", public_name)
    adata._init_as_actual(adata.copy())


def read_log(adata: AnnData) -> list[dict[str, Any]]:
    """The provenance entries of ``adata`` as dictionaries, oldest first."""
    log = adata.uns.get(_keys.PACKAGE, {}).get(_keys.LOG, [])
    return [json.loads(str(e)) for e in list(log)]


def replay(adata: AnnData, log: list[dict[str, Any]] | AnnData, *, copy: bool = True) -> AnnData:
    """Re-run the ``pp``/``tl`` calls of a provenance log on ``adata``.

    Parameters
    ----------
    adata
        The input the log was recorded on (its fingerprint is checked against the first
        entry that recorded one). Entries that built that input (readers, ``pp.pool_lots``)
        record no input fingerprint and are not replayed.
    log
        Entries from :func:`mscpotency.get.provenance` (``.to_dict('records')``) or
        :func:`read_log`, or an AnnData whose log to replay.
    copy
        Work on a copy of ``adata`` (default) or in place.

    Returns
    -------
    The AnnData after every call of the log, with its own log.

    Raises
    ------
    ValueError
        When an entry to replay names anything but one of the package's own recorded
        ``pp``/``tl``/``bulk.tl`` tools (checked for every entry before any is run), or
        when ``adata`` is not the logged input.
    """
    entries = read_log(log) if isinstance(log, AnnData) else list(log)
    adata = adata.copy() if copy else adata
    first_fp = next((e["input_fingerprint"] for e in entries if e.get("input_fingerprint")), None)
    if first_fp is not None and fingerprint(adata) != first_fp:
        msg = (
            f"The input's fingerprint {fingerprint(adata)!r} differs from the logged input "
            f"{first_fp!r}: replay needs the data the log was recorded on."
        )
        raise ValueError(msg)
    # entries that built the AnnData from files or parts (readers, pool_lots) came before
    # the input given here: replay starts after them
    entries = [e for e in entries if e.get("input_fingerprint") is not None]
    funcs = [replayable(e.get("function")) for e in entries]
    for entry, func in zip(entries, funcs, strict=True):
        params = dict(entry["params"])
        opaque = [
            k
            for k, v in params.items()
            if isinstance(v, dict)
            and ("__repr__" in v or "__anndata__" in v or "__dataframe__" in v)
        ]
        if opaque:
            msg = (
                f"{entry['function']} was called with {opaque} that the log cannot restore; "
                "re-run that step by hand."
            )
            raise ValueError(msg)
        params.pop("copy", None)
        func(adata, **params)
    return adata


#: The namespaces whose tools :func:`replay` runs.
REPLAYABLE = ("pp", "tl", "bulk.tl")


def replayable(name: Any) -> Callable[..., Any]:
    """The package's own recorded ``pp``/``tl``/``bulk.tl`` tool that a log entry names.

    Anything else (a reader or writer such as ``io.write_reference``, a private or
    unknown name, a name that is not a string) raises a ``ValueError``: a provenance log
    is data, and a hand-edited one must not make :func:`replay` run arbitrary code.
    """
    import importlib

    namespace, _, short = str(name).rpartition(".")
    func = None
    if isinstance(name, str) and namespace in REPLAYABLE:
        module = importlib.import_module(f"mscpotency.{namespace}")
        if short in getattr(module, "__all__", ()):
            func = getattr(module, short, None)
    if func is None or getattr(func, RECORDED, None) != name:
        allowed = ", ".join(f"{n}.*" for n in REPLAYABLE)
        msg = (
            f"replay runs only the package's own tools ({allowed}); the log names "
            f"{name!r}, which is not one of them. Was the log edited? Run that step by hand "
            "if you trust it."
        )
        raise ValueError(msg)
    return func
