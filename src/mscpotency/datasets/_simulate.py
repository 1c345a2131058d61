"""Ground-truth simulator of MSC lots: counts whose potency population is known.

Negative-binomial (gamma-Poisson) counts over a realistic spread of gene means and library
sizes, eight subpopulations defined by overlapping gene programs (two of them close), a
cell-cycle programme that cuts across them, per-lot donor effects, per-tissue shifts,
per-lot compositions, a handful of low-quality cells, and one potency value per lot driven
by the fraction of one subpopulation (``SP3``, the analogue of the study's "CL3") plus
assay noise. Truth lives in columns prefixed ``true_``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from .. import _keys
from .._docs import doc_params
from .._settings import progress
from .._simulation import config_settings, numbered_names

#: Named genes placed in the simulated transcriptome (all others are ``G0001`` ...).
MSC_GENES = ("THY1", "ENG", "NT5E", "VIM", "CD44", "PDGFRB")
CYCLE_GENES = (
    "MKI67",
    "TOP2A",
    "CCNB1",
    "CDK1",
    "CENPF",
    "UBE2C",
    "BIRC5",
    "TPX2",
    "NUSAP1",
    "PCNA",
)
MITO_GENES = ("MT-CO1", "MT-CO2", "MT-CO3", "MT-ND1", "MT-ND2", "MT-ND4", "MT-CYB", "MT-ATP6")
#: A few named genes per subpopulation programme, for readable marker tables.
PROGRAM_NAMED = {
    "SP1": ("COL1A1", "COL3A1"),
    "SP2": ("ACTA2", "TAGLN"),
    "SP3": ("LRRC75A", "VEGFA"),
    "SP4": ("CXCL12", "LEPR"),
    "SP5": ("VCAM1", "IGFBP5"),
    "SP6": ("MGP", "DCN"),
    "SP7": ("APOD", "CFD"),
    "SP8": ("POSTN", "TNC"),
}


@dataclass(frozen=True)
class SetSpec:
    """One study arm: its lots, tissue and how its cells differ from bone marrow."""

    name: str
    n_lots: int
    tissue: str
    lot_prefix: str
    first_lot: int = 1
    tissue_shift_sd: float = 0.0
    marker_scale: float = 1.0


@dataclass(frozen=True)
class SimulationConfig:
    """Every knob of :func:`simulate_lots`; presets are instances of it."""

    sets: tuple[SetSpec, ...]
    n_cells_per_lot: int = 1500
    n_genes: int = 2000
    subpopulations: tuple[str, ...] = ("SP1", "SP2", "SP3", "SP4", "SP5", "SP6", "SP7", "SP8")
    base_proportions: tuple[float, ...] = (0.22, 0.17, 0.11, 0.14, 0.12, 0.10, 0.08, 0.06)
    potency_subpopulation: str = "SP3"
    marker_gene: str = "LRRC75A"
    marker_lfc: float = 2.5
    #: The subpopulation that is a near copy of another (shares most of its programme).
    close_pair: tuple[str, str] = ("SP6", "SP7")
    close_pair_shared: float = 0.5
    program_size: int = 30
    program_lfc: tuple[float, float] = (0.5, 1.3)
    program_pool_size: int = 500
    cycle_lfc: float = 1.2
    cycling_share: float = 0.2
    donor_gene_share: float = 0.06
    donor_sd: float = 0.35
    tissue_gene_share: float = 0.08
    potency_fraction_range: tuple[float, float] = (0.03, 0.22)
    composition_concentration: float = 60.0
    library_size_mean: float = 6000.0
    library_size_sd_log: float = 0.35
    dispersion_median: float = 6.0
    low_quality_share: float = 0.02
    #: potency = intercept + slope * potency fraction + N(0, noise_sd); slope 0 gives a null study.
    potency_intercept: float = 400.0
    potency_slope: float = 4000.0
    potency_noise_sd: float = 60.0
    potency_key: str = _keys.POTENCY
    #: Share of potency cells partly committed towards ``transitional_target``: a continuum
    #: whose expression mixes the two programmes (0: no transitional state, as the study).
    transitional_share: float = 0.0
    transitional_target: str = "SP4"
    #: Range of the commitment ``w`` of transitional cells (programme = (1-w) potency + w target).
    transitional_commitment: tuple[float, float] = (0.2, 0.8)
    preset: str = "custom"
    extra: dict = field(default_factory=dict)


def _study_sets() -> tuple[SetSpec, ...]:
    return (
        SetSpec("BM-train", 11, "BM", "BM", first_lot=1),
        SetSpec("BM-test", 4, "BM", "BM", first_lot=12),
        SetSpec("AD", 4, "AD", "AD", tissue_shift_sd=0.6, marker_scale=0.9),
        SetSpec("UC", 5, "UC", "UC", tissue_shift_sd=0.6, marker_scale=0.55),
    )


@doc_params
def study_config(**overrides) -> SimulationConfig:
    """Configuration shaped like the reference study (Miura et al. 2023).

    11 bone-marrow training lots, 4 held-out bone-marrow lots, 4 adipose lots with a tissue
    shift and 5 umbilical-cord lots whose potency marker is weaker; 1,500 cells per lot.
    """
    return SimulationConfig(sets=_study_sets(), preset="study", **overrides)


@doc_params
def hard_config(**overrides) -> SimulationConfig:
    """The study's arms with a potency population that a single fixed-k cut often misses.

    Shaped after the studies of issue 12: the potency population (``SP3``) shares half of
    its programme with its neighbour ``SP4`` (weak programmes tell them apart), a quarter
    of its cells are partly committed towards ``SP4`` (a continuum: their programme mixes
    the two with a commitment drawn from 0.2-0.8; they still carry potency,
    ``true_potency_cell``, with their commitment in ``true_commitment``), one large
    population (``SP1``, 30% of cells) that 8-cluster Leiden tends to split, and a smaller
    potency population (3-16% of a lot) than the study's. The ``SP6``/``SP7`` close pair of
    :func:`study_config` is replaced by the ``SP4``/``SP3`` one.
    """
    params = {
        "sets": _study_sets(),
        "base_proportions": (0.30, 0.15, 0.08, 0.12, 0.12, 0.10, 0.08, 0.05),
        "potency_fraction_range": (0.03, 0.16),
        "close_pair": ("SP4", "SP3"),
        "close_pair_shared": 0.5,
        "transitional_share": 0.25,
        "transitional_target": "SP4",
        "transitional_commitment": (0.2, 0.8),
        "preset": "hard",
    }
    params.update(overrides)
    return SimulationConfig(**params)


@doc_params
def tiny_config(**overrides) -> SimulationConfig:
    """A small configuration for unit tests: the study's arms with fewer, smaller lots."""
    params = {
        "sets": (
            SetSpec("BM-train", 8, "BM", "BM", first_lot=1),
            SetSpec("BM-test", 3, "BM", "BM", first_lot=9),
            SetSpec("AD", 2, "AD", "AD", tissue_shift_sd=0.6, marker_scale=0.9),
            SetSpec("UC", 2, "UC", "UC", tissue_shift_sd=0.6, marker_scale=0.55),
        ),
        "n_cells_per_lot": 150,
        "n_genes": 500,
        "program_size": 20,
        "program_pool_size": 200,
        "preset": "tiny",
    }
    params.update(overrides)
    return SimulationConfig(**params)


