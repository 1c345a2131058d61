"""The scvi backend: scVI → scANVI trained once on the reference, scArches surgery per query.

Optional: needs ``scvi-tools`` (``pip install 'mscpotency[scvi]'``; install the CPU build of
torch first where there is no GPU). The reference model is trained on the reference's raw
counts of the embedding genes with its lots as batches (scArches-friendly settings:
covariates encoded, layer norm instead of batch norm); scANVI adds the labels.
:func:`train_reference` does this once — at ``tl.freeze_reference(..., scvi=True)``, which
stores the result in the frozen reference — and also trains one model per fold of reference
lots and maps the held-out lots onto it, so the temperature is fitted on lots the model
never saw, as for the other backends. Mapping rebuilds the model from plain arrays (no
unpickling), lets the query's lots in as new batches by architectural surgery (only the
new batch weights are trained) and reads scANVI's classifier output.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from ..._frozen import ReferenceModel, frozen_record, stored_counts
from ..._optional import require_scvi
from ..._settings import progress
from ..._validate import count_matrix
from ._calibration import calibration_summary, lot_folds
from ._harmonise import query_counts
from ._transfer import NOT_CALIBRATED, MappingInput, Transfer, TransferOptions

logger = logging.getLogger("mscpotency")

_UNLABELLED = "Unknown"
#: Version of the stored model's layout (``uns[<record>]['scvi']``).
STORED_FORMAT = 1


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
STEPS = {"scvi": 6000, "scanvi": 1500, "query": 600}


def epochs_for(n_cells: int, batch_size: int, steps: int, *, low: int = 10, high: int = 400) -> int:
    """Epochs that make about ``steps`` minibatches on ``n_cells`` cells, within [low, high]."""
    per_epoch = max(1, -(-n_cells // batch_size))
    return int(np.clip(round(steps / per_epoch), low, high))


#: Options that shape the trained reference model (the rest only steer the query surgery).
TRAINING_FIELDS = ("n_latent", "n_layers", "max_epochs", "scanvi_epochs", "n_calibration_folds")


@dataclass(frozen=True, kw_only=True)
class ScviOptions(TransferOptions, method="scvi"):
    """Options of the scvi backend: scVI -> scANVI once on the reference, scArches surgery per query.

    The reference model is trained once, by ``tl.freeze_reference(..., scvi=ScviOptions(...))``
    (or ``scvi=True`` for these defaults), and stored in the frozen reference; mapping onto
    that reference uses the stored model (its training options are the stored ones; those
    given here for ``n_latent``, ``n_layers``, ``max_epochs``, ``scanvi_epochs`` and
    ``n_calibration_folds`` are not used) and trains only the query's batch weights. Mapping
    onto a processed (not frozen) reference trains the same model first, on its raw counts
    (``layers['counts']``), which takes minutes: freeze once instead.

    Attributes
    ----------
    n_latent
        Size of the latent space.
    n_layers
        Hidden layers of the encoder and decoder.
    max_epochs, scanvi_epochs, query_epochs
        Training epochs of scVI, of scANVI and of the query surgery. ``None``: each gets a
        fixed budget of gradient steps (6,000, 1,500 and 600 minibatches), so small data
        train long enough and large data not longer than needed (:func:`epochs_for`).
    n_calibration_folds
        Folds of reference lots: one model per fold is trained on the other lots and the
        fold's lots are mapped onto it by surgery; their predictions (stored, not the
        models) fit the temperature. 0: no calibration (mapping then leaves the
        probabilities unscaled).
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
    n_calibration_folds: int = 3
    batch_size: int = 128
    accelerator: str = "auto"
    torch_threads: int | None = 1

    def __post_init__(self) -> None:
        if self.n_calibration_folds < 0 or self.n_calibration_folds == 1:
            msg = f"n_calibration_folds must be 0 (no calibration) or >= 2, got {self.n_calibration_folds!r}"
            raise ValueError(msg)

    def transfer(self, mapping: MappingInput) -> Transfer:
        """Rebuild (or first train) the reference model, operate the query in, read scANVI.

        The gene harmonisation already done stands for this backend too (its report is
        written); scvi itself reads the query's counts of the reference genes, missing ones
        zero-padded.
        """
        scvi = require_scvi()
        with _torch_threads(self.torch_threads):
            stored = stored_model(mapping.reference)
            if stored is None:
                stored = _train_for_unfrozen(mapping, self)
            reference = rebuild(scvi, stored, mapping.model.genes)
            query = _query_input(mapping.adata, mapping.model, mapping.layer, mapping.lots)
            probabilities, latent = surgery(
                scvi, reference, query, self, mapping.model, random_state=mapping.random_state
            )
        held_out = np.asarray(stored["held_out"], dtype=float)
        calibration = dict(NOT_CALIBRATED)
        if mapping.calibrate and held_out.shape[0]:
            calibration = calibration_summary(held_out, mapping.model.labels)
        return Transfer(
            probabilities=probabilities,
            calibration=calibration,
            query_embedding=latent,
            reference_embedding=np.asarray(stored["latent"], dtype=float),
        )


