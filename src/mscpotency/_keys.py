"""Every obs/obsm/uns key the package reads or writes, built in one place.

Plots and accessors find what a tool wrote through these names, so a key is spelt once.
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

# Default ``key_added`` of each tool; each result lives in ``adata.uns[key]``.
QC = "qc"
PREPROCESS = "preprocess"
CLUSTERING = "cluster"
LOT_FRACTIONS = "lot_fractions"
COMPOSITION_DEVIATION = "composition_deviation"
POTENCY_ASSOCIATION = "potency_association"
POTENCY_MARKERS = "potency_markers"

#: Which tool writes which default key: used in "run X first" messages.
PRODUCER = {
    QC: "pp.qc",
    PREPROCESS: "pp.preprocess",
    CLUSTERING: "tl.cluster",
    LOT_FRACTIONS: "tl.lot_fractions",
    COMPOSITION_DEVIATION: "tl.composition_deviation",
    POTENCY_ASSOCIATION: "tl.potency_association",
    POTENCY_MARKERS: "tl.potency_markers",
}


def producer_of(key: str) -> str:
    """Name of the tool that writes ``adata.uns[key]`` by default (for error messages)."""
    return PRODUCER.get(key, f"the tool with key_added={key!r}")