def _gene_names(n_genes: int, config: SimulationConfig) -> list[str]:
    named = [*MSC_GENES, *CYCLE_GENES, *MITO_GENES]
    for genes in PROGRAM_NAMED.values():
        named.extend(genes)
    if n_genes < len(named) + config.program_pool_size:
        msg = (
            f"n_genes={n_genes} leaves no room for the {len(named)} named genes and a "
            f"programme pool of {config.program_pool_size}"
        )
        raise ValueError(msg)
    width = len(str(n_genes))
    return named + [f"G{i:0{width}d}" for i in range(1, n_genes - len(named) + 1)]


def _programs(config: SimulationConfig, genes: list[str], rng: np.random.Generator) -> np.ndarray:
    """Subpopulation x gene log fold changes: overlapping programmes and one close pair."""
    n_sub = len(config.subpopulations)
    index = {g: i for i, g in enumerate(genes)}
    named_all = {g for gs in PROGRAM_NAMED.values() for g in gs}
    pool_start = len(genes) - (
        len(genes) - len([*MSC_GENES, *CYCLE_GENES, *MITO_GENES]) - len(named_all)
    )
    pool = np.arange(pool_start, pool_start + config.program_pool_size)
    lfc = np.zeros((n_sub, len(genes)))
    low, high = config.program_lfc
    for k, name in enumerate(config.subpopulations):
        chosen = rng.choice(pool, size=config.program_size, replace=False)
        lfc[k, chosen] = rng.uniform(low, high, size=chosen.size)
        for gene in PROGRAM_NAMED.get(name, ()):
            lfc[k, index[gene]] = rng.uniform(low, high)
    source, copy = (config.subpopulations.index(s) for s in config.close_pair)
    src_genes = np.flatnonzero(lfc[source])
    shared = rng.choice(
        src_genes, size=int(config.close_pair_shared * src_genes.size), replace=False
    )
    own = np.flatnonzero(lfc[copy])
    keep_own = own[: max(1, own.size - shared.size)]
    lfc[copy] = 0.0
    lfc[copy, keep_own] = rng.uniform(low, high, size=keep_own.size)
    lfc[copy, shared] = lfc[source, shared]
    potency = config.subpopulations.index(config.potency_subpopulation)
    lfc[potency, index[config.marker_gene]] = config.marker_lfc
    return lfc


