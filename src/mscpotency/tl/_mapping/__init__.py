"""Reference mapping: transfer labels of a processed reference to new lots and tissues.

One public entry point, :func:`map_to_reference`, with several backends behind one output
schema (``_fast``, ``_anchors``, ``_scvi``); gene harmonisation (``_harmonise``), projection
(``_project``), the mapping score (``_scoring``) and calibration (``_calibration``) are shared.
"""

from ._api import MAPPING, map_to_reference
from ._calibration import expected_calibration_error, reliability_table

__all__ = ["MAPPING", "expected_calibration_error", "map_to_reference", "reliability_table"]
