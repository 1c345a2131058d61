"""Lot-specificity diagnostics: the kernel on count tables, the stored result, the association flag."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import mscpotency as mp
from mscpotency._stored import LotDominatedWarning, NotSignificantWarning, potency_cluster
from mscpotency.tl._population._lot_specificity import (
    lot_cluster_ari,
    lot_specificity_table,
)


def _counts(matrix, lots=None, clusters=None) -> pd.DataFrame:
    matrix = np.asarray(matrix, dtype=float)
    lots = lots or [f"L{i}" for i in range(matrix.shape[0])]
    clusters = clusters or [f"C{j}" for j in range(matrix.shape[1])]
    return pd.DataFrame(matrix, index=lots, columns=clusters)


def test_one_lot_cluster_is_flagged_and_mixed_clusters_are_not():
    rng = np.random.default_rng(0)
    mixed = rng.poisson(100, size=(10, 3))
    single = np.zeros((10, 1))
    single[4] = 80
    table = lot_specificity_table(_counts(np.hstack([mixed, single])))
    assert table.loc["C3", "lot_dominated"]
    assert table.loc["C3", "top_lot"] == "L4" and table.loc["C3", "top_lot_share"] == 1.0
    assert table.loc["C3", "n_lots_contributing"] == 1
    assert table.loc["C3", "entropy_ratio"] == 0.0
    assert not table.loc[["C0", "C1", "C2"], "lot_dominated"].any()
    assert (table.loc[["C0", "C1", "C2"], "entropy_ratio"] > 0.95).all()


def test_composition_differences_alone_are_not_flagged():
    """A population whose share varies 3-22% across lots is the signal, not an artefact."""
    share = np.linspace(0.03, 0.22, 12)
    counts = np.column_stack([share * 1500, (1 - share) * 1500]).round()
    table = lot_specificity_table(_counts(counts))
    assert table.loc["C0", "pvalue"] < 1e-10  # the test rejects: lots differ in composition
    assert not table["lot_dominated"].any()  # ... but no cluster is one lot's cells


def test_g_test_matches_scipy_with_large_counts():
    rng = np.random.default_rng(1)
    counts = rng.poisson(200, size=(6, 2)).astype(float)
    table = lot_specificity_table(_counts(counts))
    g, p, _, _ = stats.chi2_contingency(counts.T, lambda_="log-likelihood", correction=False)
    assert table.loc["C0", "pvalue_method"] == "chi-square"
    assert table.loc["C0", "g_statistic"] == pytest.approx(g)
    assert table.loc["C0", "pvalue"] == pytest.approx(p)


def test_small_clusters_use_monte_carlo_and_are_calibrated():
    """Under the pooled mix, Monte-Carlo p-values of small clusters are not too small."""
    rng = np.random.default_rng(2)
    totals = np.array([300, 300, 300, 300, 300])
    pvalues = []
    for _ in range(100):
        small = rng.multivariate_hypergeometric(totals, 12)
        counts = np.column_stack([small, totals - small])
        table = lot_specificity_table(_counts(counts), n_permutations=199, random_state=3)
        assert table.loc["C0", "pvalue_method"].startswith("monte-carlo")
        pvalues.append(table.loc["C0", "pvalue"])
    assert np.mean(np.asarray(pvalues) < 0.05) <= 0.10


def test_tiny_clusters_from_one_lot_are_not_flagged_without_evidence():
    counts = _counts([[1, 500], [0, 500], [0, 500]])
    table = lot_specificity_table(counts)
    assert table.loc["C0", "top_lot_share"] == 1.0
    assert not table.loc["C0", "lot_dominated"]  # one cell: p = 1/3, no evidence


def test_ari_between_lots_and_clusters_matches_sklearn():
    from sklearn.metrics import adjusted_rand_score

    assert lot_cluster_ari(_counts(np.eye(4) * 50)) == pytest.approx(1.0)
    counts = np.random.default_rng(4).poisson(30, size=(5, 4))
    lots = np.repeat(np.arange(5), counts.sum(axis=1))
    clusters = np.concatenate([np.repeat(np.arange(4), row) for row in counts])
    assert lot_cluster_ari(_counts(counts)) == pytest.approx(adjusted_rand_score(lots, clusters))


def test_bad_counts_are_refused():
    with pytest.raises(ValueError, match="non-negative"):
        lot_specificity_table(_counts([[1, -1], [2, 3]]))


def test_lot_fractions_writes_specificity_and_tool_rethresholds(tiny_ref):
    adata = tiny_ref.copy()
    table = mp.get.lot_specificity(adata)
    assert list(table.index) == [str(c) for c in adata.obs["cluster"].cat.categories]
    assert not table["lot_dominated"].any()  # the tiny preset has no lot-specific state
    summary = mp.get.lot_specificity(adata, kind="summary")
    assert summary.loc[0, "n_lot_dominated"] == 0 and summary.loc[0, "ari_cluster_lot"] < 0.1
    out = mp.tl.lot_specificity(adata, min_entropy=0.999, alpha=0.5, copy=True)
    assert mp.get.lot_specificity(out)["lot_dominated"].any()
    assert mp.get.lot_specificity(adata)["lot_dominated"].sum() == 0  # copy left input alone
    mp.tl.lot_fractions(adata, specificity_key=None, key_added="no_spec")
    assert adata.uns["no_spec"]["params"]["specificity_key"] is None


def test_association_carries_the_flag_and_warns_when_its_candidate_is_one_lot(tiny_ref):
    adata = tiny_ref.copy()
    lots = adata.obs["lot"].astype(str)
    top = adata.obs.groupby("lot", observed=True)["vegf"].first().idxmax()
    # relabel a share of the most potent lot's cells as a cluster of their own
    cells = np.flatnonzero(lots.to_numpy() == top)[:60]
    labels = adata.obs["cluster"].astype(str).to_numpy().copy()
    labels[cells] = "LOTX"
    adata.obs["cluster"] = pd.Categorical(labels)
    mp.tl.lot_fractions(adata)
    assert mp.get.lot_specificity(adata).loc["LOTX", "lot_dominated"]
    with pytest.warns(LotDominatedWarning, match="LOTX.*lot-dominated"):
        with pytest.warns(NotSignificantWarning):
            mp.tl.potency_association(adata, _only_top(adata, top))
    result = adata.uns["potency_association"]
    assert result["potency_cluster"] == "LOTX" and result["lot_dominated"]
    assert bool(mp.get.potency_association(adata).loc["LOTX", "lot_dominated"])
    with pytest.warns(LotDominatedWarning, match="lot-dominated"):
        with pytest.warns(NotSignificantWarning):
            potency_cluster(adata)


def _only_top(adata, top) -> pd.Series:
    """A potency whose only large value is the top lot's (so a one-lot cluster tracks it best)."""
    lots = adata.obs["lot"].astype(str).unique()
    values = pd.Series(np.arange(len(lots), dtype=float) * 0.0, index=lots)
    values[top] = 1.0
    return values


