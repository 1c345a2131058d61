"""The main job writes a report, figures and tables a QC scientist can read."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from mscpotency._cli import main


def test_reproduce_tiny_writes_report_figures_and_tables(tmp_path: Path, capsys):
    assert main(["reproduce", "--preset", "tiny", "--out", str(tmp_path)]) == 0
    assert "report.html" in capsys.readouterr().out
    report = (tmp_path / "report.md").read_text()
    association = pd.read_csv(tmp_path / "tables" / "potency_association.csv", index_col=0)
    top = association.index[0]
    assert f"tracks VEGF under ischemia is {top}" in report
    assert "LRRC75A" in report
    assert "| rank of the planted marker LRRC75A | 1 |" in report
    for figure in (
        "lot_composition",
        "association_overview",
        "potency_scatter",
        "markers",
        "umap",
        "qc_per_lot",
    ):
        path = tmp_path / "figures" / f"{figure}.png"
        with Image.open(path) as image:
            width, height = image.size
        assert width > 300 and height > 200
        assert f"figures/{figure}.png" in (tmp_path / "report.html").read_text()
    provenance = pd.read_csv(tmp_path / "tables" / "provenance.csv")
    assert "tl.potency_association" in set(provenance["function"])
    assert (tmp_path / "reference.h5ad").exists()


def test_unknown_command_exits_with_usage():
    with pytest.raises(SystemExit):
        main(["nonsense"])
