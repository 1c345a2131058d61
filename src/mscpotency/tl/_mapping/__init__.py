"""New lots: freeze a reference, map query lots onto it, validate potency on the mapped lots.

One public entry point for mapping, :func:`map_to_reference`, with several backends behind
one transfer protocol (``_transfer``): each backend is one module holding its options
(``_fast.FastOptions``, ``_anchors.AnchorOptions``, ``_scvi.ScviOptions``) and its
``transfer``. Gene harmonisation (``_harmonise``), projection (``_project``), the mapping
score (``_scoring``) and calibration (``_calibration``, ``_pca_backends``) are shared; the
frozen reference itself lives below ``tl`` and ``io`` (:mod:`mscpotency._frozen`).
"""

from ._anchors import AnchorOptions
from ._api import map_to_reference
from ._calibration import expected_calibration_error as expected_calibration_error
from ._calibration import reliability_table as reliability_table
from ._fast import FastOptions
from ._freeze import freeze_reference
from ._marker_by_set import marker_by_set
from ._scvi import ScviOptions
from ._validate_potency import validate_potency

__all__ = [
    "AnchorOptions",
    "FastOptions",
    "ScviOptions",
    "freeze_reference",
    "map_to_reference",
    "marker_by_set",
    "validate_potency",
]
