"""Bad input to the frozen reference and mapping tools: a clear error, nothing changed.

Covers ``tl.freeze_reference``, ``io.write_reference``, ``io.read_reference``,
``tl.map_to_reference``, ``tl.validate_potency`` and ``tl.marker_by_set``. Each case names the
problem in its message; :func:`._harness.run_case` also checks that no AnnData given to the
call changed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData

import mscpotency as mp

from ._harness import Case, Inputs, run_case


# --- inputs ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bad_query(tiny_all) -> AnnData:
    """Two query lots (one held-out, one from another tissue), QC'd, not mapped."""
    query = tiny_all[tiny_all.obs["lot"].isin(["BM09", "AD01"]).to_numpy()].copy()
    mp.pp.qc(query)
    return query


@pytest.fixture(scope="module")
def bad_mapped(bad_query, tiny_ref) -> AnnData:
    return mp.tl.map_to_reference(bad_query, tiny_ref, method="fast", calibrate=False, copy=True)


@pytest.fixture(scope="module")
def bad_unassigned_reference(tiny_ref) -> AnnData:
    """The tiny reference with one of its labels named like the label mapping writes."""
    reference = tiny_ref.copy()
    first = reference.obs["cluster"].cat.categories[0]
    reference.obs["cluster"] = reference.obs["cluster"].cat.rename_categories({first: "Unassigned"})
    return reference


@pytest.fixture(scope="module")
def bad_frozen(tiny_ref) -> AnnData:
    return mp.tl.freeze_reference(tiny_ref)


def _pair(query: str, reference: str = "tiny_ref"):
    """A (query, reference) input of two fixtures, both copied."""

    def build(request):
        return (
            request.getfixturevalue(query).copy(),
            request.getfixturevalue(reference).copy(),
        )

    return build


def _unlabelled(request) -> AnnData:
    reference = request.getfixturevalue("tiny_ref").copy()
    labels = reference.obs["cluster"].astype(object)
    labels.iloc[0] = np.nan
    reference.obs["cluster"] = labels
    return reference


def _without_counts(request) -> AnnData:
    reference = request.getfixturevalue("tiny_ref").copy()
    del reference.layers["counts"]
    return reference


def _pca_mismatch(request) -> AnnData:
    reference = request.getfixturevalue("tiny_ref").copy()
    reference.obsm["X_pca"] = reference.obsm["X_pca"][:, :5].copy()
    return reference


def _edited_potency(request) -> AnnData:
    frozen = request.getfixturevalue("bad_frozen").copy()
    labels = frozen.uns["reference"]["labels"]
    frozen.uns["reference"]["potency_cluster"] = next(
        c for c in labels if c != frozen.uns["reference"]["potency_cluster"]
    )
    return frozen


def _edited_lots(request) -> AnnData:
    frozen = request.getfixturevalue("bad_frozen").copy()
    lots = frozen.obs["lot"]
    other = next(lot for lot in lots.cat.categories if lot != lots.iloc[0])
    frozen.obs.iloc[0, frozen.obs.columns.get_loc("lot")] = other
    return frozen


def _write(d: Inputs, name: str = "reference.h5ad") -> Path:
    """The frozen input written to a file of the case's folder."""
    return mp.io.write_reference(d.adata, d.tmp_path / name)


def _existing(d: Inputs) -> Path:
    path = _write(d)
    return mp.io.write_reference(d.adata, path)


def _truncated(d: Inputs) -> AnnData:
    path = _write(d)
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])
    return mp.io.read_reference(path)


def _plain_h5ad(d: Inputs) -> AnnData:
    path = d.tmp_path / "plain.h5ad"
    AnnData(np.ones((3, 2), dtype=np.float32)).write_h5ad(path)
    return mp.io.read_reference(path)


def _potency_edited_in_file(d: Inputs) -> AnnData:
    path = _write(d)
    edited = mp.io.read_reference(path)
    record = edited.uns["reference"]
    record["potency_cluster"] = next(c for c in record["labels"] if c != record["potency_cluster"])
    edited.write_h5ad(path)  # edited behind io.write_reference's back
    return mp.io.read_reference(path)


def _without_important_genes(d: Inputs) -> None:
    query, reference = d.adata
    genes = reference.var_names[reference.var["highly_variable"].to_numpy()]
    first = genes[: int(0.45 * genes.size)]  # carry ~60% of the embedding's variance
    query = query[:, ~query.var_names.isin(first)].copy()
    mp.tl.map_to_reference(query, reference, method="fast")


def _renamed_genes(d: Inputs) -> None:
    query, reference = d.adata
    query = query.copy()
    query.var_names = [f"ENSG{i:011d}" for i in range(query.n_vars)]
    mp.tl.map_to_reference(query, reference)


HASH = "0123456789abcdef0123456789abcdef"

