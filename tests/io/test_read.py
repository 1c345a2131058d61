"""io.read_lots against real 10x mtx folders, 10x .h5 files and .h5ad files written here."""

from __future__ import annotations

import gzip
import shutil

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.io
from scipy import sparse

import mscpotency as mp

N_GENES = 60
SIZES = {"BM01": 40, "BM02": 30, "AD01": 50, "UC01": 25}


def _barcodes(n: int) -> list[str]:
    # The same barcodes in every lot, as 10x gives: pooling must still make cell names unique.
    return [f"AAAC{i:06d}-1" for i in range(n)]


@pytest.fixture(scope="module")
def lots() -> dict[str, ad.AnnData]:
    """Four lots of the simulator with integer counts, 10x-style barcodes and gene ids."""
    tiny = mp.datasets.tiny()
    out = {}
    for lot, n in SIZES.items():
        part = tiny[tiny.obs["lot"] == lot][:n, :N_GENES]
        X = sparse.csr_matrix(part.layers["counts"]).astype(np.int64)
        var = pd.DataFrame(
            {"gene_ids": [f"ENSG{i:011d}" for i in range(N_GENES)]}, index=part.var_names.copy()
        )
        obs = pd.DataFrame(
            {"true_subpopulation": part.obs["true_subpopulation"].astype(str).to_numpy()},
            index=_barcodes(n),
        )
        out[lot] = ad.AnnData(X=X, obs=obs, var=var)
    return out


def write_mtx(folder, part: ad.AnnData, *, legacy: bool = False) -> None:
    """A Cell Ranger v3 (gzipped) or v2 (plain) matrix folder: genes x cells."""
    folder.mkdir(parents=True)
    genes = [
        f"{gid}\t{name}" + ("" if legacy else "\tGene Expression")
        for gid, name in zip(part.var["gene_ids"], part.var_names, strict=True)
    ]
    files = {
        "genes.tsv" if legacy else "features.tsv": "\n".join(genes) + "\n",
        "barcodes.tsv": "\n".join(part.obs_names) + "\n",
    }
    scipy.io.mmwrite(
        folder / "matrix.mtx", sparse.coo_matrix(part.X.T).astype(np.int64), field="integer"
    )
    for name, text in files.items():
        (folder / name).write_text(text)
    if not legacy:
        for name in ["matrix.mtx", "features.tsv", "barcodes.tsv"]:
            with open(folder / name, "rb") as src, gzip.open(folder / f"{name}.gz", "wb") as dst:
                shutil.copyfileobj(src, dst)
            (folder / name).unlink()


def write_h5(path, part: ad.AnnData) -> None:
    """A Cell Ranger v3 filtered_feature_bc_matrix.h5: CSC genes x cells = CSR cells x genes."""
    X = sparse.csr_matrix(part.X)
    with h5py.File(path, "w") as f:
        m = f.create_group("matrix")
        m.create_dataset("data", data=X.data.astype(np.int32))
        m.create_dataset("indices", data=X.indices.astype(np.int64))
        m.create_dataset("indptr", data=X.indptr.astype(np.int64))
        m.create_dataset("shape", data=np.array([part.n_vars, part.n_obs], dtype=np.int32))
        m.create_dataset("barcodes", data=np.array(part.obs_names, dtype="S"))
        feats = m.create_group("features")
        feats.create_dataset("id", data=np.array(part.var["gene_ids"], dtype="S"))
        feats.create_dataset("name", data=np.array(part.var_names, dtype="S"))
        feats.create_dataset(
            "feature_type", data=np.array(["Gene Expression"] * part.n_vars, dtype="S")
        )
        feats.create_dataset("genome", data=np.array(["GRCh38"] * part.n_vars, dtype="S"))
        feats.create_dataset("_all_tag_keys", data=np.array(["genome"], dtype="S"))


def write_h5ad(path, part: ad.AnnData) -> None:
    part.write_h5ad(path)


WRITERS = {
    "mtx": lambda folder, name, part: write_mtx(folder / name, part),
    "mtx_v2": lambda folder, name, part: write_mtx(folder / name, part, legacy=True),
    "h5": lambda folder, name, part: write_h5(folder / f"{name}.h5", part),
    "h5ad": lambda folder, name, part: write_h5ad(folder / f"{name}.h5ad", part),
}
FORMAT_NAME = {"mtx": "10x_mtx", "mtx_v2": "10x_mtx", "h5": "10x_h5", "h5ad": "h5ad"}


def write_folder(folder, lots: dict[str, ad.AnnData], formats) -> dict[str, str]:
    """One entry per lot; ``formats`` is one format for all or one per lot. Returns lot -> path."""
    folder.mkdir(exist_ok=True)
    formats = [formats] * len(lots) if isinstance(formats, str) else list(formats)
    for (name, part), fmt in zip(lots.items(), formats, strict=True):
        WRITERS[fmt](folder, name, part)
    suffix = {"mtx": "", "mtx_v2": "", "h5": ".h5", "h5ad": ".h5ad"}
    return {
        name: str(folder / f"{name}{suffix[fmt]}") for name, fmt in zip(lots, formats, strict=True)
    }


def assert_lots_equal(pooled: ad.AnnData, lots: dict[str, ad.AnnData]) -> None:
    """Every lot's counts, cells and genes come back exactly."""
    assert pooled.obs_names.is_unique
    for name, part in lots.items():
        mask = (pooled.obs["lot"] == name).to_numpy()
        assert mask.sum() == part.n_obs
        sub = pooled[mask, part.var_names]
        assert list(sub.obs_names) == [f"{name}_{bc}" for bc in part.obs_names]
        np.testing.assert_array_equal(sub.X.toarray(), part.X.toarray())


