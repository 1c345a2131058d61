"""Bulk lines x genes panels (iPS lines, microarray, CAGE, qRT-PCR): its own data model.

Each line is one observation (``obs``: lines, ``var``: genes, probes or promoters); the
analysis relates baseline expression to a line-level outcome (a differentiation-propensity
score): ``bulk.pp`` (array probes, CAGE counts and qRT-PCR tables as labs have them), ``bulk.tl`` (propensity, rank association, consensus, held-out validation),
``bulk.get`` (tidy tables), ``bulk.pl`` (plots) and ``bulk.datasets`` (a simulator with
known truth).
"""

from . import datasets, get, pl, pp, tl

__all__ = ["datasets", "get", "pl", "pp", "tl"]
