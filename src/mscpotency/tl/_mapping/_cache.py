"""Per-process caches of what mapping computes from the reference alone, cleared together.

Mapping a query computes several things that depend on the reference only (calibrations on
held-out reference lots, the reference's own neighbours, its mean counts): later queries
onto the same reference reuse them. Each cache is a :class:`BoundedCache` (the oldest entry
leaves first), and every one is registered here, so :func:`clear_caches` forgets them all:
what a benchmark's first ("cold") call and a test of one needs, without knowing each cache.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from typing import Generic, TypeVar

from ..._frozen import forget_expressions

T = TypeVar("T")


class BoundedCache(Generic[T]):
    """A mapping of at most ``size`` computed values; the oldest entry leaves first."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: dict[Hashable, T] = {}
        _REGISTERED.append(self)

    def get(self, key: Hashable, compute: Callable[[], T]) -> T:
        """The value stored under ``key``, computed (and stored) on the first request."""
        if key not in self._entries:
            if len(self._entries) >= self.size:
                self._entries.pop(next(iter(self._entries)))
            self._entries[key] = compute()
        return self._entries[key]

    def clear(self) -> None:
        self._entries.clear()

    def values(self) -> Iterator[T]:
        return iter(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)


_REGISTERED: list[BoundedCache] = []


def clear_caches() -> None:
    """Forget everything every mapping cache of this process holds.

    Also the reference expressions (and digests) :func:`mscpotency._frozen.reference_model`
    keeps, so a cold call normalises and hashes its reference again.
    """
    for cache in _REGISTERED:
        cache.clear()
    forget_expressions()
