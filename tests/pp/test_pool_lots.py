"""pp.pool_lots: concatenation, seeded equal-size subsampling, gene joins and validation."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pytest
from scipy import sparse

import mscpotency as mp

SIZES = {"BM01": 150, "BM02": 120, "AD01": 90, "UC01": 60}
N_GENES = 100


@pytest.fixture(scope="module")
def tiny() -> ad.AnnData:
    return mp.datasets.tiny()


@pytest.fixture
def lots(tiny) -> dict[str, ad.AnnData]:
    """Four simulated lots of unequal size, with the same 10x-style barcodes in each."""
    out = {}
    for lot, n in SIZES.items():
        part = tiny[tiny.obs["lot"] == lot][:n, :N_GENES].copy()
        part.uns = {}
        part.obs_names = [f"AAAC{i:05d}-1" for i in range(n)]
        out[lot] = part
    return out


def _cells_of(pooled: ad.AnnData, lot: str) -> list[str]:
    return pooled.obs_names[(pooled.obs["lot"] == lot).to_numpy()].tolist()


def test_pools_every_cell_with_unique_names(lots):
    pooled = mp.pp.pool_lots(lots)
    assert pooled.shape == (sum(SIZES.values()), N_GENES)
    assert pooled.obs_names.is_unique  # every lot has the same barcodes
    assert list(pooled.obs["lot"].cat.categories) == list(SIZES)
    for lot, part in lots.items():
        assert _cells_of(pooled, lot) == [f"{lot}_{bc}" for bc in part.obs_names]
        sub = pooled[(pooled.obs["lot"] == lot).to_numpy()]
        assert (sub.X != part.X).nnz == 0
        assert (sub.layers["counts"] != part.layers["counts"]).nnz == 0
        # per-cell truth travels with its cell
        assert list(sub.obs["true_subpopulation"]) == list(part.obs["true_subpopulation"])
    assert pooled.uns["pool_lots"]["cells_before"] == SIZES
    assert pooled.uns["pool_lots"]["cells_kept"] == SIZES
    assert pooled.uns["pool_lots"]["genes_dropped"] == {}


def test_mapping_and_list_give_the_same_result(lots):
    from_mapping = mp.pp.pool_lots(lots, cells_per_lot=70, random_state=5)
    from_list = mp.pp.pool_lots(list(lots.values()), cells_per_lot=70, random_state=5)
    assert list(from_mapping.obs_names) == list(from_list.obs_names)
    assert (from_mapping.X != from_list.X).nnz == 0
    assert from_mapping.obs["lot"].equals(from_list.obs["lot"])


def test_cells_per_lot_is_seeded(lots):
    a = mp.pp.pool_lots(lots, cells_per_lot=80, random_state=0)
    b = mp.pp.pool_lots(lots, cells_per_lot=80, random_state=0)
    c = mp.pp.pool_lots(lots, cells_per_lot=80, random_state=1)
    assert list(a.obs_names) == list(b.obs_names)
    assert (a.X != b.X).nnz == 0
    for lot in ["BM01", "BM02"]:
        assert _cells_of(a, lot) != _cells_of(c, lot)
    # lots smaller than the target are kept whole, whatever the seed
    for lot in ["UC01"]:
        assert (
            _cells_of(a, lot) == _cells_of(c, lot) == [f"{lot}_{bc}" for bc in lots[lot].obs_names]
        )
    assert a.obs["lot"].value_counts().to_dict() == {"BM01": 80, "BM02": 80, "AD01": 80, "UC01": 60}
    assert a.uns["pool_lots"]["cells_kept"] == {"BM01": 80, "BM02": 80, "AD01": 80, "UC01": 60}
    assert a.uns["pool_lots"]["cells_before"] == SIZES


def test_min_gives_equal_lots_of_real_cells(lots):
    pooled = mp.pp.pool_lots(lots, cells_per_lot="min", random_state=2)
    assert pooled.obs["lot"].value_counts().eq(60).all()
    for lot, part in lots.items():
        names = _cells_of(pooled, lot)
        barcodes = [n.removeprefix(f"{lot}_") for n in names]
        assert len(set(barcodes)) == 60 and set(barcodes) <= set(part.obs_names)
        # subsampled cells keep their counts, in the lot's original order
        assert barcodes == [bc for bc in part.obs_names if bc in set(barcodes)]
        sub = pooled[names]
        assert (sub.X != part[barcodes].X).nnz == 0


def test_subsampling_keeps_the_simulated_composition(tiny):
    """Uniform subsampling: the potency-cell share of each lot stays near its truth."""
    lots = {lot: tiny[tiny.obs["lot"] == lot] for lot in tiny.obs["lot"].cat.categories}
    pooled = mp.pp.pool_lots(lots, cells_per_lot=120, random_state=0)
    full = tiny.obs.groupby("lot", observed=True)["true_potency_cell"].mean()
    kept = pooled.obs.groupby("lot", observed=True)["true_potency_cell"].mean()
    # hypergeometric sd of a 120-of-150 share is <= 0.02; 0.1 is > 4 sd. The shares span
    # 0.03-0.22 across lots, so the expected correlation is ~0.97 (0.9 is ~3 sd below it)
    assert np.abs(kept - full.loc[kept.index]).max() < 0.1
    assert np.corrcoef(kept, full.loc[kept.index])[0, 1] > 0.9


def test_lot_subsample_does_not_depend_on_other_lots(lots):
    together = mp.pp.pool_lots(lots, cells_per_lot=50, random_state=4)
    alone = mp.pp.pool_lots({"BM02": lots["BM02"]}, cells_per_lot=50, random_state=4)
    reordered = mp.pp.pool_lots(
        {k: lots[k] for k in reversed(list(lots))}, cells_per_lot=50, random_state=4
    )
    assert _cells_of(together, "BM02") == _cells_of(alone, "BM02") == _cells_of(reordered, "BM02")


def test_inner_join_drops_and_reports_outer_fills_zeros(lots):
    a = lots["BM01"]
    b = lots["BM02"][:, 10:].copy()
    c = lots["AD01"][:, :90].copy()
    c.X = c.X.toarray()  # dense X must get zeros too, not NaN
    del c.layers["counts"]
    genes = a.var_names
    inner = mp.pp.pool_lots({"A": a, "B": b, "C": c})
    assert list(inner.var_names) == list(genes[10:90])
    assert inner.uns["pool_lots"]["genes_dropped"] == {
        "A": sorted([*genes[:10], *genes[90:]]),
        "B": sorted(genes[90:]),
        "C": sorted(genes[:10]),
    }
    assert "counts" not in inner.layers  # a layer missing from one lot is not pooled
    outer = mp.pp.pool_lots({"A": a, "B": b, "C": c}, join="outer")
    assert set(outer.var_names) == set(genes)
    assert outer.uns["pool_lots"]["genes_dropped"] == {}
    X = outer.X.toarray() if sparse.issparse(outer.X) else np.asarray(outer.X)
    assert not np.isnan(X).any()
    in_b = (outer.obs["lot"] == "B").to_numpy()
    in_c = (outer.obs["lot"] == "C").to_numpy()
    assert (X[np.ix_(in_b, outer.var_names.get_indexer(genes[:10]))] == 0).all()
    assert (X[np.ix_(in_c, outer.var_names.get_indexer(genes[90:]))] == 0).all()
    np.testing.assert_array_equal(X[np.ix_(in_c, outer.var_names.get_indexer(genes[:90]))], c.X)


def test_provenance_entry(lots):
    pooled = mp.pp.pool_lots(lots, cells_per_lot="min", random_state=7)
    log = mp.get.provenance(pooled)
    assert log["function"].tolist() == ["pp.pool_lots"]
    assert log["random_state"].iloc[0] == 7
    assert log["params"].iloc[0]["cells_per_lot"] == "min"
    # each input lot is fingerprinted
    assert set(log["params"].iloc[0]["lots"]) == set(SIZES)


# --- errors -----------------------------------------------------------------------------


def test_empty_lots(lots):
    with pytest.raises(ValueError, match=r"lots \['B'\] have no cells"):
        mp.pp.pool_lots({"A": lots["BM01"], "B": lots["BM02"][:0]})
    with pytest.raises(ValueError, match=r"lot #1 has no cells"):
        mp.pp.pool_lots([lots["BM01"], lots["BM02"][:0]])


def test_no_lots():
    with pytest.raises(ValueError, match=r"no lots given"):
        mp.pp.pool_lots({})
    with pytest.raises(ValueError, match=r"no lots given"):
        mp.pp.pool_lots([])


def test_wrong_types(lots, tmp_path):
    with pytest.raises(TypeError, match=r"got one AnnData. Split it by lot first"):
        mp.pp.pool_lots(lots["BM01"])
    with pytest.raises(TypeError, match=r"got the path .* read files with `io.read_lots`"):
        mp.pp.pool_lots(str(tmp_path))
    with pytest.raises(TypeError, match=r"got the path .* read files with `io.read_lots`"):
        mp.pp.pool_lots(tmp_path)
    with pytest.raises(TypeError, match=r"lots must be a mapping .* got a int"):
        mp.pp.pool_lots(3)
    with pytest.raises(TypeError, match=r"lot 'B' is a DataFrame, not an AnnData"):
        mp.pp.pool_lots({"A": lots["BM01"], "B": lots["BM02"].to_df()})
    with pytest.raises(TypeError, match=r"lot #1 is a str, not an AnnData"):
        mp.pp.pool_lots([lots["BM01"], "BM02.h5ad"])


@pytest.mark.parametrize("bad", [0, -5, 2.5, "max", True, "10"])
def test_bad_cells_per_lot(lots, bad):
    with pytest.raises(
        ValueError, match=r"cells_per_lot must be None, 'min' or a positive integer, got"
    ):
        mp.pp.pool_lots(lots, cells_per_lot=bad)


def test_bad_join_and_seed(lots):
    with pytest.raises(ValueError, match=r"join must be 'inner' or 'outer', got 'left'"):
        mp.pp.pool_lots(lots, join="left")
    with pytest.raises(ValueError, match=r"random_state must be a non-negative integer, got -1"):
        mp.pp.pool_lots(lots, cells_per_lot=10, random_state=-1)


def test_list_input_needs_one_lot_name_each(lots):
    unnamed = lots["BM01"].copy()
    del unnamed.obs["lot"]
    with pytest.raises(
        ValueError, match=r"lot #0 has no single value in obs\['lot'\]; pass a mapping"
    ):
        mp.pp.pool_lots([unnamed, lots["BM02"]])
    mixed = ad.concat([lots["BM01"], lots["BM02"]], index_unique="-")
    with pytest.raises(ValueError, match=r"lot #0 has no single value in obs\['lot'\]"):
        mp.pp.pool_lots([mixed])
    with pytest.raises(ValueError, match=r"lot 'BM01' is given twice"):
        mp.pp.pool_lots([lots["BM01"], lots["BM01"]])
    with pytest.raises(ValueError, match=r"lot names .* are not unique once written as text"):
        mp.pp.pool_lots({1: lots["BM01"], "1": lots["BM02"]})


def test_duplicate_names_within_a_lot(lots):
    part = lots["BM01"].copy()
    part.obs_names = ["X"] * part.n_obs
    with pytest.raises(
        ValueError, match=r"lot 'BM01' has duplicate cell barcodes; call .obs_names_make_unique"
    ):
        mp.pp.pool_lots({"BM01": part})
    part = lots["BM01"].copy()
    part.var_names = ["G"] * part.n_vars
    with pytest.raises(
        ValueError, match=r"lot 'BM01' has duplicate gene names; call .var_names_make_unique"
    ):
        mp.pp.pool_lots({"BM01": part})


def test_no_shared_genes_and_name_collisions(lots):
    other = lots["BM02"].copy()
    other.var_names = [f"ENSG{i:011d}" for i in range(other.n_vars)]
    with pytest.raises(ValueError, match=r"the lots share no gene names"):
        mp.pp.pool_lots({"A": lots["BM01"], "B": other})
    a = lots["BM01"][:2].copy()
    a.obs_names = ["1_x", "y"]
    b = lots["BM02"][:2].copy()
    b.obs_names = ["x", "z"]
    with pytest.raises(
        ValueError, match=r"pooled cell names \{lot\}_\{barcode\} collide \(e.g. \['A_1_x'\]\)"
    ):
        mp.pp.pool_lots({"A": a, "A_1": b})


# --- what subsampling removes, and lots too small to pool -------------------------------


@pytest.fixture
def with_tiny_lot(lots) -> dict[str, ad.AnnData]:
    """Three lots of 150/120/90 cells and one of 3 cells (the issue's case: 363 cells)."""
    out = {k: lots[k] for k in ["BM01", "BM02", "AD01"]}
    out["TINY"] = lots["UC01"][:3].copy()
    return out


def test_min_refuses_to_subsample_every_lot_to_a_tiny_lot(with_tiny_lot):
    # before: 363 -> 12 cells (97% removed) without a word
    with pytest.raises(
        ValueError,
        match=(
            r"cells_per_lot='min' would subsample every lot to 3 cells, the size of lots "
            r"\{'TINY': 3\}, below min_cells_per_lot=20: 351 of 363 cells \(97%\) would be "
            r"removed\. Leave the small lots out \(small_lots='drop'\).*min_cells_per_lot=3"
        ),
    ):
        mp.pp.pool_lots(with_tiny_lot, cells_per_lot="min")


def test_min_down_to_a_tiny_lot_when_asked_reports_what_it_removed(with_tiny_lot, caplog):
    with caplog.at_level("WARNING", logger="mscpotency"):
        pooled = mp.pp.pool_lots(with_tiny_lot, cells_per_lot="min", min_cells_per_lot=3)
    assert pooled.n_obs == 12
    report = pooled.uns["pool_lots"]
    assert report["cells_removed"] == {"BM01": 147, "BM02": 117, "AD01": 87, "TINY": 0}
    assert report["lots_dropped"] == {}
    assert report["params"]["min_cells_per_lot"] == 3
    assert "subsampling to 3 cells per lot removed 351 of 363 cells (97%)" in caplog.text
    assert "'BM01': 147" in caplog.text


def test_small_lots_drop_leaves_the_tiny_lot_out_and_reports_it(with_tiny_lot):
    pooled = mp.pp.pool_lots(with_tiny_lot, cells_per_lot="min", small_lots="drop")
    assert list(pooled.obs["lot"].cat.categories) == ["BM01", "BM02", "AD01"]
    assert pooled.obs["lot"].value_counts().eq(90).all()
    report = pooled.uns["pool_lots"]
    assert report["lots_dropped"] == {"TINY": 3}
    assert report["cells_before"] == {"BM01": 150, "BM02": 120, "AD01": 90, "TINY": 3}
    assert report["cells_kept"] == {"BM01": 90, "BM02": 90, "AD01": 90, "TINY": 0}
    assert report["cells_removed"] == {"BM01": 60, "BM02": 30, "AD01": 0, "TINY": 3}
    assert sum(report["cells_kept"].values()) == pooled.n_obs
    # without subsampling too
    kept = mp.pp.pool_lots(with_tiny_lot, small_lots="drop")
    assert kept.n_obs == 360 and kept.uns["pool_lots"]["lots_dropped"] == {"TINY": 3}


def test_a_small_lot_kept_whole_warns_how_it_enters_the_statistics(with_tiny_lot):
    with pytest.warns(
        UserWarning,
        match=(
            r"lots \{'TINY': 3\} have fewer than min_cells_per_lot=20 cells and are kept "
            r"whole\. A small lot is kept as a full lot.*same weight as the largest.*"
            r"small_lots='drop'"
        ),
    ):
        pooled = mp.pp.pool_lots(with_tiny_lot)
    assert pooled.n_obs == 363
    with pytest.raises(ValueError, match=r"lots \{'TINY': 3\} have fewer than min_cells_per_lot"):
        mp.pp.pool_lots(with_tiny_lot, small_lots="error")
    # a lower minimum accepts it silently
    assert mp.pp.pool_lots(with_tiny_lot, min_cells_per_lot=3).n_obs == 363


def test_integer_subsampling_reports_cells_removed_per_lot(lots, caplog):
    with caplog.at_level("WARNING", logger="mscpotency"):
        pooled = mp.pp.pool_lots(lots, cells_per_lot=80)
    report = pooled.uns["pool_lots"]
    assert report["cells_removed"] == {"BM01": 70, "BM02": 40, "AD01": 10, "UC01": 0}
    assert all(
        report["cells_before"][k] - report["cells_kept"][k] == v
        for k, v in report["cells_removed"].items()
    )
    assert "removed 120 of 420 cells (29%)" in caplog.text
    # nothing removed: nothing said
    caplog.clear()
    with caplog.at_level("WARNING", logger="mscpotency"):
        full = mp.pp.pool_lots(lots)
    assert full.uns["pool_lots"]["cells_removed"] == dict.fromkeys(SIZES, 0)
    assert "subsampling" not in caplog.text


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"min_cells_per_lot": -1}, r"min_cells_per_lot must be a non-negative integer, got -1"),
        ({"min_cells_per_lot": 2.5}, r"min_cells_per_lot must be a non-negative integer"),
        ({"small_lots": "skip"}, r"small_lots must be one of 'warn', 'drop', 'error', got 'skip'"),
    ],
)
def test_bad_small_lot_options(lots, options, match):
    with pytest.raises((TypeError, ValueError), match=match):
        mp.pp.pool_lots(lots, **options)


