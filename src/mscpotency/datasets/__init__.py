"""Simulated MSC lots with known truth (bulk lines: :mod:`mscpotency.bulk.datasets`)."""

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
