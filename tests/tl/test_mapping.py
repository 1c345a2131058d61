"""tl.map_to_reference on the tiny preset: schema, truth, determinism, bad input, freezing."""

from __future__ import annotations

import json
import re
import warnings

import anndata
import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from scipy import sparse

import mscpotency as mp
from mscpotency.tl._mapping import _calibration, _neighbors
from mscpotency.tl._mapping._anchors import Anchors, find_transfer_anchors, transfer_data

BACKENDS = ["fast", "anchors"]


def truth_labels(reference: AnnData, query: AnnData, cluster_key: str = "cluster") -> np.ndarray:
    """Each query cell's true reference cluster: the majority cluster of its true population.

    Low-quality cells form their own population; query cells of a population the reference
    lacks get ``""``.
    """

    def population(adata):
        return np.where(
            adata.obs["true_low_quality"], "LQ", adata.obs["true_subpopulation"].astype(str)
        )

    table = pd.crosstab(population(reference), reference.obs[cluster_key].astype(str))
    majority = table.idxmax(axis=1).to_dict()
    return np.array([majority.get(p, "") for p in population(query)])


def potency_rich_cells(
    reference: AnnData, query: AnnData, n_potency: int, n_other: int, rng: np.random.Generator
) -> np.ndarray:
    """Positions (sorted) of ``n_potency`` bone-marrow query cells of the reference's potency
    cluster and ``n_other`` others, drawn in that order from ``rng``: a lot of unusual make-up."""
    potency = reference.uns["potency_association"]["potency_cluster"]
    bone_marrow = (query.obs["set"] == "BM-test").to_numpy()
    truth = truth_labels(reference, query) == potency
    cells = np.concatenate(
        [rng.choice(np.flatnonzero(truth & bone_marrow), n_potency, replace=False),
         rng.choice(np.flatnonzero(~truth & bone_marrow), n_other, replace=False)]
    )  # fmt: skip
    return np.sort(cells)


@pytest.fixture(scope="module")
def tiny_query(tiny_all) -> AnnData:
    query = tiny_all[tiny_all.obs["set"] != "BM-train"].copy()
    mp.pp.qc(query)
    return query


@pytest.fixture(scope="module", params=BACKENDS)
def mapped(request, tiny_query, tiny_ref) -> AnnData:
    return mp.tl.map_to_reference(tiny_query, tiny_ref, method=request.param, copy=True)


def test_schema_and_truth(mapped, tiny_ref):
    categories = list(tiny_ref.obs["cluster"].cat.categories)
    labels = mapped.obs["predicted"]
    assert isinstance(labels.dtype, pd.CategoricalDtype)
    assert list(labels.cat.categories) == [*categories, "Unassigned"]
    probabilities = mapped.obsm["predicted_probabilities"]
    assert isinstance(probabilities, pd.DataFrame)
    assert list(probabilities.columns) == categories
    assert probabilities.index.equals(mapped.obs_names)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-9)
    np.testing.assert_allclose(mapped.obs["predicted_score"], probabilities.max(axis=1))
    # a cell keeps the most probable label of its prediction set; Unassigned when the set
    # is empty or the cell is flagged novel (none of these known populations: at most a few)
    in_set = mapped.obsm["predicted_set"]
    assert list(in_set.columns) == categories
    assert (mapped.obs["predicted_set_size"].to_numpy() == in_set.sum(axis=1).to_numpy()).all()
    unassigned = (labels == "Unassigned").to_numpy()
    assert (unassigned == (mapped.obs["predicted_novel"] | (in_set.sum(axis=1) == 0))).all()
    assert unassigned.mean() < 0.03
    masked = probabilities.where(in_set.to_numpy(), -1.0)
    assigned = ~unassigned
    assert (
        masked.idxmax(axis=1).to_numpy()[assigned] == labels.astype(str).to_numpy()[assigned]
    ).all()
    assert (
        probabilities.idxmax(axis=1).to_numpy()[assigned] == labels.astype(str).to_numpy()[assigned]
    ).mean() > 0.99
    novelty_p = mapped.obs["predicted_novelty_p"]
    assert novelty_p.between(0, 1).all()
    assert (mapped.obs["predicted_novel"] == (novelty_p <= 0.01)).all()
    mapping = mapped.obs["predicted_mapping_score"]
    assert mapping.between(0, 1).all()
    stored = mapped.uns["predicted"]
    assert stored["potency_cluster"] == tiny_ref.uns["potency_association"]["potency_cluster"]
    assert stored["genes_missing"] == []
    assert stored["n_genes_shared"] == stored["n_genes_reference"]
    assert len(stored["reference_hash"]) == 32
    per_lot = mp.get.map_to_reference(mapped)
    assert set(per_lot.index) == set(mapped.obs["lot"].astype(str))
    assert per_lot["n_cells"].sum() == mapped.n_obs
    assert stored["calibration"]["fitted"]
    # truth: every population the reference knows is found again in the held-out lots and other tissues
    truth = truth_labels(tiny_ref, mapped)
    known = truth != ""
    assert (labels.astype(str).to_numpy()[known] == truth[known]).mean() > 0.93
    potency = stored["potency_cluster"]
    for name in ("BM-test", "AD", "UC"):
        in_set = (mapped.obs["set"] == name).to_numpy() & known
        predicted, true = labels.astype(str).to_numpy()[in_set] == potency, truth[in_set] == potency
        f1 = 2 * (predicted & true).sum() / (predicted.sum() + true.sum())
        assert f1 > 0.9, name
    # on-reference cells are not flagged as off-reference
    assert stored["summary"]["share_off_reference"] < 0.02
    # the transferred labels are calibrated on these held-out lots
    correct = labels.astype(str).to_numpy()[known] == truth[known]
    assert (
        mp.tl._mapping.expected_calibration_error(
            mapped.obs["predicted_score"].to_numpy()[known], correct
        )
        < 0.1
    )
    assert not mp.get.map_to_reference(mapped, kind="reliability_after").empty