def test_every_lot_too_small_to_drop(lots):
    with pytest.raises(ValueError, match=r"every lot has fewer than min_cells_per_lot=1000"):
        mp.pp.pool_lots(lots, min_cells_per_lot=1000, small_lots="drop")


def test_duplicate_gene_names_are_named(lots):
    part = lots["BM01"].copy()
    names = part.var_names.tolist()
    names[4] = names[2]
    names[9] = names[7]
    part.var_names = names
    with pytest.raises(
        ValueError, match=rf"Repeated \(2\): \['{names[2]}', '{names[7]}'\].*sum their counts"
    ):
        mp.pp.pool_lots({"BM01": part, "BM02": lots["BM02"]})


def test_outer_join_reports_the_genes_added_per_lot_and_keeps_symbols(lots, caplog):
    ids = {g: f"ENSG{i:011d}" for i, g in enumerate(lots["BM01"].var_names)}
    parts = {}
    for name, genes in {"A": slice(None), "B": slice(10, None), "C": slice(None, 90)}.items():
        part = lots[{"A": "BM01", "B": "BM02", "C": "AD01"}[name]][:, genes].copy()
        part.var["gene_symbols"] = part.var_names.to_numpy()  # symbols in a column
        part.var_names = [ids[g] for g in part.var_names]  # Ensembl ids as names
        parts[name] = part
    genes = [ids[g] for g in lots["BM01"].var_names]
    with caplog.at_level("WARNING", logger="mscpotency"):
        outer = mp.pp.pool_lots(parts, join="outer")
    added = outer.uns["pool_lots"]["genes_added"]
    assert added == {"B": sorted(genes[:10]), "C": sorted(genes[90:])}
    assert "join='outer' added genes" in caplog.text and "{'B': 10, 'C': 10}" in caplog.text
    # the symbol column survives the outer join (anndata's merge='same' would drop it)
    symbols = dict(zip(genes, lots["BM01"].var_names, strict=True))
    assert outer.var["gene_symbols"].to_dict() == {g: symbols[g] for g in outer.var_names}
    inner = mp.pp.pool_lots(parts)
    assert inner.uns["pool_lots"]["genes_added"] == {}
    assert inner.var["gene_symbols"].to_dict() == {g: symbols[g] for g in inner.var_names}
    caplog.clear()
    with caplog.at_level("WARNING", logger="mscpotency"):
        mp.pp.pool_lots(parts)
    assert "per lot: {'A': 20, 'B': 10, 'C': 10}" in caplog.text
    assert "pass join='outer'" in caplog.text


