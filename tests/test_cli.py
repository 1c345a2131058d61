"""The main job writes a report, figures and tables a QC scientist can read."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import mscpotency
from mscpotency._cli import main
from mscpotency._workflow._document import Report


def test_reproduce_tiny_writes_report_figures_and_tables(tmp_path: Path, capsys):
    assert main(["reproduce", "--preset", "tiny", "--out", str(tmp_path)]) == 0
    assert "report.html" in capsys.readouterr().out
    report = (tmp_path / "report.md").read_text()
    association = pd.read_csv(tmp_path / "tables" / "potency_association.csv", index_col=0)
    top = association.index[0]
    assert f"tracks vegf is {top}" in report
    assert "tiny preset" in report.splitlines()[0]  # the title names the data
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
        assert f"figures/{figure}.png" in report
    page = (tmp_path / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 6  # one self-contained file
    for section in ("Verdict rule", "iPS lines", "Check against the simulator", "Provenance"):
        assert section in page
    assert "expected by chance" in page
    release = pd.read_csv(tmp_path / "tables" / "release.csv", index_col=0)
    assert set(release["verdict"]) <= {"PASS", "REVIEW", "FAIL"} and len(release) == 7
    assert (release["low_quality"] == 0).all()  # the tiny preset's QC leaves no damaged cluster
    provenance = pd.read_csv(tmp_path / "tables" / "provenance.csv")
    assert "tl.potency_association" in set(provenance["function"])
    for name in ("reference.h5ad", "reference_lots.h5ad", "analysed.h5ad"):
        assert (tmp_path / name).exists()
    shipped = mscpotency.io.read_reference(tmp_path / "reference.h5ad").uns["reference"]
    assert list(shipped["calibrations"]["methods"]) == ["anchors"]  # the default backend's


def test_unknown_command_exits_with_usage():
    with pytest.raises(SystemExit):
        main(["nonsense"])


# -- argument checks, --version (issue 14 item 9) ------------------------------------------


def test_version(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"mscpotency {mscpotency.__version__}"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--clusters", "0"], r"--clusters must be at least 2 \(a potency cluster needs others\)"),
        (["--clusters", "-3"], r"--clusters must be at least 2"),
        (["--seed", "-1"], r"--seed must be a non-negative integer, got -1"),
        (["--out", "{file}"], r"--out '.*' is a file, not a folder"),
        (["--out", "{file}/inside"], r"--out '.*' lies under the file"),
    ],
)
def test_user_errors_exit_2_with_one_line_before_any_work(args, message, tmp_path):
    """No simulation runs: the command fails in well under a second, as a real process."""
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    args = [a.replace("{file}", str(afile)) for a in args]
    command = [sys.executable, "-m", "mscpotency._cli", "reproduce", "--preset", "tiny"]
    start = time.perf_counter()
    done = subprocess.run([*command, *args], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert re.match(rf"mscpotency reproduce: error: {message}", lines[0]), lines[0]
    assert "Traceback" not in done.stderr
    assert time.perf_counter() - start < 30  # an import, not a simulation
    assert afile.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


# -- the report escapes every user-controlled string (issue 14 item 7) ---------------------

NASTY = [
    "<script>alert('lot')</script>",
    'BM"01\' onerror="alert(1)',
    "A&B &amp; <b>bold</b>",
    "../../etc/passwd",
    "Ünïcødé-" + "λ" * 300 + "🧬",
    "pipe | in | name",
    "[link](javascript:alert(1))",
    "[here](https://example.org/x)",
]


class _Tags(HTMLParser):
    """Every start tag with its attributes, and all text, of an HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def _parse(page: str) -> _Tags:
    parser = _Tags()
    parser.feed(page)
    return parser


def _nasty_report(root: Path) -> Report:
    report = Report(title=f"Study {NASTY[0]}")
    items = report.section(f"Lots {NASTY[2]}")
    items.append(f"The potency cluster of lot {NASTY[1]} is {NASTY[0]}; gene {NASTY[4]}.")
    items.append(f"Read more {NASTY[-1]} or {NASTY[-2]}.")
    table = pd.DataFrame(
        {gene: np.arange(len(NASTY), dtype=float) for gene in NASTY[:5]},
        index=pd.Index(NASTY, name="lot <i>"),
    )
    table["note"] = NASTY
    items.append(table)
    items.append(root / "figures" / 'umap " onerror="alert(1) <x>.png')
    return report


