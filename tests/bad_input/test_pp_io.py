"""Bad input through the public io and pp APIs: a clear error, nothing changed.

Each case names the problem in its message (the parameter, the value, the lot or file, what
to do); :func:`._harness.run_case` also checks that no AnnData given to the call changed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from scipy import sparse

import mscpotency as mp

from ._harness import Case, Inputs, run_case

# --- inputs ---------------------------------------------------------------------------------


def _lots(request, sizes: dict[str, int] | None = None) -> dict[str, AnnData]:
    """Lots of the tiny training set (first ``n`` cells of each), as separate AnnData objects."""
    train = request.getfixturevalue("tiny_train")
    sizes = sizes or {"BM01": 150, "BM02": 120, "BM03": 90}
    return {lot: train[(train.obs["lot"] == lot).to_numpy()][:n].copy() for lot, n in sizes.items()}


def _with_tiny_lot(request) -> dict[str, AnnData]:
    return _lots(request, {"BM01": 150, "BM02": 120, "BM03": 3})


def _repeated_genes(request) -> dict[str, AnnData]:
    lots = _lots(request)
    names = lots["BM02"].var_names.tolist()
    names[1] = names[0]
    lots["BM02"].var_names = names
    return lots


def _small_lot(request) -> AnnData:
    """The training lots with BM08 cut to 12 cells."""
    train = request.getfixturevalue("tiny_train")
    in_lot = (train.obs["lot"] == "BM08").to_numpy()
    return train[~in_lot | (np.cumsum(in_lot) <= 12)].copy()


def _normalised(request) -> AnnData:
    adata = request.getfixturevalue("tiny_train").copy()
    del adata.layers["counts"]
    adata.X = adata.X.multiply(0.37).tocsr()
    return adata


def _table(request) -> tuple[AnnData, pd.DataFrame]:
    adata = request.getfixturevalue("tiny_train").copy()
    return adata, mp.get.lot_table(adata, columns=["vegf"])


# --- files ------------------------------------------------------------------------------------


def _write_lot(path: Path, n_cells: int, seed: int) -> None:
    """An .h5ad of ``n_cells`` x 40 random integer counts (CSR, in X)."""
    X = np.random.default_rng(seed).poisson(1.0, size=(n_cells, 40)).astype(np.float32)
    AnnData(
        X=sparse.csr_matrix(X),
        obs=pd.DataFrame(index=[f"AAAC{j:04d}-1" for j in range(n_cells)]),
        var=pd.DataFrame(index=[f"G{g}" for g in range(40)]),
    ).write_h5ad(path)


def _h5ad_lots(d: Inputs, names=("BM01", "BM02"), *, truncate: str | None = None) -> Path:
    """A folder with one .h5ad of 30 cells per lot; ``truncate`` cuts that lot's file in half."""
    folder = d.tmp_path / "lots"
    folder.mkdir()
    for i, name in enumerate(names):
        _write_lot(folder / f"{name}.h5ad", 30, i)
    if truncate is not None:
        path = folder / f"{truncate}.h5ad"
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    return folder


def _csv(d: Inputs, text: str, name: str = "lots.csv") -> Path:
    path = d.tmp_path / name
    path.write_text(text)
    return path


def _cut_xlsx(d: Inputs) -> Path:
    path = d.tmp_path / "lots.xlsx"
    pd.DataFrame({"lot": ["BM01", "BM02"], "vegf": [1.0, 2.0]}).to_excel(path, index=False)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _read_with_extra_file(d: Inputs) -> AnnData:
    folder = _h5ad_lots(d)
    (folder / "notes.txt").write_text("not a lot")
    return mp.io.read_lots(folder)


def _read_with_tiny_lot(d: Inputs) -> AnnData:
    folder = _h5ad_lots(d)
    _write_lot(folder / "TINY.h5ad", 4, 9)
    return mp.io.read_lots(folder, cells_per_lot="min")


# --- the cases --------------------------------------------------------------------------------