@pytest.mark.parametrize("fmt", ["mtx", "mtx_v2", "h5", "h5ad"])
def test_folder_round_trip(tmp_path, lots, fmt):
    write_folder(tmp_path / "lots", lots, fmt)
    pooled = mp.io.read_lots(tmp_path / "lots")
    assert pooled.shape == (sum(SIZES.values()), N_GENES)
    # a folder is read in name order
    assert list(pooled.obs["lot"].cat.categories) == sorted(SIZES)
    assert isinstance(pooled.obs["lot"].dtype, pd.CategoricalDtype)
    assert sparse.issparse(pooled.X) and pooled.X.dtype == np.float32
    assert_lots_equal(pooled, lots)
    # gene symbols are the names, 10x ids are kept
    assert list(pooled.var_names) == list(lots["BM01"].var_names)
    assert list(pooled.var["gene_ids"]) == list(lots["BM01"].var["gene_ids"])
    assert pooled.uns["read_lots"]["formats"] == dict.fromkeys(sorted(SIZES), FORMAT_NAME[fmt])
    assert pooled.uns["pool_lots"]["cells_kept"] == SIZES
    assert pooled.uns["pool_lots"]["genes_dropped"] == {}
    # the pooled counts are raw counts the rest of the pipeline accepts
    totals = pd.Series(np.asarray(pooled.X.sum(axis=1)).ravel(), index=pooled.obs_names)
    mp.pp.qc(pooled, thresholds="fixed", min_genes=1)
    assert pooled.n_obs > 0
    np.testing.assert_array_equal(pooled.obs["total_counts"], totals[pooled.obs_names])


def test_h5ad_obs_is_kept_and_truth_travels(tmp_path, lots):
    write_folder(tmp_path / "lots", lots, "h5ad")
    pooled = mp.io.read_lots(tmp_path / "lots")
    for name, part in lots.items():
        got = pooled.obs.loc[[f"{name}_{bc}" for bc in part.obs_names], "true_subpopulation"]
        assert list(got) == list(part.obs["true_subpopulation"])


def test_mapping_gives_the_same_as_the_folder(tmp_path, lots):
    paths = write_folder(tmp_path / "lots", lots, "mtx")
    from_folder = mp.io.read_lots(tmp_path / "lots")
    order = sorted(paths)
    from_mapping = mp.io.read_lots({name: paths[name] for name in order})
    assert (from_folder.obs_names == from_mapping.obs_names).all()
    assert (from_folder.var_names == from_mapping.var_names).all()
    assert (from_folder.X != from_mapping.X).nnz == 0
    assert from_folder.obs["lot"].equals(from_mapping.obs["lot"])
    # a mapping keeps its own lot order, and may rename the lots
    renamed = mp.io.read_lots({"lot-b": paths["BM02"], "lot-a": paths["BM01"]})
    assert list(renamed.obs["lot"].cat.categories) == ["lot-b", "lot-a"]
    assert renamed.obs_names[0] == "lot-b_AAAC000000-1"


def test_mixed_formats_in_one_folder(tmp_path, lots):
    write_folder(tmp_path / "lots", lots, ["mtx", "h5", "h5ad", "mtx_v2"])
    pooled = mp.io.read_lots(tmp_path / "lots")
    assert_lots_equal(pooled, lots)
    assert pooled.uns["read_lots"]["formats"] == {
        "AD01": "h5ad",
        "BM01": "10x_mtx",
        "BM02": "10x_h5",
        "UC01": "10x_mtx",
    }


def test_cellranger_output_folders(tmp_path, lots):
    """A lot folder may be Cell Ranger's sample folder: outs/filtered_feature_bc_matrix/."""
    write_mtx(tmp_path / "lots" / "BM01" / "outs" / "filtered_feature_bc_matrix", lots["BM01"])
    write_mtx(tmp_path / "lots" / "BM02" / "filtered_feature_bc_matrix", lots["BM02"])
    pooled = mp.io.read_lots(tmp_path / "lots")
    assert_lots_equal(pooled, {k: lots[k] for k in ["BM01", "BM02"]})


def test_hidden_entries_are_skipped(tmp_path, lots):
    write_folder(tmp_path / "lots", {"BM01": lots["BM01"]}, "h5")
    (tmp_path / "lots" / ".DS_Store").write_bytes(b"\x00\x01")
    (tmp_path / "lots" / ".ipynb_checkpoints").mkdir()
    pooled = mp.io.read_lots(tmp_path / "lots")
    assert list(pooled.obs["lot"].cat.categories) == ["BM01"]


def test_gene_mismatch_inner_drops_and_reports_outer_fills_zeros(tmp_path, lots):
    first = lots["BM01"]
    second = lots["BM02"][:, 10:]  # lacks the first ten genes
    third = lots["AD01"][:, :50]  # lacks the last ten genes
    parts = {"BM01": first, "BM02": second.copy(), "AD01": third.copy()}
    paths = write_folder(tmp_path / "lots", parts, ["mtx", "h5", "h5ad"])
    inner = mp.io.read_lots(paths)
    assert list(inner.var_names) == list(first.var_names[10:50])
    dropped = inner.uns["pool_lots"]["genes_dropped"]
    assert dropped["BM01"] == sorted(first.var_names[:10].tolist() + first.var_names[50:].tolist())
    assert dropped["BM02"] == sorted(first.var_names[50:])
    assert dropped["AD01"] == sorted(first.var_names[:10])
    assert_lots_equal(inner, {k: v[:, first.var_names[10:50]] for k, v in parts.items()})

    outer = mp.io.read_lots(paths, join="outer")
    assert set(outer.var_names) == set(first.var_names)
    assert outer.uns["pool_lots"]["genes_dropped"] == {}
    assert_lots_equal(outer, parts)
    missing = outer[(outer.obs["lot"] == "BM02").to_numpy(), first.var_names[:10]].X
    assert missing.nnz == 0 and not np.isnan(missing.toarray()).any()
    missing = outer[(outer.obs["lot"] == "AD01").to_numpy(), first.var_names[50:]].X
    assert missing.nnz == 0