def test_mapping_score_does_not_depend_on_the_backend(tiny_query, tiny_ref):
    fast = mp.tl.map_to_reference(tiny_query, tiny_ref, method="fast", calibrate=False, copy=True)
    anchors = mp.tl.map_to_reference(
        tiny_query, tiny_ref, method="anchors", calibrate=False, copy=True
    )
    np.testing.assert_array_equal(
        fast.obs["predicted_mapping_score"], anchors.obs["predicted_mapping_score"]
    )
    assert anchors.uns["predicted"]["anchors"]["n_anchors"] > 0


def test_copy_determinism_and_provenance(tiny_query, tiny_ref):
    query = tiny_query.copy()
    before = query.copy()
    returned = mp.tl.map_to_reference(query, tiny_ref, method="fast", copy=True)
    assert "predicted" not in query.obs and "predicted" not in query.uns
    assert query.obs.equals(before.obs)
    assert mp.tl.map_to_reference(query, tiny_ref, method="fast") is None
    pd.testing.assert_frame_equal(
        query.obsm["predicted_probabilities"], returned.obsm["predicted_probabilities"]
    )
    pd.testing.assert_series_equal(
        query.obs["predicted_mapping_score"], returned.obs["predicted_mapping_score"]
    )
    entry = mp.get.provenance(query).iloc[-1]
    assert entry["function"] == "tl.map_to_reference"
    assert entry["params"]["reference_hash"] == query.uns["predicted"]["reference_hash"]
    assert entry["params"]["reference"]["__anndata__"] == mp._provenance.fingerprint(tiny_ref)


def test_umap_placement_is_a_weighted_mean_of_reference_positions(tiny_query, tiny_ref):
    reference = tiny_ref.copy()
    # a stand-in UMAP with the clusters on a circle, so "next to its cluster" is unambiguous
    codes = reference.obs["cluster"].cat.codes.to_numpy()
    angle = 2 * np.pi * codes / (codes.max() + 1)
    jitter = np.random.default_rng(0).normal(scale=0.3, size=(reference.n_obs, 2))
    reference.obsm["X_umap"] = 10 * np.column_stack([np.cos(angle), np.sin(angle)]) + jitter
    out = mp.tl.map_to_reference(tiny_query, reference, method="fast", calibrate=False, copy=True)
    placed = out.obsm["predicted_umap"]
    assert placed.shape == (out.n_obs, 2)
    low, high = reference.obsm["X_umap"].min(axis=0), reference.obsm["X_umap"].max(axis=0)
    assert ((placed >= low) & (placed <= high)).all()
    # cells land next to reference cells of their predicted label
    centroids = (
        pd.DataFrame(reference.obsm["X_umap"]).groupby(reference.obs["cluster"].to_numpy()).mean()
    )
    nearest = centroids.index[
        np.linalg.norm(placed[:, None, :] - centroids.to_numpy()[None], axis=2).argmin(axis=1)
    ]
    assert (nearest == out.obs["predicted"].astype(str).to_numpy()).mean() > 0.9
    no_umap = mp.tl.map_to_reference(
        tiny_query, tiny_ref, method="fast", calibrate=False, copy=True
    )
    assert "predicted_umap" not in no_umap.obsm
    assert not no_umap.uns["predicted"]["params"]["umap_placed"]


def test_missing_genes_are_zero_padded_and_reported(tiny_query, tiny_ref):
    dropped = tiny_ref.var_names[tiny_ref.var["highly_variable"]][::10]
    query = tiny_query[:, ~tiny_query.var_names.isin(dropped)].copy()
    out = mp.tl.map_to_reference(query, tiny_ref, method="fast", copy=True)
    stored = out.uns["predicted"]
    assert sorted(stored["genes_missing"]) == sorted(dropped)
    assert stored["n_genes_shared"] == stored["n_genes_reference"] - len(dropped)
    truth = truth_labels(tiny_ref, out)
    known = truth != ""
    assert (out.obs["predicted"].astype(str).to_numpy()[known] == truth[known]).mean() > 0.9
    with pytest.raises(ValueError, match="shares only"):
        mp.tl.map_to_reference(query, tiny_ref, method="fast", min_shared_genes=0.95)


def _variance_weights(reference: AnnData) -> pd.Series:
    """Each embedding gene's share of the reference embedding's variance, computed here from scratch."""
    genes = reference.var_names[reference.var["highly_variable"].to_numpy()]
    loadings = np.asarray(reference[:, genes].varm["PCs"], dtype=float)
    variance = np.asarray(reference.obsm["X_pca"], dtype=float).var(axis=0)
    weights = (loadings**2 * variance).sum(axis=1)
    return pd.Series(weights / weights.sum(), index=genes)


