"""The fast backend: projection onto the reference PCA and weighted kNN votes (what ``ingest`` does)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..._frozen import ReferenceModel
from ._neighbors import knn
from ._pca_backends import Neighbours, ProjectionOptions
from ._project import CentredMatrix


@dataclass(frozen=True, kw_only=True)
class FastOptions(ProjectionOptions, method="fast"):
    """Options of ``map_to_reference(method="fast")``: weighted votes of the nearest reference cells.

    Right when query lots share the reference's batch; what scanpy's ``ingest`` does.

    Attributes
    ----------
    centre
        {centre}
    n_calibration_folds
        Folds of reference lots held out in turn to fit the temperature.
    n_neighbors
        Reference neighbours that vote (15 of them also place cells on the reference UMAP).
    """

    n_neighbors: int = 30

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
        """Weighted votes of each query cell's ``n_neighbors`` nearest reference cells."""
        probabilities, indices, distances = fast_transfer(
            model.embedding[rows],
            model.labels[rows],
            len(model.categories),
            query_embedding,
            n_neighbors=self.n_neighbors,
            knn_method=knn_method,
            random_state=random_state,
        )
        return probabilities, {}, (indices, distances)


def vote(neighbour_labels: np.ndarray, weights: np.ndarray, n_labels: int) -> np.ndarray:
    """Per-cell label probabilities from neighbour labels and weights (rows sum to 1)."""
    n = neighbour_labels.shape[0]
    probabilities = np.zeros((n, n_labels))
    rows = np.repeat(np.arange(n), neighbour_labels.shape[1])
    np.add.at(probabilities, (rows, neighbour_labels.ravel()), weights.ravel())
    totals = probabilities.sum(axis=1, keepdims=True)
    empty = totals[:, 0] <= 0
    probabilities[empty] = 1.0 / n_labels
    totals[empty] = 1.0
    return probabilities / totals


def gaussian_weights(distances: np.ndarray) -> np.ndarray:
    """``exp(-(d / d_k)^2)``: the nearest neighbours count most, the k-th still counts ``1/e``."""
    scale = distances[:, -1:].copy()
    scale[scale <= 0] = 1.0
    return np.exp(-((distances / scale) ** 2))


def fast_transfer(
    reference_embedding: np.ndarray,
    reference_labels: np.ndarray,
    n_labels: int,
    query_embedding: np.ndarray,
    *,
    n_neighbors: int = 30,
    knn_method: str = "auto",
    random_state: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Label probabilities of query cells from their nearest reference cells.

    Parameters
    ----------
    reference_embedding
        Reference cells in the reference PCA (``obsm['X_pca']``).
    reference_labels
        Integer label of every reference cell.
    n_labels
        Number of labels.
    query_embedding
        Query cells projected onto the same PCA.
    n_neighbors
        Reference neighbours that vote.
    knn_method, random_state
        See :func:`._neighbors.knn`.

    Returns
    -------
    probabilities
        ``(n_query, n_labels)``, rows sum to 1.
    indices, distances
        The reference neighbours of every query cell (reused for the UMAP placement).
    """
    indices, distances = knn(
        reference_embedding,
        query_embedding,
        n_neighbors,
        method=knn_method,
        random_state=random_state,
    )
    probabilities = vote(reference_labels[indices], gaussian_weights(distances), n_labels)
    return probabilities, indices, distances
