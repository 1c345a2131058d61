"""The anchors backend: Seurat's FindTransferAnchors (``reduction="pcaproject"``) + TransferData.

Written on numpy, following Stuart et al. (2019, Cell 177:1888) and Seurat 4.3:

1. the query is projected onto the reference PCA; reference and query embeddings are
   L2-normalised per cell;
2. anchors are mutual nearest neighbours (``k_anchor``) between reference and query cells;
3. anchors are filtered: a pair is kept only if the query cell is among the ``k_filter``
   nearest query cells of the reference cell in a second, gene-level space (Seurat uses the
   L2-normalised expression of all anchor genes; see :func:`filter_space` for the cheaper
   equivalent used here);
4. anchors are scored by the neighbours their two cells share (``k_score`` within and
   across datasets), scaled so the 1% and 90% quantiles map to 0 and 1;
5. TransferData: each query cell takes its ``k_weight`` nearest anchors by query-side
   distance in the (un-normalised) projection, weights
   ``1 - exp(-(1 - d / d_k) * score / (2 sd^2))`` normalised to sum to 1, and the label
   probabilities are the weighted votes of the anchors' reference labels.

One deliberate difference: Seurat drops each query cell's first anchor neighbour (meant to
drop the cell itself when it is an anchor, it drops the nearest anchor of every other cell
too); here the nearest anchor counts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import numba
import numpy as np

from ..._frozen import ReferenceModel
from ._cache import BoundedCache
from ._fast import vote
from ._neighbors import _drop_self, knn
from ._pca_backends import Neighbours, ProjectionOptions
from ._project import CentredMatrix, csr_dot


@dataclass(frozen=True)
class Anchors:
    """Anchor pairs and their scores."""

    reference: np.ndarray  # (n_anchors,) reference cell of each anchor
    query: np.ndarray  # (n_anchors,) query cell of each anchor
    score: np.ndarray  # (n_anchors,) in [0, 1]
    n_mnn: int  # pairs before filtering


#: Above this many query x reference pairs, a search of the anchors backend with
#: ``knn_method="auto"`` is approximate (:func:`._neighbors.knn`'s own limit is higher). A
#: mapping runs six such searches, and more in its calibration folds: exact, they took ~72%
#: of a 10^5 x 10^5 call; approximate (recall@30 0.9997, @200 0.996 there), anchors and
#: transfer took 85 instead of 141 CPU s with 99.995% of labels unchanged. Every search of
#: the study's reference and query sets (16,314 x 5,935-7,426 cells) stays exact.
EXACT_MAX_PAIRS = 1_000_000_000


def _knn(
    data: np.ndarray, query: np.ndarray, k: int, *, method: str = "auto", **kwargs
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`._neighbors.knn`; ``"auto"`` is exact up to this module's :data:`EXACT_MAX_PAIRS`."""
    if method == "auto":
        method = "exact" if data.shape[0] * query.shape[0] <= EXACT_MAX_PAIRS else "approximate"
    return knn(data, query, k, method=method, **kwargs)