def test_missing_gene_thresholds(tiny_query, tiny_ref):
    """Missing genes are weighed by the embedding variance they carry: warn above 15%, refuse above 35%.

    Measured (anchors backend, share of labels equal to the full-gene mapping; tiny / study):
    genes carrying < 15% missing kept >= 97.7% / 98.6% of the labels (e.g. random 10% of the
    genes: 9.9% of the variance, 98.5%; first 5% of the study's genes: 12.4%, 98.6%); between
    15% and 35%: 87.2% (tiny, first 20%: 26.7%) to 98.3% (study, random 30%: 27.8%); above
    35%: 59.5% (study, first 20%: 41.7%), 77.8% (tiny, first 30%: 39.7%) and, for the issue's
    case of the first 45% of the genes missing (61.5% / 63.1% of the variance), 22.7% / 17.5%.
    Counting genes instead misleads: without the 45% of genes with the smallest loadings
    (11.1% / 4.2% of the variance) 98.3% / 99.9% of the labels are kept.
    """
    weights = _variance_weights(tiny_ref)
    # the case: 45% of the embedding genes missing (here, those listed first) is refused
    first = weights.index[: int(0.45 * weights.size)]
    query = tiny_query[:, ~tiny_query.var_names.isin(first)].copy()
    with pytest.raises(ValueError, match=r"carry 6\d% of the reference.*max_variance_missing=35%"):
        mp.tl.map_to_reference(query, tiny_ref, method="fast", calibrate=False)
    assert "predicted" not in query.obs
    # ... unless the user raises the limit knowingly: then it warns, and says so in uns
    with pytest.warns(UserWarning) as record:
        out = mp.tl.map_to_reference(
            query, tiny_ref, method="fast", calibrate=False, max_variance_missing=0.7, copy=True
        )
    messages = [str(w.message) for w in record]
    assert any(
        re.search(r"lacks 225 of the reference's 500.*above warn_variance", m) for m in messages
    )
    # the novelty calibration cells lose the same genes (measured like the query), so known
    # cells are not flagged for what the query did not measure: the missing-genes warning says it
    assert out.obs["predicted_novel"].mean() <= 1.5 * 0.01
    assert out.uns["predicted"]["novelty"]["n_calibration_cells"] == tiny_ref.n_obs
    stored = out.uns["predicted"]
    assert stored["share_genes_missing"] == pytest.approx(0.45)
    assert stored["share_variance_missing"] == pytest.approx(weights[first].sum(), rel=1e-6)
    assert stored["params"]["max_variance_missing"] == 0.7
    assert stored["params"]["warn_variance_missing"] == 0.15
    assert any("lacks 225" in w for w in stored["warnings"])
    # genes carrying little of the embedding: as many missing, no warning, labels kept
    bottom = weights.sort_values().index[: int(0.45 * weights.size)]
    query = tiny_query[:, ~tiny_query.var_names.isin(bottom)].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = mp.tl.map_to_reference(query, tiny_ref, method="fast", calibrate=False, copy=True)
    assert out.uns["predicted"]["share_variance_missing"] < 0.15
    assert out.uns["predicted"]["warnings"] == []
    truth = truth_labels(tiny_ref, out)
    known = truth != ""
    assert (out.obs["predicted"].astype(str).to_numpy()[known] == truth[known]).mean() > 0.9
    # the most important genes (20% of the variance) warn, naming the most important one
    top = weights.sort_values(ascending=False)
    dropped = top.index[: int(np.searchsorted(top.cumsum().to_numpy(), 0.2)) + 1]
    query = tiny_query[:, ~tiny_query.var_names.isin(dropped)].copy()
    with pytest.warns(UserWarning, match=rf"Most important missing genes: \['{top.index[0]}'"):
        mp.tl.map_to_reference(query, tiny_ref, method="fast", calibrate=False, copy=True)
    with pytest.raises(ValueError, match="max_variance_missing must lie in"):
        mp.tl.map_to_reference(query, tiny_ref, max_variance_missing=1.5)


def test_off_reference_warning(tiny_query, tiny_ref):
    """A query whose genes do not match the reference maps with high scores: it must warn.

    Measured share of off-reference cells (anchors backend; tiny / study): the matching query
    0.3% / 0.0% overall, at most 1.4% / 0.0% in any lot; the query with shuffled gene names
    100% / 98.1% overall, at least 100% / 97.7% in every lot, with a mean prediction score of
    0.84 / 0.75 (0.90 in the issue). The default warn_off_reference=0.25 lies far from both.
    """
    query = tiny_query.copy()
    query.var_names = np.random.default_rng(0).permutation(query.var_names.to_numpy())
    with pytest.warns(UserWarning) as record:  # also the novelty warnings (below)
        out = mp.tl.map_to_reference(query, tiny_ref, method="fast", calibrate=False, copy=True)
    (message,) = [str(w.message) for w in record if "off-reference" in str(w.message)]
    assert re.search(r"(9\d|100)% of the query cells are off-reference", message)
    for cause in ("gene identifiers", "another tissue or technology", "not raw counts"):
        assert cause in message
    for lot in query.obs["lot"].unique():
        assert f"'{lot}'" in message  # every lot is named
    stored = out.uns["predicted"]
    assert stored["params"]["warn_off_reference"] == 0.25
    assert message in stored["warnings"]
    # the threshold is the user's: at 1.0 no off-reference warning; the calibrated novelty
    # flags still name every lot as holding far more novel cells than the rate allows
    with pytest.warns(UserWarning) as record:
        quiet = mp.tl.map_to_reference(
            query, tiny_ref, method="fast", calibrate=False, warn_off_reference=1.0, copy=True
        )
    issued = quiet.uns["predicted"]["warnings"]
    assert [str(w.message) for w in record] == issued
    assert not any("off-reference" in m for m in issued)
    (excess,) = [m for m in issued if "flagged novel" in m]
    assert all(f"'{lot}'" in excess for lot in query.obs["lot"].unique())
    assert any("scores lower than held-out reference cells" in m for m in issued)
    # the matching query does not warn (filterwarnings = error) and stays far below
    out = mp.tl.map_to_reference(tiny_query, tiny_ref, method="fast", calibrate=False, copy=True)
    assert mp.get.map_to_reference(out)["share_off_reference"].max() < 0.05
    assert out.uns["predicted"]["warnings"] == []


