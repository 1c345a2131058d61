"""Mapping calibrations a frozen reference ships, so that a new process maps its first set fast.

What mapping computes from the reference alone — the held-out reference cells' label
probabilities that the temperature and the prediction sets are fitted on, the novelty
calibration's refitted fold PCAs and held-out mapping scores, the reference's mean counts
and (``anchors``) its cells' own neighbours —
depends on nothing a query brings, yet every process pays for it on its first call (on the
study preset ~7.5 s of a 9.6 s first call with ``anchors``). :func:`calibrations_for`
computes it once, when the reference is frozen, with :func:`mscpotency.tl.map_to_reference`'s
defaults, and returns it as plain arrays for the frozen record; :func:`install` offers a
frozen reference's shipped entries to mapping's caches when it is read for mapping.

- **Exact**: a shipped entry is found under the very key the query's call would compute it
  under (:func:`._cache.key_digest`), and holds the value that call would compute, bit for
  bit (tested): results onto a reference with or without shipped calibrations are identical.
  The novelty scores are shipped for query lots that leave the held-out reference lots whole
  (lots of more than half the size of the largest reference lot: the study's sets); a query
  of smaller lots, or of another technology (depth-matched calibration), computes its own.
- **Covered by the content hash** (part ``'calibrations'``), so ``expected_hash`` pins them
  with the rest of the reference.
- **Used only by the code that computed them**: the record's ``'stamp'`` digests this
  package's source and the versions of the packages whose arithmetic they depend on; under
  another stamp they are ignored (and computed as usual), never trusted.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import logging
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..._frozen import ReferenceModel
from ..._provenance import package_versions
from ._anchors import AnchorOptions, reference_neighbours
from ._cache import is_shipped, key_digest, recording, ship
from ._novelty import (
    NOVELTY_FOLDS,
    fold_loadings,
    held_out_mapping_scores,
    held_out_sets,
    reference_mean_counts,
)
from ._pca_backends import ProjectionOptions, held_out_predictions
from ._transfer import backend_options

logger = logging.getLogger("mscpotency")

#: Version of the shipped calibrations' layout in the frozen record.
FORMAT = 1


@functools.cache
def code_stamp() -> str:
    """A digest of this package's Python source and the versions it runs on.

    Shipped calibrations are used only under the stamp they were computed with: any change
    of the code (or of numpy, scipy, numba, ...) could change what they would be.
    """
    root = Path(__file__).resolve().parents[2]  # the mscpotency package
    sha = hashlib.sha1(f"format {FORMAT}\n".encode())
    for path in sorted(root.rglob("*.py")):
        sha.update(str(path.relative_to(root)).encode() + b"\n" + path.read_bytes())
    sha.update(json.dumps(package_versions(), sort_keys=True).encode())
    return sha.hexdigest()


def calibrations_for(model: ReferenceModel, methods: Sequence[str]) -> dict[str, Any]:
    """The calibrations mapping onto ``model`` with ``methods`` computes from the reference alone.

    Computed (or read from this process's caches) with the defaults of
    :func:`mscpotency.tl.map_to_reference` and each backend's default options; only the
    entries these calls read are returned, so the result does not depend on what this
    process mapped before.

    Returns
    -------
    ``{'format', 'stamp', 'owner', 'methods', 'entries'}``: ``owner`` is the reference's
    ``data_hash``; ``entries`` maps each cache's name to ``{key digest: array}`` (a pair of
    arrays as ``{'0': ..., '1': ...}``).
    """
    defaults = _mapping_defaults()
    seed, lot_size = defaults["random_state"], _whole_lots(model)
    every = np.arange(model.embedding.shape[0])
    with recording() as touched:
        for method in methods:
            options = projection_options(method)
            held_out_predictions(model, options, **defaults)
            if isinstance(options, AnchorOptions):  # the reference's own search, every cell
                reference_neighbours(
                    model.embedding,
                    every,
                    options.k_score,
                    defaults["knn_method"],
                    seed,
                    owner=model.data_hash,
                )
        for held in held_out_sets(model, seed, lot_size, NOVELTY_FOLDS):
            fold_loadings(model, held, NOVELTY_FOLDS, seed)
        held_out_mapping_scores(model, lot_size=lot_size, depth=None, **defaults)
        reference_mean_counts(model)
    entries: dict[str, dict[str, Any]] = {}
    for name, key, value in touched:
        entries.setdefault(name, {})[key_digest(key)] = _encoded(value)
    return {
        "format": FORMAT,
        "stamp": code_stamp(),
        "owner": model.data_hash,
        "methods": [str(m) for m in methods],
        "entries": entries,
    }


def install(model: ReferenceModel) -> bool:
    """Offer the calibrations ``model``'s frozen record ships to mapping's caches.

    Returns whether they were installed: not when there are none, nor when they were
    computed by other code (their stamp differs: they are then computed as usual).
    """
    shipped = model.calibrations
    if not shipped:
        return False
    if is_shipped(model.data_hash):  # read for an earlier call (verified by the same hash)
        return True
    if str(shipped.get("stamp")) != code_stamp() or int(shipped.get("format", 0)) != FORMAT:
        logger.info(
            "the reference's shipped calibrations were computed by another version of "
            "mscpotency or of the packages it runs on: computing them again"
        )
        return False
    if str(shipped.get("owner")) != model.data_hash:
        logger.info("the reference's shipped calibrations belong to other content: not used")
        return False
    entries = {
        str(name): {str(digest): _decoded(value) for digest, value in values.items()}
        for name, values in dict(shipped.get("entries", {})).items()
    }
    ship(model.data_hash, entries)
    return True


def _mapping_defaults() -> dict[str, Any]:
    """``n_comps_own``, ``knn_method`` and ``random_state`` as ``tl.map_to_reference`` defaults them."""
    from ._api import map_to_reference

    parameters = inspect.signature(map_to_reference).parameters
    return {
        name: parameters[name].default for name in ("n_comps_own", "knn_method", "random_state")
    }


def projection_options(method: str) -> ProjectionOptions:
    """The default options of a backend working in the reference PCA (scvi ships its own model)."""
    options = backend_options(method, None)
    if not isinstance(options, ProjectionOptions):
        msg = (
            f"calibrations can be shipped for the 'fast' and 'anchors' backends, got {method!r} "
            "(the scvi backend's calibration travels with its model: freeze_reference(scvi=True))"
        )
        raise ValueError(msg)
    return options


def _whole_lots(model: ReferenceModel) -> int:
    """A query lot size that leaves every held-out reference lot whole (the largest lot's size)."""
    if model.lots is None:
        return int(model.expression.shape[0])
    return int(np.unique(model.lots, return_counts=True)[1].max())


def _encoded(value: Hashable | np.ndarray | tuple) -> Any:
    if isinstance(value, tuple):
        return {str(i): np.asarray(v) for i, v in enumerate(value)}
    return np.asarray(value)


def _decoded(value: Any) -> Any:
    """A shipped entry as the cache holds it, copied (apart from the reference's own ``uns``)."""
    if isinstance(value, Mapping):
        return tuple(np.array(value[str(i)]) for i in range(len(value)))
    return np.array(value)