def test_a_symbol_with_other_ids_in_another_lot_never_pools_different_genes(tmp_path, lots):
    """Two Cell Ranger references: lot A lists two ids for one symbol, lot B only the second.
    Made unique lot by lot, A's first id and B's only id were both named by the bare symbol
    and pooled as one gene (a review's reproducer: mean 50 counts in A, 1 in B), and
    var['gene_ids'] was dropped for every gene."""
    a, b = lots["BM01"].copy(), lots["BM02"].copy()
    names = a.var_names.tolist()
    symbol = names[3]
    names[5] = symbol  # lot A: the symbol has two ids, 3 and 5
    a.var_names = names
    b = b[:, [g for g in range(b.n_vars) if g != 3]].copy()  # lot B: id 3 is gone
    b.var_names = [
        symbol if g == 5 else name for g, name in enumerate(lots["BM02"].var_names) if g != 3
    ]
    write_folder(tmp_path / "lots", {"A": a, "B": b}, "mtx")
    pooled = mp.io.read_lots(tmp_path / "lots")
    ids = pooled.var["gene_ids"]
    assert ids.is_unique and len(ids) == pooled.n_vars
    # every pooled name stands for one id, the same in both lots
    id5 = a.var["gene_ids"].iloc[5]
    name5 = ids.index[ids == id5][0]
    assert name5 == f"{symbol}-1"
    for lot, part in (("A", a), ("B", b)):
        column = list(part.var["gene_ids"]).index(id5)
        cells = (pooled.obs["lot"] == lot).to_numpy()
        np.testing.assert_array_equal(
            pooled[cells, name5].X.toarray().ravel(), part.X[:, column].toarray().ravel()
        )
    assert symbol not in pooled.var_names  # id 3 was measured in lot A only (join='inner')
    assert pooled.uns["read_lots"]["symbols_with_several_ids"] == {
        symbol: [a.var["gene_ids"].iloc[3], id5]
    }


def test_duplicate_gene_symbols_are_made_unique_and_reported(tmp_path, lots):
    part = lots["BM01"].copy()
    names = part.var_names.tolist()
    names[5] = names[3]
    names[7] = names[3]
    part.var_names = names
    paths = {}
    for fmt in ["mtx", "h5"]:
        write_folder(tmp_path / fmt, {"BM01": part}, fmt)
        pooled = mp.io.read_lots(tmp_path / fmt)
        assert pooled.var_names.is_unique
        assert list(pooled.var_names[[3, 5, 7]]) == [names[3], f"{names[3]}-1", f"{names[3]}-2"]
        assert pooled.uns["read_lots"]["genes_made_unique"] == {"BM01": [names[3]]}
        np.testing.assert_array_equal(pooled.X.toarray(), part.X.toarray())
        paths[fmt] = pooled
    assert list(paths["mtx"].var["gene_ids"]) == list(part.var["gene_ids"])


def test_subsampling_is_seeded_and_equalises_lots(tmp_path, lots):
    paths = write_folder(tmp_path / "lots", lots, "h5")
    a = mp.io.read_lots(paths, cells_per_lot="min", random_state=1)
    b = mp.io.read_lots(paths, cells_per_lot="min", random_state=1)
    c = mp.io.read_lots(paths, cells_per_lot="min", random_state=2)
    assert a.obs["lot"].value_counts().eq(min(SIZES.values())).all()
    assert list(a.obs_names) == list(b.obs_names)
    assert list(a.obs_names) != list(c.obs_names)
    capped = mp.io.read_lots(paths, cells_per_lot=35)
    assert capped.obs["lot"].value_counts().to_dict() == {k: min(v, 35) for k, v in SIZES.items()}


def test_normalised_h5ad_uses_its_counts_layer(tmp_path, lots):
    part = lots["BM01"].copy()
    part.layers["counts"] = part.X.copy()
    part.X = sparse.csr_matrix(np.log1p(part.X.toarray() / 3.0))
    write_h5ad(tmp_path / "BM01.h5ad", part)
    pooled = mp.io.read_lots({"BM01": tmp_path / "BM01.h5ad"})
    np.testing.assert_array_equal(pooled.X.toarray(), lots["BM01"].X.toarray())
    assert pooled.uns["read_lots"]["count_source"] == {"BM01": "layers['counts']"}
    assert list(pooled.layers) == []


def test_provenance_records_read_lots(tmp_path, lots):
    paths = write_folder(tmp_path / "lots", lots, "h5ad")
    pooled = mp.io.read_lots(tmp_path / "lots", cells_per_lot=20, random_state=3)
    log = mp.get.provenance(pooled)
    # pool_lots runs inside read_lots and is covered by its entry
    assert log["function"].tolist() == ["io.read_lots"]
    entry = log.iloc[0]
    assert entry["random_state"] == 3
    assert entry["params"]["cells_per_lot"] == 20 and entry["params"]["join"] == "inner"
    assert entry["input_fingerprint"] is None
    # the result, provenance and reports included, can be saved and read back
    pooled.write_h5ad(tmp_path / "pooled.h5ad")
    back = ad.read_h5ad(tmp_path / "pooled.h5ad")
    assert mp.get.provenance(back)["function"].tolist() == ["io.read_lots"]
    assert back.uns["read_lots"]["sources"]["BM01"] == paths["BM01"]
    assert (back.X != pooled.X).nnz == 0


def test_lot_table_joins_after_reading(tmp_path, lots):
    write_folder(tmp_path / "lots", lots, "mtx")
    pd.DataFrame(
        {"lot": list(SIZES), "vegf": [1.5, 2.0, 0.5, 3.0], "tissue": ["BM", "BM", "AD", "UC"]}
    ).to_csv(tmp_path / "lots.csv", index=False)
    pooled = mp.io.read_lots(tmp_path / "lots")
    mp.pp.add_lot_table(pooled, mp.io.read_lot_table(tmp_path / "lots.csv"))
    assert pooled.obs.groupby("lot", observed=True)["vegf"].first().to_dict() == {
        "AD01": 0.5,
        "BM01": 1.5,
        "BM02": 2.0,
        "UC01": 3.0,
    }
    assert mp.get.provenance(pooled)["function"].tolist() == ["io.read_lots", "pp.add_lot_table"]


