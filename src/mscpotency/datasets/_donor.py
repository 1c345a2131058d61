"""A preset with strong donor effects: lots that differ by donor and site, not only by composition.

Built on the pieces of :mod:`mscpotency.datasets._simulate` (the same populations, counts and
potency model): large per-lot (donor) shifts on many genes, two sites with a technical shift
of their own, and one cell state present in a single lot (the lot with the highest potency,
so a cluster of it trivially "tracks" potency). Truth lives in ``true_*`` columns.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from .. import _keys
from .._docs import doc_params
from ._simulate import (
    SetSpec,
    SimulationConfig,
    _categorical_obs,
    _lot,
    _lot_names,
    _population,
    _set_lots,
    _settings,
    _var,
)

#: Name of the cell state present in one lot only.
LOT_SPECIFIC_STATE = "LS"
#: What the donor preset adds to :class:`SimulationConfig` (stored in its ``extra``).
DONOR_DEFAULTS = {
    "site_gene_share": 0.15,
    "site_shift_sd": 0.5,
    "lot_specific_share": 0.25,
    "lot_specific_lfc_scale": 2.0,
}


@doc_params
def donor_config(**overrides) -> SimulationConfig:
    """Two sites of six lots each, with strong donor effects and one lot-specific state.

    Every lot shifts 10% of genes by a donor effect of SD 0.45 (log scale; the study preset:
    6% of genes, SD 0.35), the two sites differ by a technical shift of SD 0.5 on 15% of
    genes (``site_shift_sd``, ``site_gene_share``), and the lot with the highest potency
    carries a cell state of its own (``LS``, 25% of its cells, ``lot_specific_share``,
    taken from its non-potency populations so its potency fraction is kept; its programme's
    fold changes are twice the populations', ``lot_specific_lfc_scale``, as a distinct
    state such as a stressed or senescent one). 600 cells per lot, 1,000 genes. With these
    shifts uncorrected pooled clustering follows lots and sites more than populations
    (cluster-vs-population ARI about 0.3, as in the real multi-batch data of issue 13),
    while the populations stay separable once lot effects are removed. Keys of :data:`DONOR_DEFAULTS` may be overridden too (they go to
    ``extra``).
    """
    extra = dict(DONOR_DEFAULTS)
    for name in DONOR_DEFAULTS:
        if name in overrides:
            extra[name] = overrides.pop(name)
    params = {
        "sets": (
            SetSpec("site-A", 6, "BM", "A", first_lot=1),
            SetSpec("site-B", 6, "BM", "B", first_lot=7),
        ),
        "n_cells_per_lot": 600,
        "n_genes": 1000,
        "donor_gene_share": 0.10,
        "donor_sd": 0.45,
        "preset": "donor",
        "extra": extra,
    }
    params.update(overrides)
    return SimulationConfig(**params)


def _with_state(config: SimulationConfig) -> SimulationConfig:
    """The configuration whose populations include the lot-specific state (drawn last)."""
    if LOT_SPECIFIC_STATE in config.subpopulations:
        msg = f"{LOT_SPECIFIC_STATE!r} is reserved for the lot-specific state"
        raise ValueError(msg)
    return replace(config, subpopulations=(*config.subpopulations, LOT_SPECIFIC_STATE))


def _site_effects(
    config: SimulationConfig, n_genes: int, rng: np.random.Generator
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Which genes carry the site shift, and each site's shift (one per set)."""
    genes = rng.random(n_genes) < config.extra["site_gene_share"]
    effects = {}
    for spec in config.sets:
        effect = np.zeros(n_genes)
        effect[genes] = rng.normal(0, config.extra["site_shift_sd"], genes.sum())
        effects[spec.name] = effect
    return genes, effects


def _with_lot_specific(proportions: np.ndarray, potency_k: int, share: float) -> np.ndarray:
    """One lot's proportions with ``share`` of its cells moved to the lot-specific state.

    The share is taken from the non-potency populations, so the potency fraction is kept.
    """
    out = np.append(proportions, 0.0)
    others = np.ones(out.size, dtype=bool)
    others[[potency_k, -1]] = False
    rest = out[others].sum()
    out[others] *= (rest - share) / rest
    out[-1] = share
    return out


