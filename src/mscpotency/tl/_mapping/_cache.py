"""Per-process caches of what mapping computes from the reference alone, cleared together.

Mapping a query computes several things that depend on the reference only (calibrations on
held-out reference lots, the reference's own neighbours, its mean counts): later queries
onto the same reference reuse them. Each cache is a :class:`BoundedCache` (the oldest entry
leaves first), and every one is registered here, so :func:`clear_caches` forgets them all:
what a benchmark's first ("cold") call and a test of one needs, without knowing each cache.

A cache created with ``shipped_as`` holds arrays that a frozen reference can carry
(:mod:`._shipped`): its keys start with the reference's ``data_hash`` (the *owner*), and a
key missing here is looked up among the entries frozen references shipped (:func:`ship`)
before it is computed.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Generic, TypeVar

from ..._frozen import forget_expressions

T = TypeVar("T")

#: Frozen references whose shipped entries are kept at once (the oldest leaves first).
SHIPPED_REFERENCES = 4


class BoundedCache(Generic[T]):
    """A mapping of at most ``size`` computed values; the oldest entry leaves first.

    ``shipped_as``: the name under which a frozen reference ships this cache's entries
    (keys are then tuples whose first element is the reference's ``data_hash``).
    """

    def __init__(self, size: int, *, shipped_as: str | None = None) -> None:
        self.size = size
        self.shipped_as = shipped_as
        self._entries: dict[Hashable, T] = {}
        _REGISTERED.append(self)

    def get(self, key: Hashable, compute: Callable[[], T]) -> T:
        """The value stored under ``key``: shipped by a frozen reference, or computed (once)."""
        if key not in self._entries:
            value = _shipped_value(self.shipped_as, key)
            if value is None:
                value = compute()
            if len(self._entries) >= self.size:
                self._entries.pop(next(iter(self._entries)))
            self._entries[key] = value
        if self.shipped_as is not None:
            for touched in _RECORDING:
                touched.append((self.shipped_as, key, self._entries[key]))
        return self._entries[key]

    def clear(self) -> None:
        self._entries.clear()

    def values(self) -> Iterator[T]:
        return iter(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)


_REGISTERED: list[BoundedCache] = []

#: Open :func:`recording` blocks: each collects the shipped caches' entries it reads.
_RECORDING: list[list[tuple[str, Hashable, Any]]] = []


@contextmanager
def recording() -> Iterator[list[tuple[str, Hashable, Any]]]:
    """Collect ``(cache name, key, value)`` of every shipped cache's entry read inside the block.

    What a frozen reference ships is what its calibration read, whatever this process had
    cached before: the same entries, so the same file and hash, on every run.
    """
    touched: list[tuple[str, Hashable, Any]] = []
    _RECORDING.append(touched)
    try:
        yield touched
    finally:
        _RECORDING.remove(touched)


#: Entries frozen references shipped: owner (data hash) -> cache name -> key digest -> value.
_SHIPPED: OrderedDict[str, dict[str, dict[str, Any]]] = OrderedDict()


def key_digest(key: Hashable) -> str:
    """A stable name for a cache key (its ``repr``, hashed): how shipped entries are found."""
    return hashlib.sha1(repr(key).encode()).hexdigest()


def ship(owner: str, entries: Mapping[str, Mapping[str, Any]]) -> None:
    """Make the entries a frozen reference shipped (name -> key digest -> value) available."""
    _SHIPPED[owner] = {str(name): dict(values) for name, values in entries.items()}
    _SHIPPED.move_to_end(owner)
    while len(_SHIPPED) > SHIPPED_REFERENCES:
        _SHIPPED.popitem(last=False)


def is_shipped(owner: str) -> bool:
    """Whether the entries of the frozen reference ``owner`` are available already."""
    return owner in _SHIPPED


def _shipped_value(name: str | None, key: Hashable) -> Any:
    if name is None or not isinstance(key, tuple) or not key or key[0] not in _SHIPPED:
        return None
    return _SHIPPED[key[0]].get(name, {}).get(key_digest(key))


def clear_caches() -> None:
    """Forget everything every mapping cache of this process holds.

    Also the entries frozen references shipped (a frozen reference ships them again when it
    is next read for mapping) and the reference expressions (and digests)
    :func:`mscpotency._frozen.reference_model` keeps, so a cold call normalises and hashes
    its reference again.
    """
    for cache in _REGISTERED:
        cache.clear()
    _SHIPPED.clear()
    forget_expressions()
