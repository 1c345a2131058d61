"""The scvi backend: scVI → scANVI on the reference, scArches query surgery, soft predictions.

Optional: needs ``scvi-tools`` (``pip install 'mscpotency[scvi]'``; install the CPU build of
torch first where there is no GPU). The reference model is trained on the reference's raw
counts of the embedding genes with its lots as batches (scArches-friendly settings: covariates
encoded, layer norm instead of batch norm); scANVI adds the labels; the query's lots enter as
new batches by architectural surgery (only the new batch weights are trained), and the label
probabilities are scANVI's classifier output.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from ..._validate import count_matrix
from ._harmonise import Harmonised, query_counts
from ._model import ReferenceModel

_UNLABELLED = "Unknown"


def _require_scvi():
    try:
        import scvi
    except ImportError as error:  # pragma: no cover - exercised only without the extra
        msg = (
            "method='scvi' needs scvi-tools: pip install 'mscpotency[scvi]' (without a GPU, first "
            "pip install torch==2.13.0 for the CPU build, so that pip does not fetch a CUDA one)."
        )
        raise ImportError(msg) from error
    return scvi


def _on_genes(counts, names: pd.Index, genes: pd.Index) -> sparse.csr_matrix:
    """Counts restricted and ordered to ``genes``; genes absent from ``names`` are zeros."""
    positions = names.get_indexer(genes)
    found = positions >= 0
    select = sparse.csr_matrix(
        (np.ones(int(found.sum()), dtype=np.float32), (positions[found], np.flatnonzero(found))),
        shape=(len(names), len(genes)),
    )
    return (sparse.csr_matrix(counts, dtype=np.float32) @ select).tocsr()


#: Default number of minibatches of each training stage (scVI, scANVI, query surgery).
STEPS = {"scvi": 6000, "scanvi": 1500, "query": 3000}


def epochs_for(n_cells: int, batch_size: int, steps: int, *, low: int = 10, high: int = 400) -> int:
    """Epochs that make about ``steps`` minibatches on ``n_cells`` cells, within [low, high]."""
    per_epoch = max(1, -(-n_cells // batch_size))
    return int(np.clip(round(steps / per_epoch), low, high))


def scvi_transfer(
    query: AnnData,
    reference: AnnData,
    model: ReferenceModel,
    harmonised: Harmonised,
    *,
    counts_layer: str | None,
    lots: np.ndarray | None,
    random_state: int = 0,
    n_latent: int = 10,
    n_layers: int = 2,
    max_epochs: int | None = None,
    scanvi_epochs: int | None = None,
    query_epochs: int | None = None,
    batch_size: int = 128,
    accelerator: str = "auto",
    torch_threads: int | None = 1,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """Label probabilities of query cells from a scANVI reference model with query surgery.

    Parameters
    ----------
    query, reference
        The query (raw counts) and the processed reference (raw counts in ``layers['counts']``).
    model
        The reference as read by :func:`._model.reference_model` (genes, labels, lots).
    harmonised
        The gene harmonisation already done (its report stands for this backend too; scvi
        itself works on the counts of the reference genes, missing ones zero-padded).
    counts_layer
        Layer of the query's counts.
    lots
        The query lot of every cell (new batches), or ``None``.
    random_state
        Seed of scvi-tools (``scvi.settings.seed``).
    n_latent, n_layers
        Size of the latent space and of the encoder/decoder.
    max_epochs, scanvi_epochs, query_epochs
        Training epochs of scVI, of scANVI and of the query surgery. By default each gets a
        fixed budget of gradient steps (6,000, 1,500 and 3,000 minibatches), so small data
        train long enough and large data not longer than needed: :func:`epochs_for`.
    batch_size
        Minibatch size.
    accelerator
        Lightning accelerator (``"auto"``, ``"cpu"``, ``"gpu"``).
    torch_threads
        CPU threads of torch while training (restored afterwards). One by default: on a
        shared or busy machine torch's OpenMP threads spin against each other and a small
        model trains tens of times slower with two threads than with one. ``None`` keeps
        torch's setting (faster on an idle many-core machine).

    Returns
    -------
    probabilities
        ``(n_query, n_labels)`` in the order of ``model.categories``; rows sum to 1.
    query_latent, reference_latent
        The cells in the shared latent space (for the UMAP placement).
    held_out
        Probabilities and labels of the reference cells scANVI kept for validation (its
        classifier never trained on them), for calibration.
    """
    scvi = _require_scvi()
    del harmonised  # reported by the caller; scvi trains on the counts of the reference genes
    import torch

    previous = torch.get_num_threads()
    if torch_threads is not None:
        torch.set_num_threads(torch_threads)
    try:
        return _train_and_predict(
            scvi,
            query,
            reference,
            model,
            counts_layer=counts_layer,
            lots=lots,
            random_state=random_state,
            n_latent=n_latent,
            n_layers=n_layers,
            max_epochs=max_epochs,
            scanvi_epochs=scanvi_epochs,
            query_epochs=query_epochs,
            batch_size=batch_size,
            accelerator=accelerator,
        )
    finally:
        torch.set_num_threads(previous)


def _train_and_predict(
    scvi,
    query: AnnData,
    reference: AnnData,
    model: ReferenceModel,
    *,
    counts_layer: str | None,
    lots: np.ndarray | None,
    random_state: int,
    n_latent: int,
    n_layers: int,
    max_epochs: int | None,
    scanvi_epochs: int | None,
    query_epochs: int | None,
    batch_size: int,
    accelerator: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray]]:
    if "counts" not in reference.layers:
        msg = (
            "the scvi backend trains on the reference's raw counts (layers['counts']); a frozen "
            "reference keeps only log-normalised expression. Pass the processed reference."
        )
        raise ValueError(msg)
    scvi.settings.seed = random_state
    reference_counts = _on_genes(
        count_matrix(reference, "counts"), reference.var_names, model.genes
    )
    reference_batches = (
        model.lots if model.lots is not None else np.full(reference.n_obs, "reference")
    )
    ref = AnnData(
        X=reference_counts,
        obs=pd.DataFrame(
            {
                "batch": pd.Categorical([f"reference:{b}" for b in reference_batches]),
                "label": pd.Categorical.from_codes(
                    model.labels, categories=list(model.categories)
                ).add_categories([_UNLABELLED]),
            },
            index=reference.obs_names.astype(str),
        ),
        var=pd.DataFrame(index=model.genes),
    )
    query_batches = lots if lots is not None else np.full(query.n_obs, "query")
    qry = AnnData(
        X=_on_genes(query_counts(query, counts_layer), query.var_names, model.genes),
        obs=pd.DataFrame(
            {
                "batch": pd.Categorical([f"query:{b}" for b in query_batches]),
                "label": pd.Categorical(
                    [_UNLABELLED] * query.n_obs, categories=[*model.categories, _UNLABELLED]
                ),
            },
            index=query.obs_names.astype(str),
        ),
        var=pd.DataFrame(index=model.genes),
    )
    scvi.model.SCVI.setup_anndata(ref, batch_key="batch", labels_key="label")
    vae = scvi.model.SCVI(
        ref,
        n_latent=n_latent,
        n_layers=n_layers,
        encode_covariates=True,
        deeply_inject_covariates=False,
        use_layer_norm="both",
        use_batch_norm="none",
    )
    train = {"accelerator": accelerator, "batch_size": batch_size, "enable_progress_bar": False}
    n_ref, n_query = ref.n_obs, qry.n_obs
    max_epochs = max_epochs or epochs_for(n_ref, batch_size, STEPS["scvi"])
    scanvi_epochs = scanvi_epochs or epochs_for(n_ref, batch_size, STEPS["scanvi"], low=5)
    query_epochs = query_epochs or epochs_for(n_query, batch_size, STEPS["query"])
    vae.train(max_epochs=max_epochs, **train)
    scanvi = scvi.model.SCANVI.from_scvi_model(vae, unlabeled_category=_UNLABELLED)
    scanvi.train(max_epochs=scanvi_epochs, n_samples_per_label=100, **train)
    reference_latent = scanvi.get_latent_representation()
    validation = getattr(scanvi, "validation_indices", None)
    validation = np.asarray(validation if validation is not None else [], dtype=np.int64)
    if validation.size:
        held_out = (
            _ordered(scanvi.predict(ref[validation].copy(), soft=True), model),
            model.labels[validation],
        )
    else:
        held_out = (np.zeros((0, len(model.categories))), np.zeros(0, dtype=np.int64))
    scvi.model.SCANVI.prepare_query_anndata(qry, scanvi)
    surgery = scvi.model.SCANVI.load_query_data(qry, scanvi)
    surgery.train(max_epochs=query_epochs, plan_kwargs={"weight_decay": 0.0}, **train)
    probabilities = _ordered(surgery.predict(soft=True), model)
    query_latent = surgery.get_latent_representation()
    return (
        probabilities,
        np.asarray(query_latent, dtype=float),
        np.asarray(reference_latent, dtype=float),
        held_out,
    )


def _ordered(soft: pd.DataFrame, model: ReferenceModel) -> np.ndarray:
    """Soft predictions of scANVI in the order of the reference labels, rows summing to 1."""
    probabilities = soft.reindex(columns=list(model.categories), fill_value=0.0).to_numpy(
        dtype=float
    )
    totals = probabilities.sum(axis=1, keepdims=True)
    return np.divide(
        probabilities,
        totals,
        out=np.full_like(probabilities, 1 / probabilities.shape[1]),
        where=totals > 0,
    )
