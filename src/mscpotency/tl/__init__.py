"""Tools on pooled cells (cells x genes, ``obs['lot']``), grouped by the question they answer.

- which cells carry potency (``_population``): :func:`cluster`, :func:`lot_fractions`,
  :func:`composition_deviation`, :func:`potency_association`, :func:`potency_markers`;
- new lots (``_mapping``): :func:`freeze_reference`, :func:`map_to_reference`,
  :func:`validate_potency`, :func:`marker_by_set`;
- how sure (``_robustness``): stability, influential lots, second opinions, pseudobulk;
- decisions (``_decisions``): :func:`fit_potency_model`, :func:`predict_potency`,
  :func:`comparability`.

Bulk lines x genes panels have their own namespace, :mod:`mscpotency.bulk`.
"""

from ._decisions import *  # noqa: F403
from ._decisions import __all__ as _decisions_tools
from ._mapping import *  # noqa: F403
from ._mapping import __all__ as _mapping_tools
from ._population import *  # noqa: F403
from ._population import __all__ as _population_tools
from ._robustness import *  # noqa: F403
from ._robustness import __all__ as _robustness_tools

__all__ = [*_population_tools, *_mapping_tools, *_robustness_tools, *_decisions_tools]
