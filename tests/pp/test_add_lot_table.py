"""pp.add_lot_table: a lot-level table joined into obs, every lot matched both ways."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import mscpotency as mp
from mscpotency._provenance import fingerprint

LOT_COLUMNS = ["vegf", "tissue", "set", "true_potency_fraction"]


@pytest.fixture(scope="module")
def tiny() -> ad.AnnData:
    return mp.datasets.tiny()


@pytest.fixture(scope="module")
def truth(tiny) -> pd.DataFrame:
    """The simulator's lot-level columns, one row per lot."""
    return mp.get.lot_table(tiny, columns=LOT_COLUMNS)


@pytest.fixture
def bare(tiny) -> ad.AnnData:
    """The simulated cells without their lot-level columns."""
    adata = tiny.copy()
    adata.obs = adata.obs.drop(columns=LOT_COLUMNS)
    return adata


def test_rebuilds_the_lot_columns(bare, tiny, truth):
    table = truth.assign(passage=np.arange(len(truth)) + 3)
    assert mp.pp.add_lot_table(bare, table) is None
    np.testing.assert_array_equal(bare.obs["vegf"].to_numpy(), tiny.obs["vegf"].to_numpy())
    np.testing.assert_array_equal(
        bare.obs["true_potency_fraction"].to_numpy(), tiny.obs["true_potency_fraction"].to_numpy()
    )
    assert (bare.obs["tissue"].astype(str) == tiny.obs["tissue"].astype(str)).all()
    # constant within lots, and the lot table read back equals the one joined
    back = mp.get.lot_table(bare, columns=["vegf", "passage"])
    pd.testing.assert_series_equal(back["vegf"], table["vegf"].loc[back.index], check_names=False)
    assert back["passage"].to_dict() == table["passage"].to_dict()
    # numbers keep their dtype; text becomes categorical
    assert bare.obs["passage"].dtype == table["passage"].dtype
    assert isinstance(bare.obs["set"].dtype, pd.CategoricalDtype)


def test_table_is_not_modified(bare, truth):
    table = truth.copy()
    table.index = pd.Index(table.index.astype(object), name="lot")
    before = table.copy()
    mp.pp.add_lot_table(bare, table)
    pd.testing.assert_frame_equal(table, before)


def test_lot_key_column_and_plain_index(bare, truth):
    flat = truth.reset_index()  # 0..n-1 index with a 'lot' column
    mp.pp.add_lot_table(bare, flat)
    assert "vegf" in bare.obs and "lot" in bare.obs
    renamed = truth.reset_index().rename(columns={"lot": "donor"})
    mp.pp.add_lot_table(bare, renamed.set_index("donor"), columns=["vegf"])
    assert "donor" not in bare.obs


def test_columns_subset(bare, truth):
    mp.pp.add_lot_table(bare, truth, columns=["vegf"])
    assert "vegf" in bare.obs and "tissue" not in bare.obs


def test_copy_leaves_the_input_untouched(bare, truth):
    before = bare.copy()
    out = mp.pp.add_lot_table(bare, truth, copy=True)
    assert isinstance(out, ad.AnnData)
    pd.testing.assert_frame_equal(bare.obs, before.obs)
    assert mp.get.provenance(bare).empty
    inplace = before.copy()
    mp.pp.add_lot_table(inplace, truth)
    pd.testing.assert_frame_equal(out.obs, inplace.obs)


def test_provenance_gains_an_entry(bare, truth):
    mp.pp.add_lot_table(bare, truth, columns=["vegf"])
    mp.pp.add_lot_table(bare, truth, columns=["tissue"])
    log = mp.get.provenance(bare)
    assert log["function"].tolist() == ["pp.add_lot_table", "pp.add_lot_table"]
    assert log["params"].iloc[0]["columns"] == ["vegf"]
    # a small lot table is recorded whole (column -> lot -> value), so the call can be replayed
    recorded = log["params"].iloc[0]["lot_table"]
    assert sorted(recorded) == sorted(LOT_COLUMNS)
    assert recorded["vegf"] == pytest.approx({str(k): v for k, v in truth["vegf"].items()})
    # the fingerprint covers the matrix and names, which joining a table leaves alone
    assert log["input_fingerprint"].tolist() == [fingerprint(bare)] * 2