# --- errors -----------------------------------------------------------------------------


def test_missing_paths(tmp_path, lots):
    with pytest.raises(FileNotFoundError, match=r"does not exist; pass the folder"):
        mp.io.read_lots(tmp_path / "nowhere")
    paths = write_folder(tmp_path / "lots", {"BM01": lots["BM01"]}, "h5")
    with pytest.raises(FileNotFoundError, match=r"lot 'BM02': .*BM02.h5' does not exist"):
        mp.io.read_lots({"BM01": paths["BM01"], "BM02": tmp_path / "lots" / "BM02.h5"})


def test_unknown_formats_say_what_is_accepted(tmp_path, lots):
    (tmp_path / "BM01.loom").write_bytes(b"loom")
    with pytest.raises(
        ValueError,
        match=r"lot 'BM01': .*BM01.loom' is not in a format .*Accepted: a 10x matrix folder.*'.h5'.*'.h5ad'",
    ):
        mp.io.read_lots({"BM01": tmp_path / "BM01.loom"})
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(ValueError, match=r"is not in a format read_lots reads"):
        mp.io.read_lots({"BM01": tmp_path / "empty_dir"})


def test_non_lot_entries_are_named(tmp_path, lots):
    write_folder(tmp_path / "lots", lots, "h5")
    (tmp_path / "lots" / "README.md").write_text("lots of the 2024 campaign")
    (tmp_path / "lots" / "notes").mkdir()
    with pytest.raises(
        ValueError,
        match=r"entries \['README.md', 'notes'\] of folder .* are not lot data.*hidden files are skipped",
    ):
        mp.io.read_lots(tmp_path / "lots")


def test_empty_folder(tmp_path):
    (tmp_path / "lots").mkdir()
    (tmp_path / "lots" / ".hidden").write_text("")
    with pytest.raises(ValueError, match=r"is empty; it should hold one entry per lot"):
        mp.io.read_lots(tmp_path / "lots")
    with pytest.raises(ValueError, match=r"mapping lot name -> path is empty"):
        mp.io.read_lots({})


def test_duplicate_lot_names(tmp_path, lots):
    folder = tmp_path / "lots"
    write_folder(folder, {"BM01": lots["BM01"]}, "h5")
    write_h5ad(folder / "BM01.h5ad", lots["BM01"])
    with pytest.raises(
        ValueError,
        match=r"several entries give the same lot name: \{'BM01': \['BM01.h5', 'BM01.h5ad'\]\}",
    ):
        mp.io.read_lots(folder)
    with pytest.raises(ValueError, match=r"lot '1' is named twice"):
        mp.io.read_lots({1: folder / "BM01.h5", "1": folder / "BM01.h5ad"})
    with pytest.raises(ValueError, match=r"lot name ' ' is empty"):
        mp.io.read_lots({" ": folder / "BM01.h5"})


def test_source_must_be_a_folder_or_mapping(tmp_path, lots):
    paths = write_folder(tmp_path / "lots", lots, ["h5", "mtx", "h5", "h5"])
    with pytest.raises(
        ValueError, match=r"is a file, not a folder of lots. It looks like one lot \(10x_h5\)"
    ):
        mp.io.read_lots(paths["BM01"])
    (tmp_path / "table.csv").write_text("lot\nA\n")
    with pytest.raises(ValueError, match=r"is a file, not a folder of lots. Accepted lot formats"):
        mp.io.read_lots(tmp_path / "table.csv")
    with pytest.raises(ValueError, match=r"is a single 10x matrix folder, not a folder of lots"):
        mp.io.read_lots(paths["BM02"])
    with pytest.raises(TypeError, match=r"source must be a folder or a mapping.*got a list"):
        mp.io.read_lots([paths["BM01"]])
    with pytest.raises(
        TypeError,
        match=r"lot 'BM01': expected a path, got a AnnData. To pool AnnData objects use `pp.pool_lots`",
    ):
        mp.io.read_lots({"BM01": lots["BM01"]})


def test_lot_without_cells(tmp_path, lots):
    write_h5(tmp_path / "BM01.h5", lots["BM01"][:0].copy())
    write_h5ad(tmp_path / "BM02.h5ad", lots["BM02"][:0].copy())
    for path in [tmp_path / "BM01.h5", tmp_path / "BM02.h5ad"]:
        with pytest.raises(ValueError, match=r"lot 'x' \(.*\) has no cells"):
            mp.io.read_lots({"x": path})


def test_non_integer_counts_are_refused(tmp_path, lots):
    part = lots["BM01"].copy()
    part.X = part.X.astype(np.float32) * 0.5
    write_h5ad(tmp_path / "BM01.h5ad", part)
    with pytest.raises(
        ValueError,
        match=r"lot 'BM01' .* holds no raw counts \(X: contains non-integer values.*"
        r"layers\['counts'\]: absent; .raw: absent\). Raw integer counts are required",
    ):
        mp.io.read_lots({"BM01": tmp_path / "BM01.h5ad"})
    # a counts layer that is not counts either does not rescue it
    part.layers["counts"] = part.X.copy()
    write_h5ad(tmp_path / "BM01.h5ad", part)
    with pytest.raises(
        ValueError,
        match=r"layers\['counts'\]: contains non-integer.*Raw integer counts are required",
    ):
        mp.io.read_lots({"BM01": tmp_path / "BM01.h5ad"})
    part = lots["BM01"].copy()
    part.X = -part.X.astype(np.float32)
    write_h5ad(tmp_path / "neg.h5ad", part)
    with pytest.raises(ValueError, match=r"X: contains negative values"):
        mp.io.read_lots({"BM01": tmp_path / "neg.h5ad"})


