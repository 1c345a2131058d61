"""Table-driven bad-input tests: one row per case, run by :mod:`._harness`."""