def test_subset_of_lots_after_subsetting_cells(tiny, truth):
    """Cells of some lots only: the table must be subset too (categories of absent lots do not count)."""
    some = tiny[tiny.obs["set"] == "BM-train"].copy()
    with pytest.raises(ValueError, match=r"lots \[.*'AD01'.*\] of the lot table have no cells"):
        mp.pp.add_lot_table(some, truth)
    train = truth[truth["set"] == "BM-train"]
    mp.pp.add_lot_table(some, train[["vegf"]].rename(columns={"vegf": "potency"}))
    np.testing.assert_array_equal(some.obs["potency"].to_numpy(), some.obs["vegf"].to_numpy())


# --- errors -----------------------------------------------------------------------------


def test_table_lot_without_cells(bare, truth):
    extra = pd.concat([truth, truth.iloc[[0]].rename(index={truth.index[0]: "BM99"})])
    with pytest.raises(
        ValueError, match=r"lots \['BM99'\] of the lot table have no cells in obs\['lot'\]"
    ):
        mp.pp.add_lot_table(bare, extra)
    assert "vegf" not in bare.obs  # nothing written on error


def test_lot_with_cells_missing_from_table(bare, truth):
    with pytest.raises(ValueError, match=r"lots \['UC02'\] have cells but no row in the lot table"):
        mp.pp.add_lot_table(bare, truth.drop(index="UC02"))
    renamed = truth.rename(index={"BM03": "BM3"})
    with pytest.raises(
        ValueError,
        match=r"lots \['BM3'\] of the lot table have no cells.*lots \['BM03'\] have cells but no row",
    ):
        mp.pp.add_lot_table(bare, renamed)


def test_duplicate_and_missing_lot_names(bare, truth):
    with pytest.raises(ValueError, match=r"names lots \['BM02'\] more than once"):
        mp.pp.add_lot_table(bare, pd.concat([truth, truth.loc[["BM02"]]]))
    flat = truth.reset_index()
    flat.loc[2, "lot"] = np.nan
    with pytest.raises(ValueError, match=r"1 rows of the lot table have no lot name"):
        mp.pp.add_lot_table(bare, flat)


def test_bad_columns(bare, truth):
    with pytest.raises(KeyError, match=r"columns \['potency'\] are not in the lot table"):
        mp.pp.add_lot_table(bare, truth, columns=["potency"])
    with pytest.raises(
        KeyError, match=r"the lot table has no column 'donor'; its columns are \['vegf'"
    ):
        mp.pp.add_lot_table(bare, truth.reset_index(drop=True), lot_key="donor")
    clash = truth.assign(lot="x")
    with pytest.raises(ValueError, match=r"has a column 'lot', which would overwrite obs\['lot'\]"):
        mp.pp.add_lot_table(bare, clash)


def test_bad_inputs(bare, truth):
    with pytest.raises(TypeError, match=r"table must be a pandas DataFrame .* got a dict"):
        mp.pp.add_lot_table(bare, truth["vegf"].to_dict())
    with pytest.raises(KeyError, match=r"adata.obs has no column 'donor'"):
        mp.pp.add_lot_table(bare, truth, lot_key="donor")
    bare.obs["lot"] = bare.obs["lot"].astype(object)
    bare.obs.iloc[0, bare.obs.columns.get_loc("lot")] = np.nan
    with pytest.raises(ValueError, match=r"1 cells have no lot in obs\['lot'\]"):
        mp.pp.add_lot_table(bare, truth)


# --- negative assay values ----------------------------------------------------------------


