"""Simulated MSC lots with known truth (bulk lines: :mod:`mscpotency.bulk.datasets`)."""

from ._crosstech import TechnologySpec, crosstech, crosstech_config
from ._donor import donor, donor_config, simulate_donor_lots
from ._simulate import (
    SetSpec,
    SimulationConfig,
    hard,
    hard_config,
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
    "TechnologySpec",
    "crosstech",
    "crosstech_config",
    "donor",
    "donor_config",
    "hard",
    "hard_config",
    "iter_lots",
    "simulate_donor_lots",
    "simulate_lots",
    "study",
    "study_config",
    "tiny",
    "tiny_config",
]