def test_study_association_is_not_flagged(tiny_ref):
    assert not tiny_ref.uns["potency_association"]["lot_dominated"]
    assert not mp.get.potency_association(tiny_ref)["lot_dominated"].any()


def test_plots(tiny_ref):
    import matplotlib.pyplot as plt

    fig = mp.pl.lot_specificity(tiny_ref.copy(), return_fig=True)
    assert fig is not None
    plt.close("all")


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_donor_lot_specific_cluster_flagged_and_never_silent(seed):
    """Seeds beyond the one tests/pp/test_integrate.py runs: flagged, and warned when named."""
    import warnings

    adata = mp.datasets.donor(random_state=seed)
    mp.pp.qc(adata)
    mp.pp.preprocess(adata)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mp.tl.cluster(adata, n_clusters=9)
        mp.tl.lot_fractions(adata)
        mp.tl.potency_association(adata, "vegf")
    obs = adata.obs
    specific = str(obs.loc[obs["true_lot_specific"], "cluster"].value_counts().idxmax())
    table = mp.get.lot_specificity(adata)
    assert table.loc[specific, "lot_dominated"]
    assert table.loc[specific, "top_lot"] == adata.uns["simulation"]["lot_specific_lot"]
    named = adata.uns["potency_association"]["potency_cluster"]
    warned = any(issubclass(w.category, LotDominatedWarning) for w in caught)
    assert warned == bool(table.loc[named, "lot_dominated"])
