"""Ground-truth simulator of iPS cell lines: bulk baseline profiles and differentiation panels.

Each line has latent differentiation propensities. A shared *bias* factor pushes a line
towards ectoderm and away from mesoderm/endoderm (the SALL3 pattern); lineage factors move
one lineage each; neural induction by two methods (suspension, adhesion) reads the neural
factor plus a method-specific factor. Genes and miRNAs measured in the undifferentiated
lines carry planted loadings on these factors (the true markers); everything else is
biological variation unrelated to differentiation, platform measurement noise, and a
platform-specific technical factor (array batch, RNA quality) that, in the training lines
only, happens to follow one lineage's propensity: a false signal seen on one platform.

After differentiation, embryoid bodies are scored by qRT-PCR panels of ectoderm, mesoderm
and endoderm genes (45/56/27, values as -ΔCt: higher = more expressed) and neural induction
by PAX6/SOX1/NES. Truth lives in columns prefixed ``true_``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import pandas as pd
from anndata import AnnData

from ... import _keys
from ..._docs import doc_params
from ..._simulation import config_settings, numbered_names

#: Embryoid-body lineages and the neural induction methods of the reference study.
LINEAGES = ("ectoderm", "mesoderm", "endoderm")
NEURAL_METHODS = ("suspension", "adhesion")
#: Latent factors of a line, in the column order of the loading matrices.
FACTORS = ("bias", "ectoderm", "mesoderm", "endoderm", "neural", "suspension", "adhesion")

#: Named lineage genes at the top of each qRT-PCR panel (the rest are ``ECT12`` ...).
PANEL_NAMED = {
    "ectoderm": (
        "PAX6",
        "SOX1",
        "NES",
        "OTX2",
        "ZIC1",
        "LHX2",
        "PAX3",
        "MAP2",
        "TUBB3",
        "NEUROD1",
        "OLIG3",
    ),
    "mesoderm": (
        "TBXT",
        "MIXL1",
        "HAND1",
        "KDR",
        "MESP1",
        "NKX2-5",
        "MYL7",
        "TNNT2",
        "PDGFRA",
        "ISL1",
        "RUNX1",
    ),
    "endoderm": (
        "SOX17",
        "FOXA2",
        "GATA6",
        "CXCR4",
        "HNF1B",
        "HNF4A",
        "AFP",
        "CER1",
        "EOMES",
        "LEFTY1",
        "PRDM1",
    ),
}
PANEL_PREFIX = {"ectoderm": "ECT", "mesoderm": "MES", "endoderm": "END"}
PLURIPOTENCY_GENES = ("POU5F1", "NANOG", "LIN28A", "DNMT3B")
NEURAL_PANEL = ("PAX6", "SOX1", "NES")

#: The named planted markers of the reference work: gene -> (factor, sign).
FLAGSHIP_MARKERS = {"SALL3": ("bias", 1), "PF4": ("mesoderm", 1), "ROR2": ("neural", 1)}


@dataclass(frozen=True)
class PlatformSpec:
    """One baseline profiling platform.

    ``kind`` is ``"mrna"`` (one feature per gene), ``"cage"`` (promoters ``p1@GENE``, some
    genes with a second promoter ``p2@GENE``) or ``"mirna"`` (its own features, with a
    detection floor that gives ties and a few miRNAs undetected in every line).
    """

    name: str
    kind: str
    #: Share of each feature's variance that is biology (shared by every platform).
    reliability: tuple[float, float] = (0.3, 0.9)
    #: Features loading on the platform's technical factor, and their loading.
    n_technical: int = 150
    technical_loading: tuple[float, float] = (0.8, 0.95)
    #: The outcome the technical factor follows in the training lines (correlation below).
    technical_target: str = "mesoderm"
    technical_correlation: float = 0.85


@dataclass(frozen=True)
class LinesConfig:
    """Every knob of :func:`simulate_lines`; presets are instances of it."""

    n_train: int = 10
    n_test: int = 13
    line_prefix: str = "iPS"
    platforms: tuple[PlatformSpec, ...] = (
        PlatformSpec("mrna", "mrna", n_technical=150, technical_target="mesoderm"),
        PlatformSpec("mirna", "mirna", n_technical=30, technical_target="endoderm"),
        PlatformSpec(
            "cage", "cage", reliability=(0.25, 0.85), n_technical=150, technical_target="ectoderm"
        ),
    )
    n_genes: int = 2000
    n_mirnas: int = 300
    #: Share of genes with a CAGE promoter (planted markers always have one) and share of
    #: those with a second, partly independent promoter.
    cage_gene_share: float = 0.8
    cage_second_promoter_share: float = 0.2
    #: How strongly the bias factor sets ectoderm (+) and mesoderm/endoderm (-) propensity.
    bias_weight: float = 0.85
    #: Neural induction outcome = neural_weight * neural + method_weight * method factor + noise.
    neural_weight: float = 0.9
    method_weight: float = 0.35
    #: Planted gene markers per factor (flagship markers included) and miRNA markers.
    gene_markers: tuple[tuple[str, int], ...] = (
        ("bias", 12),
        ("ectoderm", 10),
        ("mesoderm", 10),
        ("endoderm", 10),
        ("neural", 10),
        ("suspension", 6),
        ("adhesion", 6),
    )
    mirna_markers: tuple[tuple[str, int], ...] = (
        ("bias", 4),
        ("ectoderm", 3),
        ("mesoderm", 3),
        ("endoderm", 3),
        ("neural", 3),
        ("suspension", 2),
        ("adhesion", 2),
    )
    marker_loading: tuple[float, float] = (0.8, 0.97)
    flagship_loading: float = 0.97
    #: Reliability of planted markers on every platform (well-measured, expressed genes).
    marker_reliability: tuple[float, float] = (0.85, 0.97)
    #: qRT-PCR panel sizes per lineage (ectoderm, mesoderm, endoderm) and gene loadings.
    panel_sizes: tuple[int, int, int] = (45, 56, 27)
    panel_loading: tuple[float, float] = (0.5, 0.9)
    neural_panel_loading: tuple[float, float] = (0.9, 0.97)
    n_undetected_mirnas: int = 3
    #: Shared biological modules of the genes (0: none): line-level factors unrelated to
    #: differentiation that each move a share of the genes together on every platform, so
    #: chance correlations of ten lines come in correlated blocks.
    n_modules: int = 0
    module_share: float = 0.3
    module_loading: tuple[float, float] = (0.3, 0.7)
    preset: str = "custom"
    extra: dict = field(default_factory=dict)


@doc_params
def ips_lines_config(**overrides) -> LinesConfig:
    """Configuration shaped like the reference iPS study.

    10 training lines and 13 held-out lines, profiled undifferentiated on an mRNA
    microarray (2,000 genes), a miRNA array (300 miRNAs) and CAGE (~1,900 promoters);
    embryoid bodies scored by 45/56/27-gene ectoderm/mesoderm/endoderm qRT-PCR panels and
    neural induction by two methods (suspension, adhesion) scored by PAX6/SOX1/NES.
    """
    return LinesConfig(preset="ips_lines", **overrides)


def _line_names(config: LinesConfig) -> tuple[list[str], list[str]]:
    names = numbered_names(config.line_prefix, 1, config.n_train + config.n_test)
    return names[: config.n_train], names[config.n_train :]


def _check_config(config: LinesConfig) -> None:
    if config.n_train < 3:
        msg = f"n_train={config.n_train}: a rank correlation needs at least 3 training lines"
        raise ValueError(msg)
    if config.n_test < 0:
        msg = f"n_test must be >= 0, got {config.n_test}"
        raise ValueError(msg)
    names = [p.name for p in config.platforms]
    if len(set(names)) != len(names):
        msg = f"platform names must be unique, got {names}"
        raise ValueError(msg)
    for spec in config.platforms:
        if spec.kind not in ("mrna", "cage", "mirna"):
            msg = (
                f"platform {spec.name!r}: kind must be 'mrna', 'cage' or 'mirna', got {spec.kind!r}"
            )
            raise ValueError(msg)
        if spec.technical_target not in (*LINEAGES, "neural"):
            msg = f"platform {spec.name!r}: technical_target must be one of {[*LINEAGES, 'neural']}"
            raise ValueError(msg)
    n_planted = sum(n for _, n in config.gene_markers)
    if config.n_genes < n_planted + max((p.n_technical for p in config.platforms), default=0) + 10:
        msg = f"n_genes={config.n_genes} leaves no room for {n_planted} planted markers and technical features"
        raise ValueError(msg)
    if config.n_mirnas < sum(n for _, n in config.mirna_markers) + config.n_undetected_mirnas + 10:
        msg = f"n_mirnas={config.n_mirnas} is too small for the planted miRNA markers"
        raise ValueError(msg)
    if not 0 <= config.bias_weight < 1:
        msg = f"bias_weight must be in [0, 1), got {config.bias_weight}"
        raise ValueError(msg)
    if config.neural_weight**2 + config.method_weight**2 >= 1:
        msg = "neural_weight**2 + method_weight**2 must stay below 1 (the rest is assay noise)"
        raise ValueError(msg)


#: Outcomes with a true propensity: the lineages, neural (method-free) and each neural method.
TRUTH_OUTCOMES = (*LINEAGES, "neural", *(f"neural_{m}" for m in NEURAL_METHODS))


def outcome_weights(config: LinesConfig) -> pd.DataFrame:
    """Factors x outcomes: how each latent factor sets each true propensity.

    Every column has unit norm except the neural methods, whose remaining variance is
    assay noise. ``corr(feature biology, outcome) = loadings @ weights``.
    """
    w = config.bias_weight
    rest = np.sqrt(1 - w**2)
    weights = pd.DataFrame(0.0, index=list(FACTORS), columns=list(TRUTH_OUTCOMES))
    weights.loc["bias", "ectoderm"] = w
    weights.loc["bias", ["mesoderm", "endoderm"]] = -w
    for lineage in LINEAGES:
        weights.loc[lineage, lineage] = rest
    weights.loc["neural", "neural"] = 1.0
    for method in NEURAL_METHODS:
        weights.loc["neural", f"neural_{method}"] = config.neural_weight
        weights.loc[method, f"neural_{method}"] = config.method_weight
    return weights


def _propensities(
    factors: np.ndarray, weights: pd.DataFrame, config: LinesConfig, rng: np.random.Generator
) -> pd.DataFrame:
    """True propensity of every line (columns: lineages, neural and each neural method)."""
    out = pd.DataFrame(factors @ weights.to_numpy(), columns=weights.columns)
    noise_sd = np.sqrt(1 - config.neural_weight**2 - config.method_weight**2)
    for method in NEURAL_METHODS:
        out[f"neural_{method}"] += noise_sd * rng.normal(size=factors.shape[0])
    return out


def _direction(kind: str, weights: pd.DataFrame) -> np.ndarray:
    """Unit factor-space direction of a planted marker kind.

    Lineage markers follow their lineage's propensity itself (so a mesoderm marker also
    falls with the ecto-vs-meso/endo bias); ``bias`` and the method kinds follow one factor.
    """
    if kind in weights.columns and kind in (*LINEAGES, "neural"):
        column = weights[kind].to_numpy()
        return column / np.linalg.norm(column)
    axis = np.zeros(len(FACTORS))
    axis[FACTORS.index(kind)] = 1.0
    return axis


def _plant(
    n_features: int,
    markers: tuple[tuple[str, int], ...],
    weights: pd.DataFrame,
    config: LinesConfig,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Feature x factor loadings (planted markers first) and the kind of each feature."""
    loadings = np.zeros((n_features, len(FACTORS)))
    kind_of = np.full(n_features, "", dtype=object)
    position = 0
    low, high = config.marker_loading
    for kind, count in markers:
        direction = _direction(kind, weights)
        for _ in range(count):
            loadings[position] = rng.choice([-1.0, 1.0]) * rng.uniform(low, high) * direction
            kind_of[position] = kind
            position += 1
    return loadings, kind_of


