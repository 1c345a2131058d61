"""Compiled kernels are cached across processes in a per-user directory, not beside the package."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from numba.core import config

import mscpotency
from mscpotency import _numba_cache

PACKAGE = Path(mscpotency.__file__).resolve().parent

#: Imports the package, runs one kernel and reports where numba cached it.
RUN_KERNEL = """
import json, numpy as np, numba
import mscpotency
from mscpotency import _frozen
data = np.ones(6, dtype=np.float32)
_frozen._scale_rows(data, np.array([0, 2, 6]), np.array([2.0, 3.0], dtype=np.float32))
stats = _frozen._scale_rows.stats
print(json.dumps({
    "file": mscpotency.__file__,
    "cache_dir": numba.config.CACHE_DIR,
    "hits": sum(stats.cache_hits.values()),
    "misses": sum(stats.cache_misses.values()),
    "data": data.tolist(),
}))
"""


def _cache_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix in {".nbi", ".nbc"})


def _make_read_only(package: Path) -> None:
    """No cache can be written beside the package: ``__pycache__`` is a file, and no write bit.

    The file blocks numba's in-tree cache even for root, who ignores permissions.
    """
    for folder in [package, *(p for p in package.rglob("*") if p.is_dir())]:
        (folder / "__pycache__").write_text("")
    for path in [package, *package.rglob("*")]:
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def _make_writable(package: Path) -> None:
    for path in [package, *package.rglob("*")]:
        path.chmod(path.stat().st_mode | stat.S_IWUSR)


def _run(env: dict[str, str]) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", RUN_KERNEL],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_read_only_package_caches_in_the_per_user_directory(tmp_path):
    """A read-only copy of the package compiles once, into ~/.cache/mscpotency/numba.

    Two processes with HOME and XDG_CACHE_HOME in a temporary directory and no
    NUMBA_CACHE_DIR: the first compiles the kernel and writes its cache under
    ``$XDG_CACHE_HOME/mscpotency/numba``, the second loads it from there; nothing is
    written beside the package (nor into numba's own per-user directory).
    """
    site = tmp_path / "site"
    shutil.copytree(PACKAGE, site / "mscpotency", ignore=shutil.ignore_patterns("__pycache__"))
    _make_read_only(site / "mscpotency")
    env = {k: v for k, v in os.environ.items() if k != _numba_cache.ENV}
    env.update(
        PYTHONPATH=str(site),
        HOME=str(tmp_path / "home"),
        XDG_CACHE_HOME=str(tmp_path / "xdg"),
    )
    expected = tmp_path / "xdg" / "mscpotency" / "numba"
    try:
        first = _run(env)
        second = _run(env)
        beside_package = _cache_files(site)
    finally:
        _make_writable(site / "mscpotency")

    assert Path(first["file"]).resolve() == (site / "mscpotency" / "__init__.py").resolve()
    assert first["cache_dir"] == second["cache_dir"] == str(expected)
    assert first["data"] == [2.0, 2.0, 3.0, 3.0, 3.0, 3.0]
    assert (first["misses"], first["hits"]) == (1, 0)  # compiled, then written to the cache
    assert (second["misses"], second["hits"]) == (0, 1)  # loaded from the cache
    cached = _cache_files(expected)
    assert any("_scale_rows" in p.name for p in cached)
    assert beside_package == []
    assert _cache_files(tmp_path / "home") == []  # nor numba's own ~/.cache/numba


def test_numba_cache_dir_wins(monkeypatch, tmp_path):
    monkeypatch.setenv(_numba_cache.ENV, str(tmp_path / "mine"))
    monkeypatch.setattr(config, "CACHE_DIR", "")
    assert _numba_cache.configure() == str(tmp_path / "mine")
    assert config.CACHE_DIR == str(tmp_path / "mine")


def test_numba_setting_wins_over_the_default(monkeypatch, tmp_path):
    """A CACHE_DIR numba already holds (its yaml file, or set in code) is kept."""
    monkeypatch.delenv(_numba_cache.ENV, raising=False)
    monkeypatch.setattr(config, "CACHE_DIR", str(tmp_path / "set-in-code"))
    assert _numba_cache.configure() == str(tmp_path / "set-in-code")
    assert os.environ[_numba_cache.ENV] == str(tmp_path / "set-in-code")


@pytest.mark.skipif(sys.platform in {"win32", "darwin"}, reason="XDG rule")
def test_default_directory_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv(_numba_cache.ENV, raising=False)
    monkeypatch.setattr(config, "CACHE_DIR", "")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert _numba_cache.configure() == str(tmp_path / "xdg" / "mscpotency" / "numba")
    assert config.CACHE_DIR == os.environ[_numba_cache.ENV] == _numba_cache.configure()
    assert (tmp_path / "xdg" / "mscpotency" / "numba").is_dir()
    # XDG_CACHE_HOME must be absolute (XDG base directory spec); otherwise ~/.cache
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")
    home_cache = tmp_path / "home" / ".cache" / "mscpotency" / "numba"
    assert _numba_cache.user_cache_dir() == home_cache
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert _numba_cache.user_cache_dir() == home_cache


def test_unwritable_home_falls_back_to_a_temporary_directory(monkeypatch, tmp_path):
    blocked = tmp_path / "a-file"  # a file where the directory should go: unwritable for root too
    blocked.write_text("")
    monkeypatch.delenv(_numba_cache.ENV, raising=False)
    monkeypatch.setattr(config, "CACHE_DIR", "")
    monkeypatch.setattr(_numba_cache, "user_cache_dir", lambda: blocked / "mscpotency")
    chosen = Path(_numba_cache.configure())
    assert chosen.name.startswith("mscpotency-numba-")
    assert chosen.parent == Path(tempfile.gettempdir())


FAKE_PACKAGE = """
import numba
from numba import njit


@numba.njit
def lazy(x):
    return x + 1


@njit("i8(i8)")
def eager(x):
    return 2 * x


def later():
    return numba.njit(lambda x: x)
"""


def test_third_party_kernels_are_cached_in_a_versioned_directory(monkeypatch, tmp_path):
    """Modules of CACHED_PACKAGES compile with cache=True, in a directory named after versions."""
    (tmp_path / "site" / "fake_kernels").mkdir(parents=True)
    (tmp_path / "site" / "fake_kernels" / "__init__.py").write_text(FAKE_PACKAGE)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setitem(_numba_cache.CACHED_PACKAGES, "fake_kernels", "fake-kernels")
    monkeypatch.setattr(config, "CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delitem(sys.modules, "fake_kernels", raising=False)
    import numba

    real_njit = numba.njit
    import fake_kernels

    assert numba.njit is real_njit  # restored after the import
    assert config.CACHE_DIR == str(tmp_path / "cache")
    versions = [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]
    assert [p.name for p in versions] == [_numba_cache._versions_dir().rpartition(os.sep)[2]]
    assert "fake-kernels-unknown" in versions[0].name
    assert any("eager" in p.name for p in _cache_files(versions[0]))  # compiled at import
    assert fake_kernels.lazy(1) == 2
    assert any("lazy" in p.name for p in _cache_files(versions[0]))
    # kernels made at run time, after the import, are not cached
    assert type(fake_kernels.later()._cache).__name__ == "NullCache"
    sys.modules.pop("fake_kernels")


@pytest.mark.slow
def test_second_process_compiles_nothing_of_pynndescent(tmp_path):
    """pynndescent compiles its kernels at import; the second process loads them all."""
    code = (
        "import numba.core.event as ev, json\n"
        "class Count(ev.Listener):\n"
        "    n = 0\n"
        "    def on_start(self, event): Count.n += 1\n"
        "    def on_end(self, event): pass\n"
        "ev.register('numba:compile', Count())\n"
        "import mscpotency, pynndescent\n"
        "print(json.dumps(Count.n))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != _numba_cache.ENV}
    env.update(HOME=str(tmp_path / "home"), XDG_CACHE_HOME=str(tmp_path / "xdg"))
    counts = []
    for _ in range(2):
        result = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600
        )
        assert result.returncode == 0, result.stderr
        counts.append(json.loads(result.stdout.strip().splitlines()[-1]))
    assert counts[0] > 20
    assert counts[1] == 0
