"""Accessors: every stored result as a tidy DataFrame.

Each accessor shares its name with the tool that wrote the result (``tl.lot_fractions`` ->
``get.lot_fractions``), takes ``key`` (where the result was written) and, where a result
holds several tables, ``kind``. The results are declared in :mod:`mscpotency._registry`.
"""

from ._decisions import *  # noqa: F403
from ._decisions import __all__ as _decisions_accessors
from ._lots import *  # noqa: F403
from ._lots import __all__ as _lots_accessors
from ._mapping import *  # noqa: F403
from ._mapping import __all__ as _mapping_accessors
from ._population import *  # noqa: F403
from ._population import __all__ as _population_accessors
from ._robustness import *  # noqa: F403
from ._robustness import __all__ as _robustness_accessors

__all__ = [
    *_population_accessors,
    *_mapping_accessors,
    *_robustness_accessors,
    *_decisions_accessors,
    *_lots_accessors,
]