@contextlib.contextmanager
def _torch_threads(threads: int | None):
    import torch

    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _train_for_unfrozen(mapping: MappingInput, options: ScviOptions) -> dict[str, Any]:
    """The reference model of a processed reference (a frozen one must carry its own)."""
    if mapping.model.frozen:
        msg = (
            "this frozen reference carries no scVI model: method='scvi' maps onto the model "
            "stored at freezing. Freeze the processed reference with "
            "`tl.freeze_reference(reference, scvi=True)` (or map with method='anchors')."
        )
        raise ValueError(msg)
    logger.info("scvi: training the reference model (freeze with scvi=True to do this once)")
    counts = reference_counts(mapping.reference, mapping.model)
    return train_reference(counts, mapping.model, options, random_state=mapping.random_state)


def stored_model(reference: AnnData) -> dict[str, Any] | None:
    """The scVI model a frozen reference carries (``None`` when it carries none)."""
    record = frozen_record(reference)
    if record is None or "scvi" not in record:
        return None
    stored = record["scvi"]
    if int(np.asarray(stored.get("format", -1))) != STORED_FORMAT:
        msg = (
            f"this frozen reference's scVI model has layout {stored.get('format')!r}; this "
            f"mscpotency reads layout {STORED_FORMAT}. Freeze the reference again with scvi=True."
        )
        raise ValueError(msg)
    return stored


def reference_counts(reference: AnnData, model: ReferenceModel) -> sparse.csr_matrix:
    """The reference's raw counts of the embedding genes, or a ``ValueError`` naming the gap."""
    counts = stored_counts(reference)
    if counts is not None:
        return sparse.csr_matrix(counts, dtype=np.float32)
    if "counts" not in reference.layers:
        msg = (
            "training the scVI reference model needs the reference's raw counts "
            "(layers['counts'] of the processed reference, or a frozen reference that stores "
            "counts); this one has only log-normalised expression. Pass the processed "
            "reference."
        )
        raise ValueError(msg)
    return _on_genes(count_matrix(reference, "counts"), reference.var_names, model.genes)


def _scvi_input(
    counts: sparse.csr_matrix,
    batches: np.ndarray,
    labels: pd.Categorical,
    genes: pd.Index,
) -> AnnData:
    """The AnnData scvi-tools sets up: counts of the reference genes, batch and label."""
    return AnnData(
        X=sparse.csr_matrix(counts, dtype=np.float32),
        obs=pd.DataFrame(
            {"batch": pd.Categorical(batches), "label": labels},
            index=pd.Index([f"cell{i}" for i in range(counts.shape[0])]),
        ),
        var=pd.DataFrame(index=pd.Index([str(g) for g in genes])),
    )


def _reference_input(counts: sparse.csr_matrix, model: ReferenceModel, rows: np.ndarray) -> AnnData:
    """Reference cells ``rows``: their counts, their lots as batches, their labels."""
    lots = model.lots if model.lots is not None else np.full(model.labels.size, "reference")
    labels = pd.Categorical.from_codes(model.labels[rows], categories=list(model.categories))
    return _scvi_input(
        counts[rows],
        np.array([f"reference:{lot}" for lot in lots[rows]]),
        labels.add_categories([_UNLABELLED]),
        model.genes,
    )


