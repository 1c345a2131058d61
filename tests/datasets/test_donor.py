"""The donor-effect preset: strong lot and site shifts, one lot-specific state, truth as elsewhere."""

from __future__ import annotations

import numpy as np
import pytest

import mscpotency as mp
from mscpotency.datasets import donor_config, simulate_donor_lots


@pytest.fixture(scope="module")
def small_donor():
    return simulate_donor_lots(donor_config(n_cells_per_lot=200), random_state=3)


def test_shape_truth_and_sites(small_donor):
    adata = small_donor
    assert adata.shape == (12 * 200, 1000)
    assert adata.obs.groupby("site", observed=True)["lot"].nunique().to_dict() == {
        "site-A": 6,
        "site-B": 6,
    }
    for column in ("true_subpopulation", "true_potency_cell", "true_lot_specific"):
        assert column in adata.obs
    assert adata.var["true_site_gene"].any() and adata.var["true_donor_gene"].any()
    assert (adata.layers["counts"] != adata.X).nnz == 0


def test_lot_specific_state_lives_in_the_most_potent_lot_only(small_donor):
    obs = small_donor.obs
    chosen = small_donor.uns["simulation"]["lot_specific_lot"]
    carriers = obs.loc[obs["true_lot_specific"], "lot"].astype(str).unique()
    assert list(carriers) == [chosen]
    assert obs.groupby("lot", observed=True)["vegf"].first().idxmax() == chosen
    share = obs.loc[obs["lot"] == chosen, "true_lot_specific"].mean()
    assert share == pytest.approx(0.25, abs=0.07)
    # the potency fraction of that lot is kept (the state takes from other populations)
    lot = obs[obs["lot"] == chosen]
    assert lot["true_potency_cell"].mean() == pytest.approx(
        lot["true_potency_fraction"].iloc[0], abs=0.06
    )


def test_same_seed_same_counts_and_settings_recorded():
    config = donor_config(n_cells_per_lot=50)
    first = simulate_donor_lots(config, random_state=1)
    second = simulate_donor_lots(config, random_state=1)
    assert (first.X != second.X).nnz == 0
    settings = first.uns["simulation"]
    assert settings["preset"] == "donor" and settings["site_shift_sd"] == 0.5
    assert settings["lot_specific_share"] == 0.25


def test_donor_genes_shift_lots_more_than_in_the_study():
    config = donor_config(n_cells_per_lot=50)
    assert config.donor_gene_share > mp.datasets.study_config().donor_gene_share
    assert config.donor_sd > mp.datasets.study_config().donor_sd


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="lot_specific_share must lie between 0 and 1"):
        simulate_donor_lots(donor_config(n_cells_per_lot=50, lot_specific_share=1.5))
    with pytest.raises(ValueError, match="reserved"):
        simulate_donor_lots(
            donor_config(
                n_cells_per_lot=50,
                subpopulations=("SP1", "SP2", "SP3", "SP4", "SP5", "SP6", "SP7", "LS"),
            )
        )
    assert np.isfinite(donor_config().extra["site_gene_share"])
