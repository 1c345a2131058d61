"""Give the memory a large step freed back to the operating system.

A step that allocates and frees many small and medium blocks (pynndescent's kNN search at
10^6 cells: ~0.8 GB) leaves them in the C heap, free but still mapped: the process's
resident memory stays at its high-water mark and every later allocation comes on top of
it. glibc keeps such memory until ``malloc_trim`` is called (Dask's workers are started
with a low ``MALLOC_TRIM_THRESHOLD_`` for the same reason; a notebook's process is not).
"""

from __future__ import annotations

import ctypes
import functools
import sys


@functools.cache
def _malloc_trim():
    """The C library's ``malloc_trim`` (glibc), or ``None`` where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def release_freed_memory() -> bool:
    """Return the C heap's free pages to the operating system; ``False`` where it cannot.

    Frees nothing that is in use: only pages of the heap that hold no live allocation are
    given back (``malloc_trim(0)``, every arena).
    """
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