def test_counts_in_x_without_a_counts_layer(tiny_query, tiny_ref):
    query = AnnData(
        X=tiny_query.layers["counts"].copy(),
        obs=tiny_query.obs[["lot", "set"]].copy(),
        var=pd.DataFrame(index=tiny_query.var_names),
    )
    out = mp.tl.map_to_reference(query, tiny_ref, method="fast", calibrate=False, copy=True)
    reference_run = mp.tl.map_to_reference(
        tiny_query, tiny_ref, method="fast", calibrate=False, copy=True
    )
    np.testing.assert_array_equal(out.obs["predicted"], reference_run.obs["predicted"])


# ----------------------------------------------------------------------------- bad input
def test_no_shared_genes(tiny_query, tiny_ref):
    query = tiny_query.copy()
    query.var_names = [f"ENSG{i:011d}" for i in range(query.n_vars)]
    with pytest.raises(ValueError, match="shares no genes"):
        mp.tl.map_to_reference(query, tiny_ref)


def test_reference_without_labels_or_embedding(tiny_query, tiny_ref):
    with pytest.raises(KeyError, match=r"no labels in obs\['leiden'\].*tl.cluster"):
        mp.tl.map_to_reference(tiny_query, tiny_ref, cluster_key="leiden")
    for remove, match in (
        ("obsm", "X_pca"),
        ("varm", "PCs"),
        ("var", "pca_mean"),
        ("uns", "target_sum"),
    ):
        reference = tiny_ref.copy()
        if remove == "obsm":
            del reference.obsm["X_pca"]
        elif remove == "varm":
            del reference.varm["PCs"]
        elif remove == "var":
            del reference.var["pca_mean"]
        else:
            del reference.uns["preprocess"]
        with pytest.raises(KeyError, match=rf"{match}.*pp.preprocess"):
            mp.tl.map_to_reference(tiny_query, reference)
    raw = tiny_ref.copy()
    raw.obs["cluster"] = raw.obs["cluster"].astype(object)
    raw.obs.iloc[0, raw.obs.columns.get_loc("cluster")] = np.nan
    with pytest.raises(ValueError, match="have no label"):
        mp.tl.map_to_reference(tiny_query, raw)
    with pytest.raises(TypeError, match="must be an AnnData"):
        mp.tl.map_to_reference(tiny_query, tiny_ref.obs)


def test_log_normalised_query_declared_as_counts(tiny_query, tiny_ref):
    query = tiny_query.copy()
    processed = mp.pp.preprocess(query.copy(), copy=True)
    query.layers["counts"] = processed.X.copy()
    with pytest.raises(ValueError, match=r"raw counts.*looks normalised or log-transformed"):
        mp.tl.map_to_reference(query, tiny_ref)
    query = tiny_query.copy()
    del query.layers["counts"]
    query.X = processed.X.copy()
    with pytest.raises(ValueError, match=r"query.X.*non-integer"):
        mp.tl.map_to_reference(query, tiny_ref)


def test_tiny_lot_is_named_in_a_warning(tiny_query, tiny_ref):
    keep = (tiny_query.obs["lot"] != "AD02").to_numpy() | (
        np.cumsum(tiny_query.obs["lot"] == "AD02") <= 7
    ).to_numpy()
    query = tiny_query[keep].copy()
    with pytest.warns(UserWarning, match=r"'AD02' \(7 cells\).*fewer than 50 cells"):
        out = mp.tl.map_to_reference(query, tiny_ref, method="fast", calibrate=False, copy=True)
    # mapped, not dropped
    assert (out.obs["lot"] == "AD02").sum() == 7
    assert out.obs["predicted"].notna().all()
    assert mp.get.map_to_reference(out).loc["AD02", "n_cells"] == 7


def test_invalid_options(tiny_query, tiny_ref):
    with pytest.raises(ValueError, match="method must be one of"):
        mp.tl.map_to_reference(tiny_query, tiny_ref, method="seurat")
    with pytest.raises(ValueError, match="centre must be"):
        mp.tl.AnchorOptions(centre="median")
    with pytest.raises(ValueError, match="min_mapping_score must lie"):
        mp.tl.map_to_reference(tiny_query, tiny_ref, min_mapping_score=2)
    with pytest.raises(KeyError, match="no column 'batch'"):
        mp.tl.map_to_reference(tiny_query, tiny_ref, lot_key="batch")
    duplicated = tiny_query.copy()
    duplicated.var_names = ["G"] * 2 + list(duplicated.var_names[2:])
    with pytest.raises(ValueError, match="gene names are not unique"):
        mp.tl.map_to_reference(duplicated, tiny_ref)


def test_options_belong_to_their_method(tiny_query, tiny_ref):
    from mscpotency.tl._mapping._transfer import BACKENDS

    assert tuple(BACKENDS) == ("fast", "anchors", "scvi")
    with pytest.raises(TypeError, match=r"method='anchors' takes options=AnchorOptions.*'fast'"):
        mp.tl.map_to_reference(tiny_query, tiny_ref, options=mp.tl.FastOptions(n_neighbors=15))
    with pytest.raises(TypeError, match="positional"):
        mp.tl.FastOptions("lot")  # options are keyword-only
    out = mp.tl.map_to_reference(
        tiny_query,
        tiny_ref,
        method="fast",
        options=mp.tl.FastOptions(n_neighbors=15),
        calibrate=False,
        copy=True,
    )
    params = out.uns["predicted"]["params"]
    assert params["method"] == "fast"
    assert params["options"] == {"centre": "lot_shift", "n_calibration_folds": 3, "n_neighbors": 15}
    default = mp.tl.map_to_reference(
        tiny_query, tiny_ref, method="fast", options=None, calibrate=False, copy=True
    )
    assert default.uns["predicted"]["params"]["options"]["n_neighbors"] == 30
    assert not np.array_equal(
        out.obsm["predicted_probabilities"], default.obsm["predicted_probabilities"]
    )
    assert mp.tl.ScviOptions().as_params() == {
        "n_latent": 10,
        "n_layers": 2,
        "n_calibration_folds": 3,
        "batch_size": 128,
        "accelerator": "auto",
        "torch_threads": 1,
    }