def test_negative_potency_warns_naming_lots_and_is_still_joined(bare, truth):
    table = truth.copy()
    table.loc[table.index[:2], "vegf"] = -table["vegf"].iloc[:2]
    # before: joined silently
    with pytest.warns(
        UserWarning,
        match=(
            rf"add_lot_table: negative values in 'vegf': lots \['{table.index[0]}', "
            rf"'{table.index[1]}'\]\. Most assays .* non-negative.*allow_negative=\['vegf'\]"
        ),
    ):
        mp.pp.add_lot_table(bare, table)
    back = mp.get.lot_table(bare, columns=["vegf"])["vegf"]
    np.testing.assert_array_equal(back.to_numpy(), table["vegf"].loc[back.index].to_numpy())


def test_allow_negative_and_the_readers_decision(bare, truth, tmp_path):
    table = truth.assign(delta=np.linspace(-1, 1, len(truth)))
    mp.pp.add_lot_table(bare.copy(), table, allow_negative=["delta"])  # no warning
    mp.pp.add_lot_table(bare.copy(), table, allow_negative=True)
    mp.pp.add_lot_table(bare.copy(), table, columns=["vegf", "tissue"])  # delta not joined
    with pytest.warns(UserWarning, match=r"'delta': lots"):
        mp.pp.add_lot_table(bare.copy(), table, allow_negative=False)
    # what io.read_lot_table was told travels with its table
    table.reset_index().to_csv(tmp_path / "lots.csv", index=False)
    read = mp.io.read_lot_table(tmp_path / "lots.csv", allow_negative="delta")
    mp.pp.add_lot_table(bare.copy(), read)
    mp.pp.add_lot_table(bare.copy(), read[["vegf", "delta"]])
    with pytest.warns(UserWarning, match=r"'delta': lots"):
        mp.pp.add_lot_table(bare.copy(), read, allow_negative=False)
    with pytest.raises(KeyError, match=r"allow_negative names columns \['nope'\]"):
        mp.pp.add_lot_table(bare.copy(), table, allow_negative=["nope"])


# --- a table of every lot of the study; existing columns ---------------------------------


def test_a_table_of_more_lots_is_joined_when_asked_and_the_others_reported(tiny, truth, caplog):
    some = tiny[tiny.obs["set"] == "BM-train"].copy()
    some.obs = some.obs.drop(columns=LOT_COLUMNS)
    with pytest.raises(ValueError, match=r"have no cells in obs\['lot'\].*extra_lots='ignore'"):
        mp.pp.add_lot_table(some, truth)
    assert "vegf" not in some.obs
    with caplog.at_level("WARNING", logger="mscpotency"):
        mp.pp.add_lot_table(some, truth, extra_lots="ignore")
    in_train = tiny.obs["set"] == "BM-train"
    np.testing.assert_array_equal(some.obs["vegf"], tiny.obs["vegf"][in_train])
    unmatched = sorted(set(truth.index) - set(some.obs["lot"]))
    assert f"lots {unmatched} of the lot table have no cells" in caplog.text
    # only the lots with cells become categories of a text column
    assert set(some.obs["set"].cat.categories) == {"BM-train"}
    # a lot with cells but no row is still an error
    with pytest.raises(ValueError, match=r"lots \['BM01'\] have cells but no row"):
        mp.pp.add_lot_table(some.copy(), truth.drop(index="BM01"), extra_lots="ignore")


def test_an_existing_column_is_not_overwritten_without_saying_so(tiny, truth):
    adata = tiny.copy()
    changed = truth.assign(vegf=truth["vegf"] + 1)
    with pytest.raises(
        ValueError, match=r"obs already has columns \['vegf'\] with other values.*overwrite=True"
    ):
        mp.pp.add_lot_table(adata, changed)
    np.testing.assert_array_equal(adata.obs["vegf"], tiny.obs["vegf"])  # nothing written
    mp.pp.add_lot_table(adata, truth)  # the same values: nothing is overwritten
    mp.pp.add_lot_table(adata, changed, overwrite=True)
    np.testing.assert_array_equal(adata.obs["vegf"], tiny.obs["vegf"] + 1)
    mp.pp.add_lot_table(adata, changed, columns=["tissue"])  # another column only