def _lot_names(spec: SetSpec) -> list[str]:
    """``BM01`` ...; zero-padded to the widest number, so names sort in lot order."""
    return numbered_names(spec.lot_prefix, spec.first_lot, spec.n_lots)


def _composition(config: SimulationConfig, n_lots: int, rng: np.random.Generator) -> np.ndarray:
    """Lots x subpopulations proportions; the potency fraction spans a set range."""
    base = np.asarray(config.base_proportions, dtype=float)
    potency = config.subpopulations.index(config.potency_subpopulation)
    rest = np.delete(base, potency)
    rest = rest / rest.sum()
    low, high = config.potency_fraction_range
    # evenly spread potency fractions in random order: every lot differs, none is extreme
    spread = low + (high - low) * (np.arange(n_lots) + rng.uniform(0.1, 0.9, n_lots)) / n_lots
    fractions = rng.permutation(spread)
    proportions = np.empty((n_lots, base.size))
    for i, f in enumerate(fractions):
        others = rng.dirichlet(config.composition_concentration * rest)
        proportions[i] = np.insert(others * (1 - f), potency, f)
    return proportions


@dataclass(frozen=True)
class _Population:
    """What every lot of one simulation shares: genes, their levels and the programmes."""

    genes: list[str]
    base_log: np.ndarray
    dispersion: np.ndarray
    programs: np.ndarray
    donor_genes: np.ndarray
    tissue_genes: np.ndarray

    @property
    def index(self) -> dict[str, int]:
        return {g: i for i, g in enumerate(self.genes)}


def _population(config: SimulationConfig, rng: np.random.Generator) -> _Population:
    genes = _gene_names(config.n_genes, config)
    n_genes = len(genes)
    index = {g: i for i, g in enumerate(genes)}
    base_log = rng.normal(0.0, 1.6, n_genes)
    for g in MSC_GENES:
        base_log[index[g]] = rng.uniform(3.0, 4.0)
    for g in MITO_GENES:
        base_log[index[g]] = rng.uniform(2.0, 3.0)
    base_log[index[config.marker_gene]] = -1.0
    dispersion = np.exp(rng.normal(np.log(config.dispersion_median), 0.5, n_genes))
    programs = _programs(config, genes, rng)
    donor_genes = rng.random(n_genes) < config.donor_gene_share
    tissue_genes = rng.random(n_genes) < config.tissue_gene_share
    return _Population(genes, base_log, dispersion, programs, donor_genes, tissue_genes)


def _tissue_effect(spec: SetSpec, population: _Population, rng: np.random.Generator) -> np.ndarray:
    effect = np.zeros(len(population.genes))
    if spec.tissue_shift_sd > 0:
        effect[population.tissue_genes] = rng.normal(
            0, spec.tissue_shift_sd, population.tissue_genes.sum()
        )
    return effect


