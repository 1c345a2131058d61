"""io.read_lot_table on CSV, TSV/TXT and Excel files written here."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import mscpotency as mp

ROWS = [
    # lot, vegf, passage, tissue, note (mixed text and numbers stays text)
    ("007", "1.25", "4", "BM", "ok"),
    ("BM02", "2.5", "5", "BM", "3"),
    ("AD01", "", "6", "AD", "repeat"),
]


def _frame() -> pd.DataFrame:
    return pd.DataFrame(ROWS, columns=["lot", "vegf", "passage", "tissue", "note"])


def _write(path, frame: pd.DataFrame) -> None:
    if path.suffix == ".xlsx":
        with pd.ExcelWriter(path, engine="openpyxl") as writer:
            frame.to_excel(writer, sheet_name="other", index=False)
            frame.to_excel(writer, sheet_name="lots", index=False)
    else:
        frame.to_csv(path, sep="," if path.suffix == ".csv" else "\t", index=False)


@pytest.mark.parametrize("name", ["lots.csv", "lots.tsv", "lots.txt", "lots.tab", "lots.xlsx"])
def test_formats_read_the_same_table(tmp_path, name):
    _write(tmp_path / name, _frame())
    table = mp.io.read_lot_table(tmp_path / name)
    assert table.index.tolist() == ["007", "BM02", "AD01"]  # leading zeros kept, text index
    assert table.index.name == "lot"
    assert table.columns.tolist() == ["vegf", "passage", "tissue", "note"]
    assert table["vegf"].dtype == np.float64
    np.testing.assert_array_equal(table["vegf"].to_numpy(), [1.25, 2.5, np.nan])
    assert table["passage"].dtype == np.int64
    assert table["passage"].tolist() == [4, 5, 6]
    assert table["tissue"].tolist() == ["BM", "BM", "AD"]
    assert table["note"].tolist() == ["ok", "3", "repeat"]


def test_excel_sheet_by_name_and_position(tmp_path):
    other = _frame().assign(vegf=["9", "9", "9"])
    with pd.ExcelWriter(tmp_path / "lots.xlsx", engine="openpyxl") as writer:
        other.to_excel(writer, sheet_name="old", index=False)
        _frame().to_excel(writer, sheet_name="lots", index=False)
    assert mp.io.read_lot_table(tmp_path / "lots.xlsx")["vegf"].tolist() == [9, 9, 9]
    assert mp.io.read_lot_table(tmp_path / "lots.xlsx", sheet_name=1)["vegf"].iloc[0] == 1.25
    assert mp.io.read_lot_table(tmp_path / "lots.xlsx", sheet_name="lots")["vegf"].iloc[1] == 2.5
    with pytest.raises(
        ValueError, match=r"has no sheet 'potency'; its sheets are \['old', 'lots'\]"
    ):
        mp.io.read_lot_table(tmp_path / "lots.xlsx", sheet_name="potency")


def test_spreadsheet_debris_is_cleaned(tmp_path):
    text = " lot , vegf ,donor,,\n BM01 , 1.5, D1,,\nBM02,2, D2,,\n,,,,\n"
    (tmp_path / "lots.csv").write_text(text)
    table = mp.io.read_lot_table(tmp_path / "lots.csv")
    assert table.index.tolist() == ["BM01", "BM02"]
    assert table.columns.tolist() == ["vegf", "donor"]
    assert table["vegf"].tolist() == [1.5, 2.0]
    assert table["donor"].tolist() == ["D1", "D2"]


def test_other_lot_key(tmp_path):
    _write(tmp_path / "lots.csv", _frame().rename(columns={"lot": "Donor line"}))
    table = mp.io.read_lot_table(tmp_path / "lots.csv", lot_key="Donor line")
    assert table.index.name == "Donor line"
    assert table.index.tolist() == ["007", "BM02", "AD01"]


def test_round_trip_recovers_the_simulated_potency(tmp_path):
    """The lot table of the simulator, written and read back, rebuilds obs['vegf'] exactly."""
    adata = mp.datasets.tiny()
    truth = mp.get.lot_table(adata, columns=["vegf", "tissue", "set"])
    truth.reset_index().to_csv(tmp_path / "lots.csv", index=False)
    table = mp.io.read_lot_table(tmp_path / "lots.csv")
    expected = adata.obs[["vegf", "tissue", "set"]].copy()
    stripped = adata.copy()
    stripped.obs = stripped.obs.drop(columns=["vegf", "tissue", "set"])
    mp.pp.add_lot_table(stripped, table)
    np.testing.assert_allclose(
        stripped.obs["vegf"].to_numpy(), expected["vegf"].to_numpy(), rtol=1e-12
    )
    assert (stripped.obs["tissue"].astype(str) == expected["tissue"].astype(str)).all()
    assert (stripped.obs["set"].astype(str) == expected["set"].astype(str)).all()


# --- errors -----------------------------------------------------------------------------


def test_missing_file_folder_and_unknown_format(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"lot table .*nowhere.csv' does not exist"):
        mp.io.read_lot_table(tmp_path / "nowhere.csv")
    with pytest.raises(ValueError, match=r"is a folder; pass the table file"):
        mp.io.read_lot_table(tmp_path)
    (tmp_path / "lots.json").write_text("{}")
    with pytest.raises(
        ValueError,
        match=r"unknown format '.json'. Accepted: .csv, .tsv/.txt/.tab \(tab-separated\), .xlsx",
    ):
        mp.io.read_lot_table(tmp_path / "lots.json")


def test_missing_lot_key_column_lists_columns(tmp_path):
    _write(tmp_path / "lots.csv", _frame().rename(columns={"lot": "Lot"}))
    with pytest.raises(
        KeyError,
        match=r"has no column 'lot'; its columns are \['Lot', 'vegf', 'passage', 'tissue', 'note'\]. Did you mean lot_key='Lot'",
    ):
        mp.io.read_lot_table(tmp_path / "lots.csv")
    with pytest.raises(KeyError, match=r"has no column 'donor'.*Pass lot_key="):
        mp.io.read_lot_table(tmp_path / "lots.csv", lot_key="donor")


def test_duplicate_lots(tmp_path):
    frame = pd.concat([_frame(), _frame().iloc[[1]].assign(lot=" BM02 ")])
    _write(tmp_path / "lots.tsv", frame)
    with pytest.raises(
        ValueError, match=r"names lots \['BM02'\] more than once; keep one row per lot"
    ):
        mp.io.read_lot_table(tmp_path / "lots.tsv")


def test_empty_lot_names(tmp_path):
    (tmp_path / "lots.csv").write_text("lot,vegf\nBM01,1\n,2\n  ,3\nBM04,4\n")
    with pytest.raises(ValueError, match=r"rows without a lot name in 'lot' \(lines \[3, 4\]\)"):
        mp.io.read_lot_table(tmp_path / "lots.csv")


def test_empty_tables(tmp_path):
    (tmp_path / "header.csv").write_text("lot,vegf\n")
    with pytest.raises(ValueError, match=r"has no rows; it needs a header and one row per lot"):
        mp.io.read_lot_table(tmp_path / "header.csv")
    (tmp_path / "blank.tsv").write_text("")
    with pytest.raises(ValueError, match=r"is empty; it needs a header and one row per lot"):
        mp.io.read_lot_table(tmp_path / "blank.tsv")
    pd.DataFrame({"lot": [], "vegf": []}).to_excel(tmp_path / "empty.xlsx", index=False)
    with pytest.raises(ValueError, match=r"has no rows"):
        mp.io.read_lot_table(tmp_path / "empty.xlsx")


# --- negative assay values; files that cannot be parsed ---------------------------------


def test_negative_values_warn_naming_column_and_lots(tmp_path):
    frame = _frame().assign(vegf=["1.25", "-2.5", "-999"], delta=["-1", "0.5", "2"])
    _write(tmp_path / "lots.csv", frame)
    # before: read silently
    with pytest.warns(
        UserWarning,
        match=(
            r"negative values in 'vegf': lots \['BM02', 'AD01'\]; 'delta': lots \['007'\]\. "
            r"Most assays .* are non-negative.*allow_negative=\['vegf', 'delta'\]"
        ),
    ):
        table = mp.io.read_lot_table(tmp_path / "lots.csv")
    assert table["vegf"].tolist() == [1.25, -2.5, -999.0]  # read as given
    assert table.attrs["allow_negative"] == []


def test_allow_negative_names_the_columns_that_may_be(tmp_path):
    frame = _frame().assign(delta=["-1", "0.5", "2"])
    _write(tmp_path / "lots.csv", frame)
    table = mp.io.read_lot_table(tmp_path / "lots.csv", allow_negative=["delta"])
    assert table["delta"].tolist() == [-1.0, 0.5, 2.0]
    assert table.attrs["allow_negative"] == ["delta"]
    assert mp.io.read_lot_table(tmp_path / "lots.csv", allow_negative=True).attrs[
        "allow_negative"
    ] == ["vegf", "passage", "tissue", "note", "delta"]
    with pytest.warns(UserWarning, match=r"'delta': lots \['007'\]"):
        mp.io.read_lot_table(tmp_path / "lots.csv", allow_negative=["vegf"])
    with pytest.raises(KeyError, match=r"allow_negative names columns \['dleta'\] that are not"):
        mp.io.read_lot_table(tmp_path / "lots.csv", allow_negative="dleta")


def test_corrupt_excel_file_names_the_file_and_what_to_do(tmp_path):
    _write(tmp_path / "lots.xlsx", _frame())
    data = (tmp_path / "lots.xlsx").read_bytes()
    (tmp_path / "cut.xlsx").write_bytes(data[: len(data) // 2])
    # before: zipfile.BadZipFile "File is not a zip file", no path
    with pytest.raises(
        ValueError,
        match=r"could not read '.*cut\.xlsx' \(a lot table in .xlsx format.*BadZipFile.*truncated",
    ):
        mp.io.read_lot_table(tmp_path / "cut.xlsx")
    (tmp_path / "renamed.xlsx").write_text("lot,vegf\nBM01,1\n")
    with pytest.raises(ValueError, match=r"could not read '.*renamed\.xlsx'.*CSV renamed"):
        mp.io.read_lot_table(tmp_path / "renamed.xlsx")


def test_binary_file_named_csv_names_the_file(tmp_path):
    _write(tmp_path / "lots.xlsx", _frame())
    (tmp_path / "lots.csv").write_bytes((tmp_path / "lots.xlsx").read_bytes())
    with pytest.raises(ValueError, match=r"could not read '.*lots\.csv' \(a lot table as comma"):
        mp.io.read_lot_table(tmp_path / "lots.csv")


def test_lot_tables_as_european_excel_writes_them(tmp_path):
    """Excel in a decimal-comma locale writes ';'-separated '.csv' in Windows-1252; a lot
    may be named NA or None. Before: 'its columns are ['lot;vegf;passage']', 'truncated or
    corrupt', and 'rows without a lot name'."""
    path = tmp_path / "lots.csv"
    path.write_bytes(
        "lot;vegf;tissue\nA;12.5;Knochenmark (µ)\nNA;8;Fett\nNone;;Nabelschnur\n".encode("cp1252")
    )
    table = mp.io.read_lot_table(path)
    assert table.index.tolist() == ["A", "NA", "None"]
    assert table["tissue"].tolist() == ["Knochenmark (µ)", "Fett", "Nabelschnur"]
    assert table["vegf"].iloc[:2].tolist() == [12.5, 8.0] and np.isnan(table["vegf"].iloc[2])
    # missing-value codes in value columns are still missing
    (tmp_path / "codes.csv").write_text("lot,vegf\nA,12.5\nB,NA\nC,n/a\n")
    assert mp.io.read_lot_table(tmp_path / "codes.csv")["vegf"].isna().tolist() == [
        False,
        True,
        True,
    ]
