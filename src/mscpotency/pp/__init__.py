"""Preprocessing: pool lots, join lot tables, QC, normalise and reduce."""

from ._integrate import integrate
from ._lot_table import add_lot_table
from ._pool import pool_lots
from ._preprocess import preprocess
from ._qc import qc

__all__ = ["add_lot_table", "integrate", "pool_lots", "preprocess", "qc"]
