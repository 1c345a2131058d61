"""Memory a step freed goes back to the operating system (glibc's malloc_trim)."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from mscpotency import _memory


def _resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_freed_heap_pages_are_returned():
    """Freed blocks between live ones stay mapped (no automatic trim from the heap's top)
    until release_freed_memory gives their pages back; the live blocks are untouched."""
    blocks = [np.full(4096, i % 251, dtype=np.uint8) for i in range(40_000)]  # ~160 MB, heap
    live = blocks[::16]  # one block in 16 stays: no freed run reaches the heap's top
    del blocks
    before = _resident_bytes()
    assert _memory.release_freed_memory()
    after = _resident_bytes()
    assert before - after > 80 * 2**20
    assert all((block == (16 * i) % 251).all() for i, block in enumerate(live))


def test_no_trim_where_there_is_no_glibc(monkeypatch):
    monkeypatch.setattr(_memory.sys, "platform", "darwin")
    _memory._malloc_trim.cache_clear()
    try:
        assert _memory.release_freed_memory() is False
    finally:
        _memory._malloc_trim.cache_clear()