def test_html_report_escapes_every_user_string(tmp_path):
    page = _nasty_report(tmp_path).html(tmp_path, embed=False)
    parsed = _parse(page)
    allowed = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "p", "div"}
    allowed |= {"table", "thead", "tbody", "tr", "th", "td", "img"}
    assert {tag for tag, _ in parsed.tags} <= allowed
    images = [attrs for tag, attrs in parsed.tags if tag == "img"]
    assert images == [
        {
            "src": "figures/umap%20%22%20onerror%3D%22alert%281%29%20%3Cx%3E.png",
            "alt": 'umap " onerror="alert(1) <x>',
        }
    ]
    text = "".join(parsed.text)
    for name in NASTY:  # every name is shown as the text it is
        assert name in text
    assert "<script" not in page.lower()


def test_html_report_embeds_figures_as_base64(tmp_path):
    import base64

    figure = tmp_path / "figures" / 'umap " onerror="alert(1) <x>.png'
    figure.parent.mkdir()
    Image.new("RGB", (4, 3), "red").save(figure, format="PNG")
    parsed = _parse(_nasty_report(tmp_path).html(tmp_path))
    (image,) = [attrs for tag, attrs in parsed.tags if tag == "img"]
    assert image["alt"] == 'umap " onerror="alert(1) <x>'
    prefix = "data:image/png;base64,"
    assert image["src"].startswith(prefix)
    assert base64.b64decode(image["src"][len(prefix) :]) == figure.read_bytes()


def test_markdown_report_escapes_every_user_string(tmp_path):
    page = _nasty_report(tmp_path).markdown(tmp_path)
    assert not re.search(r"<[A-Za-z/!?]", page), "raw HTML in report.md"
    rows = [line for line in page.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + len(NASTY)
    cells = {len(re.split(r"(?<!\\)\|", row)) for row in rows}
    assert cells == {len(NASTY[:5]) + 2 + 2}  # lot, 5 genes, note, and the two outer bars
    markdown_it = pytest.importorskip("markdown_it")
    rendered = markdown_it.MarkdownIt("commonmark").enable("table").render(page)
    parsed = _parse(rendered)  # commonmark passes raw HTML through: none must be there
    allowed = {"h1", "h2", "p", "table", "thead", "tbody", "tr", "th", "td", "img", "em"}
    assert {tag for tag, _ in parsed.tags} <= allowed, {tag for tag, _ in parsed.tags}
    assert [a["src"] for t, a in parsed.tags if t == "img"] == [
        "figures/umap%20%22%20onerror%3D%22alert%281%29%20%3Cx%3E.png"
    ]
    text = "".join(parsed.text)
    for name in NASTY[:5]:
        assert name in text


def test_report_refuses_a_figure_outside_its_folder(tmp_path):
    report = Report(title="t")
    report.section("s").append(tmp_path / "figures" / ".." / ".." / "elsewhere.png")
    with pytest.raises(ValueError, match="outside the report folder"):
        report.html(tmp_path)
    with pytest.raises(ValueError, match="outside the report folder"):
        report.markdown(tmp_path)


# -- analyse / map: --help lists every command, user errors exit 2 (issue 15) --------------


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    for command in ("analyse", "map", "reproduce"):
        assert command in text


def _user_error_args(args: list[str], tmp_path: Path) -> list[str]:
    (tmp_path / "lots").mkdir(exist_ok=True)
    (tmp_path / "lots.csv").write_text("lot,vegf\nBM01,500\n")
    (tmp_path / "bad.toml").write_text("clustrs = 3\n")
    (tmp_path / "afile").write_text("keep")
    names = {
        "{missing}": "nowhere",
        "{table}": "lots.csv",
        "{dir}": "lots",
        "{file}": "afile",
        "{bad_toml}": "bad.toml",
    }
    return [str(tmp_path / names[a]) if a in names else a for a in args]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["analyse", "--lots", "{missing}", "--lot-table", "{table}", "--out", "o"],
            r"--lots '.*' does not exist",
        ),
        (
            ["analyse", "--lots", "{dir}", "--lot-table", "{missing}", "--out", "o"],
            r"--lot-table '.*' does not exist",
        ),
        (
            ["analyse", "--lots", "{dir}", "--lot-table", "{table}", "--out", "{file}"],
            r"--out '.*' is a file",
        ),
        (
            [
                "analyse",
                "--lots",
                "{dir}",
                "--lot-table",
                "{table}",
                "--out",
                "o",
                "--clusters",
                "1",
            ],
            r"n_clusters must be at least 2",
        ),
        (
            [
                "analyse",
                "--lots",
                "{dir}",
                "--lot-table",
                "{table}",
                "--out",
                "o",
                "--config",
                "{bad_toml}",
            ],
            r"unknown settings \['clustrs'\]",
        ),
        (
            [
                "analyse",
                "--lots",
                "{dir}",
                "--lot-table",
                "{table}",
                "--out",
                "o",
                "--potency",
                "ido",
            ],
            r"has no potency column 'ido'",
        ),
        (
            [
                "analyse",
                "--lots",
                "{dir}",
                "--lot-table",
                "{table}",
                "--out",
                "o",
                "--clusters",
                "4",
                "--resolution",
                "1",
            ],
            r"not allowed with argument",
        ),
        (
            ["map", "--reference", "{missing}", "--lots", "{dir}", "--out", "o"],
            r"--reference '.*' does not exist",
        ),
        (
            ["map", "--reference", "{table}", "--lots", "{dir}", "--out", "o", "--min-share", "2"],
            r"min_share must lie in \[0, 1\)",
        ),
    ],
)
def test_analyse_and_map_user_errors_exit_2_with_one_line(args, message, tmp_path, capsys):
    args = _user_error_args(args, tmp_path)
    with pytest.raises(SystemExit) as stop:
        main(args)
    assert stop.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert re.match(rf"mscpotency {args[0]}: error: .*{message}", lines[0]), lines[0]


