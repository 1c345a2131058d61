"""Simulated data with known truth, and bundled example data."""

from ._simulate import SetSpec, SimulationConfig, simulate_lots, study, study_config, tiny, tiny_config

__all__ = ["SetSpec", "SimulationConfig", "simulate_lots", "study", "study_config", "tiny", "tiny_config"]
