"""Plots: one figure per question."""
