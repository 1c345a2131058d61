"""Pseudobulk markers (lots as replicates) and per-gene association with potency."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import mscpotency as mp
from mscpotency.tl._robustness._pseudobulk import log_cpm, pseudobulk, signed_rank_test


def test_signed_rank_kernel_equals_scipy_exact_without_ties():
    rng = np.random.default_rng(0)
    d = rng.normal(0.3, 1, size=(9, 40))
    _, pvalue, method = signed_rank_test(d)
    assert method == "exact"
    expected = stats.wilcoxon(d, axis=0, method="exact").pvalue
    np.testing.assert_allclose(pvalue, expected)
    # ties and zeros stay exact: all-positive columns reach the floor 2 / 2^n
    tied = np.vstack([np.ones((6, 1)), np.zeros((1, 1))])
    assert signed_rank_test(tied)[1][0] == pytest.approx(2 / 2**6)
    assert np.isnan(signed_rank_test(np.zeros((6, 1)))[1][0])


def test_pseudobulk_sums_counts_per_lot(tiny_ref):
    lots = tiny_ref.obs["lot"].cat.codes.to_numpy()
    summed, n_cells = pseudobulk(tiny_ref.layers["counts"], lots, 8)
    manual = pd.DataFrame(tiny_ref.layers["counts"].toarray()).groupby(lots).sum().to_numpy()
    np.testing.assert_allclose(summed, manual)
    assert n_cells.sum() == tiny_ref.n_obs
    cpm = log_cpm(summed)
    np.testing.assert_allclose((2**cpm - 1).sum(axis=1), 1e6)


def test_pseudobulk_markers_rank_the_true_marker_first(tiny_ref):
    adata = tiny_ref.copy()
    mp.tl.pseudobulk_markers(adata)
    table = mp.get.pseudobulk_markers(adata)
    assert table.index[0] == "LRRC75A"  # the simulator's marker of the potency subpopulation
    top = table.iloc[0]
    assert top["n_lots_up"] == top["n_lots"] and top["pvalue"] == pytest.approx(
        2 / 2 ** top["n_lots"]
    )
    # lots with < 10 potency cells are left out (BM04 has a handful), and said so
    used = adata.uns["pseudobulk_markers"]["params"]["lots_used"]
    counts = mp.get.lot_fractions(adata, kind="counts")[adata.uns["pseudobulk_markers"]["cluster"]]
    assert set(used) == set(counts.index[counts >= 10])
    # cell-level rank from potency_markers sits beside the pseudobulk rank
    assert table.loc["LRRC75A", "cell_rank"] == 1
    true_program = adata.var.loc[table.index[:20], "true_program"]
    assert true_program.str.contains("SP3").mean() >= 0.8
    assert list(adata.uns["pseudobulk_markers"]["log2fc"].columns[:1]) == ["LRRC75A"]


def test_gene_association_within_lot_finds_the_marker(tiny_ref):
    adata = tiny_ref.copy()
    mp.tl.gene_association(adata, within="lot")
    table = mp.get.gene_association(adata)
    assert (table["pvalue_method"] == "exact").all()
    assert table.loc["LRRC75A", "rho"] > 0.7 and table.loc["LRRC75A", "rank"] <= 25
    top = table.head(20)
    assert top["gene"].map(adata.var["true_program"]).str.contains("SP3").sum() >= 5
    assert adata.uns["gene_association"]["cluster"] is None


def test_gene_association_within_cluster_and_copy(tiny_ref):
    adata = tiny_ref.copy()
    cluster = adata.uns["potency_association"]["potency_cluster"]
    fewest = int(mp.get.lot_fractions(adata, kind="counts")[cluster].min())
    with pytest.raises(ValueError, match=f"fewer than {fewest + 1} cells in cluster"):
        mp.tl.gene_association(adata, min_cells=fewest + 1)
    returned = mp.tl.gene_association(adata, min_cells=min(fewest, 5), copy=True)
    assert "gene_association" not in adata.uns
    table = mp.get.gene_association(returned)
    assert (
        returned.uns["gene_association"]["cluster"]
        == adata.uns["potency_association"]["potency_cluster"]
    )
    # the simulator's marker level inside SP3 does not depend on potency: no within-cluster signal
    assert table.loc["LRRC75A", "pvalue"] > 0.01
    assert np.isfinite(table["fdr"]).all()


def test_pseudobulk_validation(tiny_ref):
    adata = tiny_ref.copy()
    with pytest.raises(KeyError, match="layers has no 'raw'"):
        mp.tl.pseudobulk_markers(adata, layer="raw")
    with pytest.raises(ValueError, match="non-integer"):
        mp.tl.pseudobulk_markers(adata, layer=None)  # X is log-normalised
    with pytest.raises(ValueError, match="unknown cluster"):
        mp.tl.pseudobulk_markers(adata, "CLX")
    with pytest.raises(ValueError, match="needs at least 9 lots, got 7"):
        mp.tl.pseudobulk_markers(adata, min_lots=9)
    with pytest.raises(ValueError, match="within must be"):
        mp.tl.gene_association(adata, within="set")
    with pytest.raises(ValueError, match="min_lots_expressed"):
        mp.tl.gene_association(adata, within="lot", min_lots_expressed=2)
    lots = mp.get.potency_association(adata, kind="lots")
    with pytest.raises(ValueError, match="same for every lot"):
        mp.tl.gene_association(adata, dict.fromkeys(lots.index, 1.0), within="lot")
    missing = lots["vegf"].copy()
    missing.iloc[0] = np.nan
    with pytest.raises(ValueError, match="missing, non-numeric"):
        mp.tl.gene_association(adata, missing, within="lot")
    tied = lots["vegf"].copy()
    tied.iloc[:4] = tied.iloc[0]
    mp.tl.gene_association(adata, tied, within="lot", key_added="tied")  # exact p handles ties
    assert (mp.get.gene_association(adata, key="tied")["pvalue"] <= 1).all()
    few = adata[adata.obs["lot"].isin(["BM01", "BM02"])].copy()
    with pytest.raises(ValueError, match="at least 3 lots"):
        mp.tl.gene_association(few, within="lot")
