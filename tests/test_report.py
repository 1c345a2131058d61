"""From a lab's files to a defensible report: ``mscpotency analyse`` and ``map`` as processes.

The lots of a small study-shaped simulation are written in three layouts (Cell Ranger
``outs/``, 10x ``.h5``, 10x mtx folders) with a lot table; the commands run as a user runs
them, and their answers are checked against the simulator's truth. The reports are then
opened in headless Chromium (skipped, with the reason, where it cannot run).
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.io
from scipy import sparse

import mscpotency as mp
from mscpotency._workflow import AnalysisSettings, _report
from mscpotency._workflow._release import lot_model_hash, verdict

SRC = Path(mp.__file__).resolve().parents[1]


def _study() -> ad.AnnData:
    """10 reference lots and 4 new bone-marrow lots of 200 cells: small, with a true potency population."""
    config = mp.datasets.tiny_config(
        sets=(
            mp.datasets.SetSpec("BM-train", 10, "BM", "BM"),
            mp.datasets.SetSpec("BM-test", 4, "BM", "BM", first_lot=11),
        ),
        n_cells_per_lot=200,
    )
    return mp.datasets.simulate_lots(config, random_state=0)


def _features(part: ad.AnnData) -> pd.DataFrame:
    ids = [f"ENSG{i:011d}" for i in range(part.n_vars)]
    return pd.DataFrame({"id": ids, "name": part.var_names, "type": "Gene Expression"})


def write_h5(path: Path, part: ad.AnnData) -> None:
    """A Cell Ranger v3 filtered_feature_bc_matrix.h5 of the lot's raw counts."""
    X, features = sparse.csr_matrix(part.layers["counts"]), _features(part)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        m = f.create_group("matrix")
        m.create_dataset("data", data=X.data.astype(np.int32))
        m.create_dataset("indices", data=X.indices.astype(np.int64))
        m.create_dataset("indptr", data=X.indptr.astype(np.int64))
        m.create_dataset("shape", data=np.array([part.n_vars, part.n_obs], dtype=np.int32))
        m.create_dataset("barcodes", data=np.array(part.obs_names, dtype="S"))
        group = m.create_group("features")
        group.create_dataset("id", data=np.array(features["id"], dtype="S"))
        group.create_dataset("name", data=np.array(features["name"], dtype="S"))
        group.create_dataset("feature_type", data=np.array(features["type"], dtype="S"))
        group.create_dataset("genome", data=np.array(["GRCh38"] * part.n_vars, dtype="S"))
        group.create_dataset("_all_tag_keys", data=np.array(["genome"], dtype="S"))


def write_mtx(folder: Path, part: ad.AnnData) -> None:
    """A Cell Ranger v3 matrix folder (gzipped matrix.mtx, features.tsv, barcodes.tsv)."""
    folder.mkdir(parents=True, exist_ok=True)
    counts = sparse.csr_matrix(part.layers["counts"]).T.tocoo().astype(np.int64)
    with gzip.open(folder / "matrix.mtx.gz", "wb") as handle:
        scipy.io.mmwrite(handle, counts)
    with gzip.open(folder / "features.tsv.gz", "wt") as handle:
        _features(part).to_csv(handle, sep="\t", header=False, index=False)
    with gzip.open(folder / "barcodes.tsv.gz", "wt") as handle:
        handle.write("\n".join(part.obs_names) + "\n")