def test_a_gene_annotation_the_lots_disagree_on_is_kept_and_said(lots):
    """Symbols that differ in some genes are kept (the first lot's), not dropped for every
    gene (dropping them switched pp.qc's mitochondrial filter off without a word); a
    per-lot statistic that differs is left out."""
    a, b = lots["BM01"].copy(), lots["BM02"][:, 10:].copy()
    a.var["gene_symbols"] = a.var_names.to_numpy()
    b.var["gene_symbols"] = b.var_names.to_numpy()
    b.var.loc[b.var_names[0], "gene_symbols"] = "RENAMED"
    a.var["mean_counts"] = 1.0
    b.var["mean_counts"] = 2.0
    with pytest.warns(UserWarning, match=r"disagree on var\['gene_symbols'\] for 1 genes") as got:
        outer = mp.pp.pool_lots({"A": a, "B": b}, join="outer")
    assert not any("Cell Ranger" in str(w.message) for w in got)  # not an id column
    assert outer.var.loc[a.var_names, "gene_symbols"].tolist() == a.var_names.tolist()
    gene = b.var_names[0]
    assert outer.uns["pool_lots"]["var_disagreements"] == {
        "gene_symbols": {gene: {"A": gene, "B": "RENAMED"}}
    }
    assert "mean_counts" not in outer.var.columns


def test_one_name_for_different_gene_ids_is_a_warning(lots):
    """The same name standing for other ids in another lot pools different genes' counts."""
    a, b = lots["BM01"].copy(), lots["BM02"].copy()
    a.var["gene_ids"] = [f"ENSG{i:011d}.1" for i in range(a.n_vars)]
    b.var["gene_ids"] = [f"ENSG{i:011d}.2" for i in range(b.n_vars)]  # versions only: agree
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same = mp.pp.pool_lots({"A": a, "B": b})
    assert same.uns["pool_lots"]["var_disagreements"] == {}
    b.var.loc[b.var_names[3], "gene_ids"] = "ENSG00000285053"
    with pytest.warns(UserWarning, match=r"var\['gene_ids'\] for 1 genes.*different genes' counts"):
        pooled = mp.pp.pool_lots({"A": a, "B": b})
    assert pooled.var["gene_ids"].iloc[3] == "ENSG00000000003.1"
    assert pooled.uns["pool_lots"]["var_disagreements"]["gene_ids"] == {
        b.var_names[3]: {"A": "ENSG00000000003.1", "B": "ENSG00000285053"}
    }
