"""Pieces the simulators share (``datasets`` for lots of cells, ``bulk.datasets`` for lines).

Names of simulated units and the settings a simulation records of its configuration.
"""

from __future__ import annotations

from dataclasses import asdict


def numbered_names(prefix: str, first: int, count: int) -> list[str]:
    """``count`` names numbered from ``first``: ``BM01`` ...

    Zero-padded to the widest number (at least two digits), so the names sort in order.
    """
    width = max(2, len(str(first + count - 1)))
    return [f"{prefix}{first + i:0{width}d}" for i in range(count)]


def plain(value):
    """Tuples to lists, recursively, so the settings write to h5ad."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def config_settings(config, random_state: int, *, drop: tuple[str, ...] = ()) -> dict:
    """The settings a simulation records of its configuration dataclass.

    Its fields less ``extra`` (and ``drop``), then the seed as ``random_state``; tuples as
    lists (:func:`plain`).
    """
    settings = asdict(config)
    for name in (*drop, "extra"):
        settings.pop(name)
    settings["random_state"] = random_state
    return plain(settings)