def test_counts_are_found_in_raw_and_an_absent_x_is_said(tmp_path, lots):
    """scanpy keeps the data before normalisation in .raw (genes may be more than X's); an
    .h5ad with X=None and no counts anywhere was a bare TypeError from numpy."""
    part = lots["BM01"].copy()
    analysed = part[:, 5:].copy()  # X: normalised, fewer genes (as after an HVG subset)
    analysed.X = analysed.X.astype(np.float32) * 0.5
    analysed.raw = part
    write_h5ad(tmp_path / "BM01.h5ad", analysed)
    pooled = mp.io.read_lots({"BM01": tmp_path / "BM01.h5ad"})
    assert pooled.uns["read_lots"]["count_source"] == {"BM01": ".raw"}
    assert pooled.var_names.equals(part.var_names)
    np.testing.assert_array_equal(pooled.X.toarray(), part.X.toarray())
    empty = ad.AnnData(obs=part.obs.copy(), var=part.var.copy())
    write_h5ad(tmp_path / "empty.h5ad", empty)
    with pytest.raises(
        ValueError, match=r"holds no raw counts \(X: absent; layers\['counts'\]: absent"
    ):
        mp.io.read_lots({"BM01": tmp_path / "empty.h5ad"})


def test_incomplete_or_broken_files(tmp_path, lots):
    write_mtx(tmp_path / "BM01", lots["BM01"])
    (tmp_path / "BM01" / "barcodes.tsv.gz").unlink()
    with pytest.raises(ValueError, match=r"has matrix.mtx.gz but lacks \['barcodes.tsv.gz'\]"):
        mp.io.read_lots({"BM01": tmp_path / "BM01"})
    (tmp_path / "BM02.h5").write_bytes(b"this is not an HDF5 file")
    with pytest.raises(ValueError, match=r"could not read lot 'BM02' .* as a 10x .h5 file"):
        mp.io.read_lots({"BM02": tmp_path / "BM02.h5"})
    (tmp_path / "BM03.h5ad").write_bytes(b"neither is this")
    with pytest.raises(ValueError, match=r"could not read lot 'BM03' .* as an .h5ad file"):
        mp.io.read_lots({"BM03": tmp_path / "BM03.h5ad"})


def test_duplicate_barcodes_within_a_lot(tmp_path, lots):
    part = lots["BM01"].copy()
    part.obs_names = ["AAAC-1"] * part.n_obs
    write_h5ad(tmp_path / "BM01.h5ad", part)
    with pytest.raises(
        ValueError, match=r"lot 'BM01' .* has duplicate cell barcodes \(e.g. \['AAAC-1'\]\)"
    ):
        mp.io.read_lots({"BM01": tmp_path / "BM01.h5ad"})


def test_lots_sharing_no_genes(tmp_path, lots):
    other = lots["BM02"].copy()
    other.var_names = other.var["gene_ids"].to_numpy()
    bare = {"BM01": lots["BM01"].copy(), "BM02": other.copy()}
    for part in bare.values():
        del part.var["gene_ids"]
    paths = write_folder(tmp_path / "bare", bare, "h5ad")
    with pytest.raises(ValueError, match=r"the lots share no gene names"):
        mp.io.read_lots(paths)
    # with gene ids in both, the lots are pooled by id, named as the first lot names them
    paths = write_folder(tmp_path / "lots", {"BM01": lots["BM01"], "BM02": other}, "h5ad")
    pooled = mp.io.read_lots(paths)
    assert pooled.var_names.equals(lots["BM01"].var_names)
    assert_lots_equal(pooled, {"BM01": lots["BM01"], "BM02": lots["BM02"]})


def test_options_are_checked_before_reading(tmp_path):
    (tmp_path / "BM01.h5").write_bytes(b"not read: the options fail first")
    with pytest.raises(ValueError, match=r"join must be 'inner' or 'outer', got 'left'"):
        mp.io.read_lots({"BM01": tmp_path / "BM01.h5"}, join="left")
    with pytest.raises(
        ValueError, match=r"cells_per_lot must be None, 'min' or a positive integer, got 0"
    ):
        mp.io.read_lots({"BM01": tmp_path / "BM01.h5"}, cells_per_lot=0)


# --- truncated files, small lots, repeated gene symbols ---------------------------------


def _truncate(path, keep: float = 0.5) -> None:
    """Cut a file as an interrupted copy would."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize("fmt", ["h5", "h5ad"])
def test_truncated_file_names_the_file_and_what_to_do(tmp_path, lots, fmt):
    paths = write_folder(tmp_path / "lots", {"BM01": lots["BM01"], "BM02": lots["BM02"]}, fmt)
    _truncate(tmp_path / "lots" / f"BM02.{fmt}")
    with pytest.raises(
        ValueError,
        match=(
            rf"could not read lot 'BM02' \('.*BM02\.{fmt}'\) as .*truncated or corrupt.*copy it "
            r"again from its source"
        ),
    ):
        mp.io.read_lots(paths)


def test_truncated_file_read_lazily_names_the_file(tmp_path, lots):
    pytest.importorskip("dask")
    for name in ["BM01", "BM02"]:
        write_h5ad(tmp_path / f"{name}.h5ad", lots[name])
    _truncate(tmp_path / "BM02.h5ad")
    # before: a bare OSError "Unable to synchronously open file (truncated file ...)"
    with pytest.raises(
        ValueError,
        match=r"could not read '.*BM02\.h5ad' \(lot 'BM02', an .h5ad file\).*truncated or corrupt",
    ):
        mp.io.read_lots_lazy(tmp_path)


def test_lazy_reader_makes_repeated_gene_names_unique_and_reports_them(tmp_path, lots, caplog):
    pytest.importorskip("dask")
    part = lots["BM01"].copy()
    names = part.var_names.tolist()
    names[5] = names[3]
    part.var_names = names
    part.write_h5ad(tmp_path / "BM01.h5ad")
    with caplog.at_level("WARNING", logger="mscpotency"):
        lazy = mp.io.read_lots_lazy(tmp_path)  # before: anndata's generic warning only
    assert lazy.var_names.is_unique
    assert list(lazy.var_names[[3, 5]]) == [names[3], f"{names[3]}-1"]
    assert lazy.uns["read_lots_lazy"]["genes_made_unique"] == [names[3]]
    assert f"['{names[3]}']" in caplog.text and "not summed" in caplog.text


def test_lazy_reader_keeps_gene_annotations_the_files_disagree_on_and_says_so(tmp_path, lots):
    """Files that disagree on one gene's id kept no var['gene_ids'] at all, silently."""
    pytest.importorskip("dask")
    a, b = lots["BM01"].copy(), lots["BM02"].copy()
    b.var.loc[b.var_names[2], "gene_ids"] = "ENSG99999999999"
    a.write_h5ad(tmp_path / "BM01.h5ad")
    b.write_h5ad(tmp_path / "BM02.h5ad")
    with pytest.warns(UserWarning, match=r"read_lots_lazy: the lots disagree on var\['gene_ids'\]"):
        lazy = mp.io.read_lots_lazy(tmp_path)
    assert lazy.var["gene_ids"].tolist() == a.var["gene_ids"].tolist()
    assert lazy.uns["read_lots_lazy"]["var_disagreements"] == {
        "gene_ids": {a.var_names[2]: {"BM01": a.var["gene_ids"].iloc[2], "BM02": "ENSG99999999999"}}
    }


