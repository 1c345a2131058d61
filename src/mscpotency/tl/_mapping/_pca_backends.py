"""What the backends that transfer labels in the reference PCA share (``fast``, ``anchors``).

The query is centred (per lot on its shift net of its make-up, by default; or on the lot's,
the query's or the reference's mean) and projected onto the reference PCA; the backend turns
that into label probabilities. The temperature is fitted on the reference itself: its lots
are held out in turn and mapped onto the others by the same backend with the same options,
centred the same way (:func:`held_out_calibration`, cached per reference and options, since
the fit is deterministic).
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..._frozen import ReferenceModel
from ._cache import BoundedCache
from ._calibration import calibration_summary, lot_folds
from ._make_up import net_of_make_up, reference_populations
from ._novelty import DepthModel, depth_key, thinned
from ._project import Centre, CentredMatrix, centred, principal_axes
from ._transfer import NOT_CALIBRATED, MappingInput, Transfer, TransferOptions

_CENTRES = ("reference", "query", "lot", "lot_shift")

#: Neighbours of a reference cell and their distances, nearest first (or ``None``).
Neighbours = tuple[np.ndarray, np.ndarray] | None

#: The ``centre`` attribute as every backend working in the reference PCA documents it: a
#: ``{centre}`` line in the docstring of :class:`ProjectionOptions` or of a subclass stands
#: for it (filled when the class is defined), so the three texts cannot drift apart.
CENTRE_DOC = """\
Where query cells are centred before projection: on each lot's shift net of its
make-up (``"lot_shift"``, the default: removes donor, site, tissue and technology
shifts and keeps each lot's make-up, estimated with the shift by a mixture of the
reference's populations; see the concepts page), on each lot's own mean
(``"lot"``: also removes a make-up unlike the reference's, pulling such a lot
towards the reference's average), on the query's mean (``"query"``) or on the
reference mean (``"reference"``, as Seurat and ingest do)."""


def _with_centre(doc: str | None) -> str | None:
    """``doc`` with its ``{centre}`` line replaced by :data:`CENTRE_DOC`, indented as that line."""
    if doc is None:
        return None
    return re.sub(
        r"^([ \t]*)\{centre\}$",
        lambda line: textwrap.indent(CENTRE_DOC, line.group(1)),
        doc,
        flags=re.MULTILINE,
    )


@dataclass(frozen=True, kw_only=True)
class ProjectionOptions(TransferOptions):
    """Options every backend working in the reference PCA shares.

    Attributes
    ----------
    centre
        {centre}
    n_calibration_folds
        Folds of reference lots for the calibration (each maps at most
        ``CALIBRATION_MAX_CELLS`` of its held-out cells, drawn at random: one temperature
        is fitted).
    """

    centre: Centre = "lot_shift"
    n_calibration_folds: int = 3

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.__doc__ = _with_centre(cls.__doc__)

    def __post_init__(self) -> None:
        if self.centre not in _CENTRES:
            msg = f"centre must be one of {_CENTRES}, got {self.centre!r}"
            raise ValueError(msg)

    @property
    def uses_own_axes(self) -> bool:
        """Whether :meth:`label_probabilities` reads the query's own axes."""
        return False

    def label_probabilities(
        self,
        model: ReferenceModel,
        rows: np.ndarray,
        query: CentredMatrix,
        own: np.ndarray,
        query_embedding: np.ndarray,
        *,
        knn_method: str,
        random_state: int,
    ) -> tuple[np.ndarray, dict[str, int], Neighbours]:
        """Label probabilities of ``query`` from the reference cells ``rows``.

        ``query_embedding`` is ``query`` in the reference PCA, ``own`` the query's own axes.
        Also returns anchor counts (or ``{}``) and the reference neighbours of each query
        cell as indices into ``rows`` (or ``None``).
        """
        raise NotImplementedError

    def transfer(self, mapping: MappingInput) -> Transfer:
        """Centre the query as asked, transfer labels from every reference cell, calibrate."""
        model = mapping.model
        query, query_embedding, make_up = mapping.by_lot, mapping.projected, None
        if self.centre == "lot_shift":
            populations = reference_populations(model)
            query, query_embedding, make_up = net_of_make_up(query, query_embedding, populations)
        elif self.centre != "lot":
            query = centred(
                mapping.harmonised.expression,
                centre=self.centre,
                reference_mean=model.pca_mean,
                lots=mapping.lots,
            )
            query_embedding = query.dot(model.loadings)
        probabilities, anchors, neighbours = self.label_probabilities(
            model,
            np.arange(model.embedding.shape[0]),
            query,
            mapping.own_axes,
            query_embedding,
            knn_method=mapping.knn_method,
            random_state=mapping.random_state,
        )
        calibration = dict(NOT_CALIBRATED)
        if mapping.calibrate:
            calibration = held_out_calibration(
                model,
                self,
                mapping.n_comps_own,
                mapping.knn_method,
                mapping.random_state,
                depth=mapping.depth,
            )
        return Transfer(
            probabilities=probabilities,
            calibration=calibration,
            query_embedding=query_embedding,
            reference_embedding=model.embedding,
            neighbours=neighbours,
            anchors=anchors,
            make_up=make_up,
        )


ProjectionOptions.__doc__ = _with_centre(ProjectionOptions.__doc__)

#: Calibrations already fitted in this process, by reference and options: mapping several
#: query sets onto one reference fits the temperature once (the fit is deterministic).
_CALIBRATIONS: BoundedCache[dict[str, Any]] = BoundedCache(16)
#: What they are fitted on: the held-out cells' label probabilities and true labels (a
#: frozen reference can ship them, :mod:`._shipped`).
_HELD_OUT: BoundedCache[tuple[np.ndarray, np.ndarray]] = BoundedCache(
    16, shipped_as="held_out_predictions"
)

#: Held-out reference cells mapped per calibration fold, at most (a random subset above):
#: one temperature is fitted. On a 10^5-cell reference (3 folds) 6,000 per fold gave
#: temperatures 0.509 and 0.487 (two seeds of the folds and subsets) where 10,000 gave 0.492
#: and 0.546, ECE after 0.0005-0.0008 either way, at 16-18 s instead of 24 s; the study
#: preset's folds (<= 5,935 cells) are mapped whole.
CALIBRATION_MAX_CELLS = 6_000


def held_out_calibration(
    model: ReferenceModel,
    options: ProjectionOptions,
    n_comps_own: int,
    knn_method: str,
    random_state: int,
    depth: DepthModel | None = None,
) -> dict[str, Any]:
    """Temperature from reference lots held out in turn and mapped onto the rest (cached).

    With a ``depth`` that has efficiencies (a query of clearly lower depth, or lacking
    genes), the held-out cells are first measured as the query's technology measures them
    (:func:`._novelty.thinned`), as the novelty calibration's are: the temperature and the
    prediction sets then carry the label uncertainty of the query's depth.
    """
    key = (model.data_hash, options, n_comps_own, knn_method, random_state, depth_key(depth))

    def fitted() -> dict[str, Any]:
        probabilities, labels = held_out_predictions(
            model, options, n_comps_own, knn_method, random_state, depth
        )
        return calibration_summary(probabilities, labels) | {
            "n_folds": options.n_calibration_folds,
            "thinned_to_query": depth_key(depth) != "unmatched",
        }

    stored = _CALIBRATIONS.get(key, fitted)
    return {
        k: (v.copy() if isinstance(v, (pd.DataFrame, np.ndarray)) else v) for k, v in stored.items()
    }


def held_out_predictions(
    model: ReferenceModel,
    options: ProjectionOptions,
    n_comps_own: int,
    knn_method: str,
    random_state: int,
    depth: DepthModel | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Label probabilities of held-out reference cells mapped onto the rest, and their labels (cached)."""
    key = (model.data_hash, options, n_comps_own, knn_method, random_state, depth_key(depth))
    return _HELD_OUT.get(
        key,
        lambda: _mapped_held_out_lots(model, options, n_comps_own, knn_method, random_state, depth),
    )


def _mapped_held_out_lots(
    model: ReferenceModel,
    options: ProjectionOptions,
    n_comps_own: int,
    knn_method: str,
    random_state: int,
    depth: DepthModel | None,
) -> tuple[np.ndarray, np.ndarray]:
    n = model.embedding.shape[0]
    collected, truth = [], []
    rng = np.random.default_rng([random_state, 2])
    thinning = np.random.default_rng([random_state, 6])
    for held_out in lot_folds(model.lots, n, options.n_calibration_folds, random_state):
        rows = np.flatnonzero(~held_out)
        held_out = _at_most(held_out, CALIBRATION_MAX_CELLS, rng)
        lots = model.lots[held_out] if model.lots is not None else None
        expression = model.expression[held_out]
        if depth_key(depth) != "unmatched":
            expression = thinned(expression, depth.efficiency, thinning)
        query = centred(
            expression,
            centre=options.centre,
            reference_mean=model.pca_mean,
            lots=lots,
        )
        own = np.zeros((query.shape[1], 0))
        if options.uses_own_axes:
            own = _held_out_own_axes(model, held_out, query, options, n_comps_own, random_state)
        embedding = query.dot(model.loadings)
        if options.centre == "lot_shift":
            query, embedding, _ = net_of_make_up(
                query, embedding, reference_populations(model, rows)
            )
        probabilities, _, _ = options.label_probabilities(
            model,
            rows,
            query,
            own,
            embedding,
            knn_method=knn_method,
            random_state=random_state,
        )
        collected.append(probabilities)
        truth.append(model.labels[held_out])
    return np.vstack(collected), np.concatenate(truth)


def _at_most(mask: np.ndarray, n_max: int, rng: np.random.Generator) -> np.ndarray:
    """``mask`` with at most ``n_max`` cells kept, drawn at random when it has more."""
    if mask.sum() <= n_max:
        return mask
    kept = np.sort(rng.choice(np.flatnonzero(mask), n_max, replace=False))
    subset = np.zeros(mask.size, dtype=bool)
    subset[kept] = True
    return subset


def _held_out_own_axes(
    model: ReferenceModel,
    held_out: np.ndarray,
    query: CentredMatrix,
    options: ProjectionOptions,
    n_comps_own: int,
    random_state: int,
) -> np.ndarray:
    """The held-out cells' own axes, found on them centred per lot (as the query's are).

    ``query`` holds the held-out cells as they are mapped (thinned to the query's depth when
    it is lower), each row one of ``held_out``.
    """
    by_lot = query
    if options.centre not in ("lot", "lot_shift"):
        lots = model.lots[held_out] if model.lots is not None else None
        by_lot = centred(query.X, centre="lot", reference_mean=model.pca_mean, lots=lots)
    n_own = int(min(n_comps_own, max(1, by_lot.shape[0] - 2), by_lot.shape[1] - 1))
    return principal_axes(by_lot, n_own, random_state=random_state)
