"""Where numba keeps compiled kernels between processes: a per-user cache directory.

Imported first by ``mscpotency/__init__.py``, before any module that defines a kernel.
numba's ``cache=True`` writes compiled code beside the source (``__pycache__``) unless
``NUMBA_CACHE_DIR`` names a directory; an installed package may be read-only, and then
every process compiles again. This module points numba at a per-user cache directory
(``$XDG_CACHE_HOME/mscpotency/numba``, ``~/.cache/mscpotency/numba`` by default;
``~/Library/Caches`` on macOS, ``%LOCALAPPDATA%`` on Windows) unless the user chose one:

- ``NUMBA_CACHE_DIR`` set in the environment wins;
- otherwise a ``CACHE_DIR`` numba already holds (its ``.numba_config.yaml``, or
  ``numba.config.CACHE_DIR`` set in code before importing mscpotency) wins;
- otherwise the per-user directory is used, or a per-user temporary directory when the
  per-user one cannot be written.

The choice is written to ``os.environ["NUMBA_CACHE_DIR"]`` (so numba's configuration
reloads keep it, and worker processes started afterwards, e.g. a Dask ``LocalCluster``,
share the cache) and to ``numba.config.CACHE_DIR``, which numba reads when a
``cache=True`` function is decorated (its cache locator is built then). Kernels decorated
before mscpotency was imported keep the location they had. Every ``cache=True`` function
decorated afterwards, ours and those of umap, pynndescent and scanpy, which they import
lazily, is cached there. Delete the directory to clear the cache.

umap and pynndescent declare most of their kernels without ``cache=True`` (pynndescent
compiles some forty of them when it is imported), about 10 s of compilation in every
process that builds a neighbour graph. So that a second process does not pay it again, an
import hook (:class:`CachingFinder`) executes their modules, when they are first imported
after mscpotency, with ``numba.njit`` and ``numba.jit`` defaulting to ``cache=True``, and
with their cache in a subdirectory named after their versions (numba checks a cached
function against its own source file only, not against the functions it calls in other
files, so an upgrade starts a new cache). Kernels they define later, at run time, are not
affected, nor are these packages if they were imported before mscpotency.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.abc
import importlib.metadata
import os
import sys
import tempfile
from pathlib import Path

import numba
from numba.core import config

#: The environment variable numba reads its cache directory from.
ENV = "NUMBA_CACHE_DIR"


def user_cache_dir() -> Path:
    """The per-user numba cache directory of mscpotency (platformdirs' ``user_cache_dir`` rule)."""
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        xdg = os.environ.get("XDG_CACHE_HOME", "")
        base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "mscpotency" / "numba"


def _writable(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
    except OSError:
        return False
    return True


def _default_dir() -> str:
    path = user_cache_dir()
    if not _writable(path):
        user = os.environ.get("USER") or os.environ.get("USERNAME") or "user"
        path = Path(tempfile.gettempdir()) / f"mscpotency-numba-{user}"
    return str(path)


def configure() -> str:
    """Set numba's cache directory (see the module's docstring) and return it."""
    chosen = os.environ.get(ENV) or config.CACHE_DIR or _default_dir()
    os.environ[ENV] = chosen
    # numba re-reads its environment when it compiles if the environment changed since it
    # last read it: read it now, so that a later compile does not reset what is set here
    config.reload_config()
    config.CACHE_DIR = chosen
    return chosen


#: Distributions (import name: distribution name) whose kernels are compiled with ``cache=True``.
CACHED_PACKAGES = {"umap": "umap-learn", "pynndescent": "pynndescent"}
_DECORATORS = {"njit": numba.njit, "jit": numba.jit}
_importing = 0  # depth of nested imports of CACHED_PACKAGES modules


def _with_cache(decorator):
    @functools.wraps(decorator)
    def decorate(*args, **kwargs):
        if _importing:
            kwargs.setdefault("cache", True)
        return decorator(*args, **kwargs)

    return decorate


_CACHING = {name: _with_cache(decorator) for name, decorator in _DECORATORS.items()}


def _versions_dir() -> str:
    def version(distribution: str) -> str:
        try:
            return importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            return "unknown"

    name = "_".join(f"{d}-{version(d)}" for d in CACHED_PACKAGES.values())
    return os.path.join(config.CACHE_DIR or CACHE_DIR, name)


@contextlib.contextmanager
def _caching_decorators():
    """``numba.njit``/``numba.jit`` default to ``cache=True`` in the versioned directory."""
    global _importing
    saved = config.CACHE_DIR
    if not _importing:
        numba.njit, numba.jit = _CACHING["njit"], _CACHING["jit"]
        config.CACHE_DIR = _versions_dir()
    _importing += 1
    try:
        yield
    finally:
        _importing -= 1
        if not _importing:
            numba.njit, numba.jit = _DECORATORS["njit"], _DECORATORS["jit"]
            config.CACHE_DIR = saved


def _exec_cached(exec_module, module) -> None:
    with _caching_decorators():
        exec_module(module)


class CachingFinder(importlib.abc.MetaPathFinder):
    """Finds modules of :data:`CACHED_PACKAGES` as usual and executes them with caching on."""

    def find_spec(self, fullname, path, target=None):
        if fullname.partition(".")[0] not in CACHED_PACKAGES:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        exec_module = getattr(spec.loader, "exec_module", None)
        if exec_module is not None and getattr(exec_module, "func", None) is not _exec_cached:
            spec.loader.exec_module = functools.partial(_exec_cached, exec_module)
        return spec


#: The directory numba caches compiled kernels in for this process.
CACHE_DIR = configure()
if not any(isinstance(finder, CachingFinder) for finder in sys.meta_path):
    sys.meta_path.insert(0, CachingFinder())
