"""The workflow layer: settings from TOML, the share interval, the verdict rule, the lot model."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mscpotency._workflow import AnalysisSettings, load_settings, share_interval, verdict_rule
from mscpotency._workflow._release import lot_model_hash, read_lot_model, verdict

# -- settings ------------------------------------------------------------------------------


def test_settings_from_toml_sections_and_top_level(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(
        'potency = "ido"\n[qc]\nmin_genes = 150\nmax_pct_mito = 15\n'
        "[cluster]\nn_clusters = 6\n[release]\nmin_share = 0.05\n"
    )
    settings = load_settings(path, random_state=3, min_genes=None)
    assert settings.potency == "ido"
    assert settings.min_genes == 150  # None = "not given": the file's value stays
    assert settings.max_pct_mito == 15.0
    assert settings.n_clusters == 6 and settings.min_share == 0.05
    assert settings.random_state == 3
    table = {name: value for _, name, value in settings.table()}
    assert table["min_potency"] == "not set" and table["potency"] == "ido"
    assert len(table) == len(AnalysisSettings.__dataclass_fields__)  # every setting is printed


def test_qc_settings_of_a_panel_from_a_file_reach_pp_qc_and_the_lot_model(tmp_path):
    """The mitochondrial settings a file gives are pp.qc's arguments, and survive the lot model
    (``release`` runs the same QC on new lots from the settings stored there)."""
    from mscpotency._workflow._analyse import record_inputs
    from mscpotency._workflow._release import _stored_settings

    path = tmp_path / "s.toml"
    path.write_text('[qc]\nmito_filter = false\nsymbol_key = "feature_name"\n')
    settings = load_settings(path)
    arguments = settings.qc_arguments()
    assert arguments["max_pct_mito"] is None and arguments["symbol_key"] == "feature_name"
    assert AnalysisSettings().qc_arguments()["max_pct_mito"] == 20.0
    model = ad.AnnData(np.zeros((1, 1)))
    record_inputs(model, settings)
    stored = tmp_path / "m.h5ad"
    model.write_h5ad(stored)
    assert AnalysisSettings(**_stored_settings(ad.read_h5ad(stored))) == settings
    again = AnalysisSettings(**_stored_settings(ad.read_h5ad(stored))).qc_arguments()
    assert again == arguments


def test_a_resolution_in_the_file_means_no_target_number_of_clusters(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text("[cluster]\nresolution = 0.6\n")
    settings = load_settings(path)
    assert settings.n_clusters is None and settings.resolution == 0.6


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("min_gens = 3\n", r"unknown settings \['min_gens'\]"),
        ("[qc]\nmin_genes = 'many'\n", r"min_genes = 'many' should be int"),
        ("min_genes = 100\n[qc]\nmin_genes = 200\n", r"sets 'min_genes' twice"),
        ("alpha = 1.5\n", r"alpha must lie between 0 and 1, got 1.5"),
        ("n_clusters = 1\n", r"n_clusters must be at least 2"),
        ("qc_thresholds = 'median'\n", r"qc_thresholds must be one of \['fixed', 'mad'\]"),
        ("[qc]\nmito_prefix = ' '\n", r"mito_prefix must not be empty"),
        ("[qc]\nmito_filter = 'no'\n", r"mito_filter = 'no' should be bool"),
        ("potency = \n", r"is not valid TOML"),
    ],
)
def test_bad_settings_files_are_errors_naming_the_setting(tmp_path, text, message):
    path = tmp_path / "s.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_settings(path)


def test_a_missing_settings_file_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_settings(tmp_path / "none.toml")


# -- the share interval --------------------------------------------------------------------


def test_certain_labels_give_the_exact_binomial_interval():
    labels = np.r_[np.ones(17), np.zeros(183)]
    share, low, high = share_interval(labels, 0.95)
    exact = stats.binomtest(17, 200).proportion_ci(0.95, method="exact")
    assert share == pytest.approx(17 / 200)
    assert (low, high) == pytest.approx((exact.low, exact.high))
    assert share_interval(np.zeros(50))[1:] == (0.0, pytest.approx(stats.beta.ppf(0.975, 1, 50)))


@pytest.mark.parametrize("certain", [True, False])
def test_the_share_interval_covers_the_population_share_at_its_level(certain):
    """Cells drawn from a lot whose population share of potency cells is known: with certain
    labels the interval covers it at about its level (Clopper-Pearson: 95-98%); with
    calibrated uncertain labels at least at its level (conservative: the mean probability
    varies less than certain labels would)."""
    rng = np.random.default_rng(0)
    covered = []
    for _ in range(600):
        a, b = rng.uniform(0.2, 2.0, size=2)
        population_share = a / (a + b) * 0.3  # mean of the probabilities below
        p = rng.beta(a, b, size=300) * 0.3
        if certain:
            p = (rng.random(300) < p).astype(float)  # labels drawn from calibrated probabilities
        _, low, high = share_interval(p, 0.95)
        covered.append(low <= population_share <= high)
    # Binomial(600, 0.95) lies above 0.93 with probability > 0.99.
    assert np.mean(covered) >= 0.93
    if certain:
        assert np.mean(covered) <= 0.99


def test_label_uncertainty_widens_nothing_it_should_not():
    """The interval depends on n and the mean probability only (the bootstrap identity)."""
    certain = np.r_[np.ones(30), np.zeros(170)]
    uncertain = np.full(200, 0.15)
    assert share_interval(certain) == pytest.approx(share_interval(uncertain))


# -- the verdict rule ----------------------------------------------------------------------


def _row(**changes) -> pd.Series:
    row = {
        "share": 0.12, "share_low": 0.08, "share_high": 0.17,
        "prediction": 900.0, "prediction_low": 700.0, "prediction_high": 1100.0,
        "extrapolating": False, "comparable": True, "comparability": "within",
        "off_reference": 0.01,
    }  # fmt: skip
    row.update(changes)
    return pd.Series(row)


@pytest.mark.parametrize(
    ("changes", "settings", "expected", "reason"),
    [
        ({}, {}, "PASS", "every check within its limit"),
        ({}, {"min_share": 0.05, "min_potency": 600}, "PASS", "every check"),
        ({"share_high": 0.04}, {"min_share": 0.05}, "FAIL", "below 5.0%"),
        ({"share_low": 0.04}, {"min_share": 0.05}, "REVIEW", "contains the minimum 5.0%"),
        ({"share_high": 0.04}, {}, "PASS", "every check"),  # no minimum set: no rule
        ({"prediction_high": 500.0}, {"min_potency": 600}, "FAIL", "below 600"),
        ({}, {"min_potency": 800}, "REVIEW", "contains the minimum 800"),
        ({"off_reference": 0.3}, {}, "REVIEW", "30% of cells off the reference"),
        ({"off_reference": 0.3}, {"max_off_reference": 0.5}, "PASS", "every check"),
        # a lot failing the mapping's excess-novel test holds what the reference may lack
        ({"excess_novel": True, "share_novel": 0.06}, {}, "REVIEW", "6.0% of cells flagged"),
        (
            {"excess_novel": True, "share_novel": 0.3, "make_up_unusual": True},
            {},
            "REVIEW",
            "part of the excess may be its make-up",
        ),
        ({"excess_novel": False, "share_novel": 0.02}, {}, "PASS", "every check"),
        ({"excess_novel": np.nan, "share_novel": np.nan}, {}, "PASS", "every check"),
        (
            {"comparable": False, "comparability": "share low"},
            {},
            "REVIEW",
            "not comparable: share low",
        ),
        ({"extrapolating": True}, {}, "REVIEW", "extrapolates"),
        (
            {"prediction": np.nan, "comparable": np.nan},
            {"min_share": 0.05},
            "REVIEW",
            "not assessed",
        ),
        ({"share_high": 0.04, "extrapolating": True}, {"min_share": 0.05}, "FAIL", "extrapolates"),
        # a small lot QC kept with a warning still has a share and a prediction: not passed
        ({"n_cells": 30}, {}, "REVIEW", "not assessed: fewer than 50 cells"),
        ({"n_cells": 50}, {}, "PASS", "every check"),
    ],
)
def test_verdicts_follow_the_stated_rule(changes, settings, expected, reason):
    decided, reasons = verdict(_row(**changes), AnalysisSettings(**settings))
    assert decided == expected
    assert reason in reasons


def test_the_rule_in_words_names_every_threshold():
    rule = verdict_rule(AnalysisSettings(min_share=0.05, min_potency=600, max_off_reference=0.2))
    for text in (
        "below 5.0%",
        "below 600",
        "more than 20%",
        "95% coverage",
        "excess-novel test",
        "PASS otherwise",
    ):
        assert text in rule
    assert verdict_rule(AnalysisSettings()).startswith("No FAIL rule")


def _stamped_lot_model(path, **uns):
    """A minimal lot model written and stamped as `write_lot_model` does."""
    import anndata as ad

    model = ad.AnnData(obs=pd.DataFrame({"vegf": [500.0, 700.0]}, index=["L1", "L2"]))
    for key in ("lot_fractions", "potency_association", "potency_markers", "potency_model"):
        model.uns[key] = {"params": {"x": 1}, "coef": np.array([0.5, 2.0])}
    model.uns["workflow"] = {"reference_hash": "a" * 32, **uns}
    model.write_h5ad(path)
    written = ad.read_h5ad(path)
    written.uns["workflow"]["lot_model_hash"] = lot_model_hash(written)
    written.write_h5ad(path)
    return path


def test_a_lot_model_of_another_reference_is_refused(tmp_path):
    _stamped_lot_model(tmp_path / "m.h5ad")
    with pytest.raises(ValueError, match="belongs to the reference with hash a{32}"):
        read_lot_model(tmp_path / "m.h5ad", "b" * 32)
    assert read_lot_model(tmp_path / "m.h5ad", "a" * 32).n_obs == 2
    with pytest.raises(FileNotFoundError, match="--lot-model"):
        read_lot_model(tmp_path / "none.h5ad", "a" * 32)


def test_a_lot_model_edited_after_writing_or_unstamped_is_refused(tmp_path):
    import anndata as ad

    path = _stamped_lot_model(tmp_path / "m.h5ad", settings={"min_share": 0.05})
    model = read_lot_model(path, "a" * 32)
    assert len(model.uns["workflow"]["lot_model_hash"]) == 32
    for edit in (
        lambda m: m.uns["potency_model"]["coef"].__setitem__(1, 2.5),  # a coefficient
        lambda m: m.obs.__setitem__("vegf", [500.0, 701.0]),  # a lot's potency
        lambda m: m.uns["workflow"]["settings"].__setitem__("min_share", 0.01),  # a setting
    ):
        edited = ad.read_h5ad(path)
        edit(edited)
        edited.write_h5ad(tmp_path / "edited.h5ad")
        with pytest.raises(ValueError, match="modified after it was written"):
            read_lot_model(tmp_path / "edited.h5ad", "a" * 32)
    unstamped = ad.read_h5ad(path)
    del unstamped.uns["workflow"]["lot_model_hash"]
    unstamped.write_h5ad(tmp_path / "old.h5ad")
    with pytest.raises(ValueError, match="no content hash"):
        read_lot_model(tmp_path / "old.h5ad", "a" * 32)


# -- the report from a notebook ------------------------------------------------------------


def test_report_of_a_notebook_analysis(tiny_ref, tmp_path):
    """``mp.report`` on AnnData analysed step by step (no workflow record, no UMAP)."""
    import mscpotency as mp

    adata = tiny_ref.copy()
    path = mp.report(adata, tmp_path / "out", title="Lots <2024> & co")
    page = path.read_text()
    cluster = adata.uns["potency_association"]["potency_cluster"]
    assert "<h1>Lots &lt;2024&gt; &amp; co</h1>" in page
    assert f"tracks vegf is {cluster}" in page
    assert "search (resolution scan, sub-clusters) was not run" in page
    assert "No UMAP in obsm" in page
    assert page.count("data:image/png;base64,") >= 4
    assert (tmp_path / "out" / "tables" / "potency_association.csv").is_file()
    assert adata.obs.equals(tiny_ref.obs)  # the report changes nothing


def test_analyse_with_harmony_clusters_the_corrected_cells_and_keeps_the_potency_population(
    tiny_train,
):
    """``integrate="harmony"``: clusters on the lot-corrected PCA, same potency population."""
    from mscpotency._workflow._analyse import analyse_adata

    adata = tiny_train.copy()
    settings = AnalysisSettings(
        integrate="harmony", search=False, stability=False, n_permutations=999
    )
    analyse_adata(adata, settings)
    assert adata.uns["cluster"]["params"]["use_rep"] == "X_pca_harmony"
    assert "X_pca_harmony" in adata.obsm and "metrics" in adata.uns["integrate"]
    params = adata.uns["integrate"]["params"]  # states of single lots held out of the fit
    assert params["lot_specific_key"] == "cluster_uncorrected" and params["theta"] == 4.0
    assert adata.uns["cluster_uncorrected"]["params"]["use_rep"] == "X_pca"
    potency = adata.obs["cluster"] == adata.uns["potency_association"]["potency_cluster"]
    true = adata.obs["true_potency_cell"].to_numpy(dtype=bool)
    assert 2 * (potency & true).sum() / (potency.sum() + true.sum()) >= 0.9
    assert ("cluster", "integrate", "harmony") in settings.table()


def test_an_unknown_integration_method_is_refused():
    with pytest.raises(ValueError, match="integrate must be one of"):
        AnalysisSettings(integrate="combat")


def test_the_report_says_which_lots_make_up_the_potency_cluster(tiny_ref):
    from mscpotency._workflow._report import summary_text

    text = " ".join(summary_text(tiny_ref))
    cluster = tiny_ref.uns["potency_association"]["potency_cluster"]
    assert f"{cluster} holds cells of" in text and "not dominated by any lot" in text
    adata = tiny_ref.copy()
    table = adata.uns["potency_association"]["table"]
    table.loc[cluster, ["lot_dominated", "top_lot_share"]] = [True, 0.9]
    assert "possible lot artefact" in " ".join(summary_text(adata))


# -- reading the inputs ----------------------------------------------------------------------
def _lots_and_table(tmp_path, tiny_train, rows: str):
    folder = tmp_path / "lots"
    folder.mkdir()
    for lot in ("BM01", "BM02", "BM03"):
        part = tiny_train[(tiny_train.obs["lot"] == lot).to_numpy()].copy()
        part.obs = part.obs[[]]
        part.X = part.layers.pop("counts")
        part.write_h5ad(folder / f"{lot}.h5ad")
    (tmp_path / "lots.csv").write_text("lot,vegf\n" + rows)
    return folder, tmp_path / "lots.csv"


def test_a_lot_without_potency_is_an_error_before_the_analysis(tmp_path, tiny_train):
    """An empty potency value failed only after QC, clustering and the association."""
    from mscpotency._workflow._analyse import read_inputs

    lots, table = _lots_and_table(tmp_path, tiny_train, "BM01,500\nBM02,\nBM03,700\n")
    with pytest.raises(ValueError, match=r"potency 'vegf' is missing.*\['BM02'\]"):
        read_inputs(lots, table, AnalysisSettings())


def test_lots_of_the_table_without_cells_are_in_the_reports_warnings(tmp_path, tiny_train):
    """A lot in the lot table with no cells was left out with one log line only."""
    from mscpotency._workflow._analyse import read_inputs

    rows = "BM01,500\nBM02,600\nBM03,700\nBM99,5000\n"
    lots, table = _lots_and_table(tmp_path, tiny_train, rows)
    adata = read_inputs(lots, table, AnalysisSettings())
    record = adata.uns["workflow"]
    assert record["lots_without_cells"] == ["BM99"]
    assert any("BM99" in w and "no cells" in w for w in record["warnings"])
    assert sorted(adata.obs["lot"].unique()) == ["BM01", "BM02", "BM03"]


def test_a_decimal_comma_in_the_potency_column_is_named(tmp_path, tiny_train):
    from mscpotency._workflow._analyse import read_inputs

    lots, table = _lots_and_table(tmp_path, tiny_train, "")
    table.write_text("lot;vegf\nBM01;12,5\nBM02;8\nBM03;7\n")
    with pytest.raises(ValueError, match=r"not numeric in every row: \{'BM01': '12,5'\}.*decimal"):
        read_inputs(lots, table, AnalysisSettings())


def test_lots_carrying_their_own_potency_column_take_the_lot_tables(tmp_path, tiny_train):
    """.h5ad lots with an old obs['vegf'] made analyse say "pass overwrite=True", an option
    of pp.add_lot_table that the command line does not have."""
    from mscpotency._workflow._analyse import read_inputs

    lots, table = _lots_and_table(tmp_path, tiny_train, "BM01,500\nBM02,600\nBM03,700\n")
    for lot in ("BM01", "BM02", "BM03"):
        part = ad.read_h5ad(lots / f"{lot}.h5ad")
        part.obs["vegf"] = 1.0
        part.write_h5ad(lots / f"{lot}.h5ad")
    adata = read_inputs(lots, table, AnalysisSettings())
    assert adata.obs.groupby("lot", observed=True)["vegf"].first().to_dict() == {
        "BM01": 500,
        "BM02": 600,
        "BM03": 700,
    }
    assert any("obs columns ['vegf'] were replaced" in w for w in adata.uns["workflow"]["warnings"])


def test_a_lot_table_kept_in_the_lots_folder_is_not_read_as_a_lot(tmp_path, tiny_train):
    from mscpotency._workflow._analyse import read_inputs

    lots, table = _lots_and_table(tmp_path, tiny_train, "BM01,500\nBM02,600\nBM03,700\n")
    inside = lots / "lot_table.csv"
    inside.write_text(table.read_text())
    adata = read_inputs(lots, inside, AnalysisSettings())
    assert sorted(adata.obs["lot"].unique()) == ["BM01", "BM02", "BM03"]


def test_lots_without_a_measured_potency_say_the_validation_was_skipped():
    """A blank or text potency for one new lot silently dropped the validation of all."""
    from anndata import AnnData

    from mscpotency._workflow._release import _measured

    obs = pd.DataFrame(
        {"lot": ["A", "A", "B", "C"], "vegf": [1.0, 1.0, np.nan, 3.0]}, index=list("abcd")
    )
    query = AnnData(np.zeros((4, 1)), obs=obs)
    assert not _measured(query, "vegf", "lot")
    assert "lots ['B'] have no numeric value" in query.uns["workflow"]["warnings"][0]
    query.obs["vegf"] = [1.0, 1.0, 2.0, 3.0]
    del query.uns["workflow"]
    assert _measured(query, "vegf", "lot") and "workflow" not in query.uns
