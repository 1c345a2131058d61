"""Simulated bulk lines with known truth (iPS lines, platforms, differentiation methods)."""

from ._hard import ips_lines_hard, ips_lines_hard_config
from ._lines import LinesConfig, PlatformSpec, ips_lines, ips_lines_config, simulate_lines

__all__ = [
    "LinesConfig",
    "PlatformSpec",
    "ips_lines",
    "ips_lines_config",
    "ips_lines_hard",
    "ips_lines_hard_config",
    "simulate_lines",
]