def write_lots(study: ad.AnnData, folder: Path, lots: list[str]) -> None:
    """Lots in turn as Cell Ranger outs/ (.h5 and mtx), plain 10x .h5 and mtx folders."""
    layouts = [
        lambda lot, part: write_h5(folder / lot / "outs" / "filtered_feature_bc_matrix.h5", part),
        lambda lot, part: write_h5(folder / f"{lot}.h5", part),
        lambda lot, part: write_mtx(folder / lot, part),
        lambda lot, part: write_mtx(folder / lot / "outs" / "filtered_feature_bc_matrix", part),
    ]
    for i, lot in enumerate(lots):
        layouts[i % len(layouts)](lot, study[study.obs["lot"] == lot])


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(SRC), "MSCPOTENCY_PROGRESS": "0", "MPLBACKEND": "Agg"}
    return subprocess.run(
        [sys.executable, "-m", "mscpotency._cli", *args], capture_output=True, text=True, env=env
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """The study on disk, ``analyse`` then ``map`` run as processes."""
    root = tmp_path_factory.mktemp("lab")
    study = _study()
    lots = study.obs.groupby("set", observed=True)["lot"].unique()
    write_lots(study, root / "reference_lots", sorted(lots["BM-train"]))
    write_lots(study, root / "new_lots", sorted(lots["BM-test"]))
    mp.get.lot_table(study)[["set", "vegf"]].to_csv(root / "lots.csv")
    (root / "settings.toml").write_text(
        "[cluster]\nn_clusters = 6\n[association]\nn_permutations = 999\n"
    )
    analysed = _run(
        "analyse", "--lots", str(root / "reference_lots"), "--lot-table", str(root / "lots.csv"),
        "--potency", "vegf", "--out", str(root / "analysis"), "--config", str(root / "settings.toml"),
    )  # fmt: skip
    assert analysed.returncode == 0, analysed.stderr[-3000:]
    hash_ = ad.read_h5ad(root / "analysis" / "reference_lots.h5ad").uns["workflow"][
        "reference_hash"
    ]
    mapped = _run(
        "map", "--reference", str(root / "analysis" / "reference.h5ad"), "--expected-hash", str(hash_),
        "--lots", str(root / "new_lots"), "--lot-table", str(root / "lots.csv"),
        "--out", str(root / "release"), "--min-share", "0.05", "--title", "Release <batch 7>",
    )  # fmt: skip
    assert mapped.returncode == 0, mapped.stderr[-3000:]
    return {"root": root, "study": study, "hash": str(hash_)}


def test_analyse_finds_the_true_potency_population(runs):
    root, study = runs["root"], runs["study"]
    analysis = root / "analysis"
    for name in (
        "report.html",
        "report.md",
        "analysed.h5ad",
        "reference.h5ad",
        "reference_lots.h5ad",
    ):
        assert (analysis / name).is_file(), name
    assert (analysis / "figures" / "umap.png").is_file()
    association = pd.read_csv(analysis / "tables" / "potency_association.csv", index_col=0)
    cluster = association.index[0]
    analysed = ad.read_h5ad(analysis / "analysed.h5ad")
    assert analysed.uns["potency_association"]["potency_cluster"] == cluster
    truth = pd.Series(
        study.obs["true_potency_cell"].to_numpy(),
        index=study.obs["lot"].astype(str) + "_" + study.obs_names,
    )
    found = (analysed.obs["cluster"] == cluster).to_numpy()
    true = truth.reindex(analysed.obs_names).to_numpy(dtype=bool)
    f1 = 2 * (found & true).sum() / (found.sum() + true.sum())
    assert f1 > 0.9, f1
    formats = analysed.uns["read_lots"]["formats"]
    assert set(formats.values()) == {"10x_h5", "10x_mtx"}
    page = (analysis / "report.html").read_text()
    assert f"tracks vegf is {cluster}" in page
    assert "each cluster sub-clustered in a PCA of its own" in page  # the search's local view
    assert "n_clusters</th>" in page or ">n_clusters<" in page  # the resolved settings are printed


def test_map_reports_shares_within_their_intervals_and_verdicts_by_the_rule(runs):
    root, study = runs["root"], runs["study"]
    release = pd.read_csv(root / "release" / "release.csv", index_col=0)
    assert sorted(release.index) == ["BM11", "BM12", "BM13", "BM14"]
    truth = study.obs.groupby("lot", observed=True)["true_potency_cell"].mean()
    inside = (release["share_low"] <= truth[release.index]) & (
        truth[release.index] <= release["share_high"]
    )
    assert inside.sum() >= 3, pd.concat(
        [release[["share", "share_low", "share_high"]], truth], axis=1
    )
    settings = AnalysisSettings(min_share=0.05)
    for lot, row in release.iterrows():
        assert verdict(row, settings)[0] == row["verdict"], lot
    assert set(release["verdict"]) <= {"PASS", "REVIEW", "FAIL"}
    # the mapping's per-lot novelty test reaches the release table (and so the verdict)
    assert release["excess_novel"].dtype == bool and release["share_novel"].between(0, 1).all()
    assert release["measured_potency"].notna().all()  # the lot table's potency: validation
    page = (root / "release" / "report.html").read_text()
    assert "FAIL if its whole 95% share interval lies below 5.0%" in page
    assert runs["hash"] in page
    lot_model = ad.read_h5ad(root / "analysis" / "reference_lots.h5ad")
    stamped = lot_model.uns["workflow"]["lot_model_hash"]
    assert stamped == lot_model_hash(lot_model)  # the file as written still hashes to its stamp
    for report in (root / "release" / "report.html", root / "analysis" / "report.html"):
        assert stamped in report.read_text(), report  # both reports name the pair they used
    assert "<title>Release &lt;batch 7&gt;</title>" in page


def test_map_refuses_another_reference_hash_with_exit_2(runs):
    root = runs["root"]
    done = _run(
        "map", "--reference", str(root / "analysis" / "reference.h5ad"), "--expected-hash", "0" * 32,
        "--lots", str(root / "new_lots"), "--out", str(root / "refused"),
    )  # fmt: skip
    assert done.returncode == 2
    assert re.match(r"mscpotency map: error: .*hash", done.stderr), done.stderr
    assert "Traceback" not in done.stderr


# -- the real browser check ----------------------------------------------------------------

_CHECK = """<script>
window.addEventListener('load', function () {
  var images = Array.from(document.images).map(function (i) {
    return {alt: i.alt, complete: i.complete, width: i.naturalWidth};
  });
  // a table may scroll inside its own box (div.tbl); nothing else may reach past the page
  var wide = Array.from(document.querySelectorAll('body *')).filter(function (e) {
    var inside = e.parentElement && e.parentElement.closest('.tbl');
    return !inside && e.getBoundingClientRect().right > document.documentElement.clientWidth + 1;
  }).map(function (e) { return e.tagName + ' ' + (e.className || ''); });
  var out = document.createElement('pre');
  out.id = 'mscpotency-check';
  out.textContent = JSON.stringify({images: images, wide: wide.slice(0, 10),
    scrollWidth: document.documentElement.scrollWidth, innerWidth: window.innerWidth});
  document.body.appendChild(out);
});
</script>"""


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no Chromium binary (install the Debian package `chromium`): browser check not run")


def browser_check(page: Path, tmp_path: Path) -> dict:
    """Open ``page`` at 1,400 px in headless Chromium; the images and overflow it reports."""
    binary = _chromium()
    probe = tmp_path / "probe.html"
    probe.write_text(
        page.read_text(encoding="utf-8").replace("</body>", _CHECK + "</body>"), encoding="utf-8"
    )
    command = [
        binary, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000",
        "--virtual-time-budget=10000", "--dump-dom", probe.as_uri(),
    ]  # fmt: skip
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.skip("Chromium did not finish within 120 s: browser check not run")
    found = re.search(r'<pre id="mscpotency-check">(.*?)</pre>', done.stdout, re.S)
    if done.returncode != 0 and found is None:
        pytest.skip(
            f"Chromium cannot run here ({done.stderr.strip()[-300:]}): browser check not run"
        )
    assert found is not None, done.stdout[-2000:]
    import html

    return json.loads(html.unescape(found.group(1)))


@pytest.mark.parametrize("report", ["analysis", "release"])
def test_reports_load_in_a_browser_with_every_figure_and_no_overflow(runs, report, tmp_path):
    page = runs["root"] / report / "report.html"
    assert page.stat().st_size < 5_000_000
    result = browser_check(page, tmp_path)
    assert len(result["images"]) >= 2
    broken = [i["alt"] for i in result["images"] if not i["complete"] or i["width"] == 0]
    assert broken == [], broken
    assert result["scrollWidth"] <= result["innerWidth"], result
    assert result["wide"] == [], result["wide"]


def test_the_search_sentence_names_the_lot_splits_set_aside():
    adata = ad.AnnData(np.zeros((2, 2)))
    summary = {
        "found": True,
        "pvalue": 0.027,
        "population": "leiden r=2 #1",
        "n_cells": 1419,
        "rho": 0.845,
        "lot_dominated": False,
        "lot_splits_skipped": "CL2 r=0.5 #3; leiden r=2 #6",
        "changed": True,
    }
    adata.uns["potency_population"] = {"summary": summary, "params": {}}
    text = _report._search_text(adata, "CL1")
    assert (
        "set aside before the test as not cell states of their own, their cells mixing with "
        "the rest of their cluster once lot effects are removed: CL2 r=0.5 #3; leiden r=2 #6"
        in text
    )
    assert "WARNING" not in text
    summary.update(lot_splits_skipped="")
    assert "set aside" not in _report._search_text(adata, "CL1")