CASES = [
    # --- tl.freeze_reference
    Case(
        "freeze: unknown cluster_key",
        lambda d: mp.tl.freeze_reference(d.adata, cluster_key="leiden"),
        KeyError,
        r"no labels in obs\['leiden'\].*tl.cluster",
        data="tiny_ref",
    ),
    Case(
        "freeze: raw counts without an embedding",
        lambda d: mp.tl.freeze_reference(d.adata, cluster_key="true_subpopulation"),
        KeyError,
        r"X_pca.*pp.preprocess",
        data="tiny_train",
    ),
    Case(
        "freeze: unlabelled reference cells",
        lambda d: mp.tl.freeze_reference(d.adata),
        ValueError,
        r"1 reference cells have no label in obs\['cluster'\]",
        data=_unlabelled,
    ),
    Case(
        "freeze: embedding and loadings from different runs",
        lambda d: mp.tl.freeze_reference(d.adata),
        ValueError,
        r"X_pca'\] has 5 components.*different runs",
        data=_pca_mismatch,
    ),
    Case(
        "freeze: not an AnnData",
        lambda d: mp.tl.freeze_reference(pd.DataFrame({"cluster": ["a"]})),
        TypeError,
        "AnnData",
        data=None,
    ),
    Case(
        "freeze: scvi neither a flag nor options",
        lambda d: mp.tl.freeze_reference(d.adata, scvi="yes"),
        TypeError,
        r"scvi must be True, False or a tl.ScviOptions, got str",
        data="tiny_ref",
    ),
    Case(
        "freeze: scvi without raw counts to train on",
        lambda d: mp.tl.freeze_reference(d.adata, scvi=True),
        ValueError,
        r"scVI reference model needs the reference's raw counts",
        data=_without_counts,
    ),
    Case(
        "freeze: one calibration fold",
        lambda d: mp.tl.ScviOptions(n_calibration_folds=1),
        ValueError,
        r"n_calibration_folds must be 0 \(no calibration\) or >= 2, got 1",
        data=None,
    ),
    # --- io.write_reference
    Case(
        "write: not a frozen reference",
        lambda d: mp.io.write_reference(d.adata, d.tmp_path / "reference.h5ad"),
        ValueError,
        r"not a frozen reference.*tl.freeze_reference",
        data="tiny_ref",
    ),
    Case(
        "write: not an .h5ad path",
        lambda d: mp.io.write_reference(d.adata, d.tmp_path / "reference.zarr"),
        ValueError,
        r"written as \.h5ad, got 'reference.zarr'",
        data="bad_frozen",
    ),
    Case(
        "write: the file exists",
        _existing,
        FileExistsError,
        "exists; pass overwrite=True",
        data="bad_frozen",
    ),
    Case(
        "write: the folder does not exist",
        lambda d: mp.io.write_reference(d.adata, d.tmp_path / "missing" / "reference.h5ad"),
        FileNotFoundError,
        "folder .*missing does not exist",
        data="bad_frozen",
    ),
    Case(
        "write: potency cluster edited after freezing",
        lambda d: _write(d),
        ValueError,
        r"modified after `tl.freeze_reference`.*potency cluster",
        data=_edited_potency,
    ),
    Case(
        "write: reference lots edited after freezing",
        lambda d: _write(d),
        ValueError,
        r"modified after `tl.freeze_reference`.*reference lots \(obs\['lot'\]\)",
        data=_edited_lots,
    ),
    # --- io.read_reference
    Case(
        "read: no such file",
        lambda d: mp.io.read_reference(d.tmp_path / "missing.h5ad"),
        FileNotFoundError,
        "no frozen reference at .*missing.h5ad",
        data=None,
    ),
    Case(
        "read: a folder",
        lambda d: mp.io.read_reference(d.tmp_path),
        IsADirectoryError,
        "is a folder",
        data=None,
    ),
    Case(
        "read: truncated file",
        _truncated,
        ValueError,
        r"reference.h5ad.*truncated or corrupt.*io.write_reference",
        data="bad_frozen",
    ),
    Case(
        "read: an .h5ad that is not a frozen reference",
        _plain_h5ad,
        ValueError,
        r"plain.h5ad is not a frozen reference.*tl.freeze_reference",
        data=None,
    ),
    Case(
        "read: potency cluster edited in the file",
        _potency_edited_in_file,
        ValueError,
        r"reference.h5ad: .*modified after.*potency cluster",
        data="bad_frozen",
    ),
    Case(
        "read: pinned hash differs",
        lambda d: mp.io.read_reference(_write(d), expected_hash=HASH),
        ValueError,
        rf"not the expected '{HASH}'",
        data="bad_frozen",
    ),
    Case(
        "read: pinned hash is not a hash",
        lambda d: mp.io.read_reference(_write(d), expected_hash="latest"),
        ValueError,
        r"expected_hash must be .*32 hexadecimal digits.*'latest'",
        data="bad_frozen",
    ),
    # --- tl.map_to_reference
    Case(
        "map: pinned hash differs",
        lambda d: mp.tl.map_to_reference(d.adata[0], d.adata[1], expected_hash=HASH),
        ValueError,
        rf"not the expected '{HASH}'",
        data=_pair("bad_query", "bad_frozen"),
    ),
    Case(
        "map: pinned hash differs (reference from a file)",
        lambda d: mp.tl.map_to_reference(
            d.adata[0],
            mp.io.write_reference(d.adata[1], d.tmp_path / "reference.h5ad"),
            expected_hash=HASH,
        ),
        ValueError,
        rf"reference.h5ad: .*not the expected '{HASH}'",
        data=_pair("bad_query", "bad_frozen"),
    ),
    Case(
        "map: missing genes carry most of the embedding",
        _without_important_genes,
        ValueError,
        r"lacks 225 of the reference's 500 embedding genes.*max_variance_missing=35%",
        data=_pair("bad_query"),
    ),
    Case(
        "map: no shared genes",
        _renamed_genes,
        ValueError,
        r"shares no genes.*same gene identifiers",
        data=_pair("bad_query"),
    ),
    Case(
        "map: warn_off_reference above 1",
        lambda d: mp.tl.map_to_reference(d.adata[0], d.adata[1], warn_off_reference=25),
        ValueError,
        r"warn_off_reference must lie in \[0, 1\], got 25",
        data=_pair("bad_query"),
    ),
    Case(
        "map: novelty_alpha of 0",
        lambda d: mp.tl.map_to_reference(d.adata[0], d.adata[1], novelty_alpha=0),
        ValueError,
        r"novelty_alpha must .*got 0",
        data=_pair("bad_query"),
    ),
    Case(
        "map: set_alpha of 1",
        lambda d: mp.tl.map_to_reference(d.adata[0], d.adata[1], set_alpha=1.0),
        ValueError,
        r"set_alpha must .*got 1",
        data=_pair("bad_query"),
    ),
    Case(
        "map: min_mapping_score above 1",
        lambda d: mp.tl.map_to_reference(d.adata[0], d.adata[1], min_mapping_score=2.0),
        ValueError,
        r"min_mapping_score must .*got 2",
        data=_pair("bad_query"),
    ),
    Case(
        "map: a reference label named Unassigned",
        lambda d: mp.tl.map_to_reference(d.adata[0], d.adata[1]),
        ValueError,
        r"label 'Unassigned' in obs\['cluster'\].*Rename",
        data=_pair("bad_query", "bad_unassigned_reference"),
    ),
    Case(
        "map: negative max_variance_missing",
        lambda d: mp.tl.map_to_reference(d.adata[0], d.adata[1], max_variance_missing=-0.1),
        ValueError,
        r"max_variance_missing must lie in \[0, 1\]",
        data=_pair("bad_query"),
    ),
    Case(
        "map: reference path is a folder",
        lambda d: mp.tl.map_to_reference(d.adata, d.tmp_path),
        IsADirectoryError,
        "is a folder",
        data="bad_query",
    ),
    Case(
        "map: query without cells",
        lambda d: mp.tl.map_to_reference(d.adata[0][:0].copy(), d.adata[1]),
        ValueError,
        "the query has no cells",
        data=_pair("bad_query"),
    ),
    Case(
        "map: options of another backend",
        lambda d: mp.tl.map_to_reference(
            d.adata[0], d.adata[1], method="anchors", options=mp.tl.FastOptions()
        ),
        TypeError,
        r"method='anchors' takes options=AnchorOptions",
        data=_pair("bad_query"),
    ),
    # --- tl.validate_potency
    Case(
        "validate: query not mapped",
        lambda d: mp.tl.validate_potency(d.adata, "vegf"),
        KeyError,
        "tl.map_to_reference",
        data="bad_query",
    ),
    Case(
        "validate: unknown potency column",
        lambda d: mp.tl.validate_potency(d.adata, "potency_assay"),
        KeyError,
        "potency_assay",
        data="bad_mapped",
    ),
    Case(
        "validate: cluster is not a reference label",
        lambda d: mp.tl.validate_potency(d.adata, "vegf", cluster="CL99"),
        ValueError,
        r"cluster 'CL99' is not a reference label",
        data="bad_mapped",
    ),
    Case(
        "validate: no bootstrap replicates",
        lambda d: mp.tl.validate_potency(d.adata, "vegf", n_bootstrap=0),
        ValueError,
        "n_bootstrap",
        data="bad_mapped",
    ),
    # --- tl.marker_by_set
    Case(
        "marker: unknown gene",
        lambda d: mp.tl.marker_by_set(d.adata, "NOPE"),
        KeyError,
        r"gene 'NOPE' is not in adata.var_names",
        data="bad_mapped",
    ),
    Case(
        "marker: unknown reference set",
        lambda d: mp.tl.marker_by_set(d.adata, d.adata.var_names[0], reference_set="XX"),
        ValueError,
        r"reference_set 'XX' is not a set",
        data="bad_mapped",
    ),
    Case(
        "marker: query not mapped",
        lambda d: mp.tl.marker_by_set(d.adata, d.adata.var_names[0]),
        KeyError,
        "tl.map_to_reference",
        data="bad_query",
    ),
    Case(
        "marker: cluster is not a reference label",
        lambda d: mp.tl.marker_by_set(d.adata, d.adata.var_names[0], cluster="CL99"),
        ValueError,
        r"cluster 'CL99' is not a reference label",
        data="bad_mapped",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input(case, request):
    run_case(case, request)
