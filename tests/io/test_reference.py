"""The frozen reference's content hash: what it covers, pinning it, unreadable files."""

from __future__ import annotations

import re

import anndata
import numpy as np
import pandas as pd
import pytest

import mscpotency as mp


@pytest.fixture(scope="module")
def reference(tiny_ref):
    """The tiny reference with a UMAP (so the UMAP's part of the hash is exercised)."""
    reference = tiny_ref.copy()
    rng = np.random.default_rng(0)
    reference.obsm["X_umap"] = rng.normal(size=(reference.n_obs, 2)).astype(np.float32)
    return reference


@pytest.fixture(scope="module")
def frozen(reference):
    return mp.tl.freeze_reference(reference)


@pytest.fixture
def written(tmp_path, frozen):
    return mp.io.write_reference(frozen, tmp_path / "reference.h5ad")


def _other_label(adata, cell=0):
    labels = adata.obs["cluster"]
    return next(c for c in labels.cat.categories if c != labels.iloc[cell])


def _set_label(adata):
    adata.obs.iloc[0, adata.obs.columns.get_loc("cluster")] = _other_label(adata)


def _rename_category(adata):
    labels = adata.obs["cluster"]
    adata.obs["cluster"] = labels.cat.rename_categories({labels.cat.categories[0]: "renamed"})


def _set_lot(adata):
    lots = adata.obs["lot"]
    other = next(lot for lot in lots.cat.categories if lot != lots.iloc[0])
    adata.obs.iloc[0, adata.obs.columns.get_loc("lot")] = other


def _set_potency(adata):
    record = adata.uns["reference"]
    record["potency_cluster"] = next(c for c in record["labels"] if c != record["potency_cluster"])


def _rename_gene(adata):
    adata.var_names = ["renamed", *adata.var_names[1:]]


def _scale(where, key, factor=1.01):
    def edit(adata):
        getattr(adata, where)[key] = np.asarray(getattr(adata, where)[key]) * factor

    return edit


def _scale_centring(adata):
    adata.var["pca_mean"] = adata.var["pca_mean"].to_numpy() * 1.01


def _scale_x(adata):
    adata.X = adata.X.copy()
    adata.X.data[0] += 1  # a count (integer X) or an expression value


#: Each edit of a frozen reference and the part the refusal must name. Before the hash
#: covered them, edits of the potency cluster, the lots, the parameters other than the
#: target sum and the UMAP left the reference verifying.
EDITS = {
    "a cell's label": (_set_label, "labels"),
    "label categories renamed": (_rename_category, "labels"),
    "a cell's lot": (_set_lot, "reference lots"),
    "lots removed": (lambda a: a.obs.drop(columns="lot", inplace=True), "reference lots"),
    "record's lot key": (lambda a: a.uns["reference"].__setitem__("lot_key", ""), "lots"),
    "potency cluster": (_set_potency, "potency cluster"),
    "a gene renamed": (_rename_gene, "embedding genes"),
    "normalisation target": (
        lambda a: a.uns["preprocess"]["params"].__setitem__("target_sum", 5000.0),
        "parameters",
    ),
    "an embedding parameter": (
        lambda a: a.uns["preprocess"]["params"].__setitem__("n_top_genes", 10),
        "parameters",
    ),
    "PCA centring": (_scale_centring, "PCA"),
    "PCA loadings": (_scale("varm", "PCs"), "PCA"),
    "embedding": (_scale("obsm", "X_pca"), "embedding"),
    "expression": (_scale_x, "expression"),
    "UMAP": (_scale("obsm", "X_umap", 2.0), "UMAP"),
    "UMAP removed": (lambda a: a.obsm.pop("X_umap"), "UMAP"),
    "normalisation factors": (_scale("obs", "normalisation_scale"), "expression"),
}


@pytest.mark.parametrize("edit", list(EDITS), ids=list(EDITS))
def test_every_part_that_changes_an_answer_is_hashed(tmp_path, frozen, edit):
    """Before: potency cluster, lots, parameters and UMAP could be edited and still verify."""
    change, named = EDITS[edit]
    edited = frozen.copy()
    change(edited)
    with pytest.raises(ValueError, match=rf"modified after `tl.freeze_reference`.*{named}"):
        mp.io.write_reference(edited, tmp_path / "edited.h5ad")
    # the same edit made in the file is refused on reading, naming the file
    path = tmp_path / "edited_in_file.h5ad"
    edited.write_h5ad(path)
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: .*{named}"):
        mp.io.read_reference(path)


@pytest.mark.parametrize(
    ("field", "value"),
    [("labels", ["A", "B"]), ("n_cells", 5), ("n_genes", 3)],
)
def test_the_record_must_describe_the_content(tmp_path, frozen, field, value):
    edited = frozen.copy()
    edited.uns["reference"][field] = value
    with pytest.raises(ValueError, match=rf"record disagrees with its content.*{field}"):
        mp.io.write_reference(edited, tmp_path / "edited.h5ad")


