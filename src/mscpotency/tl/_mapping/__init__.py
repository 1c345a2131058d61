"""New lots: freeze a reference, map query lots onto it, validate potency on the mapped lots.

One public entry point for mapping, :func:`map_to_reference`, with several backends behind
one output schema (``_fast``, ``_anchors``, ``_scvi``); gene harmonisation (``_harmonise``),
projection (``_project``), the mapping score (``_scoring``) and calibration
(``_calibration``) are shared.
"""

from ._api import map_to_reference
from ._calibration import expected_calibration_error as expected_calibration_error
from ._calibration import reliability_table as reliability_table
from ._freeze import freeze_reference
from ._validate_potency import marker_by_set, validate_potency

__all__ = ["freeze_reference", "map_to_reference", "marker_by_set", "validate_potency"]