def test_uncalibrated_mapping_stores_empty_reliability_tables(tmp_path, tiny_query, tiny_ref):
    out = mp.tl.map_to_reference(tiny_query, tiny_ref, method="fast", calibrate=False, copy=True)
    assert out.uns["predicted"]["calibration"] == {"temperature": 1.0, "fitted": False}
    for kind in ("reliability_after", "reliability_before"):
        table = mp.get.map_to_reference(out, kind=kind)
        assert table.empty and list(table.columns) == [
            "low",
            "high",
            "n_cells",
            "mean_score",
            "accuracy",
        ]
    with pytest.raises(ValueError, match="kind must be one of"):
        mp.get.map_to_reference(out, kind="calibration")
    out.uns.pop("simulation", None)
    out.write_h5ad(tmp_path / "uncalibrated.h5ad")
    read = anndata.read_h5ad(tmp_path / "uncalibrated.h5ad")
    assert mp.get.map_to_reference(read, kind="reliability_after").empty


# ----------------------------------------------------------------------------- frozen reference
def test_freeze_write_read_and_map(tmp_path, tiny_query, tiny_ref):
    frozen = mp.tl.freeze_reference(tiny_ref)
    info = mp.get.freeze_reference(frozen)
    assert info.loc[0, "potency_cluster"] == tiny_ref.uns["potency_association"]["potency_cluster"]
    assert frozen.n_vars == int(tiny_ref.var["highly_variable"].sum())
    path = mp.io.write_reference(frozen, tmp_path / "reference.h5ad")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        mp.io.write_reference(frozen, path)
    loaded = mp.io.read_reference(path)
    assert loaded.uns["reference"]["hash"] == frozen.uns["reference"]["hash"]
    direct = mp.tl.map_to_reference(tiny_query, tiny_ref, method="anchors", copy=True)
    from_file = mp.tl.map_to_reference(tiny_query, str(path), method="anchors", copy=True)
    assert from_file.uns["predicted"]["reference_hash"] == direct.uns["predicted"]["reference_hash"]
    assert from_file.uns["predicted"]["reference_hash"] == frozen.uns["reference"]["hash"]
    np.testing.assert_allclose(
        from_file.obsm["predicted_probabilities"].to_numpy(),
        direct.obsm["predicted_probabilities"].to_numpy(),
    )
    log = json.loads(str(from_file.uns["mscpotency"]["log"][-1]))
    assert log["params"]["reference_hash"] == frozen.uns["reference"]["hash"]
    # the frozen reference keeps the log of how it was built
    functions = [e["function"] for e in mp.get.provenance(frozen).to_dict("records")]
    assert functions[-1] == "tl.freeze_reference" and "tl.cluster" in functions


def test_a_frozen_record_under_another_key(tmp_path, tiny_query, tiny_ref):
    frozen = mp.tl.freeze_reference(tiny_ref, key_added="bm_reference")
    assert "reference" not in frozen.uns
    record = frozen.uns["bm_reference"]
    assert record["cluster_key"] == "cluster"
    assert record["params"]["layer"] == "counts"
    info = mp.get.freeze_reference(frozen, key="bm_reference")
    assert info.loc[0, "hash"] == record["hash"]
    with pytest.raises(KeyError, match="tl.freeze_reference"):
        mp.get.freeze_reference(frozen)
    loaded = mp.io.read_reference(mp.io.write_reference(frozen, tmp_path / "bm.h5ad"))
    mapped = mp.tl.map_to_reference(tiny_query, loaded, method="fast", calibrate=False, copy=True)
    assert mapped.uns["predicted"]["reference_hash"] == record["hash"]
    assert mapped.uns["predicted"]["params"]["reference_frozen"]


def test_tampered_or_unfrozen_references_are_refused(tmp_path, tiny_ref):
    frozen = mp.tl.freeze_reference(tiny_ref)
    frozen.obsm["X_pca"][0, 0] += 1.0
    with pytest.raises(ValueError, match="modified after `tl.freeze_reference`"):
        mp.io.write_reference(frozen, tmp_path / "bad.h5ad")
    with pytest.raises(ValueError, match="not a frozen reference"):
        mp.io.write_reference(tiny_ref, tmp_path / "plain.h5ad")
    with pytest.raises(ValueError, match=r"\.h5ad"):
        mp.io.write_reference(mp.tl.freeze_reference(tiny_ref), tmp_path / "reference.zarr")
    with pytest.raises(FileNotFoundError, match="no frozen reference"):
        mp.io.read_reference(tmp_path / "missing.h5ad")
    with pytest.raises(KeyError, match="carries labels 'cluster'"):
        mp.tl.map_to_reference(tiny_ref, mp.tl.freeze_reference(tiny_ref), cluster_key="leiden")


# ----------------------------------------------------------------------------- kernels
def test_exact_neighbours_match_brute_force():
    rng = np.random.default_rng(1)
    data, query = rng.normal(size=(300, 5)), rng.normal(size=(40, 5))
    indices, distances = _neighbors.knn(data, query, 7, method="exact")
    full = np.linalg.norm(query[:, None] - data[None], axis=2)
    np.testing.assert_array_equal(indices, np.argsort(full, axis=1)[:, :7])
    np.testing.assert_allclose(distances, np.sort(full, axis=1)[:, :7])
    own, _ = _neighbors.knn(data, data, 5, exclude_self=True)
    assert not (own == np.arange(300)[:, None]).any()