def _biology(factors: np.ndarray, loadings: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Lines x features biological levels with unit variance: planted part + free variation."""
    free = np.sqrt(np.clip(1 - (loadings**2).sum(axis=1), 0, None))
    return factors @ loadings.T + free * rng.normal(size=(factors.shape[0], loadings.shape[0]))


#: A planted feature is a true marker of an outcome when its biology correlates with the
#: outcome at least this much in the population of lines.
TRUE_CORRELATION = 0.1


def _truth_columns(
    loadings: np.ndarray, kind_of: np.ndarray, weights: pd.DataFrame
) -> dict[str, np.ndarray]:
    columns: dict[str, np.ndarray] = {"true_factor": kind_of.astype(str)}
    columns["true_loading"] = np.sign(loadings.sum(axis=1)) * np.linalg.norm(loadings, axis=1)
    correlation = loadings @ weights.to_numpy()
    for j, outcome in enumerate(weights.columns):
        corr = correlation[:, j]
        columns[f"true_{outcome}"] = (np.sign(corr) * (np.abs(corr) >= TRUE_CORRELATION)).astype(
            np.int64
        )
        columns[f"true_corr_{outcome}"] = corr
    return columns


def _technical_factor(
    propensity: pd.DataFrame, n_train: int, spec: PlatformSpec, rng: np.random.Generator
) -> np.ndarray:
    """A platform artefact: follows ``technical_target`` in the training lines, not after."""
    n = len(propensity)
    noise = rng.normal(size=n)
    target = propensity[spec.technical_target].to_numpy()[:n_train]
    target = (target - target.mean()) / target.std()
    r = spec.technical_correlation
    factor = noise.copy()
    factor[:n_train] = r * target + np.sqrt(1 - r**2) * noise[:n_train]
    return factor


def _measure(
    biology: np.ndarray,
    spec: PlatformSpec,
    technical: np.ndarray,
    technical_idx: np.ndarray,
    center: np.ndarray,
    scale: np.ndarray,
    reliability: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Platform values: reliable share of biology + technical factor + measurement noise."""
    n, p = biology.shape
    tech_loading = np.zeros(p)
    tech_loading[technical_idx] = rng.uniform(*spec.technical_loading, size=technical_idx.size)
    tech_loading[technical_idx] *= rng.choice([-1.0, 1.0], size=technical_idx.size)
    noise = tech_loading * technical[:, None] + np.sqrt(1 - tech_loading**2) * rng.normal(
        size=(n, p)
    )
    standardized = np.sqrt(reliability) * biology + np.sqrt(1 - reliability) * noise
    return center + scale * standardized, tech_loading


def _panel(
    values: np.ndarray,
    genes: list[str],
    lineage: list[str],
    loadings: np.ndarray,
    lines: list[str],
    sets: np.ndarray,
    propensity: pd.DataFrame,
    columns: list[str],
    train_n: int,
    name: str,
) -> tuple[AnnData, AnnData]:
    var = pd.DataFrame({"lineage": pd.Categorical(lineage), "true_loading": loadings}, index=genes)
    return _train_test(values, var, lines, sets, propensity, columns, train_n, ("panel", name))


def _train_test(
    X: np.ndarray,
    var: pd.DataFrame,
    lines: list[str],
    sets: np.ndarray,
    propensity: pd.DataFrame,
    columns: list[str],
    train_n: int,
    label: tuple[str, str],
) -> tuple[AnnData, AnnData]:
    """Lines x features values split into training and test AnnData (float64 ``X``).

    ``obs`` holds the set and the true propensities of ``columns``; ``uns[label[0]]`` is
    ``label[1]``.
    """
    obs = pd.DataFrame({_keys.SET: sets}, index=pd.Index(lines, name="line"))
    for column in columns:
        obs[f"true_{column}"] = propensity[column].to_numpy()
    out = []
    for rows in (slice(0, train_n), slice(train_n, None)):
        adata = AnnData(X=X[rows].astype(np.float64), obs=obs.iloc[rows].copy(), var=var.copy())
        adata.obs[_keys.SET] = pd.Categorical(adata.obs[_keys.SET])
        adata.uns[label[0]] = label[1]
        out.append(adata)
    return out[0], out[1]


def _eb_panel_genes(config: LinesConfig) -> tuple[list[str], list[str]]:
    genes, lineage = [], []
    for name, size in zip(LINEAGES, config.panel_sizes, strict=True):
        named = list(PANEL_NAMED[name][:size])
        named += [f"{PANEL_PREFIX[name]}{i:02d}" for i in range(len(named) + 1, size + 1)]
        genes += named
        lineage += [name] * size
    genes += list(PLURIPOTENCY_GENES)
    lineage += ["pluripotency"] * len(PLURIPOTENCY_GENES)
    return genes, lineage


@doc_params
def simulate_lines(config: LinesConfig | None = None, *, random_state: int = 0) -> dict:
    """Simulate iPS lines: baseline profiles per platform and differentiation panels, with truth.

    Parameters
    ----------
    config
        Every knob of the simulation (default: :func:`ips_lines_config`).
    random_state
        Seed; the same seed gives the same values bit for bit.

    Returns
    -------
    A dict with

    ``'train'``, ``'test'`` : dict platform -> AnnData
        Lines x features, log2 expression (float64 ``X``); ``obs_names`` are line names,
        ``obs['set']``, the true propensities in ``obs['true_<outcome>']``;
        ``var['gene']`` (the gene a feature measures; a miRNA's own name),
        ``var['true_factor']`` (planted factor, ``'technical'`` or ``''``),
        ``var['true_loading']`` and the true sign of each feature for each outcome,
        ``var['true_ectoderm']`` ... ``var['true_neural']``, ``var['true_neural_suspension']``,
        ``var['true_neural_adhesion']`` (-1, 0, +1; method-specific features are true for
        their method's outcome but not for ``neural``); ``uns['platform']``.
    ``'panels'`` : dict set -> dict panel -> AnnData
        ``'embryoid_body'`` (lines x 45/56/27 lineage genes and 4 pluripotency genes,
        ``var['lineage']``) and ``'neural_suspension'``, ``'neural_adhesion'`` (PAX6, SOX1,
        NES), as -ΔCt (higher = more expressed), for ``'train'`` and ``'test'``.
    ``'truth'`` : dict
        ``'propensity'`` (lines x outcomes, DataFrame), ``'markers'`` (one row per planted
        marker gene/miRNA: factor, loading and sign per outcome), ``'config'`` (the settings).
    """
    config = config or ips_lines_config()
    _check_config(config)
    rng = np.random.default_rng(random_state)
    train_names, test_names = _line_names(config)
    lines = train_names + test_names
    sets = np.array(["train"] * config.n_train + ["test"] * config.n_test)
    factors = rng.normal(size=(len(lines), len(FACTORS)))
    weights = outcome_weights(config)
    propensity = _propensities(factors, weights, config, rng)
    propensity.index = pd.Index(lines, name="line")
    genes = _gene_features(factors, weights, config, rng)
    mirnas = _mirna_features(factors, weights, config, rng)

    train: dict[str, AnnData] = {}
    test: dict[str, AnnData] = {}
    marker_rows = []
    for spec in config.platforms:
        technical = _technical_factor(propensity, config.n_train, spec, rng)
        if spec.kind == "mirna":
            features = mirnas
        elif spec.kind == "mrna":
            features = genes
        else:
            features = _promoters(genes, config, rng)
        X, var = _measured_platform(features, spec, technical, weights, config, rng)
        train[spec.name], test[spec.name] = _train_test(
            X,
            var,
            lines,
            sets,
            propensity,
            list(propensity.columns),
            config.n_train,
            ("platform", spec.name),
        )
        rows = var[var["true_factor"].isin(FACTORS)].copy()
        rows.insert(0, "platform", spec.name)
        marker_rows.append(rows.reset_index())

    panels_train, panels_test = _panels(propensity, lines, sets, config, rng)
    markers = pd.concat(marker_rows, ignore_index=True)
    return {
        "train": train,
        "test": test,
        "panels": {"train": panels_train, "test": panels_test},
        "truth": {
            "propensity": propensity,
            "markers": markers,
            "config": config_settings(config, random_state),
        },
    }


class _Features(NamedTuple):
    """The features of one platform kind and their truth."""

    names: list[str]
    loadings: np.ndarray  # features x factors
    factor_of: np.ndarray  # planted factor of each feature ('' when none)
    biology: np.ndarray  # lines x features, unit variance
    gene_of: np.ndarray  # the gene (or miRNA) each feature measures
    planted: np.ndarray | None = None  # positions of planted genes (genes only)


#: Per platform kind: (mean, SD) of the feature centres and the range of their scales.
_LEVELS = {"mirna": ((6.0, 2.0), (0.4, 1.2)), "mrna": ((8.0, 2.0), (0.3, 1.0))}
_LEVELS["cage"] = ((4.0, 2.0), (0.4, 1.2))


def _gene_features(
    factors: np.ndarray, weights: pd.DataFrame, config: LinesConfig, rng: np.random.Generator
) -> _Features:
    """Genes: planted markers first (flagships at the head of their factor), then shuffled."""
    loadings, factor_of = _plant(config.n_genes, config.gene_markers, weights, config, rng)
    width = len(str(config.n_genes))
    genes = [f"G{i:0{width}d}" for i in range(1, config.n_genes + 1)]
    for gene, (kind, sign) in FLAGSHIP_MARKERS.items():
        position = int(np.flatnonzero(factor_of == kind)[0])
        genes[position] = gene
        loadings[position] = sign * config.flagship_loading * _direction(kind, weights)
    order = rng.permutation(config.n_genes)
    loadings, factor_of = loadings[order], factor_of[order]
    genes = [genes[i] for i in order]
    biology = _biology(factors, loadings, rng)
    if config.n_modules:
        biology = _with_modules(biology, loadings, factor_of, config, rng)
    gene_of = np.asarray(genes, dtype=object)
    return _Features(genes, loadings, factor_of, biology, gene_of, np.flatnonzero(factor_of != ""))


def _with_modules(
    biology: np.ndarray,
    loadings: np.ndarray,
    factor_of: np.ndarray,
    config: LinesConfig,
    rng: np.random.Generator,
) -> np.ndarray:
    """Replace part of the free variation of unplanted genes by shared module factors.

    Each module is a line-level factor; ``module_share`` of the unplanted genes load on one
    module each (loading drawn from ``module_loading``), keeping unit variance.
    """
    n_lines = biology.shape[0]
    modules = rng.normal(size=(n_lines, config.n_modules))
    free = np.flatnonzero(factor_of == "")
    members = free[rng.random(free.size) < config.module_share]
    module_of = rng.integers(0, config.n_modules, size=members.size)
    weight = rng.uniform(*config.module_loading, size=members.size) * rng.choice(
        [-1.0, 1.0], size=members.size
    )
    out = biology.copy()
    rest = np.sqrt(1 - (loadings[members] ** 2).sum(axis=1) - weight**2)
    out[:, members] = modules[:, module_of] * weight + rest * rng.normal(
        size=(n_lines, members.size)
    )
    return out


def _mirna_features(
    factors: np.ndarray, weights: pd.DataFrame, config: LinesConfig, rng: np.random.Generator
) -> _Features:
    """miRNAs: planted markers, shuffled among the rest."""
    loadings, factor_of = _plant(config.n_mirnas, config.mirna_markers, weights, config, rng)
    mirnas = [f"hsa-miR-{1000 + i}" for i in range(1, config.n_mirnas + 1)]
    order = rng.permutation(config.n_mirnas)
    loadings, factor_of = loadings[order], factor_of[order]
    mirnas = [mirnas[i] for i in order]
    biology = _biology(factors, loadings, rng)
    return _Features(mirnas, loadings, factor_of, biology, np.asarray(mirnas, dtype=object))


def _measured_platform(
    features: _Features,
    spec: PlatformSpec,
    technical: np.ndarray,
    weights: pd.DataFrame,
    config: LinesConfig,
    rng: np.random.Generator,
) -> tuple[np.ndarray, pd.DataFrame]:
    """One platform's lines x features values and its var table with the truth.

    Values = reliable share of biology + technical factor + measurement noise (floored at a
    detection limit for miRNAs).
    """
    names, factor_of, gene_of = features.names, features.factor_of, features.gene_of
    center_loc, scale_range = _LEVELS[spec.kind]
    center = rng.normal(*center_loc, len(names))
    scale = rng.uniform(*scale_range, len(names))
    reliability = rng.uniform(*spec.reliability, size=len(names))
    planted = np.flatnonzero(factor_of != "")
    reliability[planted] = rng.uniform(*config.marker_reliability, size=planted.size)
    main_feature = np.array([not str(name).startswith("p2@") for name in names])
    reliability[np.isin(gene_of.astype(str), list(FLAGSHIP_MARKERS)) & main_feature] = (
        config.marker_reliability[1]
    )
    free = np.flatnonzero(factor_of == "")
    technical_idx = rng.choice(free, size=min(spec.n_technical, free.size), replace=False)
    X, tech_loading = _measure(
        features.biology, spec, technical, technical_idx, center, scale, reliability, rng
    )
    if spec.kind == "mirna":
        X = _detection_floor(X, center, config, factor_of, rng)
    truth = _truth_columns(features.loadings, factor_of, weights)
    truth["true_factor"] = np.where(tech_loading != 0, "technical", truth["true_factor"])
    truth["true_loading"] = np.where(tech_loading != 0, tech_loading, truth["true_loading"])
    var = pd.DataFrame(
        {"gene": pd.Categorical(gene_of.astype(str)), **truth},
        index=pd.Index(names, name="feature"),
    )
    var["true_reliability"] = reliability
    return X, var


def _promoters(genes: _Features, config: LinesConfig, rng: np.random.Generator) -> _Features:
    """CAGE promoters: ``p1@GENE`` reads the gene; ``p2@GENE`` only partly follows it."""
    loadings, factor_of, biology = genes.loadings, genes.factor_of, genes.biology
    planted, genes = genes.planted, genes.names
    n_genes = len(genes)
    covered = rng.random(n_genes) < config.cage_gene_share
    covered[planted] = True
    second = covered & (rng.random(n_genes) < config.cage_second_promoter_share)
    names, rows, columns, gene_of, factors = [], [], [], [], []
    for j in np.flatnonzero(covered):
        names.append(f"p1@{genes[j]}")
        rows.append(loadings[j])
        columns.append(biology[:, j])
        gene_of.append(genes[j])
        factors.append(factor_of[j])
        if second[j]:
            share = 0.6  # an alternative promoter shares part of the gene's regulation
            free = rng.normal(size=biology.shape[0])
            names.append(f"p2@{genes[j]}")
            rows.append(share * loadings[j])
            columns.append(share * biology[:, j] + np.sqrt(1 - share**2) * free)
            gene_of.append(genes[j])
            factors.append(factor_of[j])
    return _Features(
        names,
        np.vstack(rows),
        np.asarray(factors, dtype=object),
        np.column_stack(columns),
        np.asarray(gene_of, dtype=object),
    )


def _detection_floor(
    X: np.ndarray,
    center: np.ndarray,
    config: LinesConfig,
    factor_of: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """Floor weak miRNA signals at a detection limit: ties, and a few always-absent miRNAs."""
    limit = 2.5
    free = np.flatnonzero(factor_of == "")
    absent = rng.choice(free, size=config.n_undetected_mirnas, replace=False)
    X = X.copy()
    X[:, absent] = center[absent] - 10.0
    return np.maximum(X, limit)


def _panels(
    propensity: pd.DataFrame,
    lines: list[str],
    sets: np.ndarray,
    config: LinesConfig,
    rng: np.random.Generator,
) -> tuple[dict[str, AnnData], dict[str, AnnData]]:
    n = len(lines)
    genes, lineage = _eb_panel_genes(config)
    loadings = np.empty(len(genes))
    latent = np.empty((n, len(genes)))
    differentiation = propensity[list(LINEAGES)].mean(axis=1).to_numpy()
    differentiation = differentiation / differentiation.std()
    for j, name in enumerate(lineage):
        if name == "pluripotency":
            loadings[j] = -rng.uniform(0.3, 0.6)  # residual undifferentiated cells
            latent[:, j] = loadings[j] * differentiation
        else:
            loadings[j] = rng.uniform(*config.panel_loading)
            latent[:, j] = loadings[j] * propensity[name].to_numpy()
    latent += np.sqrt(1 - loadings**2) * rng.normal(size=latent.shape)
    values = rng.normal(-6.0, 3.0, len(genes)) + rng.uniform(0.8, 2.0, len(genes)) * latent
    eb_train, eb_test = _panel(
        values,
        genes,
        lineage,
        loadings,
        lines,
        sets,
        propensity,
        list(LINEAGES),
        config.n_train,
        "embryoid_body",
    )
    panels_train = {"embryoid_body": eb_train}
    panels_test = {"embryoid_body": eb_test}
    for method in NEURAL_METHODS:
        outcome = f"neural_{method}"
        y = propensity[outcome].to_numpy()
        y = y / y.std()
        load = rng.uniform(*config.neural_panel_loading, size=len(NEURAL_PANEL))
        latent = load * y[:, None] + np.sqrt(1 - load**2) * rng.normal(size=(n, len(NEURAL_PANEL)))
        values = (
            rng.normal(-4.0, 2.0, len(NEURAL_PANEL))
            + rng.uniform(1.0, 2.5, len(NEURAL_PANEL)) * latent
        )
        panels_train[outcome], panels_test[outcome] = _panel(
            values,
            list(NEURAL_PANEL),
            ["neural"] * len(NEURAL_PANEL),
            load,
            lines,
            sets,
            propensity,
            ["neural", outcome],
            config.n_train,
            outcome,
        )
    return panels_train, panels_test


@doc_params
def ips_lines(*, random_state: int = 0) -> dict:
    """The iPS-study-shaped preset: 10 training and 13 test lines, 3 platforms, 5 outcomes.

    See :func:`simulate_lines` for the returned dict and :func:`ips_lines_config` for the shape.

    Parameters
    ----------
    random_state
        Seed (the default reproduces the documented figures).
    """
    return simulate_lines(ips_lines_config(), random_state=random_state)