def test_the_hash_survives_a_round_trip_and_names_each_part(written, frozen, reference):
    record = frozen.uns["reference"]
    assert record["hash_version"] == mp._frozen.HASH_VERSION
    assert set(record["hash_parts"]) == {
        "genes",
        "labels",
        "potency_cluster",
        "lots",
        "parameters",
        "pca",
        "embedding",
        "expression",
        "umap",
        "scvi",
    }
    loaded = mp.io.read_reference(written, expected_hash=record["hash"])
    assert loaded.uns["reference"]["hash"] == record["hash"]
    # the processed reference and its frozen copy are the same reference: one hash
    model = mp._frozen.reference_model(reference, cluster_key="cluster")
    assert model.hash == record["hash"]
    assert model.hash_parts == dict(record["hash_parts"])
    # cell names and provenance are not hashed
    renamed = frozen.copy()
    renamed.obs_names = [f"cell{i}" for i in range(renamed.n_obs)]
    renamed.uns["reference"]["created"] = "2000-01-01T00:00:00+00:00"
    assert mp._frozen.reference_model(renamed, cluster_key="cluster").hash == record["hash"]


def test_pinning_the_hash(tmp_path, written, frozen, reference):
    digest = frozen.uns["reference"]["hash"]
    # accepted however it is spelt (case, surrounding blanks)
    assert mp.io.read_reference(written, expected_hash=f" {digest.upper()} ").n_obs == frozen.n_obs
    other = "0" * 32
    with pytest.raises(
        ValueError, match=rf"{re.escape(str(written))}: .*not the expected '{other}'"
    ):
        mp.io.read_reference(written, expected_hash=other)
    for bad in ("abc", 12345, "g" * 32):
        with pytest.raises(ValueError, match="32 hexadecimal digits"):
            mp.io.read_reference(written, expected_hash=bad)
    # a file whose content changed and whose stored hash was recomputed (a new freeze of an
    # edited reference) verifies on its own, and is refused when the original hash is pinned
    edited = reference.copy()
    _set_label(edited)
    restamped = mp.tl.freeze_reference(edited)
    assert restamped.uns["reference"]["hash"] != digest
    path = mp.io.write_reference(restamped, written, overwrite=True)
    assert mp.io.read_reference(path).n_obs == frozen.n_obs
    with pytest.raises(ValueError, match="not the expected.*stored hash was recomputed"):
        mp.io.read_reference(path, expected_hash=digest)


def test_a_hand_edited_and_restamped_file_is_refused_when_pinned(tmp_path, written, frozen):
    digest = frozen.uns["reference"]["hash"]
    edited = anndata.read_h5ad(written)
    _set_potency(edited)
    with pytest.raises(ValueError, match=r"content hash '([0-9a-f]{32})' differs") as info:
        mp._frozen.reference_model(edited, cluster_key="cluster")
    # restamp: store the hash the edited content now has, as an editor could
    recomputed = re.search(r"'([0-9a-f]{32})'", str(info.value)).group(1)
    edited.uns["reference"]["hash"] = recomputed
    edited.write_h5ad(written)
    assert mp.io.read_reference(written).uns["reference"]["hash"] == recomputed
    with pytest.raises(ValueError, match="not the expected"):
        mp.io.read_reference(written, expected_hash=digest)


# an adipose lot onto the bone-marrow reference: a few more cells flagged novel than the rate
# allows is a finding of the mapping, not of the pinning checked here
@pytest.mark.filterwarnings("ignore:map_to_reference. lot.s. .* hold more cells flagged novel")
def test_map_to_reference_pins_the_hash(tiny_all, written, frozen):
    lot = tiny_all.obs.loc[tiny_all.obs["set"] == "AD", "lot"].iloc[0]
    query = tiny_all[tiny_all.obs["lot"] == lot].copy()
    digest = frozen.uns["reference"]["hash"]
    out = mp.tl.map_to_reference(
        query, str(written), method="fast", calibrate=False, expected_hash=digest, copy=True
    )
    assert out.uns["predicted"]["reference_hash"] == digest
    assert out.uns["predicted"]["params"]["expected_hash"] == digest
    for reference in (frozen, str(written)):
        with pytest.raises(ValueError, match="not the expected"):
            mp.tl.map_to_reference(query, reference, method="fast", expected_hash="f" * 32)
    assert "predicted" not in query.obs


def test_an_older_hash_is_refused_with_what_to_do(tmp_path, frozen):
    old = frozen.copy()
    record = old.uns["reference"]
    del record["hash_version"], record["hash_parts"]
    record["hash"] = "0123456789abcdef0123456789abcdef"
    with pytest.raises(ValueError, match=r"earlier mscpotency.*Freeze it again"):
        mp.io.write_reference(old, tmp_path / "old.h5ad")