def test_exact_neighbours_across_blocks_with_ties_and_duplicates(monkeypatch):
    # blocks smaller than the data and the queries, so every merge path runs
    monkeypatch.setattr(_neighbors, "_QUERY_BLOCK", 16)
    monkeypatch.setattr(_neighbors, "_DATA_BLOCK", 50)
    rng = np.random.default_rng(2)
    data = rng.integers(-2, 3, size=(437, 3)).astype(float)  # many exact ties
    data[100:110] = data[5]  # duplicated points
    query = np.vstack([rng.integers(-2, 3, size=(60, 3)).astype(float), data[:5]])
    indices, distances = _neighbors.knn(data, query, 12, method="exact")
    full = np.linalg.norm(query[:, None] - data[None], axis=2)
    expected = np.argsort(full, axis=1, kind="stable")[:, :12]  # ties: lower position first
    np.testing.assert_array_equal(indices, expected)
    np.testing.assert_allclose(distances, np.take_along_axis(full, expected, axis=1), atol=1e-12)
    # k beyond the data, and a single data point
    few, _ = _neighbors.knn(data[:5], query, 30, method="exact")
    assert few.shape == (query.shape[0], 5)
    one, _ = _neighbors.knn(data[:1], query, 3, method="exact")
    assert (one == 0).all()


