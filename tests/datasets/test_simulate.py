"""The simulator: shapes, truth columns, reproducibility, and the planted signal."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse, stats

import mscpotency as mp
from mscpotency.datasets import simulate_lots, tiny_config


def test_tiny_has_the_study_arms_and_truth(tiny_all):
    obs = tiny_all.obs
    assert list(obs["set"].cat.categories) == ["BM-train", "BM-test", "AD", "UC"]
    assert obs.groupby("set", observed=True)["lot"].nunique().to_dict() == {
        "BM-train": 8,
        "BM-test": 3,
        "AD": 2,
        "UC": 2,
    }
    for column in (
        "true_subpopulation",
        "true_potency_cell",
        "true_low_quality",
        "true_potency_fraction",
    ):
        assert column in obs
    assert (obs["true_potency_cell"] == (obs["true_subpopulation"] == "SP3")).all()
    assert tiny_all.uns["simulation"]["marker_gene"] == "LRRC75A"
    for gene in ("LRRC75A", "THY1", "ENG", "NT5E", "VEGFA", "MKI67"):
        assert gene in tiny_all.var_names


def test_counts_are_sparse_integers_in_x_and_layer(tiny_all):
    X = tiny_all.X
    assert sparse.issparse(X)
    assert np.array_equal(X.data, np.round(X.data)) and (X.data >= 0).all()
    assert (tiny_all.layers["counts"] != X).nnz == 0


def test_same_seed_same_counts_bit_for_bit():
    a, b = mp.datasets.tiny(random_state=3), mp.datasets.tiny(random_state=3)
    assert (a.X != b.X).nnz == 0
    assert a.obs.equals(b.obs)
    c = mp.datasets.tiny(random_state=4)
    assert (a.X != c.X).nnz > 0


def test_potency_tracks_the_potency_fraction(study_all):
    lots = study_all.obs.groupby("lot", observed=True)[["vegf", "true_potency_fraction"]].first()
    rho = stats.spearmanr(lots["vegf"], lots["true_potency_fraction"])[0]
    assert rho > 0.8
    fractions = study_all.obs.groupby("lot", observed=True)["true_potency_cell"].mean()
    np.testing.assert_allclose(fractions, lots["true_potency_fraction"], atol=0.04)


def test_null_study_breaks_the_link():
    null = mp.datasets.tiny(potency_slope=0.0, random_state=1)
    lots = null.obs.groupby("lot", observed=True)[["vegf", "true_potency_fraction"]].first()
    slope = np.polyfit(lots["true_potency_fraction"], lots["vegf"], 1)[0]
    assert abs(slope) < 4000  # the effect of a real study is 4000 per unit fraction


def test_marker_is_higher_in_potency_cells_and_weaker_in_uc(tiny_all):
    counts = tiny_all[:, "LRRC75A"].X.toarray().ravel() / np.asarray(tiny_all.X.sum(axis=1)).ravel()
    obs = tiny_all.obs.assign(marker=counts * 1e4)
    potency = obs[obs["true_potency_cell"]]
    assert potency["marker"].mean() > 4 * obs.loc[~obs["true_potency_cell"], "marker"].mean()
    by_tissue = potency.groupby("tissue", observed=True)["marker"].mean()
    assert by_tissue["UC"] < 0.6 * by_tissue["BM"]


def test_study_preset_shape(study_all):
    assert study_all.shape == (36_000, 2_000)
    assert study_all.obs["lot"].nunique() == 24


def test_low_quality_cells_have_few_counts_and_high_mito(tiny_all):
    mito = tiny_all.var_names.str.startswith("MT-")
    total = np.asarray(tiny_all.X.sum(axis=1)).ravel()
    pct_mito = np.asarray(tiny_all.X[:, mito].sum(axis=1)).ravel() / total
    bad = tiny_all.obs["true_low_quality"].to_numpy()
    assert bad.any()
    assert np.median(total[bad]) < 0.3 * np.median(total[~bad])
    assert np.median(pct_mito[bad]) > 3 * np.median(pct_mito[~bad])


def test_too_few_genes_is_an_error():
    with pytest.raises(ValueError, match="no room"):
        simulate_lots(tiny_config(n_genes=100))


def test_iter_lots_yields_the_same_population_one_lot_at_a_time():
    import anndata as ad

    config = tiny_config()
    lots = list(mp.datasets.iter_lots(config, random_state=5))
    pooled = simulate_lots(config, random_state=5)
    assert [lot.obs["lot"].iloc[0] for lot in lots] == list(pooled.obs["lot"].cat.categories)
    for lot in lots:
        assert lot.n_obs == config.n_cells_per_lot and lot.obs["lot"].nunique() == 1
        assert sparse.issparse(lot.X) and np.array_equal(lot.X.data, np.round(lot.X.data))
        assert lot.var.equals(pooled.var)  # the same genes and programmes
    # reproducible lot by lot; another seed gives other lots
    again = next(iter(mp.datasets.iter_lots(config, random_state=5)))
    assert (again.X != lots[0].X).nnz == 0 and again.obs.equals(lots[0].obs)
    other = next(iter(mp.datasets.iter_lots(config, random_state=6)))
    assert (other.X != lots[0].X).nnz > 0
    # drawn like simulate_lots: the same depth, and potency still follows the SP3 share
    combined = ad.concat(lots, merge="same")
    ratio = combined.X.sum() / pooled.X.sum()
    assert 0.9 < ratio < 1.1
    per_lot = combined.obs.groupby("lot", observed=True)[["vegf", "true_potency_fraction"]].first()
    assert stats.spearmanr(per_lot["vegf"], per_lot["true_potency_fraction"])[0] > 0.8
    assert np.isclose(
        combined.obs["true_potency_cell"].mean(), pooled.obs["true_potency_cell"].mean(), atol=0.03
    )


def test_lots_from_iter_lots_go_through_the_reference_analysis():
    import anndata as ad

    config = tiny_config(sets=(mp.datasets.SetSpec("BM-train", 8, "BM", "BM"),))
    adata = ad.concat(list(mp.datasets.iter_lots(config, random_state=0)), merge="same")
    adata.obs["lot"] = adata.obs["lot"].astype("category")
    mp.pp.qc(adata)
    mp.pp.preprocess(adata)
    mp.tl.cluster(adata, n_clusters=8)
    mp.tl.lot_fractions(adata)
    mp.tl.potency_association(adata, "vegf")
    mp.tl.potency_markers(adata)
    potency = adata.uns["potency_association"]["potency_cluster"]
    in_cluster = (adata.obs["cluster"] == potency).to_numpy()
    truth = adata.obs["true_potency_cell"].to_numpy()
    assert 2 * (in_cluster & truth).sum() / (in_cluster.sum() + truth.sum()) > 0.9
    assert mp.get.potency_markers(adata)["gene"].iloc[0] == "LRRC75A"


def test_lot_names_sort_in_lot_order_beyond_99_lots():
    config = tiny_config(
        sets=(mp.datasets.SetSpec("BM-train", 120, "BM", "BM"),), n_cells_per_lot=5
    )
    names = [lot.obs["lot"].iloc[0] for lot in mp.datasets.iter_lots(config)]
    assert names[0] == "BM001" and names[-1] == "BM120" and names == sorted(names)
    assert list(mp.datasets.tiny().obs["lot"].cat.categories)[:2] == [
        "BM01",
        "BM02",
    ]  # presets unchanged


# --------------------------------------------------------------------------- the hard preset
def _small_hard(**overrides):
    """The hard preset's biology on 4 small lots (fast): the same programmes and continuum."""
    config = mp.datasets.hard_config(
        sets=(mp.datasets.SetSpec("BM-train", 4, "BM", "BM"),), n_cells_per_lot=600, **overrides
    )
    return simulate_lots(config, random_state=0)


