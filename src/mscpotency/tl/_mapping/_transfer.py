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


@dataclass(frozen=True)
class Transfer:
    """What a backend gives back: label probabilities and where the cells sit."""

    probabilities: np.ndarray  # (n_query, n_labels), rows sum to 1, before temperature scaling
    calibration: dict[str, Any]  # the fitted temperature and its reliability (NOT_CALIBRATED)
    query_embedding: np.ndarray  # query cells in the space the labels were transferred in
    reference_embedding: np.ndarray  # reference cells in that space
    neighbours: tuple[np.ndarray, np.ndarray] | None = None  # reference neighbours, nearest first
    anchors: dict[str, int] = field(default_factory=dict)  # anchor counts (anchors backend)


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