def test_own_axes_of_a_large_query_come_from_a_subset(monkeypatch, tiny_query, tiny_train):
    """Above OWN_AXES_MAX_CELLS the axes are fitted on a subset: a missing population still scores low."""
    from sklearn.metrics import roc_auc_score

    from mscpotency.tl._mapping import _project

    reference = tiny_train[tiny_train.obs["true_subpopulation"] != "SP3"].copy()
    mp.pp.qc(reference)
    mp.pp.preprocess(reference)
    mp.tl.cluster(reference, n_clusters=7)
    novel = (tiny_query.obs["true_subpopulation"] == "SP3").to_numpy()
    scores = {}
    for cap in (_project.OWN_AXES_MAX_CELLS, tiny_query.n_obs // 3):
        monkeypatch.setattr(_project, "OWN_AXES_MAX_CELLS", cap)
        with pytest.warns(UserWarning, match="flagged novel"):  # SP3 is new to the reference
            mapped = mp.tl.map_to_reference(
                tiny_query, reference, method="fast", calibrate=False, copy=True
            )
        scores[cap] = mapped.obs["predicted_mapping_score"].to_numpy()
    full, subset = scores.values()
    assert not np.array_equal(full, subset)  # the subset path ran
    assert roc_auc_score(novel, -subset) >= 0.9
    assert roc_auc_score(novel, -subset) >= roc_auc_score(novel, -full) - 0.03


def test_calibration_maps_at_most_a_capped_number_of_cells_per_fold(
    monkeypatch, tiny_query, tiny_ref
):
    from mscpotency.tl._mapping import _cache, _pca_backends

    monkeypatch.setattr(_pca_backends, "CALIBRATION_MAX_CELLS", 100)
    _cache.clear_caches()  # the summaries and the held-out predictions they are fitted on
    mapped = mp.tl.map_to_reference(tiny_query, tiny_ref, method="fast", copy=True)
    calibration = mapped.uns["predicted"]["calibration"]
    _cache.clear_caches()
    assert calibration["fitted"] and calibration["n_cells"] == 100 * calibration["n_folds"]
    assert 0.05 < calibration["temperature"] < 20
    assert not calibration["thinned_to_query"]  # the same technology: cells as they are


def test_anchors_pair_matching_populations_and_weights_follow_seurat():
    rng = np.random.default_rng(0)
    centres = np.array([[10.0, 0, 0], [0, 10.0, 0], [0, 0, 10.0]])
    ref_labels = np.repeat(np.arange(3), 100)
    reference = centres[ref_labels] + rng.normal(size=(300, 3))
    query_labels = np.repeat(np.arange(3), 60)
    query = centres[query_labels] + rng.normal(size=(180, 3)) + 0.5
    anchors = find_transfer_anchors(
        reference, query, reference_filter=None, query_filter=None, k_score=20
    )
    assert anchors.reference.size > 50
    assert (ref_labels[anchors.reference] == query_labels[anchors.query]).all()
    assert anchors.score.min() >= 0 and anchors.score.max() == 1
    probabilities = transfer_data(query, anchors, ref_labels, 3, k_weight=20)
    assert (probabilities.argmax(axis=1) == query_labels).all()
    # one query cell, three anchors at distances 0, 1, 2 (k_weight = 3): Seurat's weights
    toy = Anchors(
        reference=np.array([0, 1, 2]),
        query=np.array([1, 2, 3]),
        score=np.array([1.0, 0.5, 1.0]),
        n_mnn=3,
    )
    embedding = np.array([[0.0], [0.0], [1.0], [2.0]])
    labels = np.array([0, 1, 1])
    weights = 1 - np.exp(-np.array([1.0, 0.5, 0.0]) * np.array([1.0, 0.5, 1.0]) / 2)
    expected = np.array([weights[0], weights[1] + weights[2]]) / weights.sum()
    got = transfer_data(embedding, toy, labels, 2, k_weight=3)[0]
    np.testing.assert_allclose(got, expected)


def test_calibration_error_and_temperature():
    rng = np.random.default_rng(0)
    confidence = rng.uniform(0.3, 1.0, 20000)
    calibrated = rng.random(20000) < confidence
    assert _calibration.expected_calibration_error(confidence, calibrated) < 0.02
    overconfident = rng.random(20000) < confidence - 0.25
    assert _calibration.expected_calibration_error(confidence, overconfident) > 0.2
    table = _calibration.reliability_table(confidence, calibrated, n_bins=5)
    assert table["n_cells"].sum() == 20000 and len(table) == 5
    # probabilities sharpened with temperature 0.5: fitting recovers T ~ 2 to undo it
    true = rng.dirichlet(np.ones(4), size=5000)
    labels = np.array([rng.choice(4, p=p) for p in true])
    sharp = _calibration.apply_temperature(true, 0.5, floor=0.0)
    fitted = _calibration.fit_temperature(sharp, labels)
    assert 1.6 < fitted < 2.5
    with pytest.raises(ValueError, match="equal length"):
        _calibration.reliability_table(confidence, calibrated[:10])


def test_sparse_and_dense_counts_agree(tiny_query, tiny_ref):
    dense = tiny_query.copy()
    dense.layers["counts"] = sparse.csr_matrix(dense.layers["counts"]).toarray()
    a = mp.tl.map_to_reference(dense, tiny_ref, method="fast", calibrate=False, copy=True)
    b = mp.tl.map_to_reference(tiny_query, tiny_ref, method="fast", calibrate=False, copy=True)
    np.testing.assert_allclose(
        a.obs["predicted_mapping_score"], b.obs["predicted_mapping_score"], atol=1e-9
    )


def test_mapped_query_round_trips_through_h5ad(tmp_path, mapped):
    query = mapped.copy()
    query.uns.pop("simulation", None)  # the simulator's settings are not this test's concern
    query.write_h5ad(tmp_path / "mapped.h5ad")
    read = anndata.read_h5ad(tmp_path / "mapped.h5ad")
    pd.testing.assert_frame_equal(
        mp.get.map_to_reference(read), mp.get.map_to_reference(query), check_dtype=False
    )
    np.testing.assert_allclose(
        read.obsm["predicted_probabilities"], query.obsm["predicted_probabilities"]
    )


def test_a_lot_of_unusual_make_up_keeps_its_share(tiny_query, tiny_ref):
    """Lots differ in composition (that is the signal): a lot made mostly of potency cells
    must be mapped as such, not pulled towards the reference's average make-up. Centred on
    its own mean (centre="lot", the default before) it mapped 0.38 (anchors) / 0.12 (fast)."""
    potency = tiny_ref.uns["potency_association"]["potency_cluster"]
    cells = potency_rich_cells(tiny_ref, tiny_query, 48, 12, np.random.default_rng(2))
    query = tiny_query[cells].copy()
    query.obs["lot"] = "NEW"
    for method in ("anchors", "fast"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            mapped = mp.tl.map_to_reference(query, tiny_ref, method=method, copy=True)
        share = float((mapped.obs["predicted"].astype(str) == potency).mean())
        assert abs(share - 0.8) < 0.15, (method, share)
        assert not mp.get.map_to_reference(mapped)["make_up_ambiguous"].any()


def test_a_lot_of_one_population_is_placed_by_its_smallest_shift_and_said(tiny_query, tiny_ref):
    """A lot of potency cells only fits any population once shifted onto it: the make-up
    needing the smallest shift is taken (the truth here), the lot marked and warned about.
    Centred on its own mean it sat at the reference's centre: 0.02 potency-like (fast)."""
    potency = tiny_ref.uns["potency_association"]["potency_cluster"]
    cells = potency_rich_cells(tiny_ref, tiny_query, 60, 0, np.random.default_rng(2))
    query = tiny_query[cells].copy()
    query.obs["lot"] = "PURE"
    with pytest.warns(UserWarning, match=r"lot\(s\) 'PURE' fit other make-ups about as well"):
        mapped = mp.tl.map_to_reference(query, tiny_ref, method="fast", copy=True)
    assert (mapped.obs["predicted"].astype(str) == potency).mean() >= 0.8
    per_lot = mp.get.map_to_reference(mapped)
    assert per_lot.loc["PURE", "make_up_ambiguous"]
    assert per_lot.loc["PURE", "lot_shift"] < 2.0
    assert any("fit other make-ups" in w for w in mapped.uns["predicted"]["warnings"])


def test_cells_without_counts_are_refused_not_labelled(tiny_query, tiny_ref):
    """Ten empty cells were labelled CL5 at 0.76 (anchors) or CL1 at 0.93 (fast)."""
    query = tiny_query[:200].copy()
    counts = query.layers["counts"].tolil()
    counts[:10, :] = 0
    query.layers["counts"] = counts.tocsr()
    with pytest.raises(ValueError, match=r"10 query cells have no counts on the reference's"):
        mp.tl.map_to_reference(query, tiny_ref, copy=True)


def test_one_lot_mapped_alone_is_calibrated_like_lots_mapped_together(tiny_query, tiny_ref):
    """A lot released alone is scored with fewer cells than a calibration fold; calibrated at
    a fold's size, 22-33% of its known cells were flagged at alpha 0.05 (median p 0.10-0.22).
    It is now scored beside reference cells that fill it up to a fold's size, the held-out
    reference cells in sets of its size beside as many cells of the fold's other lots."""
    flagged, medians = [], []
    for lot in ("BM09", "BM10", "BM11"):
        query = tiny_query[(tiny_query.obs["lot"] == lot).to_numpy()].copy()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            mapped = mp.tl.map_to_reference(query, tiny_ref, novelty_alpha=0.05, copy=True)
        p = mapped.obs["predicted_novelty_p"].to_numpy()
        flagged.append((p <= 0.05).mean())
        medians.append(np.median(p))
    assert np.mean(flagged) <= 1.5 * 0.05 and max(flagged) <= 0.1, flagged
    assert np.mean(flagged) >= 0.2 * 0.05, flagged  # not made conservative either
    assert min(medians) > 0.3, medians


def test_a_lot_of_unusual_make_up_is_marked_and_said_in_the_excess_novel_warning(
    tiny_query, tiny_ref
):
    """Until the flags stop depending on make-up (the xfail below), a potency-rich lot (the
    best kind) can fail the excess-novel test, warned as holding cells the reference does not
    represent (here 12% of a 48-in-60 potency lot's known cells flagged at 0.05, binomial
    p 0.03; in other draws 22%). Its make-up is marked, and the warning says what it means."""
    from types import SimpleNamespace

    from mscpotency.tl._mapping._api import _warn_novel_lots

    rng = np.random.default_rng(0)
    rich = potency_rich_cells(tiny_ref, tiny_query, 48, 12, rng)
    bone_marrow = (tiny_query.obs["set"] == "BM-test").to_numpy()
    usual = rng.choice(np.setdiff1d(np.flatnonzero(bone_marrow), rich), 60, replace=False)
    query = anndata.concat(
        [tiny_query[rich], tiny_query[np.sort(usual)]], merge="same", index_unique="-"
    )
    query.obs["lot"] = ["RICH"] * 60 + ["USUAL"] * 60
    mapped = mp.tl.map_to_reference(query, tiny_ref, method="fast", novelty_alpha=0.05, copy=True)
    per_lot = mp.get.map_to_reference(mapped)
    assert per_lot["make_up_unusual"].to_dict() == {"RICH": True, "USUAL": False}
    # a small query is scored beside reference cells, but not with a lot of unusual make-up:
    # beside them, 40% of this lot's known cells were flagged at 0.05 (12% scored alone)
    assert mapped.uns["predicted"]["novelty"]["n_scored_beside"] == 0
    assert per_lot.loc["RICH", "share_novel"] <= 0.25
    # the lots of the tiny query, other tissues included, are not unusual
    whole = mp.tl.map_to_reference(tiny_query, tiny_ref, method="fast", copy=True)
    assert not mp.get.map_to_reference(whole)["make_up_unusual"].any()
    # a lot failing the excess test: the warning names the unusual one among them
    per_lot = per_lot.assign(excess_novel=True)
    flags = SimpleNamespace(novelty_p=np.full(120, 0.5))
    with pytest.warns(UserWarning, match="flagged novel") as record:
        (issued,) = _warn_novel_lots(per_lot, flags, 0.05, 50)
    assert str(record[0].message) == issued
    assert "'RICH' (" in issued and "'USUAL' (" in issued  # both exceed
    assert "Lot(s) 'RICH' have a make-up unlike any reference lot's" in issued
    per_lot["make_up_unusual"] = False
    with pytest.warns(UserWarning, match="flagged novel"):
        (plain,) = _warn_novel_lots(per_lot, flags, 0.05, 50)
    assert "unlike any reference lot" not in plain


@pytest.mark.xfail(
    strict=True,
    reason="the novelty score still depends on a lot's make-up: it centres each lot on its "
    "own mean and asks how much of each cell's local deviation from it the reference "
    "embedding represents, and in a lot made mostly of one population that deviation is "
    "mostly within-population noise. Here 12% of a 48-in-60 potency lot's known cells are "
    "flagged at alpha 0.05 (a random lot mapped beside it 5%; 8-22% in four draws); on the "
    "study preset lots of 150 cells drawn from one lot and mapped alone had 4-12% flagged at "
    "alpha 0.01 at 80-100% potency cells (benchmarks/results/mapping_make_up.md, column "
    "novel). Scoring in the make-up-net frame "
    "instead lost the warning on a query with shuffled gene names (test_off_reference_warning "
    "failed: the lot's offset, in the reference's span, made every cell look represented). "
    "Calibration cells drawn with each lot's estimated make-up from held-out reference lots "
    "fixed these lots (0-3% at 0.01) but lost power where a held-out lot lacked the cells and "
    "others lent them (tiny preset, a population left out: 91% -> 81% flagged at 0.05, 70% -> "
    "28% at 0.01); drawn only for lots marked make_up_unusual, they fixed this test but "
    "explained away a lot made mostly of a new population (marked unusual too: 11% -> 1% of "
    "its new cells flagged at 0.01; docs/concepts.md)",
)
def test_a_lot_of_unusual_make_up_is_not_flagged_novel(tiny_query, tiny_ref):
    """Known cells are flagged at most at about the rate, whatever their lot's make-up."""
    rng = np.random.default_rng(0)
    rich = potency_rich_cells(tiny_ref, tiny_query, 48, 12, rng)
    bone_marrow = (tiny_query.obs["set"] == "BM-test").to_numpy()
    usual = rng.choice(np.setdiff1d(np.flatnonzero(bone_marrow), rich), 60, replace=False)
    query = anndata.concat(  # two lots sharing no cell, as real lots
        [tiny_query[rich], tiny_query[np.sort(usual)]], merge="same", index_unique="-"
    )
    query.obs["lot"] = ["RICH"] * 60 + ["USUAL"] * 60
    mapped = mp.tl.map_to_reference(query, tiny_ref, method="fast", novelty_alpha=0.05, copy=True)
    flagged = (mapped.obs["predicted_novelty_p"] <= 0.05).groupby(mapped.obs["lot"]).mean()
    assert flagged["USUAL"] <= 1.5 * 0.05
    assert flagged["RICH"] <= 1.5 * 0.05, flagged.to_dict()
