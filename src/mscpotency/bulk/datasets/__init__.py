"""Simulated bulk lines with known truth (iPS lines, platforms, differentiation methods)."""

from ._lines import LinesConfig, PlatformSpec, ips_lines, ips_lines_config, simulate_lines

__all__ = ["LinesConfig", "PlatformSpec", "ips_lines", "ips_lines_config", "simulate_lines"]