def test_lazy_reader_checks_every_lots_counts(tmp_path, lots):
    """A log-normalised file among raw ones went through the lazy reader, pp.qc and
    pp.preprocess (only the pooled matrix's first block, the first lot's, was checked)."""
    pytest.importorskip("dask")
    lots["BM01"].write_h5ad(tmp_path / "BM01.h5ad")
    analysed = lots["BM02"].copy()
    analysed.X = np.log1p(analysed.X.astype(np.float32))
    analysed.write_h5ad(tmp_path / "BM02.h5ad")
    with pytest.raises(
        ValueError,
        match=r"X of lot 'BM02' \('.*BM02\.h5ad', its first \d+ cells\) contains non-integer"
        r".*the lazy reader reads layers\['counts'\], else X",
    ):
        mp.io.read_lots_lazy(tmp_path)


def test_read_lots_says_repeated_symbols_are_kept_apart(tmp_path, lots, caplog):
    part = lots["BM01"].copy()
    names = part.var_names.tolist()
    names[5] = names[3]
    part.var_names = names
    write_folder(tmp_path / "lots", {"BM01": part}, "h5")
    with caplog.at_level("WARNING", logger="mscpotency"):
        mp.io.read_lots(tmp_path / "lots")
    assert f"['{names[3]}']" in caplog.text
    assert "counts kept apart, not summed" in caplog.text


def test_min_subsampling_to_a_tiny_lot_is_refused_when_reading(tmp_path, lots):
    parts = {"BM01": lots["BM01"], "BM02": lots["BM02"], "TINY": lots["UC01"][:4].copy()}
    paths = write_folder(tmp_path / "lots", parts, "h5")
    with pytest.raises(
        ValueError, match=r"cells_per_lot='min' would subsample every lot to 4 cells.*'TINY': 4"
    ):
        mp.io.read_lots(paths, cells_per_lot="min")
    pooled = mp.io.read_lots(paths, cells_per_lot="min", small_lots="drop")
    assert pooled.obs["lot"].value_counts().to_dict() == {"BM01": 30, "BM02": 30}
    assert pooled.uns["pool_lots"]["lots_dropped"] == {"TINY": 4}
    assert pooled.uns["read_lots"]["params"]["small_lots"] == "drop"
    # the options are checked before any file is read
    with pytest.raises((TypeError, ValueError), match=r"small_lots must be one of"):
        mp.io.read_lots(tmp_path / "nowhere", small_lots="skip")


# --- count matrices as CSV/TSV text ------------------------------------------------------


def _dense_frame(part: ad.AnnData, *, genes_on_rows: bool, cells=None, genes=None) -> pd.DataFrame:
    frame = pd.DataFrame(
        part.X.toarray().astype(np.int64),
        index=part.obs_names if cells is None else cells,
        columns=part.var_names if genes is None else genes,
    )
    return frame.T if genes_on_rows else frame


def test_text_count_matrices_are_read_in_either_orientation(tmp_path, lots, caplog):
    folder = tmp_path / "lots"
    folder.mkdir()
    drop_seq = [
        "".join("ACGT"[int(d)] for d in np.base_repr(i, 4).zfill(12)) + "-1" for i in range(30)
    ]
    ensembl = list(lots["AD01"].var["gene_ids"])
    # BM01: genes x cells, comma-separated, symbols on the rows (known genes: MT-, ...)
    _dense_frame(lots["BM01"], genes_on_rows=True).to_csv(folder / "BM01.csv")
    # BM02: cells x genes, tab-separated and gzipped, barcodes on the rows
    _dense_frame(lots["BM02"], genes_on_rows=False, cells=drop_seq).to_csv(
        folder / "BM02.tsv.gz", sep="\t"
    )
    # AD01: genes x cells with Ensembl ids (.txt, tab-separated)
    _dense_frame(lots["AD01"], genes_on_rows=True, genes=ensembl).to_csv(
        folder / "AD01.txt", sep="\t"
    )
    # UC01: cells x genes, gzipped CSV
    _dense_frame(lots["UC01"], genes_on_rows=False).to_csv(folder / "UC01.csv.gz")
    with caplog.at_level("INFO", logger="mscpotency"):
        pooled = mp.io.read_lots(folder, join="outer")
    assert pooled.uns["read_lots"]["formats"] == {
        "AD01": "tsv",
        "BM01": "csv",
        "BM02": "tsv",
        "UC01": "csv",
    }
    how = pooled.uns["read_lots"]["orientation"]
    assert how["BM01"] == "genes x cells (auto: known gene symbols name the rows)"
    assert how["BM02"] == "cells x genes (auto: cell barcodes name the rows)"
    assert how["AD01"] == "genes x cells (auto: Ensembl gene ids name the rows)"
    assert how["UC01"] == "cells x genes (auto: known gene symbols name the columns)"
    assert "read as genes x cells (auto: known gene symbols name the rows)" in caplog.text
    for lot, cells, genes in [
        ("BM01", lots["BM01"].obs_names, lots["BM01"].var_names),
        ("BM02", drop_seq, lots["BM02"].var_names),
        ("AD01", lots["AD01"].obs_names, ensembl),
        ("UC01", lots["UC01"].obs_names, lots["UC01"].var_names),
    ]:
        sub = pooled[(pooled.obs["lot"] == lot).to_numpy(), list(genes)]
        assert list(sub.obs_names) == [f"{lot}_{c}" for c in cells]
        np.testing.assert_array_equal(sub.X.toarray(), lots[lot].X.toarray())
    assert sparse.issparse(pooled.X) and pooled.X.dtype == np.float32
    # AD01 named its genes by id: the outer join reports what it added with zeros
    assert len(pooled.uns["pool_lots"]["genes_added"]["AD01"]) == N_GENES


