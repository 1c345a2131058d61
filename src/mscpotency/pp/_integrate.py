"""Lot-effect correction before clustering (Harmony or the scVI latent space), with its quality.

Donor and site effects can make pooled clustering follow the lots; a cluster of one lot's
cells then trivially "tracks" that lot's potency. :func:`integrate` removes lot effects from a
representation and measures what it did: iLISI (how well lots mix among each cell's
neighbours) and cLISI (how pure the neighbourhoods stay in the given labels), before and
after, so the user sees whether correction helped or erased biology.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from .. import _keys, _registry
from .._docs import doc_params
from .._lot_specificity import lot_specificity_table
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
    covariate_keys: Sequence[str] = (),
    basis: str = "X_pca",
    cluster_key: str | None = None,
    lot_specific_key: str | None = None,
    theta: float = 2.0,
    covariate_theta: float = 2.0,
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
    covariate_keys
        Further technical covariates removed with it (Harmony: more batch variables, each
        with its own diversity penalty; scVI: categorical covariates), e.g. ``('site',)``.
        Lots nested in sites: on the donor preset Harmony with the lots alone left every
        population split by site (seed 4: SP3 of site B clustered with SP2 of site B),
        with lots and site together the populations came back (see
        benchmarks/results/lot_effects.md).
    basis
        obsm key Harmony corrects; also the uncorrected representation the metrics compare
        against.
    cluster_key
        {cluster_key}
        Labels for cLISI (label purity), e.g. clusters of the uncorrected run or an
        annotation; ``None``: cLISI is not computed.
    lot_specific_key
        obs column of a clustering of the *uncorrected* ``obsm[basis]`` (``tl.cluster``
        before correcting). Its clusters that :func:`mscpotency.tl.lot_specificity`'s rule
        flags and that hold at most half of their top lot's cells (a state of that lot,
        not the whole lot shifted by its donor) are held out of the correction: Harmony is
        fitted on the other cells and the held-out cells move by the mean correction of
        their lot's other cells. Harmony is built to mix lots, so a state of one lot is
        otherwise pulled into the shared clusters (donor preset, 5 seeds: flagged in 0
        of 5 after correction); held out it stays a cluster of its own, which the flag
        finds again. ``None``: every cell is corrected (Harmony only).
    theta
        Harmony's diversity penalty for ``batch_key`` (larger: stronger mixing of lots).
    covariate_theta
        Harmony's diversity penalty for each of ``covariate_keys``.
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
    (labels - 1), 1 = pure), ``'held_out'`` : DataFrame (with ``lot_specific_key``: the
    clusters held out, their lot, cells and share of their lot's cells) and ``'params'``
    (``rep_added`` among them).
    """
    batches = _batches(adata, [batch_key, *covariate_keys])
    thetas = _thetas(theta, covariate_theta, len(covariate_keys))
    labels = None
    if cluster_key is not None:
        labels = require_obs_column(adata, cluster_key, what="labels for cLISI", hint="")
    if basis not in adata.obsm:
        msg = f"adata.obsm has no {basis!r}. Run `pp.preprocess` first (or pass basis=)."
        raise KeyError(msg)
    if method not in ("harmony", "scvi") or (method == "scvi" and lot_specific_key):
        msg = f"method must be 'harmony' or 'scvi' (lot_specific_key: Harmony only), got {method!r}"
        raise ValueError(msg)
    rep_added = rep_added or (f"{basis}_harmony" if method == "harmony" else "X_scvi")
    held_out = lot_specific_cells(adata, lot_specific_key, batch_key, random_state)
    if method == "harmony":
        keep = ~held_out["mask"]
        corrected = _harmony(adata, batches, basis, thetas, max_iter, random_state, keep)
    else:
        corrected = _scvi(adata, batches, layer, n_latent, max_epochs, random_state)
    lots = batches[batch_key]
    before = lisi_summary(np.asarray(adata.obsm[basis]), lots, labels, random_state)
    after = lisi_summary(corrected, lots, labels, random_state)
    metrics = pd.DataFrame([before, after], index=pd.Index(["uncorrected", method], name="run"))
    logger.info("pp.integrate (%s): iLISI %.2f -> %.2f", method, before["ilisi"], after["ilisi"])
    adata = adata.copy() if copy else adata
    adata.obsm[rep_added] = corrected
    adata.uns[key_added] = {
        "metrics": metrics,
        "held_out": held_out["table"],
        "params": {
            "method": method,
            "batch_key": batch_key,
            "covariate_keys": list(covariate_keys),
            "basis": basis,
            "cluster_key": cluster_key,
            "lot_specific_key": lot_specific_key,
            "theta": theta,
            "covariate_theta": covariate_theta,
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


def _batches(adata: AnnData, keys: list[str]) -> pd.DataFrame:
    """The batch variables (lots first, then covariates) as strings, validated."""
    columns = {}
    for key in keys:
        values = require_obs_column(adata, key, what="batches (lots or covariates)", hint="")
        if values.isna().any():
            msg = f"{int(values.isna().sum())} cells have no value in obs[{key!r}]"
            raise ValueError(msg)
        if values.nunique() < 2:
            msg = f"obs[{key!r}] has one value only; there is no lot effect to remove"
            raise ValueError(msg)
        columns[key] = values.astype(str).to_numpy()
    return pd.DataFrame(columns, index=adata.obs_names)


def _thetas(theta: float, covariate_theta: float, n_covariates: int) -> list[float]:
    """One diversity penalty per batch variable (the lots first)."""
    if not np.isfinite(covariate_theta) or covariate_theta < 0:
        msg = f"covariate_theta must be a non-negative number, got {covariate_theta!r}"
        raise ValueError(msg)
    return [float(theta)] + [float(covariate_theta)] * n_covariates


#: A flagged cluster is a lot-specific state (held out) when it holds at most this share of
#: its top lot's cells; above it the lot as a whole is shifted, which correction removes.
MAX_LOT_SHARE = 0.5


def lot_specific_cells(
    adata: AnnData, cluster_key: str | None, lot_key: str, random_state: int = 0
) -> dict:
    """Cells of the lot-specific states of an uncorrected clustering (``mask`` and ``table``).

    A cluster of ``obs[cluster_key]`` counts when ``tl.lot_specificity``'s rule flags it
    (default thresholds) and it holds at most :data:`MAX_LOT_SHARE` of its top lot's cells.
    """
    columns = ["cluster", "lot", "n_cells", "share_of_lot"]
    if cluster_key is None:
        return {"mask": np.zeros(adata.n_obs, dtype=bool), "table": pd.DataFrame(columns=columns)}
    clusters = require_obs_column(
        adata, cluster_key, what="clusters of the uncorrected cells", hint="Run `tl.cluster` first."
    ).astype(str)
    lots = adata.obs[lot_key].astype(str)
    table = lot_specificity_table(pd.crosstab(lots, clusters), random_state=random_state)
    mask = np.zeros(adata.n_obs, dtype=bool)
    rows = []
    for name, row in table[table["lot_dominated"]].iterrows():
        members = (clusters == name).to_numpy()
        of_lot = (lots == row["top_lot"]).to_numpy()
        share = float((members & of_lot).sum() / of_lot.sum())
        if share <= MAX_LOT_SHARE:
            mask |= members
            rows.append([name, row["top_lot"], int(members.sum()), share])
    return {"mask": mask, "table": pd.DataFrame(rows, columns=columns)}


def _harmony(
    adata: AnnData,
    batches: pd.DataFrame,
    basis: str,
    thetas: list[float],
    max_iter: int,
    random_state: int,
    keep: np.ndarray,
) -> np.ndarray:
    """Harmony-corrected ``obsm[basis]`` (cells x dimensions), deterministic for a seed.

    Fitted on the cells in ``keep``; every other cell moves by the mean correction of the
    kept cells of its lot (the first batch variable).
    """
    import harmonypy

    data = np.ascontiguousarray(np.asarray(adata.obsm[basis], dtype=np.float64))
    result = harmonypy.run_harmony(
        data[keep],
        batches[keep].reset_index(drop=True),
        list(batches.columns),
        theta=thetas if len(thetas) > 1 else thetas[0],
        max_iter_harmony=max_iter,
        verbose=False,
        random_state=random_state,
        ncores=1,
    )
    fitted = np.asarray(result.Z_corr, dtype=np.float64)
    if fitted.shape != data[keep].shape:  # older harmonypy returns dimensions x cells
        fitted = fitted.T
    corrected = data.copy()
    corrected[keep] = fitted
    lots = batches.iloc[:, 0].to_numpy()
    for lot in np.unique(lots[~keep]):
        kept = keep & (lots == lot)
        if not kept.any():
            msg = f"every cell of lot {lot!r} is held out; no correction to carry to them"
            raise ValueError(msg)
        shift = (corrected[kept] - data[kept]).mean(axis=0)
        corrected[~keep & (lots == lot)] += shift
    return np.ascontiguousarray(corrected, dtype=np.float32)


def _scvi(
    adata: AnnData,
    batches: pd.DataFrame,
    layer: str,
    n_latent: int,
    max_epochs: int | None,
    random_state: int,
) -> np.ndarray:
    """ScVI latent means of every cell, lots as batches (covariates as such), raw counts."""
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
    obs = batches.rename(columns={batches.columns[0]: "batch"})
    train = AnnData(X=counts, obs=obs.set_index(adata.obs_names))
    scvi.settings.seed = random_state
    covariates = list(obs.columns[1:]) or None
    scvi.model.SCVI.setup_anndata(train, batch_key="batch", categorical_covariate_keys=covariates)
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
