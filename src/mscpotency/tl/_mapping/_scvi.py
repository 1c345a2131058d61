"""The scvi backend: scVI → scANVI on the reference, scArches query surgery, soft predictions.

Optional: needs ``scvi-tools`` (``pip install 'mscpotency[scvi]'``; install the CPU build of
torch first where there is no GPU). The reference model is trained on the reference's raw
counts of the embedding genes with its lots as batches (scArches-friendly settings: covariates
encoded, layer norm instead of batch norm); scANVI adds the labels; the query's lots enter as
new batches by architectural surgery (only the new batch weights are trained), and the label
probabilities are scANVI's classifier output.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from ..._frozen import ReferenceModel
from ..._validate import count_matrix
from ._calibration import calibration_summary
from ._harmonise import query_counts
from ._transfer import NOT_CALIBRATED, MappingInput, Transfer, TransferOptions

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


@dataclass(frozen=True, kw_only=True)
class ScviOptions(TransferOptions, method="scvi"):
    """Options of ``map_to_reference(method="scvi")``: scVI -> scANVI with scArches surgery.

    Needs the optional dependency ``scvi-tools`` and the processed (not frozen) reference,
    whose raw counts it trains on. The temperature is fitted on the reference cells
    scANVI's classifier did not train on (its validation cells).

    Attributes
    ----------
    n_latent
        Size of the latent space.
    n_layers
        Hidden layers of the encoder and decoder.
    max_epochs, scanvi_epochs, query_epochs
        Training epochs of scVI, of scANVI and of the query surgery. ``None``: each gets a
        fixed budget of gradient steps (6,000, 1,500 and 3,000 minibatches), so small data
        train long enough and large data not longer than needed (:func:`epochs_for`).
    batch_size
        Minibatch size.
    accelerator
        Lightning accelerator (``"auto"``, ``"cpu"``, ``"gpu"``).
    torch_threads
        CPU threads of torch while training (restored afterwards). One by default: on a
        shared or busy machine torch's OpenMP threads spin against each other and a small
        model trains tens of times slower with two threads than with one. ``None`` keeps
        torch's setting (faster on an idle many-core machine).
    """

    n_latent: int = 10
    n_layers: int = 2
    max_epochs: int | None = None
    scanvi_epochs: int | None = None
    query_epochs: int | None = None
    batch_size: int = 128
    accelerator: str = "auto"
    torch_threads: int | None = 1

    def transfer(self, mapping: MappingInput) -> Transfer:
        """Train on the reference, operate the query in, read scANVI's soft predictions.

        The gene harmonisation already done stands for this backend too (its report is
        written); scvi itself trains on the counts of the reference genes, missing ones
        zero-padded.
        """
        scvi = _require_scvi()
        import torch

        previous = torch.get_num_threads()
        if self.torch_threads is not None:
            torch.set_num_threads(self.torch_threads)
        try:
            probabilities, query_latent, reference_latent, held_out = _train_and_predict(
                scvi, mapping, self
            )
        finally:
            torch.set_num_threads(previous)
        calibration = dict(NOT_CALIBRATED)
        if mapping.calibrate and held_out[1].size:
            # the scANVI classifier never trained on its validation cells: fit the temperature there
            calibration = calibration_summary(*held_out)
        return Transfer(
            probabilities=probabilities,
            calibration=calibration,
            query_embedding=query_latent,
            reference_embedding=reference_latent,
        )


def _scvi_input(
    counts: sparse.csr_matrix,
    obs_names: pd.Index,
    batches: list[str],
    labels: pd.Categorical,
    genes: pd.Index,
) -> AnnData:
    """The AnnData scvi-tools sets up: counts of the reference genes, batch and label."""
    return AnnData(
        X=counts,
        obs=pd.DataFrame(
            {"batch": pd.Categorical(batches), "label": labels}, index=obs_names.astype(str)
        ),
        var=pd.DataFrame(index=genes),
    )


def _reference_input(reference: AnnData, model: ReferenceModel) -> AnnData:
    """The reference's raw counts, its lots as batches and its labels (plus "unlabelled")."""
    if "counts" not in reference.layers:
        msg = (
            "the scvi backend trains on the reference's raw counts (layers['counts']); a frozen "
            "reference keeps only log-normalised expression. Pass the processed reference."
        )
        raise ValueError(msg)
    counts = _on_genes(count_matrix(reference, "counts"), reference.var_names, model.genes)
    batches = model.lots if model.lots is not None else np.full(reference.n_obs, "reference")
    labels = pd.Categorical.from_codes(model.labels, categories=list(model.categories))
    return _scvi_input(
        counts,
        reference.obs_names,
        [f"reference:{b}" for b in batches],
        labels.add_categories([_UNLABELLED]),
        model.genes,
    )


def _query_input(mapping: MappingInput) -> AnnData:
    """The query's raw counts on the reference genes, its lots as new batches, unlabelled."""
    query, model = mapping.adata, mapping.model
    counts = _on_genes(query_counts(query, mapping.layer), query.var_names, model.genes)
    batches = mapping.lots if mapping.lots is not None else np.full(query.n_obs, "query")
    labels = pd.Categorical(
        [_UNLABELLED] * query.n_obs, categories=[*model.categories, _UNLABELLED]
    )
    return _scvi_input(
        counts, query.obs_names, [f"query:{b}" for b in batches], labels, model.genes
    )


def _train_and_predict(
    scvi, mapping: MappingInput, options: ScviOptions
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """Query probabilities, both latent spaces, and the held-out reference predictions."""
    model = mapping.model
    ref = _reference_input(mapping.reference, model)
    scvi.settings.seed = mapping.random_state
    qry = _query_input(mapping)
    scvi.model.SCVI.setup_anndata(ref, batch_key="batch", labels_key="label")
    vae = scvi.model.SCVI(
        ref,
        n_latent=options.n_latent,
        n_layers=options.n_layers,
        encode_covariates=True,
        deeply_inject_covariates=False,
        use_layer_norm="both",
        use_batch_norm="none",
    )
    batch_size = options.batch_size
    train = {
        "accelerator": options.accelerator,
        "batch_size": batch_size,
        "enable_progress_bar": False,
    }
    max_epochs = options.max_epochs or epochs_for(ref.n_obs, batch_size, STEPS["scvi"])
    scanvi_epochs = options.scanvi_epochs or epochs_for(
        ref.n_obs, batch_size, STEPS["scanvi"], low=5
    )
    query_epochs = options.query_epochs or epochs_for(qry.n_obs, batch_size, STEPS["query"])
    vae.train(max_epochs=max_epochs, **train)
    scanvi = scvi.model.SCANVI.from_scvi_model(vae, unlabeled_category=_UNLABELLED)
    scanvi.train(max_epochs=scanvi_epochs, n_samples_per_label=100, **train)
    reference_latent = scanvi.get_latent_representation()
    held_out = _validation_predictions(scanvi, ref, model)
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


def _validation_predictions(
    scanvi, ref: AnnData, model: ReferenceModel
) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and labels of the reference cells scANVI kept for validation."""
    validation = getattr(scanvi, "validation_indices", None)
    validation = np.asarray(validation if validation is not None else [], dtype=np.int64)
    if not validation.size:
        return np.zeros((0, len(model.categories))), np.zeros(0, dtype=np.int64)
    return (
        _ordered(scanvi.predict(ref[validation].copy(), soft=True), model),
        model.labels[validation],
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