def test_repeated_names_in_a_text_matrix_header_are_seen(tmp_path, lots):
    """pandas renames a repeated header name (TBCE -> TBCE.1): a repeated gene was not
    reported as made unique, and a repeated barcode passed the duplicate-cell check."""
    part = lots["BM01"].copy()
    genes = part.var_names.tolist()
    genes[5] = genes[3]
    _dense_frame(part, genes_on_rows=False, genes=genes).to_csv(tmp_path / "genes.csv")
    pooled = mp.io.read_lots({"BM01": tmp_path / "genes.csv"})
    assert list(pooled.var_names[[3, 5]]) == [genes[3], f"{genes[3]}-1"]
    assert pooled.uns["read_lots"]["genes_made_unique"] == {"BM01": [genes[3]]}
    cells = part.obs_names.tolist()
    cells[2] = cells[1]
    _dense_frame(part, genes_on_rows=True, cells=cells).to_csv(tmp_path / "cells.csv")
    with pytest.raises(ValueError, match=rf"duplicate cell barcodes \(e.g. \['{cells[1]}'\]\)"):
        mp.io.read_lots({"BM01": tmp_path / "cells.csv"})


def test_text_matrix_orientation_falls_back_on_the_longer_axis_or_is_stated(tmp_path, lots):
    part = lots["BM01"][:, 40:].copy()  # G001.. only: no known gene symbol
    wells = [f"plate1_{r}{c:02d}" for r in "ABCDEFGH" for c in range(1, 6)]  # 40 cells
    _dense_frame(part, genes_on_rows=False, cells=wells).to_csv(tmp_path / "P1.csv")
    with pytest.warns(UserWarning, match=r"read as genes x cells.*Pass orientation= if"):
        guessed = mp.io.read_lots({"P1": tmp_path / "P1.csv"}, min_cells_per_lot=0)
    # 40 cells x 20 genes: the longer axis (the rows) is taken for genes, and said so
    assert guessed.shape == (20, 40)
    assert guessed.uns["read_lots"]["orientation"]["P1"] == (
        "genes x cells (auto: the longer axis taken for genes)"
    )
    stated = mp.io.read_lots(
        {"P1": tmp_path / "P1.csv"}, orientation="cells_x_genes", min_cells_per_lot=0
    )
    assert stated.shape == (40, 20)
    assert stated.uns["read_lots"]["orientation"]["P1"] == "cells x genes (as stated)"
    np.testing.assert_array_equal(stated.X.toarray(), part.X.toarray())


def test_text_matrix_that_is_not_counts_is_an_error_naming_it(tmp_path, lots):
    frame = _dense_frame(lots["BM01"], genes_on_rows=True)
    frame = frame.astype(object)
    frame.iloc[3, 2] = "n/a"
    frame.to_csv(tmp_path / "BM01.csv")
    with pytest.raises(
        ValueError, match=r"could not read lot 'BM01' .*value 'n/a' \(row 'VIM', column"
    ):
        mp.io.read_lots({"BM01": tmp_path / "BM01.csv"})
    (tmp_path / "notes.csv").write_text("lot,comment\nBM01,fine\n")  # a table, not counts
    with pytest.raises(ValueError, match=r"is not in a format read_lots reads"):
        mp.io.read_lots({"x": tmp_path / "notes.csv"})


# --- one file holding many lots ---------------------------------------------------------


def _one_file(lots) -> ad.AnnData:
    """Every lot's cells in one AnnData, barcodes made unique by a lot-specific suffix."""
    parts = []
    for i, (lot, part) in enumerate(lots.items()):
        part = part.copy()
        part.obs_names = [name.replace("-1", f"-{i + 1}") for name in part.obs_names]
        part.obs["donor"] = lot
        parts.append(part)
    return ad.concat(parts, merge="same")


def test_one_h5ad_with_a_lot_column(tmp_path, lots):
    whole = _one_file(lots)
    whole.obs["donor"] = pd.Categorical(whole.obs["donor"], categories=["UC01", *SIZES][:4])
    whole.obs["donor"] = whole.obs["donor"].cat.set_categories(["UC01", "AD01", "BM02", "BM01"])
    whole.write_h5ad(tmp_path / "study.h5ad")
    pooled = mp.io.read_lots(tmp_path / "study.h5ad", lot_key="donor")
    assert list(pooled.obs["donor"].cat.categories) == ["UC01", "AD01", "BM02", "BM01"]
    assert pooled.uns["read_lots"]["lots_from"] == "obs['donor']"
    assert pooled.uns["pool_lots"]["cells_kept"] == {
        k: SIZES[k] for k in pooled.obs["donor"].cat.categories
    }
    for i, (lot, part) in enumerate(lots.items()):
        sub = pooled[(pooled.obs["donor"] == lot).to_numpy()]
        np.testing.assert_array_equal(sub.X.toarray(), part.X.toarray())
        assert sub.obs_names[0] == f"{lot}_{part.obs_names[0].replace('-1', f'-{i + 1}')}"
    with pytest.raises(
        ValueError,
        match=r"is a file, not a folder of lots. It looks like one lot \(h5ad\) without a lot "
        r"column: its obs has no column 'lot'.*barcodes_to_lots=",
    ):
        mp.io.read_lots(tmp_path / "study.h5ad")