def l2_normalise(X: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return X / norms


#: Reference cells in the filtering space: all of them, or a function of the cells asked for.
ReferenceFilter = np.ndarray | Callable[[np.ndarray], np.ndarray]


def filter_space(
    reference_centred_dot, query_centred_dot, reference_axes: np.ndarray, query_axes: np.ndarray
) -> tuple[ReferenceFilter, np.ndarray]:
    """Reference and query cells in the span of both datasets' principal axes, L2-normalised.

    Seurat filters anchors by cosine distances over all anchor genes. Those distances are
    dominated by the structured part of expression (what either dataset's principal axes
    span); the rest is per-cell noise that adds about the same amount to every distance.
    Distances in the span of the reference axes and the query's own axes therefore rank
    neighbours as the gene space does, at a fraction of the cost (tens instead of
    thousands of dimensions). Both callables map a ``(genes, d)`` basis to coordinates;
    ``reference_centred_dot`` also takes the reference cells to place (``None``: all), and
    the reference comes back as a function of those cells: only the cells of anchor pairs
    are ever placed (each cell's coordinates do not depend on the others').
    """
    basis, _ = np.linalg.qr(np.hstack([reference_axes, query_axes]))

    def reference_filter(cells: np.ndarray) -> np.ndarray:
        return l2_normalise(reference_centred_dot(basis, cells))

    return reference_filter, l2_normalise(query_centred_dot(basis))


def _shared_counts(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Number of shared entries between row ``i`` of ``left`` and row ``i`` of ``right``.

    An entry repeated within a row of ``left`` counts each time it is in ``right``'s row.
    """
    left = np.ascontiguousarray(left, dtype=np.int64)
    right = np.ascontiguousarray(right, dtype=np.int64)
    out = np.empty(left.shape[0], dtype=np.int64)
    _count_shared(left, right, out)
    return out


@numba.njit(parallel=True, cache=True)
def _count_shared(left, right, out):  # pragma: no cover - compiled
    """``out[i]``: entries of ``left[i]`` found in ``right[i]`` (rows in parallel)."""
    for i in numba.prange(left.shape[0]):
        shared = 0
        for a in range(left.shape[1]):
            for b in range(right.shape[1]):
                if left[i, a] == right[i, b]:
                    shared += 1
                    break
        out[i] = shared


def find_transfer_anchors(
    reference_embedding: np.ndarray,
    query_embedding: np.ndarray,
    *,
    reference_filter: ReferenceFilter | None,
    query_filter: np.ndarray | None,
    k_anchor: int = 5,
    k_filter: int = 200,
    k_score: int = 30,
    knn_method: str = "auto",
    random_state: int = 0,
    reference_neighbours: np.ndarray | None = None,
) -> Anchors:
    """Mutual nearest neighbours between reference and query, filtered and scored.

    Parameters
    ----------
    reference_embedding, query_embedding
        Reference PCA and the query's projection onto it (normalised here).
    reference_filter, query_filter
        The cells in the filtering space (:func:`filter_space`; the reference's may be a
        function of the reference cells to place); ``None`` or ``k_filter=0`` skips
        filtering.
    k_anchor, k_filter, k_score
        Seurat's parameters of the same names.
    knn_method, random_state
        See :func:`._neighbors.knn`.
    reference_neighbours
        :func:`within_set_neighbours` of ``reference_embedding`` when already known (they
        depend on the reference alone).
    """
    ref = l2_normalise(np.asarray(reference_embedding, dtype=np.float64))
    qry = l2_normalise(np.asarray(query_embedding, dtype=np.float64))
    k_nn = max(k_anchor, k_score)
    kw = {"method": knn_method, "random_state": random_state}
    rr = reference_neighbours
    if rr is None:
        rr = within_set_neighbours(ref, k_score, knn_method, random_state, normalised=True)
    qq = within_set_neighbours(qry, k_score, knn_method, random_state, normalised=True)
    rq, _ = _knn(qry, ref, k_nn, **kw)  # reference cell -> its nearest query cells
    qr, _ = _knn(ref, qry, k_nn, **kw)  # query cell -> its nearest reference cells
    # mutual nearest neighbours
    ref_cells = np.repeat(np.arange(ref.shape[0]), k_anchor)
    query_cells = rq[:, :k_anchor].ravel()
    mutual = (qr[query_cells, :k_anchor] == ref_cells[:, None]).any(axis=1)
    ref_cells, query_cells = ref_cells[mutual], query_cells[mutual]
    n_mnn = int(ref_cells.size)
    if n_mnn == 0:
        msg = (
            "no mutual nearest neighbours between query and reference: the query shares no "
            "population with the reference, or the embeddings do not match."
        )
        raise ValueError(msg)
    if reference_filter is not None and query_filter is not None and k_filter > 0:
        keep = _filter(ref_cells, query_cells, reference_filter, query_filter, k_filter, kw)
        if keep.any():
            ref_cells, query_cells = ref_cells[keep], query_cells[keep]
    raw = _shared_counts(rr[ref_cells, :k_score], qr[query_cells, :k_score]) + _shared_counts(
        rq[ref_cells, :k_score], qq[query_cells, :k_score]
    )
    low, high = np.quantile(raw, [0.01, 0.9])
    score = np.clip((raw - low) / (high - low), 0.0, 1.0) if high > low else np.ones(raw.size)
    return Anchors(reference=ref_cells, query=query_cells, score=score, n_mnn=n_mnn)


def within_set_neighbours(
    embedding: np.ndarray,
    k_score: int,
    knn_method: str,
    random_state: int,
    *,
    normalised: bool = False,
) -> np.ndarray:
    """Each cell and its ``k_score - 1`` nearest cells of the same set (L2-normalised space).

    Seurat's within-set neighbours include the cell itself, first.
    """
    points = embedding if normalised else l2_normalise(np.asarray(embedding, dtype=np.float64))
    nearest, _ = _knn(
        points, points, k_score - 1, exclude_self=True, method=knn_method, random_state=random_state
    )
    return np.hstack([np.arange(points.shape[0])[:, None], nearest])


#: The reference's own within-set neighbours, by embedding digest and search options: every
#: query mapped onto one reference in this process needs the same ones. ``_WIDTH`` times
#: ``k_score`` of them are kept per cell, so that those of a calibration fold (the reference
#: without some of its lots) come from the same search.
_REFERENCE_NEIGHBOURS: BoundedCache[np.ndarray] = BoundedCache(4, shipped_as="reference_neighbours")
_WIDTH = 2


def reference_neighbours(
    embedding: np.ndarray,
    rows: np.ndarray,
    k_score: int,
    knn_method: str,
    random_state: int,
    *,
    owner: str,
) -> np.ndarray:
    """:func:`within_set_neighbours` of the reference cells ``rows`` among themselves.

    Indices into ``rows`` (sorted). One search of every reference cell, ``_WIDTH *
    k_score`` wide, is cached per embedding (a digest of the embedding itself: two
    references of one content hash may hold it at different precisions). A cell's nearest
    cells among ``rows`` are its nearest cells that are in ``rows``, in order, so the
    neighbours within a subset are read off that search (ties by position either way);
    a cell with fewer than ``k_score`` of them in ``rows`` is searched again among
    ``rows``. With an approximate search (``knn_method``; ``"auto"`` above
    :data:`EXACT_MAX_PAIRS` pairs), those read off are the approximate ones. ``owner``: the
    reference's ``data_hash``, first in the cache key (a frozen reference can ship the search,
    :mod:`._shipped`).
    """
    n = embedding.shape[0]
    embedding = np.ascontiguousarray(embedding)
    digest = hashlib.blake2b(embedding.view(np.uint8).ravel(), digest_size=16).hexdigest()
    width = min(_WIDTH * k_score, n)
    key = (owner, digest, embedding.shape, embedding.dtype.str, width, knn_method, random_state)
    wide = _REFERENCE_NEIGHBOURS.get(
        key, lambda: within_set_neighbours(embedding, width, knn_method, random_state)
    )
    if rows.size == n:
        return wide[:, :k_score]
    position = np.full(n, -1, dtype=np.int64)
    position[rows] = np.arange(rows.size)
    mapped = position[wide[rows]]  # -1: not in ``rows``; column 0: the cell itself
    inside = mapped >= 0
    width = min(k_score, rows.size)
    first = np.argsort(~inside, axis=1, kind="stable")[:, :width]
    found = np.take_along_axis(mapped, first, axis=1)
    short = np.flatnonzero(inside.sum(axis=1) < width)
    if short.size:
        points = l2_normalise(np.asarray(embedding[rows], dtype=np.float64))
        found[short] = _searched_again(points, short, width, knn_method, random_state)
    return found


def _searched_again(
    points: np.ndarray, cells: np.ndarray, k_score: int, knn_method: str, random_state: int
) -> np.ndarray:
    """:func:`within_set_neighbours` of ``points`` for the rows ``cells`` only."""
    nearest, distances = _knn(
        points, points[cells], k_score, method=knn_method, random_state=random_state
    )
    rest, _ = _drop_self(nearest, distances, own=cells)  # as ``knn(exclude_self=True)``
    return np.hstack([cells[:, None], rest])


def _filter(
    ref_cells: np.ndarray,
    query_cells: np.ndarray,
    reference_filter: ReferenceFilter,
    query_filter: np.ndarray,
    k_filter: int,
    kw: dict,
) -> np.ndarray:
    """Keep an anchor when its query cell is among its reference cell's k_filter nearest query cells."""
    unique_ref, position = np.unique(ref_cells, return_inverse=True)
    if callable(reference_filter):
        points = reference_filter(unique_ref)
    else:
        points = reference_filter[unique_ref]
    nearest, _ = _knn(query_filter, points, k_filter, **kw)
    return (nearest[position] == query_cells[:, None]).any(axis=1)


def transfer_data(
    query_embedding: np.ndarray,
    anchors: Anchors,
    reference_labels: np.ndarray,
    n_labels: int,
    *,
    k_weight: int = 50,
    sd_weight: float = 1.0,
    knn_method: str = "auto",
    random_state: int = 0,
) -> np.ndarray:
    """Seurat's TransferData: anchor-weighted label probabilities (rows sum to 1).

    Parameters
    ----------
    query_embedding
        The query's projection onto the reference PCA (not normalised), the space in which
        each query cell finds its nearest anchors.
    anchors
        From :func:`find_transfer_anchors`.
    reference_labels
        Integer label of every reference cell.
    n_labels
        Number of labels.
    k_weight
        Anchors that weigh in on each query cell.
    sd_weight
        Bandwidth of the Gaussian kernel.
    knn_method, random_state
        See :func:`._neighbors.knn`.
    """
    nearest, distances = _nearest_anchors(
        query_embedding, anchors.query, k_weight, knn_method=knn_method, random_state=random_state
    )
    furthest = distances[:, -1:].copy()
    furthest[furthest <= 0] = 1.0
    closeness = 1.0 - distances / furthest
    weights = 1.0 - np.exp(-closeness * anchors.score[nearest] / (2.0 * sd_weight**2))
    # a cell whose anchors all sit at the same distance gets equal weights, as in the limit
    flat = weights.sum(axis=1) <= 0
    weights[flat] = 1.0
    return vote(reference_labels[anchors.reference[nearest]], weights, n_labels)


def _nearest_anchors(
    query_embedding: np.ndarray,
    anchor_cells: np.ndarray,
    k: int,
    *,
    knn_method: str,
    random_state: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Each query cell's ``k`` nearest anchors (indices into the anchors) and their distances.

    An anchor sits at its query cell, and a query cell is in up to ``k_anchor`` anchors, so
    the search runs over the distinct anchored cells (about half as many points at 10^5
    cells) and each cell found gives all of its anchors, in anchor order: the anchors and
    distances a search over every anchor's point finds, up to the order of two different
    cells at exactly the same distance.
    """
    points = np.asarray(query_embedding, dtype=np.float64)
    cells, inverse = np.unique(anchor_cells, return_inverse=True)
    by_cell = np.argsort(inverse, kind="stable")
    starts = np.concatenate([[0], np.cumsum(np.bincount(inverse, minlength=cells.size))])
    near, near_distances = _knn(
        points[cells], points, min(k, cells.size), method=knn_method, random_state=random_state
    )
    k = min(k, anchor_cells.size)
    nearest = np.empty((points.shape[0], k), dtype=np.int64)
    distances = np.empty((points.shape[0], k))
    _expand_cells(near, near_distances, by_cell, starts, nearest, distances)
    return nearest, distances


@numba.njit(parallel=True, cache=True)
def _expand_cells(near, near_distances, by_cell, starts, nearest, distances):  # pragma: no cover
    """Row by row, the anchors of the cells in ``near`` (nearest first) until ``k`` are taken."""
    k = nearest.shape[1]
    for i in numba.prange(near.shape[0]):
        taken = 0
        for j in range(near.shape[1]):
            cell = near[i, j]
            for a in range(starts[cell], starts[cell + 1]):
                if taken < k:
                    nearest[i, taken] = by_cell[a]
                    distances[i, taken] = near_distances[i, j]
                    taken += 1


@dataclass(frozen=True, kw_only=True)
class AnchorOptions(ProjectionOptions, method="anchors"):
    """Options of ``map_to_reference(method="anchors")``: Seurat's anchors, on numpy.

    FindTransferAnchors (``pcaproject``) + TransferData: mutual nearest neighbours as
    anchors, filtered, scored, and anchor-weighted label transfer; robust to lot and tissue
    effects. The ``k_*`` and ``sd_weight`` options are Seurat's of the same names.

    Attributes
    ----------
    centre
        {centre}
    n_calibration_folds
        Folds of reference lots held out in turn to fit the temperature.
    k_anchor
        Neighbours searched for mutual nearest neighbours (anchor pairs).
    k_filter
        Nearest query cells of an anchor's reference cell, in the gene-level space, among
        which its query cell must be (``0`` skips the filter).
    k_score
        Neighbours whose overlap scores an anchor.
    k_weight
        Anchors that weigh in on each query cell.
    sd_weight
        Bandwidth of the anchor weights' Gaussian kernel.
    """

    k_anchor: int = 5
    k_filter: int = 200
    k_score: int = 30
    k_weight: int = 50
    sd_weight: float = 1.0

    @property
    def uses_own_axes(self) -> bool:
        """The anchor filter works in the span of the reference's and the query's own axes."""
        return self.k_filter > 0

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
        """Anchor-weighted votes; the anchor counts come back beside the probabilities."""
        every_cell = rows.size == model.embedding.shape[0] and (rows == np.arange(rows.size)).all()
        reference_embedding = model.embedding if every_cell else model.embedding[rows]
        reference_filter = query_filter = None
        if self.k_filter > 0:
            mean = model.pca_mean

            def reference_dot(basis: np.ndarray, cells: np.ndarray | None) -> np.ndarray:
                placed = rows if cells is None else rows[cells]  # rows of the whole reference
                return csr_dot(model.expression, basis, placed) - mean @ basis

            reference_filter, query_filter = filter_space(
                reference_dot, query.dot, model.loadings, own
            )
        anchors = find_transfer_anchors(
            reference_embedding,
            query_embedding,
            reference_filter=reference_filter,
            query_filter=query_filter,
            k_anchor=self.k_anchor,
            k_filter=self.k_filter,
            k_score=self.k_score,
            knn_method=knn_method,
            random_state=random_state,
            reference_neighbours=reference_neighbours(
                model.embedding, rows, self.k_score, knn_method, random_state, owner=model.data_hash
            ),
        )
        probabilities = transfer_data(
            query_embedding,
            anchors,
            model.labels if every_cell else model.labels[rows],
            len(model.categories),
            k_weight=self.k_weight,
            sd_weight=self.sd_weight,
            knn_method=knn_method,
            random_state=random_state,
        )
        counts = {
            "n_mnn": anchors.n_mnn,
            "n_anchors": int(anchors.reference.size),
            "n_query_cells_anchored": int(np.unique(anchors.query).size),
        }
        return probabilities, counts, None
