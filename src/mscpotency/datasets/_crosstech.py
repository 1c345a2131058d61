"""A query from another technology that carries a population the reference lacks.

Built on the study simulator (:func:`simulate_lots`): one population (genes, programmes,
donor and tissue effects) gives reference lots and query lots. The reference lots lose the
cells of one population (``novel``); the query lots keep them and are then measured by
another technology: binomial thinning of every count with a gene-specific capture
efficiency (lower depth overall, a log-normal spread between genes), which also changes
each gene's detection rate. No zero inflation on top: UMI counts from droplet and plate
technologies are described by thinning (Svensson 2020, Nat Biotechnol 38:147), and zeroing
well-expressed genes at random (tried first) makes single genes the query's main axes of
variation, which no technology does. Truth stays in ``true_*`` columns, with
``true_novel`` marking the cells of the population the reference lacks.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from .. import _keys
from .._docs import doc_params
from ._simulate import SetSpec, SimulationConfig, simulate_lots

#: The arms of the cross-technology preset: the reference, and the query on another technology.
REFERENCE_SET = "reference"
QUERY_SET = "query-xt"


@dataclass(frozen=True)
class TechnologySpec:
    """How the query's technology measures the same cells differently.

    Attributes
    ----------
    depth
        Mean share of the reference technology's molecules the query captures (lower depth).
    capture_sd
        Standard deviation of each gene's log capture efficiency around ``depth``
        (gene-specific capture bias; efficiencies are capped at 1).
    """

    depth: float = 0.4
    capture_sd: float = 0.5

    def __post_init__(self) -> None:
        if not 0 < self.depth <= 1:
            msg = f"depth must lie in (0, 1], got {self.depth!r}"
            raise ValueError(msg)
        if self.capture_sd < 0:
            msg = f"capture_sd must be >= 0, got {self.capture_sd!r}"
            raise ValueError(msg)


@doc_params
def crosstech_config(
    *,
    n_reference_lots: int = 8,
    n_query_lots: int = 6,
    n_cells_per_lot: int = 400,
    n_genes: int = 1000,
    novel: str = "SP9",
    novel_proportion: float = 0.08,
    **overrides,
) -> SimulationConfig:
    """The simulation behind :func:`crosstech`: the study's eight populations and a ninth.

    Parameters
    ----------
    n_reference_lots, n_query_lots
        Bone-marrow lots of the reference and of the query.
    n_cells_per_lot
        Cells per lot before the reference lots lose their ``novel`` cells.
    n_genes
        Genes simulated.
    novel
        Name of the population the reference lacks (added to the study's eight).
    novel_proportion
        Its base proportion (before the lots' compositions are drawn around the bases).
    overrides
        Further :class:`SimulationConfig` fields.
    """
    base = SimulationConfig(sets=())
    params = {
        "sets": (
            SetSpec(REFERENCE_SET, n_reference_lots, "BM", "REF"),
            SetSpec(QUERY_SET, n_query_lots, "BM", "XT"),
        ),
        "n_cells_per_lot": n_cells_per_lot,
        "n_genes": n_genes,
        "program_size": min(base.program_size, max(10, n_genes // 40)),
        "program_pool_size": min(base.program_pool_size, n_genes // 4),
        "subpopulations": (*base.subpopulations, novel),
        "base_proportions": (*base.base_proportions, novel_proportion),
        "preset": "crosstech",
    }
    params.update(overrides)
    return SimulationConfig(**params)


@doc_params
def crosstech(
    config: SimulationConfig | None = None,
    *,
    technology: TechnologySpec | None = None,
    novel: str = "SP9",
    random_state: int = 0,
) -> AnnData:
    """Reference lots and query lots from another technology with a population the reference lacks.

    Parameters
    ----------
    config
        The simulation (default :func:`crosstech_config`); its first arm is the reference,
        the others are the query. ``novel`` must be one of its subpopulations.
    technology
        How the query's technology differs (default :class:`TechnologySpec`).
    novel
        The population the reference lots lose.
    random_state
        {random_state}
        The same seed gives the same counts bit for bit.

    Returns
    -------
    Raw counts (float32 CSR) in ``X`` and ``layers['counts']`` with ``obs['set']`` (the
    reference arm first, then the query arms), ``obs['technology']`` (``"reference"`` or
    ``"query"``) and the simulator's truth, plus ``obs['true_novel']`` (a cell of the
    population the reference lacks; never in reference lots). ``true_potency_fraction``
    is the lot's share of potency cells among the cells it keeps (for reference lots,
    after the novel cells left). The technology in ``uns['simulation']['technology']``.

    Examples
    --------
    >>> import mscpotency as mp
    >>> data = mp.datasets.crosstech()
    >>> reference = data[data.obs["set"] == "reference"].copy()
    >>> query = data[data.obs["set"] != "reference"].copy()
    """
    config = crosstech_config(novel=novel) if config is None else config
    technology = TechnologySpec() if technology is None else technology
    if novel not in config.subpopulations:
        msg = (
            f"novel must be one of the subpopulations {list(config.subpopulations)}, got {novel!r}"
        )
        raise ValueError(msg)
    if len(config.sets) < 2:
        msg = "the configuration needs a reference arm and at least one query arm"
        raise ValueError(msg)
    adata = simulate_lots(config, random_state=random_state)
    reference_set = config.sets[0].name
    is_reference = (adata.obs[_keys.SET] == reference_set).to_numpy()
    novel_cells = (adata.obs["true_subpopulation"] == novel).to_numpy()
    adata = adata[~(is_reference & novel_cells)].copy()
    is_reference = (adata.obs[_keys.SET] == reference_set).to_numpy()
    rng = np.random.default_rng([random_state, 16])
    counts = _measure(adata.X, ~is_reference, technology, rng)
    adata.X = counts
    adata.layers[_keys.COUNTS_LAYER] = counts.copy()
    adata.obs["technology"] = pd.Categorical(
        np.where(is_reference, "reference", "query"), categories=["reference", "query"]
    )
    adata.obs["true_novel"] = (adata.obs["true_subpopulation"] == novel).to_numpy()
    potency = adata.obs["true_subpopulation"] == config.potency_subpopulation
    adata.obs["true_potency_fraction"] = (
        potency.groupby(adata.obs[_keys.LOT], observed=True).transform("mean").astype(float)
    )
    adata.uns["simulation"]["technology"] = asdict(technology)
    adata.uns["simulation"]["novel"] = novel
    return adata


def _measure(
    counts: sparse.csr_matrix,
    query: np.ndarray,
    technology: TechnologySpec,
    rng: np.random.Generator,
) -> sparse.csr_matrix:
    """The query rows' counts as the other technology records them (reference rows as they are)."""
    counts = sparse.csr_matrix(counts, dtype=np.float32, copy=True)
    n_genes = counts.shape[1]
    efficiency = np.minimum(
        1.0, technology.depth * np.exp(rng.normal(0.0, technology.capture_sd, n_genes))
    )
    row_of_entry = np.repeat(np.arange(counts.shape[0]), np.diff(counts.indptr))
    entries = np.flatnonzero(query[row_of_entry])
    genes = counts.indices[entries]
    thinned = rng.binomial(counts.data[entries].astype(np.int64), efficiency[genes])
    counts.data[entries] = thinned.astype(np.float32)
    counts.eliminate_zeros()
    counts.sort_indices()
    return counts
