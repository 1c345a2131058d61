"""mscpotency: find the cells that carry a cell-therapy product's potency.

Pool scRNA-seq cells of several lots, cluster them, find the cluster whose share of each
lot tracks a lot-level potency assay, describe it with markers, and map new lots onto the
reference. ``pp``/``tl``/``pl`` follow scanpy's conventions.
"""

from importlib.metadata import PackageNotFoundError, version

from . import (  # _numba_cache first: numba's cache directory is set before any kernel
    _numba_cache,  # noqa: F401
    bulk,
    datasets,
    get,
    io,
    pl,
    pp,
    tl,
)
from ._provenance import replay
from ._settings import settings
from ._workflow import AnalysisSettings, analyse, load_settings, release_lots, report

try:
    __version__ = version("mscpotency")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"

__all__ = ["bulk", "datasets", "get", "io", "pl", "pp", "replay", "settings", "tl"]
__all__ += ["AnalysisSettings", "analyse", "load_settings", "release_lots", "report"]
