"""Simulated data with known truth, and bundled example data."""

from ._lines import LinesConfig, PlatformSpec, ips_lines, ips_lines_config, simulate_lines
from ._simulate import (
    SetSpec,
    SimulationConfig,
    iter_lots,
    simulate_lots,
    study,
    study_config,
    tiny,
    tiny_config,
)

__all__ = [
    "SetSpec",
    "SimulationConfig",
    "iter_lots",
    "simulate_lots",
    "study",
    "study_config",
    "tiny",
    "tiny_config",
]
__all__ += ["LinesConfig", "PlatformSpec", "ips_lines", "ips_lines_config", "simulate_lines"]
