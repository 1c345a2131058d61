"""Readers of per-lot single-cell data and lot tables, with validation."""