def _set_lots(
    config: SimulationConfig, spec: SetSpec, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Lots x subpopulations proportions and the potency of each lot of one arm."""
    proportions = _composition(config, spec.n_lots, rng)
    potency_k = config.subpopulations.index(config.potency_subpopulation)
    potency = (
        config.potency_intercept
        + config.potency_slope * proportions[:, potency_k]
        + rng.normal(0, config.potency_noise_sd, spec.n_lots)
    )
    # a null study keeps the potency spread of a real one, but unrelated to composition
    if config.potency_slope == 0:
        potency = potency + rng.uniform(0, 4000 * 0.2, spec.n_lots)
    return proportions, potency


def _arm(
    config: SimulationConfig,
    spec: SetSpec,
    population: _Population,
    tissue_effects: dict[str, np.ndarray],
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """One arm's lot proportions and potency; draws its tissue's effect first when new."""
    if spec.tissue not in tissue_effects:
        tissue_effects[spec.tissue] = _tissue_effect(spec, population, rng)
    return _set_lots(config, spec, rng)


def _lot(
    config: SimulationConfig,
    population: _Population,
    spec: SetSpec,
    tissue_effect: np.ndarray,
    lot: str,
    proportions: np.ndarray,
    potency: float,
    rng: np.random.Generator,
) -> tuple[sparse.csr_matrix, pd.DataFrame]:
    """The counts and cell annotations of one lot."""
    index = population.index
    n_genes = len(population.genes)
    cycle_idx = np.array([index[g] for g in CYCLE_GENES])
    mito_idx = np.array([index[g] for g in MITO_GENES])
    marker_idx = index[config.marker_gene]
    potency_k = config.subpopulations.index(config.potency_subpopulation)
    n = config.n_cells_per_lot
    subpop = rng.choice(len(config.subpopulations), size=n, p=proportions)
    donor = np.zeros(n_genes)
    donor[population.donor_genes] = rng.normal(0, config.donor_sd, population.donor_genes.sum())
    log_rel = population.base_log + tissue_effect + donor + population.programs[subpop]
    marker_shift = (spec.marker_scale - 1.0) * config.marker_lfc
    log_rel[subpop == potency_k, marker_idx] += marker_shift
    commitment = _commit(config, population, subpop, log_rel, marker_idx, marker_shift, rng)
    cycling = rng.random(n) < config.cycling_share
    cycle_score = np.where(cycling, rng.uniform(0.5, 1.0, n), 0.0)
    log_rel[:, cycle_idx] += (
        config.cycle_lfc * cycle_score[:, None] * rng.uniform(0.7, 1.3, cycle_idx.size)
    )
    low_quality = rng.random(n) < config.low_quality_share
    log_rel[np.ix_(low_quality, mito_idx)] += 3.0
    rel = np.exp(log_rel - log_rel.max(axis=1, keepdims=True))
    rel /= rel.sum(axis=1, keepdims=True)
    library = np.exp(rng.normal(np.log(config.library_size_mean), config.library_size_sd_log, n))
    library[low_quality] *= 0.1
    mean = rel * library[:, None]
    rate = mean * rng.gamma(population.dispersion, 1.0 / population.dispersion, size=mean.shape)
    counts = rng.poisson(rate).astype(np.float32)
    obs = pd.DataFrame(
        {
            _keys.LOT: lot,
            _keys.SET: spec.name,
            "tissue": spec.tissue,
            config.potency_key: potency,
            "true_subpopulation": np.asarray(config.subpopulations)[subpop],
            "true_potency_cell": subpop == potency_k,
            "true_commitment": commitment,
            "true_cycling": cycle_score,
            "true_low_quality": low_quality,
            "true_potency_fraction": proportions[potency_k],
        },
        index=[f"{lot}_{i:05d}" for i in range(n)],
    )
    return sparse.csr_matrix(counts), obs


def _commit(
    config: SimulationConfig,
    population: _Population,
    subpop: np.ndarray,
    log_rel: np.ndarray,
    marker_idx: int,
    marker_shift: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Move a share of potency cells part of the way to the target programme (in place).

    A transitional cell with commitment ``w`` expresses ``(1 - w)`` of the potency
    programme (its marker included) and ``w`` of the target's. Returns each cell's
    commitment (0 for every other cell). Draws nothing when ``transitional_share`` is 0,
    so the presets without a transitional state keep their counts bit for bit.
    """
    commitment = np.zeros(subpop.size)
    if config.transitional_share <= 0:
        return commitment
    if config.transitional_target not in config.subpopulations or (
        config.transitional_target == config.potency_subpopulation
    ):
        msg = (
            "transitional_target must be one of the other subpopulations "
            f"{list(config.subpopulations)}, got {config.transitional_target!r}"
        )
        raise ValueError(msg)
    potency_k = config.subpopulations.index(config.potency_subpopulation)
    target_k = config.subpopulations.index(config.transitional_target)
    cells = np.flatnonzero(subpop == potency_k)
    moving = cells[rng.random(cells.size) < config.transitional_share]
    w = rng.uniform(*config.transitional_commitment, size=moving.size)
    programs = population.programs
    shift = programs[target_k] - programs[potency_k]
    log_rel[moving] += w[:, None] * shift
    log_rel[moving, marker_idx] -= w * marker_shift
    commitment[moving] = w
    return commitment


def _var(config: SimulationConfig, population: _Population) -> pd.DataFrame:
    programme_of = [
        ",".join(np.asarray(config.subpopulations)[population.programs[:, j] > 0])
        for j in range(len(population.genes))
    ]
    var = pd.DataFrame({"true_program": programme_of}, index=population.genes)
    var.loc[list(CYCLE_GENES), "true_program"] = "cycle"
    return var


def _categorical_obs(obs: pd.DataFrame, config: SimulationConfig) -> pd.DataFrame:
    for column in (_keys.LOT, _keys.SET, "tissue"):
        obs[column] = pd.Categorical(obs[column], categories=list(dict.fromkeys(obs[column])))
    obs["true_subpopulation"] = pd.Categorical(
        obs["true_subpopulation"], categories=list(config.subpopulations)
    )
    return obs


def _settings(config: SimulationConfig, random_state: int, **extra) -> dict:
    settings = config_settings(config, random_state, drop=("sets",))
    settings.update(extra)
    settings["sets"] = pd.DataFrame([asdict(s) for s in config.sets]).set_index("name")
    return settings


@doc_params
def simulate_lots(config: SimulationConfig, *, random_state: int = 0) -> AnnData:
    """Simulate pooled scRNA-seq counts of MSC lots with known potency population.

    Parameters
    ----------
    config
        Every knob of the simulation; see :func:`study_config` and :func:`tiny_config`.
    random_state
        Seed; the same seed gives the same counts bit for bit.

    Returns
    -------
    Cells x genes AnnData with raw counts (float32, CSR) in ``X`` and in
    ``layers['counts']``; ``obs['lot']``, ``obs['set']``, ``obs['tissue']`` and the
    lot-level potency column; truth in ``obs['true_subpopulation']``,
    ``obs['true_potency_cell']``, ``obs['true_commitment']`` (how far a potency cell is
    committed towards the transitional target; 0 without a transitional state),
    ``obs['true_cycling']``, ``obs['true_low_quality']``,
    ``obs['true_potency_fraction']`` and ``var['true_program']``; the configuration in
    ``uns['simulation']``.

    See Also
    --------
    iter_lots : the same population, one lot at a time (for data larger than memory).
    """
    rng = np.random.default_rng(random_state)
    population = _population(config, rng)
    tissue_effects: dict[str, np.ndarray] = {}
    blocks, obs_frames = [], []
    lots = progress(
        _lots_in_order(config, population, tissue_effects, rng),
        desc="simulating lots",
        total=sum(spec.n_lots for spec in config.sets),
        unit="lot",
    )
    for spec, lot, proportions, potency in lots:
        counts, obs = _lot(
            config, population, spec, tissue_effects[spec.tissue], lot, proportions, potency, rng
        )
        blocks.append(counts)
        obs_frames.append(obs)
    obs = _categorical_obs(pd.concat(obs_frames), config)
    X = sparse.vstack(blocks, format="csr")
    adata = AnnData(X=X, obs=obs, var=_var(config, population))
    adata.layers[_keys.COUNTS_LAYER] = X.copy()
    adata.uns["simulation"] = _settings(config, random_state)
    return adata


def _lots_in_order(
    config: SimulationConfig,
    population: _Population,
    tissue_effects: dict[str, np.ndarray],
    rng: np.random.Generator,
) -> Iterator[tuple[SetSpec, str, np.ndarray, float]]:
    """Each lot's arm, name, proportions and potency, drawing each arm's lots when it is reached.

    A generator, so the random draws keep their order: an arm's compositions, then its
    lots' cells (drawn by the caller between two items), then the next arm.
    """
    for spec in config.sets:
        proportions, potency = _arm(config, spec, population, tissue_effects, rng)
        for lot_i, lot in enumerate(_lot_names(spec)):
            yield spec, lot, proportions[lot_i], potency[lot_i]


@doc_params
def iter_lots(config: SimulationConfig, *, random_state: int = 0) -> Iterator[AnnData]:
    """Simulate lots one at a time: a study of any size in the memory of one lot.

    The population (genes, levels, subpopulation programmes, which genes carry donor and
    tissue effects) is that of :func:`simulate_lots` with the same seed; each arm's lot
    compositions and potency values are drawn up front (one row per lot), and each lot's
    cells from a random stream of its own (seeded by ``random_state``, the arm and the
    lot), so only one lot is in memory at a time. The lots are not those of
    :func:`simulate_lots` (whose lots share one stream), but they are drawn the same way.

    Parameters
    ----------
    config
        Every knob of the simulation; see :func:`study_config`.
    random_state
        Seed; the same seed gives the same lots bit for bit.

    Yields
    ------
    One AnnData per lot, in the order of ``config.sets``: raw counts (float32 CSR) in
    ``X`` only, ``obs`` and ``var`` as :func:`simulate_lots` writes them (categorical
    ``lot``/``set``/``tissue`` with the lot's own value), ``uns['simulation']``.

    Examples
    --------
    Per-lot files for the out-of-core path (:func:`mscpotency.io.read_lots_lazy`)::

        for lot in mp.datasets.iter_lots(config):
            lot.write_h5ad(f"lots/{lot.obs['lot'].iloc[0]}.h5ad")
    """
    rng = np.random.default_rng(random_state)
    population = _population(config, rng)
    var = _var(config, population)
    tissue_effects: dict[str, np.ndarray] = {}
    arms = []
    for spec in config.sets:
        arms.append((spec, *_arm(config, spec, population, tissue_effects, rng)))
    indices = [
        (set_i, lot_i, lot)
        for set_i, (spec, _, _) in enumerate(arms)
        for lot_i, lot in enumerate(_lot_names(spec))
    ]
    for set_i, lot_i, lot in progress(indices, desc="simulating lots", unit="lot"):
        spec, proportions, potency = arms[set_i]
        lot_rng = np.random.default_rng([random_state, set_i, lot_i])
        counts, obs = _lot(
            config,
            population,
            spec,
            tissue_effects[spec.tissue],
            lot,
            proportions[lot_i],
            potency[lot_i],
            lot_rng,
        )
        adata = AnnData(X=counts, obs=_categorical_obs(obs, config), var=var.copy())
        adata.uns["simulation"] = _settings(
            config, random_state, lots="independent streams (iter_lots)"
        )
        yield adata


@doc_params
def study(*, random_state: int = 0, potency_slope: float | None = None) -> AnnData:
    """The study-shaped preset: 24 lots in 4 arms, ~36,000 cells, 2,000 genes.

    Parameters
    ----------
    random_state
        {random_state}
        The default reproduces the documented figures.
    potency_slope
        Override the effect of the potency fraction on potency; 0 gives a null study.

    Returns
    -------
    Raw counts with ``obs['lot']``, ``obs['set']``, the lot-level assays and the truth
    (``true_*`` columns).
    """
    overrides = {} if potency_slope is None else {"potency_slope": potency_slope}
    return simulate_lots(study_config(**overrides), random_state=random_state)


@doc_params
def hard(*, random_state: int = 0, potency_slope: float | None = None) -> AnnData:
    """The hard preset: the study's 24 lots with a potency population next to a continuum.

    See :func:`hard_config`: the potency population shares half its programme with a
    neighbour, a quarter of its cells are partly committed towards it, and one large
    population invites fixed-k Leiden to spend a cluster on splitting it.

    Parameters
    ----------
    random_state
        {random_state}
    potency_slope
        Override the effect of the potency fraction on potency; 0 gives a null study.

    Returns
    -------
    Raw counts shaped as :func:`study`'s, with the truth in ``true_*`` columns
    (``true_commitment`` too).
    """
    overrides = {} if potency_slope is None else {"potency_slope": potency_slope}
    return simulate_lots(hard_config(**overrides), random_state=random_state)


@doc_params
def tiny(*, random_state: int = 0, potency_slope: float | None = None) -> AnnData:
    """A small preset for tests and quick examples: 15 lots of 150 cells, 500 genes.

    Parameters
    ----------
    potency_slope
        Override the effect of the potency fraction on potency; 0 gives a null study.

    Returns
    -------
    Raw counts shaped as :func:`study`'s, with the truth in ``true_*`` columns.
    """
    overrides = {} if potency_slope is None else {"potency_slope": potency_slope}
    return simulate_lots(tiny_config(**overrides), random_state=random_state)
