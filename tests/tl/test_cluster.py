"""tl.cluster: recovers the simulated subpopulations, reproducibly."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

import mscpotency as mp


def test_recovers_subpopulations_on_tiny(tiny_ref):
    assert tiny_ref.obs["cluster"].nunique() == 8
    assert adjusted_rand_score(tiny_ref.obs["true_subpopulation"], tiny_ref.obs["cluster"]) >= 0.8


def test_labels_ordered_by_size_and_recorded(tiny_ref):
    sizes = tiny_ref.obs["cluster"].value_counts().reindex(tiny_ref.obs["cluster"].cat.categories)
    assert list(sizes.index) == [f"CL{i}" for i in range(8)]
    assert (np.diff(sizes.to_numpy()) <= 0).all()
    stored = tiny_ref.uns["cluster"]
    assert stored["n_clusters"] == 8 and stored["params"]["resolution_searched"]
    assert (
        "cluster_neighbors" in tiny_ref.uns and "cluster_neighbors_connectivities" in tiny_ref.obsp
    )


def test_same_seed_same_labels_and_copy_equals_inplace(tiny_ref):
    base = tiny_ref.copy()
    a = mp.tl.cluster(base, resolution=0.8, key_added="again", copy=True)
    assert "again" not in base.obs
    mp.tl.cluster(base, resolution=0.8, key_added="again")
    assert (a.obs["again"] == base.obs["again"]).all()


def test_fixed_resolution_without_search(tiny_ref):
    adata = mp.tl.cluster(tiny_ref, resolution=0.05, key_added="coarse", copy=True)
    assert adata.obs["coarse"].nunique() < 8
    assert adata.uns["coarse"]["resolution"] == pytest.approx(0.05)


def test_unreachable_target_warns_and_uses_closest(tiny_ref):
    with pytest.warns(UserWarning, match="exactly"):
        adata = mp.tl.cluster(
            tiny_ref, n_clusters=300, max_search_steps=4, key_added="many", copy=True
        )
    assert adata.obs["many"].nunique() > 8


def test_missing_embedding_names_preprocess(tiny_train):
    with pytest.raises(KeyError, match="pp.preprocess"):
        mp.tl.cluster(tiny_train.copy())


def test_bad_arguments(tiny_ref):
    with pytest.raises(ValueError, match="n_clusters"):
        mp.tl.cluster(tiny_ref, n_clusters=0, copy=True)
    with pytest.raises(ValueError, match="knn_method"):
        mp.tl.cluster(tiny_ref, knn_method="fast", copy=True)
