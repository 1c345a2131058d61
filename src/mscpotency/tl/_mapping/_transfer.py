"""The transfer protocol: what every mapping backend receives, and what it gives back.

A backend is a frozen dataclass of its options that subclasses :class:`TransferOptions`
under its method name and implements :meth:`TransferOptions.transfer`::

    @dataclass(frozen=True, kw_only=True)
    class FastOptions(ProjectionOptions, method="fast"):
        n_neighbors: int = 30

Subclassing registers it in :data:`BACKENDS`, so adding a backend is one module (export
its options from ``tl``). :func:`mscpotency.tl.map_to_reference` prepares one
:class:`MappingInput` — the query harmonised to the reference, centred per lot, projected,
its own axes — hands it to ``options.transfer`` and writes the :class:`Transfer` it gets
back in the one output schema every backend shares.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import numpy as np
from anndata import AnnData

from ..._frozen import ReferenceModel
from ._harmonise import Harmonised
from ._make_up import MakeUp
from ._novelty import DepthModel
from ._project import CentredMatrix


@dataclass(frozen=True)
class MappingInput:
    """The query prepared for transfer: the same for every backend."""

    adata: AnnData  # the query, raw counts in ``layer``
    reference: AnnData  # the reference as passed (scvi trains on its counts)
    model: ReferenceModel
    harmonised: Harmonised  # the query's log-normalised expression on the reference genes
    lots: np.ndarray | None  # each query cell's lot (None: one lot)
    by_lot: CentredMatrix  # the harmonised query centred on each lot's mean
    projected: np.ndarray  # ``by_lot`` in the reference PCA
    own_axes: np.ndarray  # the query's own principal axes (genes x components)
    layer: str | None
    calibrate: bool
    n_comps_own: int
    knn_method: str
    random_state: int
    depth: DepthModel | None = None  # the query's depth relative to the reference's


@dataclass(frozen=True)
class Transfer:
    """What a backend gives back: label probabilities and where the cells sit."""

    probabilities: np.ndarray  # (n_query, n_labels), rows sum to 1, before temperature scaling
    calibration: dict[str, Any]  # the fitted temperature and its reliability (NOT_CALIBRATED)
    query_embedding: np.ndarray  # query cells in the space the labels were transferred in
    reference_embedding: np.ndarray  # reference cells in that space
    neighbours: tuple[np.ndarray, np.ndarray] | None = None  # reference neighbours, nearest first
    anchors: dict[str, int] = field(default_factory=dict)  # anchor counts (anchors backend)
    make_up: MakeUp | None = None  # each lot's make-up and shift (centre="lot_shift")


#: The calibration of a mapping that fitted no temperature.
NOT_CALIBRATED: dict[str, Any] = {"temperature": 1.0, "fitted": False}

#: Backend options by method name, in the order they were defined.
BACKENDS: dict[str, type[TransferOptions]] = {}


@dataclass(frozen=True, kw_only=True)
class TransferOptions:
    """Options of one mapping backend (subclasses register under their ``method``)."""

    method: ClassVar[str]

    def __init_subclass__(cls, *, method: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if method is not None:
            cls.method = method
            BACKENDS[method] = cls

    def transfer(self, mapping: MappingInput) -> Transfer:
        """Label probabilities of the query cells, and the calibration when asked for."""
        raise NotImplementedError

    def as_params(self) -> dict[str, Any]:
        """The options as stored with the result (unset ones left out)."""
        return {name: value for name, value in asdict(self).items() if value is not None}


def backend_options(method: str, options: TransferOptions | None) -> TransferOptions:
    """The options of ``method``: ``options`` when they belong to it, else its defaults."""
    if method not in BACKENDS:
        msg = f"method must be one of {tuple(BACKENDS)}, got {method!r}"
        raise ValueError(msg)
    expected = BACKENDS[method]
    if options is None:
        return expected()
    if not isinstance(options, expected):
        other = getattr(type(options), "method", None)
        hint = f" (they are options of method={other!r})" if other else ""
        msg = (
            f"method={method!r} takes options={expected.__name__}(...), got "
            f"{type(options).__name__}{hint}; pass matching method and options."
        )
        raise TypeError(msg)
    return options


def boundary_labels(
    model: ReferenceModel, transfer: Transfer, codes: np.ndarray, in_set: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """Query labels re-decided by the potency population's boundary rule, and what it did.

    :func:`mscpotency.tl.potency_population` defines its population partly by a boundary
    with its neighbour (cells not typical of the neighbour on the discriminant axis
    between them); a frozen reference of its labels carries that rule
    (``model.boundary``). Label transfer alone hands transitional cells (partly committed
    towards the neighbour) to the neighbour, so every query cell labelled the population
    or its neighbour is re-decided by the same rule, in the reference PCA: the population
    when its score on the axis exceeds the threshold, else the neighbour. Unassigned cells
    (novel, empty prediction set) and other labels are left alone; a moved cell's new label
    joins its prediction set (a larger set keeps the set's coverage). Backends that do not
    transfer in the reference PCA (scvi) are left alone, and the record says so.
    """
    rule = model.boundary
    if rule is None:
        return codes, in_set, {"applied": False, "reason": "the reference has no boundary rule"}
    axis = np.asarray(rule["axis"], dtype=np.float64)
    embedding = np.asarray(transfer.query_embedding)
    if transfer.reference_embedding is not model.embedding or embedding.shape[1] != axis.size:
        reason = "the labels were transferred outside the reference PCA"
        return codes, in_set, {"applied": False, "reason": reason}
    population = model.categories.get_loc(rule["population"])
    neighbour = model.categories.get_loc(rule["neighbour"])
    beyond = embedding @ axis > float(rule["threshold"])
    decided = np.where(beyond, population, neighbour)
    new = np.where(np.isin(codes, [population, neighbour]), decided, codes)
    moved = np.flatnonzero(new != codes)
    if in_set is not None and moved.size:
        in_set = in_set.copy()
        in_set[moved, new[moved]] = True
    return (
        new,
        in_set,
        {
            "applied": True,
            "population": str(rule["population"]),
            "neighbour": str(rule["neighbour"]),
            "threshold": float(rule["threshold"]),
            "n_to_population": int((new[moved] == population).sum()),
            "n_to_neighbour": int((new[moved] == neighbour).sum()),
        },
    )