def test_one_10x_file_with_a_barcode_to_lot_table(tmp_path, lots):
    whole = _one_file(lots)
    write_h5(tmp_path / "aggr.h5", whole)
    table = whole.obs["donor"].rename("lot")
    pd.DataFrame({"barcode": table.index, "lot": table.to_numpy()}).to_csv(
        tmp_path / "lots.csv", index=False
    )
    from_path = mp.io.read_lots(tmp_path / "aggr.h5", barcodes_to_lots=tmp_path / "lots.csv")
    from_dict = mp.io.read_lots(tmp_path / "aggr.h5", barcodes_to_lots=table.to_dict())
    from_frame = mp.io.read_lots(tmp_path / "aggr.h5", barcodes_to_lots=table.to_frame())
    for pooled in (from_path, from_dict, from_frame):
        assert list(pooled.obs["lot"].cat.categories) == list(SIZES)
        assert pooled.uns["read_lots"]["lots_from"] == "barcodes_to_lots"
        for lot, part in lots.items():
            sub = pooled[(pooled.obs["lot"] == lot).to_numpy()]
            np.testing.assert_array_equal(sub.X.toarray(), part.X.toarray())
        # 10x symbols kept as a column (mitochondrial genes are found there)
        assert list(pooled.var["gene_symbols"]) == list(lots["BM01"].var_names)
    # a 10x matrix folder too; cells without a lot are left out with a warning
    write_mtx(tmp_path / "aggr_mtx", whole)
    partial = table.drop(index=table.index[:5])
    with pytest.warns(UserWarning, match=r"5 of 145 cells of .* have no lot in barcodes_to_lots"):
        pooled = mp.io.read_lots(tmp_path / "aggr_mtx", barcodes_to_lots=partial)
    assert pooled.n_obs == 140 and pooled.uns["read_lots"]["cells_without_lot"] == 5
    with pytest.raises(ValueError, match=r"no barcode of .* is in barcodes_to_lots.*'-1' suffix"):
        mp.io.read_lots(tmp_path / "aggr.h5", barcodes_to_lots={"x": "BM01"})
    with pytest.raises(ValueError, match=r"barcodes_to_lots is for one file holding many lots"):
        write_folder(tmp_path / "lots", lots, "h5")
        mp.io.read_lots(tmp_path / "lots", barcodes_to_lots=table.to_dict())
    conflicting = pd.concat([table, pd.Series({table.index[0]: "BM02"})])
    with pytest.raises(ValueError, match=r"gives barcodes \['AAAC000000-1'\] more than one lot"):
        mp.io.read_lots(tmp_path / "aggr.h5", barcodes_to_lots=conflicting)


def test_10x_lots_keep_their_symbols_in_a_column(tmp_path, lots):
    write_folder(tmp_path / "lots", lots, "mtx")
    pooled = mp.io.read_lots(tmp_path / "lots")
    assert list(pooled.var["gene_symbols"]) == list(lots["BM01"].var_names)
    mp.pp.qc(pooled, thresholds="fixed", min_genes=0, min_cells_per_gene=0)
    assert pooled.uns["qc"]["params"]["symbols_from"] == "var['gene_symbols']"
    assert pooled.var["mt"].sum() == 8


def test_cellranger_h5_in_sample_folders(tmp_path, lots):
    """Cell Ranger's <lot>/outs/filtered_feature_bc_matrix.h5 is one lot named after <lot>."""
    (tmp_path / "lots" / "BM01" / "outs").mkdir(parents=True)
    write_h5(tmp_path / "lots" / "BM01" / "outs" / "filtered_feature_bc_matrix.h5", lots["BM01"])
    write_mtx(tmp_path / "lots" / "BM02" / "outs" / "filtered_feature_bc_matrix", lots["BM02"])
    (tmp_path / "lots" / "AD01").mkdir()
    write_h5(tmp_path / "lots" / "AD01" / "filtered_feature_bc_matrix.h5", lots["AD01"])
    pooled = mp.io.read_lots(tmp_path / "lots")
    assert_lots_equal(pooled, {k: lots[k] for k in ["AD01", "BM01", "BM02"]})
    formats = pooled.uns["read_lots"]["formats"]
    assert formats == {"AD01": "10x_h5", "BM01": "10x_h5", "BM02": "10x_mtx"}


def test_one_cellranger_sample_folder_is_not_a_folder_of_lots(tmp_path, lots):
    (tmp_path / "BM01" / "outs").mkdir(parents=True)
    write_h5(tmp_path / "BM01" / "outs" / "filtered_feature_bc_matrix.h5", lots["BM01"])
    with pytest.raises(
        ValueError, match=r"is a single Cell Ranger sample folder, not a folder of lots"
    ):
        mp.io.read_lots(tmp_path / "BM01")


def test_a_sample_folder_without_matrix_is_not_lot_data(tmp_path, lots):
    write_h5(tmp_path / "BM01.h5", lots["BM01"])
    (tmp_path / "BM02" / "outs").mkdir(parents=True)
    (tmp_path / "BM02" / "outs" / "web_summary.html").write_text("<html></html>")
    with pytest.raises(ValueError, match=r"entries \['BM02'\] .* are not lot data"):
        mp.io.read_lots(tmp_path)
