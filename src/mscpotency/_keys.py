"""Default names of the columns and layers the package reads, and of its own bookkeeping.

Stored results (``adata.uns`` keys) are declared in :mod:`mscpotency._registry`.
"""

from __future__ import annotations

#: obs column naming the lot (donor line / manufacturing lot) of each cell.
LOT = "lot"
#: obs column naming the study arm (``BM-train``, ``BM-test``, ``AD``, ``UC`` ...).
SET = "set"
#: obs column with cluster labels written by :func:`mscpotency.tl.cluster`.
CLUSTER = "cluster"
#: Default lot-level potency column (VEGF secreted under ischemia-like culture).
POTENCY = "vegf"
#: Layer that keeps raw integer counts once X is normalised.
COUNTS_LAYER = "counts"
#: Prefix of ground-truth columns written by the simulators; never a result.
TRUTH_PREFIX = "true_"

#: Root of the package's own bookkeeping in ``adata.uns``.
PACKAGE = "mscpotency"
#: Provenance log inside ``adata.uns[PACKAGE]``.
LOG = "log"
