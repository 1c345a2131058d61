"""Log lines and progress bars the scanpy way: one logger, one verbosity switch.

``mscpotency.settings.verbosity`` works like ``scanpy.settings.verbosity``: 0 errors only,
1 warnings (default), 2 info (one line per step, with timings), 3 debug. Progress bars
(``tqdm``) appear on loops that last longer than ``settings.progress_delay`` seconds;
``settings.progress = False`` or verbosity 0 silences them.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

logger = logging.getLogger("mscpotency")

_T = TypeVar("_T")
_LEVELS = {"error": 0, "warning": 1, "info": 2, "debug": 3}
_LOGGING_LEVELS = (logging.ERROR, logging.WARNING, logging.INFO, logging.DEBUG)


class Settings:
    """Package-wide output settings (``mscpotency.settings``).

    Attributes
    ----------
    verbosity
        0 (``"error"``), 1 (``"warning"``, default), 2 (``"info"``: one line per step) or
        3 (``"debug"``). Set it with a number or a name; reading gives the number.
    progress
        Show progress bars on long loops (default ``True``; the environment variable
        ``MSCPOTENCY_PROGRESS=0`` turns them off for a whole process, e.g. executed notebooks).
    progress_delay
        Seconds a loop must run before its bar appears (default 2), so short steps stay quiet.
    """

    def __init__(self) -> None:
        self._verbosity = 1
        self._handler: logging.Handler | None = None
        self.progress = os.environ.get("MSCPOTENCY_PROGRESS", "1") not in {"0", "false", "False"}
        self.progress_delay = 2.0

    @property
    def verbosity(self) -> int:
        return self._verbosity

    @verbosity.setter
    def verbosity(self, value: int | str) -> None:
        level = _LEVELS.get(value) if isinstance(value, str) else value
        if not isinstance(level, int) or isinstance(level, bool) or level not in range(4):
            msg = f"verbosity must be 0-3 or one of {sorted(_LEVELS)}, got {value!r}"
            raise ValueError(msg)
        self._verbosity = level
        logger.setLevel(_LOGGING_LEVELS[level])
        if level >= 2 and self._handler is None:
            # our own handler only when asked for more than warnings (no basicConfig)
            self._handler = logging.StreamHandler(sys.stderr)
            self._handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
            logger.addHandler(self._handler)


settings = Settings()


def _tqdm_class():
    try:  # notebook widgets only where ipywidgets exists (else tqdm warns "IProgress not found")
        import ipywidgets  # noqa: F401
        from tqdm.auto import tqdm
    except ImportError:
        from tqdm.std import tqdm
    return tqdm


def progress(
    iterable: Iterable[_T], *, desc: str, total: int | None = None, unit: str = "it"
) -> Iterator[_T] | Iterable[_T]:
    """Wrap a long loop in a progress bar that appears after ``settings.progress_delay`` s.

    Returns ``iterable`` itself when progress bars are off (``settings.progress`` is False or
    verbosity is 0), so the loop's results never depend on the setting.
    """
    if not settings.progress or settings.verbosity == 0:
        return iterable
    return _tqdm_class()(
        iterable,
        desc=desc,
        total=total,
        unit=unit,
        delay=settings.progress_delay,
        leave=False,
        file=sys.stderr,
    )