def test_the_frozen_reference_stores_integer_counts_that_give_back_the_expression(
    reference, frozen, written
):
    """Compact: the embedding genes' counts as uint16 and a factor per cell, exact."""
    assert frozen.uns["reference"]["expression_encoding"] == "counts"
    assert frozen.X.dtype == np.uint16
    processed = mp._frozen.reference_model(reference, cluster_key="cluster")
    loaded = mp._frozen.reference_model(mp.io.read_reference(written), cluster_key="cluster")
    difference = processed.expression - loaded.expression
    assert difference.count_nonzero() == 0
    counts = reference.layers["counts"][:, reference.var_names.get_indexer(frozen.var_names)]
    assert (abs(counts - frozen.X.astype(np.float32)) > 0).sum() == 0


def test_a_reference_without_counts_stores_its_expression(tmp_path, reference):
    no_counts = reference.copy()
    del no_counts.layers["counts"]
    no_counts.X = mp._frozen.lognormalise(reference.layers["counts"], 1e4)
    frozen = mp.tl.freeze_reference(no_counts)
    assert frozen.uns["reference"]["expression_encoding"] == "log-normalised"
    assert frozen.X.dtype == np.float32 and "normalisation_scale" not in frozen.obs
    loaded = mp.io.read_reference(mp.io.write_reference(frozen, tmp_path / "r.h5ad"))
    assert loaded.uns["reference"]["hash"] == frozen.uns["reference"]["hash"]


def test_counts_without_their_factors_are_refused(tmp_path, frozen):
    edited = frozen.copy()
    del edited.obs["normalisation_scale"]
    with pytest.raises(ValueError, match="normalisation factors"):
        mp.io.write_reference(edited, tmp_path / "edited.h5ad")


def test_a_version_2_file_is_refused_with_what_to_do(tmp_path, frozen):
    """A file frozen before the scVI model and the counts encoding: refused, not misread."""
    old = frozen.copy()
    record = old.uns["reference"]
    record["hash_version"] = 2
    record["hash"] = "0123456789abcdef0123456789abcdef"
    with pytest.raises(ValueError, match=r"hash version 2.*Freeze it again"):
        mp.io.write_reference(old, tmp_path / "old.h5ad")


@pytest.mark.parametrize("keep", [0.5, 0.01, 0.0])
def test_a_truncated_file_names_the_file_and_what_to_do(tmp_path, written, keep):
    content = written.read_bytes()
    truncated = tmp_path / "truncated.h5ad"
    truncated.write_bytes(content[: int(keep * len(content))])
    with pytest.raises(
        ValueError, match=rf"{re.escape(str(truncated))}.*truncated or corrupt.*io.write_reference"
    ):
        mp.io.read_reference(truncated)


def test_write_is_atomic_and_checks_its_folder(tmp_path, frozen, monkeypatch):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        mp.io.write_reference(frozen, tmp_path / "missing" / "reference.h5ad")
    path = mp.io.write_reference(frozen, tmp_path / "reference.h5ad")
    before = path.read_bytes()

    def interrupted(adata, filename):
        with open(filename, "wb") as handle:
            handle.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(mp.io._reference, "_write_compact", interrupted)
    with pytest.raises(KeyboardInterrupt):
        mp.io.write_reference(frozen, path, overwrite=True)
    assert path.read_bytes() == before  # the old file is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reference.h5ad"]  # no partial left
    monkeypatch.undo()
    assert mp.io.read_reference(path).n_obs == frozen.n_obs


def test_the_frozen_umap_is_read_whatever_umap_key_says(frozen):
    # a frozen reference keeps its UMAP under obsm['X_umap']; another umap_key must not make
    # the reference look modified
    model = mp._frozen.reference_model(frozen, cluster_key="cluster", umap_key="X_other")
    assert model.umap is not None
    assert model.hash == frozen.uns["reference"]["hash"]
    info = mp.get.freeze_reference(frozen)
    assert isinstance(info, pd.DataFrame)
    assert info.loc[0, "hash_version"] == mp._frozen.HASH_VERSION


def test_the_written_reference_has_the_permissions_of_any_new_file(tmp_path, frozen):
    """Written through a private temporary file, it still gets 0666 minus the umask (a
    frozen reference is shipped to other people), not the temporary file's 0600."""
    import os
    import stat

    previous = os.umask(0o022)
    try:
        path = mp.io.write_reference(frozen, tmp_path / "shared.h5ad")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    ordinary = tmp_path / "ordinary.txt"
    previous = os.umask(0o027)
    try:
        path = mp.io.write_reference(frozen, tmp_path / "group.h5ad")
        ordinary.write_text("x")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(ordinary.stat().st_mode) == 0o640
