"""tl.cluster_quality: clusters of damaged cells flagged against the simulator's truth."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData

import mscpotency as mp
from mscpotency._stored import LowQualityClusterWarning
from mscpotency.tl._population._cluster_quality import cluster_quality_table, lot_mads


def _obs(rng, lots: list[str], n: int, genes: float, counts: float, cluster: str) -> pd.DataFrame:
    """``n`` cells per lot whose QC metrics scatter log-normally around the given medians."""
    rows = len(lots) * n
    return pd.DataFrame(
        {
            "lot": np.repeat(lots, n),
            "cluster": cluster,
            "n_genes_by_counts": np.round(genes * np.exp(rng.normal(0, 0.1, rows))),
            "total_counts": np.round(counts * np.exp(rng.normal(0, 0.15, rows))),
        }
    )


def _table(obs: pd.DataFrame, n_mads: float = 3.0) -> pd.DataFrame:
    labels = obs["cluster"].astype("category")
    return cluster_quality_table(obs, labels, obs["lot"], n_mads)


def test_the_study_presets_damaged_cells_are_the_flagged_cluster(study_ref):
    """The fixed QC keeps 137 of the study reference's simulated low-quality cells; Leiden
    spends one of its 8 clusters on them. That cluster, and only it, is flagged: its cells
    are exactly the simulated low-quality cells kept (precision and recall 1)."""
    with pytest.warns(LowQualityClusterWarning, match=r"CL7: 137 cells, median 291 genes"):
        adata = mp.tl.cluster_quality(study_ref, copy=True)
    table = mp.get.cluster_quality(adata)
    truth = adata.obs["true_low_quality"].to_numpy()
    flagged = adata.obs["cluster_quality"].to_numpy()
    assert truth.sum() > 100
    assert np.array_equal(flagged, truth)
    assert table.index[table["low_quality"]].tolist() == ["CL7"]
    assert table.loc["CL7", "genes_mads"] < -8 and table.loc["CL7", "pct_mito_mads"] > 30
    others = table.drop(index="CL7")
    assert others[["genes_mads", "counts_mads"]].abs().max().max() < 0.5
    summary = mp.get.cluster_quality(adata, kind="summary").iloc[0]
    assert summary["n_cells_low_quality"] == truth.sum()
    assert summary["share_low_quality"] == pytest.approx(truth.mean())
    assert adata.uns["cluster_quality"]["params"] == {
        "cluster_key": "cluster",
        "lot_key": "lot",
        "n_mads": 3.0,
    }
    assert "cluster_quality" not in study_ref.obs  # copy=True left the fixture alone


def test_clean_clusters_are_not_flagged_and_nothing_is_said(tiny_ref):
    adata = tiny_ref.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mp.tl.cluster_quality(adata)
    assert not adata.obs["cluster_quality"].any()
    assert not mp.get.cluster_quality(adata)["low_quality"].any()


def test_a_lot_sequenced_shallower_is_not_damage_but_a_damaged_cluster_is():
    """Each cell is compared with its own lot. A lot at a third of the depth (its own
    cluster, as lot effects make) is not flagged; compared with the pooled cells instead
    it would be. A cluster of damaged cells inside the deep lot is flagged."""
    rng = np.random.default_rng(0)
    obs = pd.concat(
        [
            _obs(rng, ["deep"], 1200, 1000, 6000, "A"),
            _obs(rng, ["shallow"], 200, 500, 2000, "B"),
            _obs(rng, ["deep"], 30, 300, 600, "damaged"),
        ],
        ignore_index=True,
    )
    by_lot = _table(obs)
    assert by_lot["low_quality"].to_dict() == {"A": False, "B": False, "damaged": True}
    pooled = _table(obs.assign(lot="one"))
    assert pooled.loc["B", "low_quality"]  # what a comparison with the pool would say


def test_both_genes_and_counts_must_be_low():
    """A state with fewer genes but normal counts (a specialised, low-complexity cell) is
    not damage; n_mads sets how far the median cell must lie."""
    rng = np.random.default_rng(1)
    obs = pd.concat(
        [
            _obs(rng, ["L1", "L2"], 300, 1000, 6000, "A"),
            _obs(rng, ["L1", "L2"], 40, 300, 6000, "specialised"),
            _obs(rng, ["L1", "L2"], 40, 800, 4500, "a little lower"),
        ],
        ignore_index=True,
    )
    table = _table(obs)
    assert not table["low_quality"].any()
    assert table.loc["specialised", "genes_mads"] < -3
    assert _table(obs, n_mads=1.0).loc["a little lower", "low_quality"]


def test_lot_mads_of_a_lot_that_does_not_vary_are_zero():
    values = np.array([5.0, 5.0, 5.0, 1.0, 2.0, 3.0])
    lots = np.array(["a", "a", "a", "b", "b", "b"])
    assert lot_mads(values, lots).tolist() == pytest.approx([0, 0, 0, -1 / 1.4826, 0, 1 / 1.4826])


def test_mapped_labels_flag_the_query_cells_mapped_onto_damaged_cells(study_ref, study_all):
    """Query cells whose transferred label is the reference's cluster of damaged cells are
    the query's own damaged cells: the flag works on transferred labels too."""
    query = study_all[study_all.obs["set"] == "BM-test"].copy()
    mp.pp.qc(query)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        mp.tl.map_to_reference(query, study_ref, method="fast")
    with pytest.warns(LowQualityClusterWarning, match="obs\\['predicted'\\]"):
        mp.tl.cluster_quality(query, cluster_key="predicted")
    flagged = query.obs["cluster_quality"].to_numpy()
    truth = query.obs["true_low_quality"].to_numpy()
    assert truth.sum() >= 10
    assert np.array_equal(flagged, truth)


def test_bad_input(tiny_ref):
    bare = AnnData(obs=tiny_ref.obs[["lot", "cluster"]].copy())
    with pytest.raises(KeyError, match="n_genes_by_counts.*Run mp.pp.qc first"):
        mp.tl.cluster_quality(bare)
    with pytest.raises(KeyError, match="no column 'leiden'"):
        mp.tl.cluster_quality(tiny_ref, cluster_key="leiden", copy=True)
    with pytest.raises(ValueError, match="n_mads"):
        mp.tl.cluster_quality(tiny_ref, n_mads=0, copy=True)


def test_the_association_says_when_its_potency_cluster_is_damaged_cells(study_ref):
    """Potency made to follow the damaged cells' share: the association names their cluster,
    and says it is damaged cells when tl.cluster_quality flagged it on the same labels."""
    adata = study_ref.copy()
    with pytest.warns(LowQualityClusterWarning):
        mp.tl.cluster_quality(adata)
    share = adata.obs.groupby("lot", observed=True)["cluster_quality"].mean()
    adata.obs["viability_driven"] = adata.obs["lot"].map(share).astype(float)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mp.tl.potency_association(adata, "viability_driven")
    result = adata.uns["potency_association"]
    assert result["potency_cluster"] == "CL7" and result["low_quality"]
    assert "cluster of damaged cells" in result["message"]
    assert any(issubclass(w.category, LowQualityClusterWarning) for w in caught)
    mp.tl.potency_association(adata, "vegf")  # the true potency cluster: nothing said
    assert not adata.uns["potency_association"]["low_quality"]