def _query_input(
    query: AnnData, model: ReferenceModel, layer: str | None, lots: np.ndarray | None
) -> AnnData:
    """The query's raw counts on the reference genes, its lots as new batches, unlabelled."""
    counts = _on_genes(query_counts(query, layer), query.var_names, model.genes)
    return _held_out_input(counts, model, lots, prefix="query")


def _held_out_input(
    counts: sparse.csr_matrix, model: ReferenceModel, lots: np.ndarray | None, *, prefix: str
) -> AnnData:
    batches = lots if lots is not None else np.full(counts.shape[0], prefix)
    labels = pd.Categorical(
        [_UNLABELLED] * counts.shape[0], categories=[*model.categories, _UNLABELLED]
    )
    return _scvi_input(counts, np.array([f"{prefix}:{b}" for b in batches]), labels, model.genes)


def _train_scanvi(scvi, adata: AnnData, options: ScviOptions):
    """Train scVI then scANVI on ``adata`` (batch and label set up), scArches-friendly."""
    scvi.model.SCVI.setup_anndata(adata, batch_key="batch", labels_key="label")
    vae = scvi.model.SCVI(
        adata,
        n_latent=options.n_latent,
        n_layers=options.n_layers,
        encode_covariates=True,
        deeply_inject_covariates=False,
        use_layer_norm="both",
        use_batch_norm="none",
    )
    train = _train_kwargs(options)
    vae.train(
        max_epochs=options.max_epochs or epochs_for(adata.n_obs, options.batch_size, STEPS["scvi"]),
        **train,
    )
    scanvi = scvi.model.SCANVI.from_scvi_model(vae, unlabeled_category=_UNLABELLED)
    scanvi.train(
        max_epochs=options.scanvi_epochs
        or epochs_for(adata.n_obs, options.batch_size, STEPS["scanvi"], low=5),
        n_samples_per_label=100,
        **train,
    )
    return scanvi


def _train_kwargs(options: ScviOptions) -> dict[str, Any]:
    return {
        "accelerator": options.accelerator,
        "batch_size": options.batch_size,
        "enable_progress_bar": False,
    }


