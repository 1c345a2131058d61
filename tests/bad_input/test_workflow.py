"""Bad input to the workflow layer (``mp.analyse``, ``mp.release_lots``, ``mp.report``, settings)."""

from __future__ import annotations

import pytest

import mscpotency as mp

from ._harness import Case, run_case


def _lot_table(d, text: str = "lot,vegf\nBM01,500\n"):
    path = d.tmp_path / "lots.csv"
    path.write_text(text)
    return path


CASES = [
    Case(
        "AnalysisSettings: share level out of range",
        lambda d: mp.AnalysisSettings(share_level=95),
        ValueError,
        r"share_level must lie between 0 and 1, got 95",
        data=None,
    ),
    Case(
        "AnalysisSettings: misspelt mapping method",
        lambda d: mp.AnalysisSettings(mapping_method="anchor"),
        ValueError,
        r"mapping_method must be one of \['anchors', 'fast', 'scvi'\], got 'anchor'",
        data=None,
    ),
    Case(
        "AnalysisSettings.replace: unknown setting",
        lambda d: mp.AnalysisSettings().replace(min_shares=0.1),
        ValueError,
        r"unknown settings \['min_shares'\]",
        data=None,
    ),
    Case(
        "analyse: lot table without the potency column",
        lambda d: mp.analyse(
            d.tmp_path, _lot_table(d), settings=mp.AnalysisSettings(potency="ido")
        ),
        KeyError,
        r"has no potency column 'ido'; its columns are \['vegf'\]",
        data=None,
    ),
    Case(
        "analyse: potency column with text",
        lambda d: mp.analyse(d.tmp_path, _lot_table(d, "lot,vegf\nBM01,high\n")),
        ValueError,
        r"potency column 'vegf' of .* is not numeric in every row",
        data=None,
    ),
    Case(
        "release_lots: reference does not exist",
        lambda d: mp.release_lots(d.adata, d.tmp_path / "reference.h5ad"),
        FileNotFoundError,
        r"reference.h5ad",
        data="tiny_train",
    ),
    Case(
        "report: nothing analysed yet",
        lambda d: mp.report(d.adata, d.tmp_path / "out"),
        KeyError,
        r"tl\.lot_fractions",
        data="tiny_train",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input(case, request):
    run_case(case, request)