IO_CASES = [
    Case(
        "read_lots: folder does not exist",
        lambda d: mp.io.read_lots(d.tmp_path / "nowhere"),
        FileNotFoundError,
        r"nowhere' does not exist; pass the folder holding one entry per lot",
        data=None,
    ),
    Case(
        "read_lots: truncated .h5ad",
        lambda d: mp.io.read_lots(_h5ad_lots(d, truncate="BM02")),
        ValueError,
        r"could not read lot 'BM02' \('.*BM02\.h5ad'\).*truncated or corrupt.*copy it again",
        data=None,
    ),
    Case(
        "read_lots: a file that is no lot",
        _read_with_extra_file,
        ValueError,
        r"entries \['notes.txt'\] of folder .* are not lot data",
        data=None,
    ),
    Case(
        "read_lots: min subsampling down to a 4-cell lot",
        _read_with_tiny_lot,
        ValueError,
        r"cells_per_lot='min' would subsample every lot to 4 cells, the size of lots "
        r"\{'TINY': 4\}.*small_lots='drop'",
        data=None,
    ),
    Case(
        "read_lots: cells_per_lot=0",
        lambda d: mp.io.read_lots(_h5ad_lots(d), cells_per_lot=0),
        (TypeError, ValueError),
        r"cells_per_lot must be .*got 0",
        data=None,
    ),
    Case(
        "read_lots: misspelt small_lots",
        lambda d: mp.io.read_lots(_h5ad_lots(d), small_lots="skip"),
        (TypeError, ValueError),
        r"small_lots must be one of .*'warn'.*got 'skip'",
        data=None,
    ),
    Case(
        "read_lots_lazy: truncated .h5ad",
        lambda d: mp.io.read_lots_lazy(_h5ad_lots(d, truncate="BM01")),
        ValueError,
        r"could not read '.*BM01\.h5ad' \(lot 'BM01', an .h5ad file\).*truncated or corrupt",
        data=None,
    ),
    Case(
        "read_lots_lazy: chunk_cells=0",
        lambda d: mp.io.read_lots_lazy(_h5ad_lots(d), chunk_cells=0),
        (TypeError, ValueError),
        r"chunk_cells must be .*got 0",
        data=None,
    ),
    Case(
        "read_lot_table: truncated .xlsx",
        lambda d: mp.io.read_lot_table(_cut_xlsx(d)),
        ValueError,
        r"could not read '.*lots\.xlsx' \(a lot table in .xlsx format.*BadZipFile.*copy it again",
        data=None,
    ),
    Case(
        "read_lot_table: no lot column",
        lambda d: mp.io.read_lot_table(_csv(d, "Lot,vegf\nBM01,1\n")),
        KeyError,
        r"has no column 'lot'; its columns are \['Lot', 'vegf'\]\. Did you mean lot_key='Lot'",
        data=None,
    ),
    Case(
        "read_lot_table: a lot named twice",
        lambda d: mp.io.read_lot_table(_csv(d, "lot,vegf\nBM01,1\n BM01 ,2\n")),
        ValueError,
        r"names lots \['BM01'\] more than once",
        data=None,
    ),
    Case(
        "read_lot_table: allow_negative names no column",
        lambda d: mp.io.read_lot_table(_csv(d, "lot,vegf\nBM01,-1\n"), allow_negative=["vgef"]),
        KeyError,
        r"allow_negative names columns \['vgef'\] that are not in the lot table",
        data=None,
    ),
    Case(
        "read_lot_table: unknown format",
        lambda d: mp.io.read_lot_table(_csv(d, "{}", "lots.json")),
        ValueError,
        r"unknown format '.json'\. Accepted: .csv",
        data=None,
    ),
]


def _one_h5ad_of_many_lots(d: Inputs) -> Path:
    """One .h5ad file of 30 cells without a lot column."""
    _write_lot(d.tmp_path / "study.h5ad", 30, 0)
    return d.tmp_path / "study.h5ad"