@doc_params
def simulate_donor_lots(config: SimulationConfig, *, random_state: int = 0) -> AnnData:
    """Simulate lots with strong donor and site effects and one lot-specific cell state.

    Parameters
    ----------
    config
        See :func:`donor_config` (its ``extra`` holds the site and lot-specific settings).
    random_state
        {random_state}

    Returns
    -------
    Raw counts shaped as :func:`mscpotency.datasets.study`'s (``obs['set']`` is the site),
    plus ``obs['site']``; truth in ``true_*`` columns as there, with ``LS`` a category of
    ``obs['true_subpopulation']`` and ``obs['true_lot_specific']`` marking its cells;
    ``var['true_site_gene']`` and ``var['true_donor_gene']``; ``uns['simulation']`` with the
    lot that carries the state (``lot_specific_lot``).
    """
    share = float(config.extra["lot_specific_share"])
    if not 0 < share < 1:
        msg = f"lot_specific_share must lie between 0 and 1 (exclusive), got {share!r}"
        raise ValueError(msg)
    rng = np.random.default_rng(random_state)
    full = _with_state(config)
    population = _population(full, rng)
    programs = population.programs.copy()
    programs[-1] *= float(config.extra["lot_specific_lfc_scale"])
    population = replace(population, programs=programs)
    site_genes, site_effects = _site_effects(config, len(population.genes), rng)
    arms = [(spec, *_set_lots(config, spec, rng)) for spec in config.sets]
    potency_all = np.concatenate([potency for _, _, potency in arms])
    lots_all = [lot for spec, _, _ in arms for lot in _lot_names(spec)]
    chosen = lots_all[int(np.argmax(potency_all))]
    potency_k = config.subpopulations.index(config.potency_subpopulation)
    blocks, frames = [], []
    for spec, proportions, potency in arms:
        for i, lot in enumerate(_lot_names(spec)):
            lot_share = share if lot == chosen else 0.0
            p = _with_lot_specific(proportions[i], potency_k, lot_share)
            counts, obs = _lot(
                full, population, spec, site_effects[spec.name], lot, p, potency[i], rng
            )
            blocks.append(counts)
            frames.append(obs)
    obs = _categorical_obs(pd.concat(frames), full)
    obs["site"] = obs[_keys.SET]
    obs["true_lot_specific"] = (obs["true_subpopulation"] == LOT_SPECIFIC_STATE).to_numpy()
    X = sparse.vstack(blocks, format="csr")
    var = _var(full, population)
    var["true_site_gene"] = site_genes
    var["true_donor_gene"] = population.donor_genes
    adata = AnnData(X=X, obs=obs, var=var)
    adata.layers[_keys.COUNTS_LAYER] = X.copy()
    adata.uns["simulation"] = _settings(
        full, random_state, **{k: config.extra[k] for k in DONOR_DEFAULTS}
    )
    adata.uns["simulation"]["lot_specific_lot"] = chosen
    return adata


@doc_params
def donor(*, random_state: int = 0, potency_slope: float | None = None) -> AnnData:
    """The donor-effect preset: 12 lots from two sites, strong donor shifts, one lot-specific state.

    See :func:`donor_config`. Pooled clustering of these lots follows the lots unless lot
    effects are corrected (:func:`mscpotency.pp.integrate`), and the lot with the highest
    potency carries a state of its own: :func:`mscpotency.tl.lot_fractions` flags its
    cluster and :func:`mscpotency.tl.potency_association` warns if it is named.

    Parameters
    ----------
    random_state
        {random_state}
    potency_slope
        Override the effect of the potency fraction on potency; 0 gives a null study.

    Returns
    -------
    Raw counts with ``obs['lot']``, ``obs['site']``, the lot-level potency and the truth
    (``true_*`` columns, ``true_lot_specific`` among them).
    """
    overrides = {} if potency_slope is None else {"potency_slope": potency_slope}
    return simulate_donor_lots(donor_config(**overrides), random_state=random_state)
