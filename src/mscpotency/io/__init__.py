"""Readers of per-lot single-cell data and lot tables, with validation."""

from ._lot_table import read_lot_table
from ._read import read_lots

__all__ = ["read_lot_table", "read_lots"]
