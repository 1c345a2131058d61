"""Lot-effect correction before clustering (Harmony or the scVI latent space), with its quality.

Donor and site effects can make pooled clustering follow the lots; a cluster of one lot's
cells then trivially "tracks" that lot's potency. :func:`integrate` removes lot effects from a
representation and measures what it did: iLISI (how well lots mix among each cell's
neighbours) and cLISI (how pure the neighbourhoods stay in the given labels), before and
after, so the user sees whether correction helped or erased biology.
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from .. import _keys, _registry
from .._docs import doc_params
from .._optional import require_scvi
from .._provenance import record
from .._validate import require_obs_column

logger = logging.getLogger("mscpotency")

#: Neighbourhood size of the LISI metrics (Korsunsky et al. 2019 use 30).
PERPLEXITY = 30.0


@doc_params
@record("pp.integrate")
def integrate(
    adata: AnnData,
    *,
    method: Literal["harmony", "scvi"] = "harmony",
    batch_key: str = _keys.LOT,
    basis: str = "X_pca",
    cluster_key: str | None = None,
    theta: float = 2.0,
    max_iter: int = 20,
    n_latent: int = 20,
    max_epochs: int | None = None,
    layer: str = _keys.COUNTS_LAYER,
    rep_added: str | None = None,
    random_state: int = 0,
    key_added: str = _registry.INTEGRATE.key,
    copy: bool = False,
) -> AnnData | None:
    """Remove lot effects from a representation; cluster on the result.

    Then ``tl.cluster(adata, use_rep="X_pca_harmony")`` (or ``"X_scvi"``) clusters the
    corrected cells; ``tl.lot_fractions``, ``tl.potency_association`` and
    ``tl.potency_markers`` run unchanged on those clusters (fractions count labels, markers
    compare expression, neither reads the representation). Correction acts on the
    representation only: the counts, and so each lot's composition, are untouched.

    Parameters
    ----------
    adata
        {adata}
        Needs ``obsm[basis]`` (``pp.preprocess``) for Harmony, raw counts in
        ``layers[layer]`` for scVI.
    method
        ``"harmony"``: Harmony (Korsunsky et al. 2019, ``harmonypy``) on ``obsm[basis]``;
        ``"scvi"``: the latent space of scVI (Lopez et al. 2018, ``scvi-tools``, optional:
        ``pip install 'mscpotency[scvi]'``) trained on the raw counts of the highly
        variable genes (all genes without ``var['highly_variable']``) with
        ``obs[batch_key]`` as batch.
    batch_key
        obs column whose effect is removed: the lot (default), or e.g. ``'site'`` to remove
        only a site effect and keep lot-to-lot differences.
    basis
        obsm key Harmony corrects; also the uncorrected representation the metrics compare
        against.
    cluster_key
        {cluster_key}
        Labels for cLISI (label purity), e.g. clusters of the uncorrected run or an
        annotation; ``None``: cLISI is not computed.
    theta
        Harmony's diversity penalty (larger: stronger mixing of lots).
    max_iter
        Harmony's largest number of iterations.
    n_latent, max_epochs
        scVI's latent dimensions and training epochs (``None``: about 4,000 minibatches,
        between 20 and 400 epochs).
    layer
        {layer}
        Raw counts for scVI (``X`` when the layer is absent).
    rep_added
        obsm key of the corrected representation; ``None``: ``f"{{basis}}_harmony"`` or
        ``"X_scvi"``.

    Returns
    -------
    ``None``, or the copy when ``copy=True``. Writes ``adata.obsm[rep_added]`` (cells x
    dimensions) and ``adata.uns[key_added]`` with ``'metrics'`` : DataFrame (rows
    ``uncorrected`` and the method; columns ilisi, ilisi_norm, n_batches and, with
    ``cluster_key``, clisi, clisi_norm, n_labels: medians over cells; ``ilisi_norm`` =
    (iLISI - 1) / (batches - 1), 1 = perfectly mixed; ``clisi_norm`` = (labels - cLISI) /
    (labels - 1), 1 = pure) and ``'params'`` (``rep_added`` among them).
    """
    batches = require_obs_column(adata, batch_key, what="batches (lots)", hint="")
    if batches.isna().any():
        msg = f"{int(batches.isna().sum())} cells have no value in obs[{batch_key!r}]"
        raise ValueError(msg)
    if batches.nunique() < 2:
        msg = f"obs[{batch_key!r}] has one value only; there is no lot effect to remove"
        raise ValueError(msg)
    labels = None
    if cluster_key is not None:
        labels = require_obs_column(adata, cluster_key, what="labels for cLISI", hint="")
    if basis not in adata.obsm:
        msg = f"adata.obsm has no {basis!r}. Run `pp.preprocess` first (or pass basis=)."
        raise KeyError(msg)
    rep_added = rep_added or (f"{basis}_harmony" if method == "harmony" else "X_scvi")
    if method == "harmony":
        corrected = _harmony(adata, batch_key, basis, theta, max_iter, random_state)
    elif method == "scvi":
        corrected = _scvi(adata, batch_key, layer, n_latent, max_epochs, random_state)
    else:
        msg = f"method must be 'harmony' or 'scvi', got {method!r}"
        raise ValueError(msg)
    before = lisi_summary(np.asarray(adata.obsm[basis]), batches, labels, random_state)
    after = lisi_summary(corrected, batches, labels, random_state)
    metrics = pd.DataFrame([before, after], index=pd.Index(["uncorrected", method], name="run"))
    logger.info("pp.integrate (%s): iLISI %.2f -> %.2f", method, before["ilisi"], after["ilisi"])
    adata = adata.copy() if copy else adata
    adata.obsm[rep_added] = corrected
    adata.uns[key_added] = {
        "metrics": metrics,
        "params": {
            "method": method,
            "batch_key": batch_key,
            "basis": basis,
            "cluster_key": cluster_key,
            "theta": theta,
            "max_iter": max_iter,
            "n_latent": n_latent,
            "max_epochs": max_epochs,
            "layer": layer,
            "rep_added": rep_added,
            "random_state": random_state,
            "perplexity": PERPLEXITY,
        },
    }
    return adata if copy else None


def _harmony(
    adata: AnnData, batch_key: str, basis: str, theta: float, max_iter: int, random_state: int
) -> np.ndarray:
    """Harmony-corrected ``obsm[basis]`` (cells x dimensions), deterministic for a seed."""
    import harmonypy

    data = np.ascontiguousarray(np.asarray(adata.obsm[basis], dtype=np.float64))
    meta = pd.DataFrame({batch_key: adata.obs[batch_key].astype(str).to_numpy()})
    result = harmonypy.run_harmony(
        data,
        meta,
        batch_key,
        theta=theta,
        max_iter_harmony=max_iter,
        verbose=False,
        random_state=random_state,
        ncores=1,
    )
    corrected = np.asarray(result.Z_corr, dtype=np.float64)
    if corrected.shape != data.shape:  # older harmonypy returns dimensions x cells
        corrected = corrected.T
    return np.ascontiguousarray(corrected, dtype=np.float32)


def _scvi(
    adata: AnnData,
    batch_key: str,
    layer: str,
    n_latent: int,
    max_epochs: int | None,
    random_state: int,
) -> np.ndarray:
    """ScVI latent means of every cell, lots as batches, trained on the raw counts."""
    scvi = require_scvi()
    genes = (
        adata.var["highly_variable"].to_numpy(dtype=bool)
        if "highly_variable" in adata.var
        else np.ones(adata.n_vars, dtype=bool)
    )
    counts = adata.layers[layer] if layer in adata.layers else adata.X
    counts = sparse.csr_matrix(counts, dtype=np.float32)[:, genes]
    if counts.nnz and not np.array_equal(counts.data, np.round(counts.data)):
        msg = f"scVI needs raw integer counts; layers[{layer!r}] (or X) holds other values"
        raise ValueError(msg)
    train = AnnData(X=counts, obs=pd.DataFrame({"batch": adata.obs[batch_key].astype(str)}))
    train.obs_names = adata.obs_names
    scvi.settings.seed = random_state
    scvi.model.SCVI.setup_anndata(train, batch_key="batch")
    model = scvi.model.SCVI(train, n_latent=n_latent)
    batch_size = 128
    if max_epochs is None:
        per_epoch = max(1, -(-train.n_obs // batch_size))
        max_epochs = int(np.clip(round(4000 / per_epoch), 20, 400))
    model.train(
        max_epochs=max_epochs,
        accelerator="cpu",
        batch_size=batch_size,
        enable_progress_bar=False,
    )
    return np.asarray(model.get_latent_representation(), dtype=np.float32)


def lisi(
    embedding: np.ndarray,
    labels: np.ndarray,
    *,
    perplexity: float = PERPLEXITY,
) -> np.ndarray:
    """Local inverse Simpson's index of ``labels`` around every cell (Korsunsky et al. 2019).

    Each cell's ``3 * perplexity`` nearest neighbours (Euclidean, itself excluded) get
    Gaussian weights whose bandwidth is set, by bisection, so that the weights' perplexity
    is ``perplexity``; the index is ``1 / sum_label (weight of the label)^2``: the
    effective number of labels in the neighbourhood (1: one label; the number of labels:
    all equally present). As harmonypy's former ``compute_lisi``.

    Parameters
    ----------
    embedding
        Cells x dimensions.
    labels
        One label per cell.
    perplexity
        Effective neighbourhood size.
    """
    from sklearn.neighbors import NearestNeighbors

    x = np.asarray(embedding, dtype=np.float64)
    k = int(min(3 * perplexity, x.shape[0] - 1))
    nn = NearestNeighbors(n_neighbors=k + 1, algorithm="auto").fit(x)
    distances, indices = nn.kneighbors(x)
    distances, indices = distances[:, 1:], indices[:, 1:]
    weights = _perplexity_weights(distances**2, perplexity)
    codes = pd.Categorical(np.asarray(labels)).codes
    neighbour_codes = codes[indices]
    simpson = np.zeros(x.shape[0])
    for code in np.unique(codes):
        share = np.where(neighbour_codes == code, weights, 0.0).sum(axis=1)
        simpson += share**2
    return 1.0 / simpson


def _perplexity_weights(
    sq_distances: np.ndarray, perplexity: float, n_steps: int = 50
) -> np.ndarray:
    """Row-normalised Gaussian weights whose entropy is ``log(perplexity)`` (bisection on beta)."""
    target = np.log(perplexity)
    n = sq_distances.shape[0]
    beta = np.ones(n)
    low, high = np.full(n, -np.inf), np.full(n, np.inf)
    d = sq_distances - sq_distances[:, :1]  # shift by the nearest distance: no underflow
    for _ in range(n_steps):
        p = np.exp(-d * beta[:, None])
        total = p.sum(axis=1)
        entropy = np.log(total) + beta * (d * p).sum(axis=1) / total
        too_flat = entropy > target  # entropy too high: narrow the kernel (raise beta)
        low = np.where(too_flat, beta, low)
        high = np.where(too_flat, high, beta)
        beta = np.where(
            too_flat,
            np.where(np.isinf(high), beta * 2, (beta + high) / 2),
            np.where(np.isinf(low), beta / 2, (beta + low) / 2),
        )
    p = np.exp(-d * beta[:, None])
    return p / p.sum(axis=1, keepdims=True)


#: Cells the LISI metrics are computed on at most (a fixed random subset above it).
LISI_MAX_CELLS = 20000


def lisi_summary(
    embedding: np.ndarray,
    batches: pd.Series,
    labels: pd.Series | None,
    random_state: int = 0,
) -> dict[str, float]:
    """Median iLISI (of batches) and cLISI (of labels), raw and scaled to [0, 1].

    Above :data:`LISI_MAX_CELLS` cells the medians are taken over a fixed random subset
    (neighbours are searched in that subset).
    """
    n = embedding.shape[0]
    take = np.arange(n)
    if n > LISI_MAX_CELLS:
        take = np.sort(np.random.default_rng(random_state).choice(n, LISI_MAX_CELLS, replace=False))
    x = np.asarray(embedding)[take]
    b = np.asarray(batches.astype(str))[take]
    n_batches = len(np.unique(b))
    ilisi = float(np.median(lisi(x, b)))
    out = {
        "ilisi": ilisi,
        "ilisi_norm": (ilisi - 1) / (n_batches - 1),
        "n_batches": float(n_batches),
    }
    if labels is not None:
        lab = np.asarray(labels.astype(str))[take]
        n_labels = len(np.unique(lab))
        clisi = float(np.median(lisi(x, lab)))
        out["clisi"] = clisi
        out["clisi_norm"] = (n_labels - clisi) / (n_labels - 1) if n_labels > 1 else np.nan
        out["n_labels"] = float(n_labels)
    return out
