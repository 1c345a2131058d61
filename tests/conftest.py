"""Shared fixtures: simulated lots with known truth, processed once per session."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import pytest
from anndata import AnnData

import mscpotency as mp


def run_reference(adata: AnnData, *, n_clusters: int = 8) -> AnnData:
    """The reference analysis, step by step, as a user would run it."""
    mp.pp.qc(adata)
    mp.pp.preprocess(adata)
    mp.tl.cluster(adata, n_clusters=n_clusters)
    mp.tl.lot_fractions(adata)
    mp.tl.composition_deviation(adata)
    mp.tl.potency_association(adata, "vegf")
    mp.tl.potency_markers(adata)
    return adata


@pytest.fixture(scope="session")
def tiny_all() -> AnnData:
    """All arms of the tiny preset, raw counts (do not modify: copy first)."""
    return mp.datasets.tiny()


@pytest.fixture(scope="session")
def tiny_train(tiny_all) -> AnnData:
    """Raw counts of the tiny preset's 8 training lots (copy before modifying)."""
    return tiny_all[tiny_all.obs["set"] == "BM-train"].copy()


@pytest.fixture(scope="session")
def tiny_ref(tiny_train) -> AnnData:
    """The tiny training lots after the whole reference analysis (read-only)."""
    return run_reference(tiny_train.copy())


@pytest.fixture(scope="session")
def study_all() -> AnnData:
    """The study-shaped preset (24 lots, 36,000 cells), raw counts (read-only)."""
    return mp.datasets.study()


@pytest.fixture(scope="session")
def study_ref(study_all) -> AnnData:
    """The study's 11 bone-marrow training lots after the reference analysis (read-only)."""
    return run_reference(study_all[study_all.obs["set"] == "BM-train"].copy())