def _text_matrix(d: Inputs) -> Path:
    """Genes x cells as CSV text with an ``NA`` among the counts."""
    return _csv(d, ",AAAC0001-1,AAAC0002-1\nMT-CO1,3,1\nACTB,NA,2\n", "BM01.csv")


IO_CASES += [
    Case(
        "read_lots: one .h5ad without the lot column",
        lambda d: mp.io.read_lots(_one_h5ad_of_many_lots(d), lot_key="donor"),
        ValueError,
        r"its obs has no column 'donor'.*Pass lot_key=.*barcodes_to_lots=",
        data=None,
    ),
    Case(
        "read_lots: barcodes_to_lots shares no barcode with the file",
        lambda d: mp.io.read_lots(_one_h5ad_of_many_lots(d), barcodes_to_lots={"AAAC0001": "BM01"}),
        ValueError,
        r"no barcode of '.*study\.h5ad' is in barcodes_to_lots \(file: e\.g\. \['AAAC0000-1'",
        data=None,
    ),
    Case(
        "read_lots: barcodes_to_lots with a folder of lots",
        lambda d: mp.io.read_lots(_h5ad_lots(d), barcodes_to_lots={"AAAC0000-1": "BM01"}),
        ValueError,
        r"barcodes_to_lots is for one file holding many lots",
        data=None,
    ),
    Case(
        "read_lots: a text count matrix with NA",
        lambda d: mp.io.read_lots({"BM01": _text_matrix(d)}),
        ValueError,
        r"could not read lot 'BM01' .*value 'NA' \(row 'ACTB', column 'AAAC0001-1'\) is not a number",
        data=None,
    ),
    Case(
        "read_lots: misspelt orientation",
        lambda d: mp.io.read_lots({"BM01": _text_matrix(d)}, orientation="genes_by_cells"),
        (TypeError, ValueError),
        r"orientation.*'genes_by_cells'",
        data=None,
    ),
]