def surgery(
    scvi,
    reference,
    query: AnnData,
    options: ScviOptions,
    model: ReferenceModel,
    *,
    random_state: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Map ``query`` into ``reference`` by scArches surgery: label probabilities, latent space."""
    scvi.settings.seed = random_state
    scvi.model.SCANVI.prepare_query_anndata(query, reference)
    mapped = scvi.model.SCANVI.load_query_data(query, reference)
    epochs = options.query_epochs or epochs_for(query.n_obs, options.batch_size, STEPS["query"])
    mapped.train(max_epochs=epochs, plan_kwargs={"weight_decay": 0.0}, **_train_kwargs(options))
    probabilities = _ordered(mapped.predict(soft=True), model)
    return probabilities, np.asarray(mapped.get_latent_representation(), dtype=float)


def train_reference(
    counts: sparse.csr_matrix, model: ReferenceModel, options: ScviOptions, *, random_state: int
) -> dict[str, Any]:
    """Train the reference model and the calibration folds; what a frozen reference stores.

    Returns plain arrays and text: ``'weights'`` (the scANVI module's state, name -> array),
    ``'setup'`` (JSON: the constructor arguments, batch and label categories, versions),
    ``'latent'`` (the reference cells' latent coordinates), ``'held_out'`` (each reference
    cell's label probabilities from the model of the fold that held its lot out; 0 rows
    without calibration), ``'options'`` and ``'format'``.
    """
    scvi = require_scvi()
    everyone = np.arange(model.labels.size)
    with _torch_threads(options.torch_threads):
        scvi.settings.seed = random_state
        scanvi = _train_scanvi(scvi, _reference_input(counts, model, everyone), options)
        stored = {
            "format": STORED_FORMAT,
            "weights": _weights(scanvi),
            "setup": json.dumps(_setup(scanvi), sort_keys=True),
            "latent": np.asarray(scanvi.get_latent_representation(), dtype=np.float32),
            "held_out": _held_out(scvi, counts, model, options, random_state),
            "options": {k: v for k, v in asdict(options).items() if v is not None},
        }
    return stored


def _held_out(
    scvi, counts: sparse.csr_matrix, model: ReferenceModel, options: ScviOptions, seed: int
) -> np.ndarray:
    """Each reference cell's probabilities from the fold model that never saw its lot."""
    n_folds = options.n_calibration_folds
    held_out = np.zeros((0, len(model.categories)), dtype=np.float32)
    if n_folds == 0:
        return held_out
    held_out = np.zeros((model.labels.size, len(model.categories)), dtype=np.float32)
    folds = lot_folds(model.lots, model.labels.size, n_folds, seed)
    for fold in progress(folds, desc="scvi calibration folds"):
        scvi.settings.seed = seed
        fitted = _train_scanvi(
            scvi, _reference_input(counts, model, np.flatnonzero(~fold)), options
        )
        rows = np.flatnonzero(fold)
        lots = model.lots[rows] if model.lots is not None else None
        query = _held_out_input(counts[rows], model, lots, prefix="held-out")
        held_out[rows] = surgery(scvi, fitted, query, options, model, random_state=seed)[0]
    return held_out


def _weights(scanvi) -> dict[str, np.ndarray]:
    return {
        name: tensor.detach().cpu().numpy().astype(np.float32)
        for name, tensor in scanvi.module.state_dict().items()
    }


def _setup(scanvi) -> dict[str, Any]:
    """What rebuilding the module needs: constructor arguments and the category mappings."""
    from importlib.metadata import version

    init = scanvi.init_params_
    arguments = {**init.get("non_kwargs", {})}
    for group in init.get("kwargs", {}).values():
        arguments.update(group)
    arguments = {k: v for k, v in arguments.items() if k not in ("adata", "registry", "datamodule")}
    manager = scanvi.adata_manager
    return {
        "arguments": arguments,
        "batches": [str(b) for b in manager.get_state_registry("batch").categorical_mapping],
        "labels": [str(x) for x in manager.get_state_registry("labels").categorical_mapping],
        "unlabeled_category": _UNLABELLED,
        "scvi_tools": version("scvi-tools"),
    }


def rebuild(scvi, stored: dict[str, Any], genes: pd.Index):
    """The stored scANVI model as a scvi-tools model, from its arrays (nothing unpickled)."""
    import torch

    setup = json.loads(str(stored["setup"]))
    batches, labels = setup["batches"], setup["labels"]
    known = [label for label in labels if label != setup["unlabeled_category"]]
    n = 3 * max(len(batches), len(known))  # scvi-tools warns about categories under 3 cells
    dummy = _scvi_input(
        sparse.csr_matrix(np.ones((n, len(genes)), dtype=np.float32)),
        np.array([batches[i % len(batches)] for i in range(n)]),
        pd.Categorical([known[i % len(known)] for i in range(n)], categories=labels),
        genes,
    )
    dummy.obs["batch"] = pd.Categorical(dummy.obs["batch"], categories=batches)
    scvi.model.SCANVI.setup_anndata(
        dummy, batch_key="batch", labels_key="label", unlabeled_category=setup["unlabeled_category"]
    )
    model = scvi.model.SCANVI(dummy, **setup["arguments"])
    rebuilt = _setup(model)
    if rebuilt["batches"] != batches or rebuilt["labels"] != labels:
        msg = "the stored scVI model's batch or label categories could not be rebuilt"
        raise ValueError(msg)
    weights = {
        k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in stored["weights"].items()
    }
    model.module.load_state_dict(weights, strict=True)
    model.module.eval()
    model.is_trained_ = True
    return model


def model_digest(stored: dict[str, Any] | None) -> str:
    """A digest of everything a stored model contributes to a mapping (for the reference hash)."""
    h = hashlib.blake2b(digest_size=16)
    if stored is None:
        h.update(b"null")
        return h.hexdigest()
    h.update(str(stored["setup"]).encode())
    h.update(
        json.dumps(
            {str(k): str(v) for k, v in dict(stored["options"]).items()}, sort_keys=True
        ).encode()
    )
    for name in sorted(stored["weights"]):
        h.update(name.encode())
        h.update(np.ascontiguousarray(stored["weights"][name], dtype=np.float32).tobytes())
    for part in ("latent", "held_out"):
        values = np.ascontiguousarray(stored[part], dtype=np.float32)
        h.update(json.dumps(list(values.shape)).encode())
        h.update(values.tobytes())
    return h.hexdigest()


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