def test_a_data_error_in_a_real_process_is_one_line_without_traceback(tmp_path):
    args = [
        "analyse",
        "--lots",
        "{dir}",
        "--lot-table",
        "{table}",
        "--out",
        "o",
        "--potency",
        "ido",
    ]
    args = _user_error_args(args, tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "mscpotency._cli", *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert "has no potency column 'ido'" in done.stderr


def test_map_config_changes_only_the_settings_it_names(tmp_path, monkeypatch):
    """A --config holding one key replaced every setting the reference was analysed with."""
    import mscpotency._workflow as workflow

    seen = {}

    def fake_release(lots, reference, **kwargs):
        seen.update(kwargs)
        raise SystemExit(0)

    monkeypatch.setattr(workflow, "release_lots", fake_release)
    (tmp_path / "lots").mkdir()
    (tmp_path / "ref.h5ad").write_text("not read")
    (tmp_path / "release.toml").write_text("[release]\nmin_share = 0.07\n")
    args = ["map", "--reference", str(tmp_path / "ref.h5ad"), "--lots", str(tmp_path / "lots")]
    args += ["--out", str(tmp_path / "out"), "--config", str(tmp_path / "release.toml")]
    with pytest.raises(SystemExit):
        main([*args, "--max-off-reference", "0.2"])
    assert seen["settings"] is None  # the stored settings, then the overrides
    assert seen["overrides"] == {"min_share": 0.07, "max_off_reference": 0.2}


def _analyse_settings(extra: list[str], tmp_path: Path):
    """The settings ``mscpotency analyse ... extra`` resolves (nothing is read)."""
    from mscpotency._cli import _ANALYSE_OPTIONS, _parser, _settings

    args = ["analyse", "--lots", str(tmp_path), "--lot-table", "t.csv", "--out", "o", *extra]
    return _settings(_parser()[0].parse_args(args), _ANALYSE_OPTIONS)[0]


def test_qc_of_a_panel_without_mitochondrial_genes_is_said_on_the_command_line(tmp_path):
    """pp.qc's no-mitochondrial-gene warning advised max_pct_mito=None and symbol_key=, which
    neither the command line nor a settings file could say: a lab with a targeted panel got a
    warning it could not act on."""
    data = mscpotency.datasets.tiny()
    panel = data[:, ~data.var_names.str.startswith("MT-")].copy()
    with pytest.warns(UserWarning, match="no mitochondrial gene found") as record:
        mscpotency.pp.qc(panel, **_analyse_settings([], tmp_path).qc_arguments(), copy=True)
    assert "--no-mito-filter" in str(record[0].message)
    settings = _analyse_settings(["--no-mito-filter"], tmp_path)
    assert not settings.mito_filter
    out = mscpotency.pp.qc(panel, **settings.qc_arguments(), copy=True)  # no warning
    assert out.uns["qc"]["params"]["max_pct_mito"] is None
    # Ensembl ids as gene names, the symbols in a column of their own (an h5ad from a portal)
    ids = data.copy()
    ids.var["feature_name"] = ids.var_names.to_numpy()
    ids.var_names = [f"ENSG{i:011d}" for i in range(ids.n_vars)]
    settings = _analyse_settings(["--symbol-key", "feature_name"], tmp_path)
    found = mscpotency.pp.qc(ids, **settings.qc_arguments(), copy=True)
    expected = mscpotency.pp.qc(data, **_analyse_settings([], tmp_path).qc_arguments(), copy=True)
    assert found.uns["qc"]["params"]["symbols_from"] == "var['feature_name']"
    assert found.n_obs == expected.n_obs < data.n_obs  # the same cells, mitochondrial ones out
    np.testing.assert_array_equal(found.obs["pct_counts_mt"], expected.obs["pct_counts_mt"])
    prefixed = _analyse_settings(["--mito-prefix", "mt-"], tmp_path)
    assert prefixed.qc_arguments()["mito_prefix"] == "mt-"
