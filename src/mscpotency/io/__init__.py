"""Readers of per-lot single-cell data and lot tables, with validation."""

from ._lazy import read_lots_lazy
from ._lot_table import read_lot_table
from ._read import read_lots
from ._reference import read_reference, write_reference

__all__ = ["read_lot_table", "read_lots", "read_lots_lazy"]
__all__ += ["read_reference", "write_reference"]
