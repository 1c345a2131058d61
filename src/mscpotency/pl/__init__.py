"""Plots: one figure per question.

Every plot reads a stored result (a ``KeyError`` names the tool to run first), takes
``ax=None, show=None, return_fig=False`` and returns the Figure (``return_fig=True``), the
Axes (``show=False``) or ``None`` once shown. Clusters keep one colour in every plot, taken
from ``adata.uns[f"{cluster_key}_colors"]`` as in scanpy. A plot shares its name with the
tool whose result it draws (``tl.lot_fractions`` -> ``pl.lot_fractions``).
"""

from ._association import *  # noqa: F403
from ._association import __all__ as _association_plots
from ._composition import *  # noqa: F403
from ._composition import __all__ as _composition_plots
from ._decisions import *  # noqa: F403
from ._decisions import __all__ as _decisions_plots
from ._embedding import *  # noqa: F403
from ._embedding import __all__ as _embedding_plots
from ._lots import *  # noqa: F403
from ._lots import __all__ as _lots_plots
from ._mapping import *  # noqa: F403
from ._mapping import __all__ as _mapping_plots
from ._markers import *  # noqa: F403
from ._markers import __all__ as _markers_plots
from ._qc import *  # noqa: F403
from ._qc import __all__ as _qc_plots
from ._robustness import *  # noqa: F403
from ._robustness import __all__ as _robustness_plots

__all__ = [
    *_qc_plots,
    *_embedding_plots,
    *_composition_plots,
    *_association_plots,
    *_markers_plots,
    *_mapping_plots,
    *_robustness_plots,
    *_decisions_plots,
    *_lots_plots,
]
