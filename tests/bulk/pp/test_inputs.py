"""Bulk inputs as labs have them: probes, CAGE promoter counts, qRT-PCR Ct/ΔCt tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData

import mscpotency as mp


@pytest.fixture
def probes() -> tuple[AnnData, pd.DataFrame]:
    """4 lines x 5 probes: gene A has 2 probes, B has 2, C 1, one probe unannotated."""
    X = np.array(
        [
            [5.0, 9.0, 1.0, 2.0, 7.0],
            [6.0, 8.0, 2.0, 1.0, 6.0],
            [7.0, 10.0, 3.0, 3.0, 5.0],
            [8.0, 11.0, 4.0, 5.0, 4.0],
        ]
    )
    names = ["p1", "p2", "p3", "p4", "p5"]
    adata = AnnData(
        X, obs=pd.DataFrame(index=[f"L{i}" for i in range(4)]), var=pd.DataFrame(index=names)
    )
    annotation = pd.DataFrame({"gene_symbol": ["A", "A", "B", "B", ""]}, index=names)
    return adata, annotation


def test_collapse_probes_keeps_the_highest_mean_probe_and_the_mapping(probes):
    adata, annotation = probes
    genes = mp.bulk.pp.collapse_probes(adata, annotation)
    assert genes.var_names.tolist() == ["A", "B"]
    np.testing.assert_array_equal(genes[:, "A"].X.ravel(), adata[:, "p2"].X.ravel())
    # B: p3 mean 2.5, p4 mean 2.75 -> p4
    np.testing.assert_array_equal(genes[:, "B"].X.ravel(), adata[:, "p4"].X.ravel())
    assert genes.var.loc["A", "feature"] == "p2"
    assert genes.var["n_features"].tolist() == [2, 2]
    mapping = genes.uns["feature_mapping"]
    assert mapping["method"] == "max_mean"
    assert mapping["dropped"] == ["p5"]
    assert mapping["table"].loc["p1", "gene"] == "A"
    assert not mapping["table"].loc["p1", "kept"]


def test_collapse_probes_mean_rule(probes):
    adata, annotation = probes
    genes = mp.bulk.pp.collapse_probes(adata, annotation["gene_symbol"], method="mean")
    np.testing.assert_allclose(genes[:, "A"].X.ravel(), adata[:, ["p1", "p2"]].X.mean(axis=1))
    assert genes.var.loc["B", "feature"] == "p3;p4"


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"annotation": None}, KeyError, "no column 'gene_symbol'"),
        ({"annotation": pd.DataFrame({"symbol": ["A"] * 5})}, KeyError, "no column 'gene_symbol'"),
        ({"annotation": pd.Series(["A"], index=["p1"])}, KeyError, "not in the annotation"),
        ({"method": "median"}, ValueError, "method"),
    ],
)
def test_collapse_probes_bad_input(probes, kwargs, error, match):
    adata, annotation = probes
    kwargs = {"annotation": annotation, **kwargs}
    with pytest.raises(error, match=match):
        mp.bulk.pp.collapse_probes(adata, **kwargs)


@pytest.fixture
def cage() -> tuple[AnnData, pd.Series]:
    counts = np.array([[100, 300, 600, 0], [10, 30, 50, 10], [1000, 0, 9000, 0]], dtype=float)
    names = ["p1@A", "p2@A", "p1@B", "p1@C"]
    adata = AnnData(
        counts, obs=pd.DataFrame(index=["L1", "L2", "L3"]), var=pd.DataFrame(index=names)
    )
    return adata, pd.Series(["A", "A", "B", ""], index=names)


def test_normalize_cage_cpm_and_gene_sums(cage):
    adata, annotation = cage
    promoters = mp.bulk.pp.normalize_cage(adata)
    cpm = adata.X / adata.X.sum(axis=1, keepdims=True) * 1e6
    np.testing.assert_allclose(promoters.X, np.log2(cpm + 1))
    genes = mp.bulk.pp.normalize_cage(adata, annotation)
    assert genes.var_names.tolist() == ["A", "B"]
    np.testing.assert_allclose(genes[:, "A"].X.ravel(), np.log2(cpm[:, 0] + cpm[:, 1] + 1))
    np.testing.assert_allclose(genes.obs["library_size"], adata.X.sum(axis=1))
    assert genes.uns["feature_mapping"]["dropped"] == ["p1@C"]
    assert genes.uns["feature_mapping"]["kind"] == "promoters"


def test_normalize_cage_refuses_values_that_are_not_counts(cage):
    adata, _ = cage
    logged = AnnData(np.log2(adata.X + 1), obs=adata.obs, var=adata.var)
    with pytest.raises(ValueError, match="raw tag counts"):
        mp.bulk.pp.normalize_cage(logged)


def test_rank_association_refuses_raw_counts():
    rng = np.random.default_rng(0)
    counts = rng.poisson(200, size=(6, 1000)).astype(float)
    adata = AnnData(
        counts, obs=pd.DataFrame({"y": np.arange(6.0)}, index=[f"L{i}" for i in range(6)])
    )
    with pytest.raises(ValueError, match="raw counts.*normalize_cage"):
        mp.bulk.tl.rank_association(adata, "y")
    normalised = mp.bulk.pp.normalize_cage(adata)
    mp.bulk.tl.rank_association(normalised, "y")


@pytest.fixture
def ct_table() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "GAPDH": [18.0, 19.0, 17.0],
            "PAX6": [25.0, "Undetermined", 24.0],
            "SOX1": [30.0, 31.0, 29.5],
        },
        index=["L1", "L2", "L3"],
    )


def test_qpcr_panel_ct_to_negative_delta_ct_with_the_cutoff_rule(ct_table):
    panel = mp.bulk.pp.qpcr_panel(ct_table, values="ct", reference_genes=["GAPDH"], ct_cutoff=40)
    assert panel.var_names.tolist() == ["PAX6", "SOX1"]
    np.testing.assert_allclose(panel[:, "PAX6"].X.ravel(), [18 - 25, 19 - 40, 17 - 24])
    np.testing.assert_allclose(panel[:, "SOX1"].X.ravel(), [-12, -12, -12.5])
    assert panel.uns["qpcr"]["n_undetermined"] == 1
    assert panel.uns["qpcr"]["unit"] == "-dct"


def test_qpcr_panel_delta_ct_rules(ct_table):
    delta = ct_table.drop(columns="GAPDH")
    panel = mp.bulk.pp.qpcr_panel(delta, values="delta_ct")
    # the undetermined well takes the gene's largest determined ΔCt (25), negated
    np.testing.assert_allclose(panel[:, "PAX6"].X.ravel(), [-25, -25, -24])
    with pytest.warns(UserWarning, match=r"\['PAX6'\].*dropped"):
        dropped = mp.bulk.pp.qpcr_panel(delta, values="delta_ct", undetermined="drop")
    assert dropped.var_names.tolist() == ["SOX1"]
    assert dropped.uns["qpcr"]["dropped"]["reason"].tolist() == ["undetermined"]
    with pytest.raises(ValueError, match="1 'Undetermined' wells"):
        mp.bulk.pp.qpcr_panel(delta, values="delta_ct", undetermined="error")


@pytest.mark.parametrize(
    ("change", "kwargs", "match"),
    [
        (
            {"SOX1": [30.0, None, 29.5]},
            {"values": "ct", "reference_genes": ["GAPDH"]},
            "1 blank wells",
        ),
        (
            {"SOX1": [30.0, "n.d.", 29.5]},
            {"values": "ct", "reference_genes": ["GAPDH"]},
            r"'n\.d\.'",
        ),
        (
            {"GAPDH": [18.0, "Undetermined", 17.0]},
            {"values": "ct", "reference_genes": ["GAPDH"]},
            "reference-gene wells",
        ),
        ({}, {"values": "ct"}, "needs reference_genes"),
        ({}, {"values": "ct", "reference_genes": ["ACTB"]}, "not columns"),
        ({}, {"values": "cq"}, "values must be"),
    ],
)
def test_qpcr_panel_bad_tables(ct_table, change, kwargs, match):
    table = ct_table.copy().astype(object)
    for column, values in change.items():
        table[column] = values
    with pytest.raises((ValueError, KeyError), match=match):
        mp.bulk.pp.qpcr_panel(table, **kwargs)


def test_qpcr_panel_blank_genes_can_be_dropped(ct_table):
    table = ct_table.astype(object)
    table["SOX1"] = [30.0, "", 29.5]
    with pytest.warns(UserWarning, match="blank"):
        panel = mp.bulk.pp.qpcr_panel(table, values="ct", reference_genes=["GAPDH"], missing="drop")
    assert panel.var_names.tolist() == ["PAX6"]


def test_qpcr_panel_warns_when_the_declared_sign_is_implausible(ct_table):
    delta = ct_table.drop(columns="GAPDH")
    delta.loc["L2", "PAX6"] = 12.0
    with pytest.warns(UserWarning, match="other sign"):
        mp.bulk.pp.qpcr_panel(delta, values="neg_delta_ct")