PP_CASES = [
    Case(
        "qc: symbol_key names no column",
        lambda d: mp.pp.qc(d.adata, symbol_key="symbol"),
        KeyError,
        r"adata\.var has no column 'symbol' \(the gene symbols\).*Pass symbol_key=",
    ),
    Case(
        "qc: max_removed_share as a percentage",
        lambda d: mp.pp.qc(d.adata, max_removed_share=50),
        ValueError,
        r"max_removed_share must lie between 0 and 1.*got 50",
    ),
    Case(
        "qc: negative n_mads",
        lambda d: mp.pp.qc(d.adata, thresholds="mad", n_mads=-3),
        ValueError,
        r"n_mads must be greater than 0.*got -3",
    ),
    Case(
        "qc: misspelt thresholds",
        lambda d: mp.pp.qc(d.adata, thresholds="MAD"),
        (TypeError, ValueError),
        r"thresholds.*'MAD'",
    ),
    Case(
        "add_lot_table: would overwrite an obs column",
        lambda d: mp.pp.add_lot_table(d.adata[0], d.adata[1].assign(vegf=d.adata[1]["vegf"] * 2)),
        ValueError,
        r"obs already has columns \['vegf'\] with other values.*overwrite=True",
        data=_table,
    ),
    Case(
        "add_lot_table: the table lists lots without cells",
        lambda d: mp.pp.add_lot_table(
            d.adata[0], pd.concat([d.adata[1], d.adata[1].iloc[:1].rename(index=lambda _: "X9")])
        ),
        ValueError,
        r"lots \['X9'\] of the lot table have no cells.*extra_lots='ignore'",
        data=_table,
    ),
    Case(
        "pool_lots: min subsampling down to a 3-cell lot",
        lambda d: mp.pp.pool_lots(d.adata, cells_per_lot="min"),
        ValueError,
        r"would subsample every lot to 3 cells, the size of lots \{'BM03': 3\}, below "
        r"min_cells_per_lot=20: 264 of 273 cells \(97%\) would be removed",
        data=_with_tiny_lot,
    ),
    Case(
        "pool_lots: small_lots='error' with a 3-cell lot",
        lambda d: mp.pp.pool_lots(d.adata, small_lots="error"),
        ValueError,
        r"lots \{'BM03': 3\} have fewer than min_cells_per_lot=20 cells \(small_lots='error'\)",
        data=_with_tiny_lot,
    ),
    Case(
        "pool_lots: repeated gene names",
        lambda d: mp.pp.pool_lots(d.adata),
        ValueError,
        r"lot 'BM02' has duplicate gene names.*Repeated \(1\): \['\w+'\]",
        data=_repeated_genes,
    ),
    Case(
        "pool_lots: misspelt join",
        lambda d: mp.pp.pool_lots(d.adata, join="left"),
        (TypeError, ValueError),
        r"join must be 'inner' or 'outer', got 'left'",
        data=_lots,
    ),
    Case(
        "pool_lots: one AnnData",
        lambda d: mp.pp.pool_lots(d.adata),
        TypeError,
        r"got one AnnData\. Split it by lot first",
        data="tiny_train",
    ),
    Case(
        "pool_lots: negative min_cells_per_lot",
        lambda d: mp.pp.pool_lots(d.adata, min_cells_per_lot=-1),
        (TypeError, ValueError),
        r"min_cells_per_lot must be a non-negative integer, got -1",
        data=_lots,
    ),
    Case(
        "qc: thresholds that empty every lot",
        lambda d: mp.pp.qc(d.adata, thresholds="fixed", min_genes=10**6),
        ValueError,
        r"QC would remove every cell of lots \['BM01'.*\{'BM01': \{'cells_below_min_genes': 150,.*"
        r"Relax the thresholds",
    ),
    Case(
        "qc: small_lots='error' with a lot left at 12 cells",
        lambda d: mp.pp.qc(d.adata, small_lots="error"),
        ValueError,
        r"after QC, lots \{'BM08': \d+\} have fewer than min_cells_per_lot=20 cells",
        data=_small_lot,
    ),
    Case(
        "qc: unknown lot_key",
        lambda d: mp.pp.qc(d.adata, lot_key="batch"),
        KeyError,
        r"adata\.obs has no column 'batch'",
    ),
    Case(
        "qc: normalised data",
        lambda d: mp.pp.qc(d.adata),
        ValueError,
        r"contains non-integer values .*Raw integer counts are required",
        data=_normalised,
    ),
    Case(
        "qc: misspelt small_lots",
        lambda d: mp.pp.qc(d.adata, small_lots="Drop"),
        (TypeError, ValueError),
        r"small_lots must be one of .*got 'Drop'",
    ),
    Case(
        "add_lot_table: a lot with cells has no row",
        lambda d: mp.pp.add_lot_table(d.adata[0], d.adata[1].iloc[1:]),
        ValueError,
        r"lots \['BM01'\] have cells but no row in the lot table",
        data=_table,
    ),
    Case(
        "add_lot_table: allow_negative names no column",
        lambda d: mp.pp.add_lot_table(d.adata[0], d.adata[1], allow_negative="vgef"),
        KeyError,
        r"allow_negative names columns \['vgef'\]",
        data=_table,
    ),
    Case(
        "add_lot_table: a dict, not a table",
        lambda d: mp.pp.add_lot_table(d.adata[0], d.adata[1]["vegf"].to_dict()),
        TypeError,
        r"lot_table must be a pandas DataFrame.*got a dict",
        data=_table,
    ),
    Case(
        "preprocess: normalised data",
        lambda d: mp.pp.preprocess(d.adata),
        ValueError,
        r"X \(no counts layer yet\) contains non-integer values",
        data=_normalised,
    ),
    Case(
        "preprocess: unknown batch_key",
        lambda d: mp.pp.preprocess(d.adata, batch_key="batch"),
        KeyError,
        r"adata\.obs has no column 'batch'",
    ),
]

CASES = IO_CASES + PP_CASES


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input(case, request):
    run_case(case, request)


def test_enough_cases():
    assert len(CASES) >= 20