def test_hard_preset_plants_a_transitional_state():
    adata = _small_hard()
    obs = adata.obs
    potency = obs["true_potency_cell"].to_numpy()
    commitment = obs["true_commitment"].to_numpy()
    assert (commitment[~potency] == 0).all()
    moving = commitment > 0
    # a quarter of the potency cells, within binomial error (n ~ 230: 4 SE ~ 0.11)
    assert abs(moving[potency].mean() - 0.25) < 0.11
    assert ((commitment[moving] >= 0.2) & (commitment[moving] <= 0.8)).all()
    assert (obs["true_subpopulation"][moving] == "SP3").all()
    settings = adata.uns["simulation"]
    assert settings["preset"] == "hard" and settings["transitional_share"] == 0.25
    assert list(settings["close_pair"]) == ["SP4", "SP3"]


def test_transitional_cells_lose_the_marker_and_move_towards_the_neighbour():
    adata = _small_hard()
    per_cell = np.asarray(adata.X.sum(axis=1)).ravel()
    marker = adata[:, "LRRC75A"].X.toarray().ravel() / per_cell * 1e4
    obs = adata.obs.assign(marker=marker)
    core = obs["true_potency_cell"] & (obs["true_commitment"] == 0)
    committed = obs["true_commitment"] > 0.5
    assert obs.loc[committed, "marker"].mean() < 0.6 * obs.loc[core, "marker"].mean()
    # the neighbour's programme (genes SP4 has and SP3 has not) rises with commitment
    programmes = adata.var["true_program"].astype(str)
    own_sp4 = programmes.str.contains("SP4") & ~programmes.str.contains("SP3")
    score = np.asarray(adata[:, own_sp4.to_numpy()].X.sum(axis=1)).ravel() / per_cell
    obs = obs.assign(sp4=score)
    sp4 = obs["true_subpopulation"] == "SP4"
    assert (
        obs.loc[core, "sp4"].mean() < obs.loc[committed, "sp4"].mean() < obs.loc[sp4, "sp4"].mean()
    )


def test_presets_without_a_transitional_state_are_unchanged():
    """The transitional state draws nothing when its share is 0: tiny keeps its counts."""
    import hashlib

    tiny = mp.datasets.tiny(random_state=0)
    assert float(tiny.X.sum()) == 14273373.0
    assert hashlib.sha256(tiny.X.data.tobytes()).hexdigest()[:16] == "68ffa6ed1ceb951b"
    assert (tiny.obs["true_commitment"] == 0).all()
    assert tiny.uns["simulation"]["transitional_share"] == 0.0


def test_hard_preset_shape_and_null():
    config = mp.datasets.hard_config()
    assert [s.name for s in config.sets] == ["BM-train", "BM-test", "AD", "UC"]
    assert config.potency_fraction_range == (0.03, 0.16)
    null = _small_hard(potency_slope=0.0)
    assert "true_commitment" in null.obs
    with pytest.raises(ValueError, match="transitional_target"):
        _small_hard(transitional_target="SP99")
