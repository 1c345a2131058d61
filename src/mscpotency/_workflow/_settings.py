"""Every setting of ``analyse`` and ``release`` in one dataclass, loadable from TOML.

A lab keeps its settings in a small, versioned TOML file::

    potency = "vegf"
    [qc]
    qc_thresholds = "fixed"   # the default; "mad" sets thresholds per lot
    min_genes = 200
    max_pct_mito = 20.0
    # mito_filter = false     # a targeted panel without mitochondrial genes
    # symbol_key = "feature_name"   # var column of symbols when the gene names are ids
    [cluster]
    n_clusters = 8
    [release]
    min_share = 0.05

Sections only group the keys for the reader: ``[qc] min_genes = 200`` and a top-level
``min_genes = 200`` set the same field. An unknown key, a key given twice or a value of the
wrong type is an error naming it. The resolved settings (defaults included) are printed in
the report, so a re-run from the same file gives the same answer.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

#: The section each field belongs to, for the report and the TOML file.
SECTIONS = {
    "data": ("title", "potency", "lot_key", "random_state"),
    "qc": (
        "min_genes",
        "max_pct_mito",
        "mito_filter",
        "mito_prefix",
        "symbol_key",
        "qc_thresholds",
        "min_cells_per_lot",
    ),
    "cluster": (
        "n_clusters",
        "resolution",
        "n_top_genes",
        "n_comps",
        "batch_key",
        "integrate",
        "integrate_covariate",
        "integrate_theta",
    ),
    "association": ("alpha", "n_permutations", "search", "stability"),
    "release": (
        "mapping_method",
        "prediction_level",
        "prediction_interval",
        "share_level",
        "tolerance_coverage",
        "tolerance_level",
        "min_share",
        "min_potency",
        "max_off_reference",
    ),
}


@dataclass
class AnalysisSettings:
    """The settings of :func:`mscpotency.analyse` and :func:`mscpotency.release`.

    Attributes
    ----------
    title
        Report title; ``None``: named after the inputs (the lots folder, the potency column).
    potency
        Column of the lot table with the potency assay.
    lot_key
        Column naming the lot of each cell / row of the lot table.
    random_state
        Seed of every random step (identical re-runs).
    min_genes, max_pct_mito, qc_thresholds, min_cells_per_lot
        Cell QC (:func:`mscpotency.pp.qc`): ``"fixed"`` (default) or ``"mad"`` (per-lot
        thresholds, 3 median absolute deviations from the lot's median) thresholds; with
        ``"fixed"``, the fewest genes per cell and the highest mitochondrial percentage;
        the smallest lot kept.
    mito_filter
        ``False``: the data hold no mitochondrial genes (a targeted panel), so there is no
        mitochondrial threshold and no warning that none was found (``pp.qc``'s
        ``max_pct_mito=None``; on the command line ``--no-mito-filter``).
    mito_prefix, symbol_key
        Where ``pp.qc`` finds the mitochondrial genes: the prefix of their symbols
        (case-insensitive; ``"MT-"`` finds mouse ``mt-`` genes too), and the ``var`` column
        of gene symbols when the gene names are not symbols (e.g. Ensembl ids in an h5ad
        with symbols in ``var['feature_name']``; ``None``: ``var['gene_symbols']`` when the
        files have it, as 10x files do, else the gene names). When no mitochondrial gene is
        found, ``pp.qc`` warns and names the column to set.
    n_clusters, resolution
        Clustering (:func:`mscpotency.tl.cluster`): a target number of clusters (searched
        over the Leiden resolution), or ``n_clusters=None`` and a fixed ``resolution``.
    n_top_genes, n_comps, batch_key
        Preprocessing (:func:`mscpotency.pp.preprocess`); ``batch_key`` names an ``obs``
        column of a lot effect (e.g. sequencing run) for highly variable gene selection.
    integrate
        Lot-effect correction before clustering (:func:`mscpotency.pp.integrate`):
        ``"none"`` (default), ``"harmony"`` or ``"scvi"``, with the lots as batches; the
        clusters are then found on the corrected cells, the counts and each lot's
        composition are untouched, and mapping transfers those labels in the reference PCA.
        Use it when ``tl.lot_specificity`` flags lot-dominated clusters from donor or site
        effects. With Harmony the lots are first clustered uncorrected
        (``obs['cluster_uncorrected']``) and the states of single lots found there are held
        out of the correction (``pp.integrate``'s ``lot_specific_key``), so they stay
        clusters of their own and are flagged.
    integrate_covariate, integrate_theta
        An ``obs`` column of a technical covariate corrected with the lots (e.g. ``"site"``;
        ``None``: the lots only) and Harmony's diversity penalty for the lots (4: on the
        donor preset, 5 seeds, Harmony's default 2 left the close pair SP6/SP7 merged in
        one seed; benchmarks/results/lot_effects.md).
    alpha, n_permutations, search, stability
        Association: FDR level and permutations; ``search`` also runs
        :func:`mscpotency.tl.potency_population` (resolution scan, sub-clusters);
        ``stability`` also runs :func:`mscpotency.tl.association_stability` (is the potency
        cluster recovered across resolutions and cell subsamples?).
    mapping_method
        Backend of :func:`mscpotency.tl.map_to_reference`.
    prediction_level, prediction_interval
        Prediction interval of a new lot's potency (:func:`mscpotency.tl.fit_potency_model`);
        ``"auto"``: jackknife+ where the reference has enough lots for the level, else ``"t"``.
    share_level
        Confidence level of each new lot's potency-like share.
    tolerance_coverage, tolerance_level
        Tolerance interval of the reference lots (:func:`mscpotency.tl.comparability`):
        it covers ``tolerance_coverage`` of lots with confidence ``tolerance_level``.
    min_share
        Verdict rule: a lot whose share interval lies wholly below it fails; one whose
        interval contains it is for review. ``None``: no share requirement.
    min_potency
        Verdict rule: a lot whose predicted potency interval lies wholly below it fails; one
        whose interval contains it is for review. ``None``: no potency requirement.
    max_off_reference
        Verdict rule: a lot with a larger share of cells the reference does not represent
        is for review (its share and prediction rest on cells the reference cannot label).
    """

    title: str | None = None
    potency: str = "vegf"
    lot_key: str = "lot"
    random_state: int = 0
    min_genes: int = 200
    max_pct_mito: float = 20.0
    mito_filter: bool = True
    mito_prefix: str = "MT-"
    symbol_key: str | None = None
    qc_thresholds: Literal["fixed", "mad"] = "fixed"
    min_cells_per_lot: int = 50
    n_clusters: int | None = 8
    resolution: float = 1.0
    n_top_genes: int = 2000
    n_comps: int = 30
    batch_key: str | None = None
    integrate: Literal["none", "harmony", "scvi"] = "none"
    integrate_covariate: str | None = None
    integrate_theta: float = 4.0
    alpha: float = 0.05
    n_permutations: int = 9999
    search: bool = True
    stability: bool = True
    mapping_method: Literal["anchors", "fast", "scvi"] = "anchors"
    prediction_level: float = 0.9
    prediction_interval: Literal["auto", "jackknife+", "t"] = "auto"
    share_level: float = 0.95
    tolerance_coverage: float = 0.95
    tolerance_level: float = 0.95
    min_share: float | None = None
    min_potency: float | None = None
    max_off_reference: float = 0.25

    def __post_init__(self) -> None:
        problem = _first_problem(self)
        if problem is not None:
            raise ValueError(problem)

    def replace(self, **changes: Any) -> AnalysisSettings:
        """A copy with ``changes`` (``None`` values are ignored: "not given")."""
        given = {k: v for k, v in changes.items() if v is not None}
        unknown = sorted(set(given) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            msg = f"unknown settings {unknown}; known: {sorted(_field_types())}"
            raise ValueError(msg)
        return dataclasses.replace(self, **given)

    def qc_arguments(self) -> dict[str, Any]:
        """The arguments of :func:`mscpotency.pp.qc` these settings give (lots of either step)."""
        return {
            "lot_key": self.lot_key,
            "thresholds": self.qc_thresholds,
            "min_genes": self.min_genes,
            "max_pct_mito": self.max_pct_mito if self.mito_filter else None,
            "mito_prefix": self.mito_prefix,
            "symbol_key": self.symbol_key,
            "min_cells_per_lot": self.min_cells_per_lot,
        }

    def table(self) -> list[tuple[str, str, str]]:
        """(section, setting, value) for every setting, defaults included."""
        values = dataclasses.asdict(self)
        return [
            (section, name, _show(values[name]))
            for section, names in SECTIONS.items()
            for name in names
        ]


def _show(value: object) -> str:
    return "not set" if value is None else str(value)


def _field_types() -> dict[str, str]:
    return {f.name: str(f.type) for f in dataclasses.fields(AnalysisSettings)}


_PROBABILITIES = ("alpha", "prediction_level", "share_level", "tolerance_coverage")


def _first_problem(settings: AnalysisSettings) -> str | None:
    """The first impossible value in ``settings``, or ``None``."""
    for name in (*_PROBABILITIES, "tolerance_level", "max_off_reference"):
        value = getattr(settings, name)
        if not 0 < value < 1 and not (name == "max_off_reference" and value == 1):
            return f"{name} must lie between 0 and 1, got {value!r}"
    if settings.min_share is not None and not 0 <= settings.min_share < 1:
        return f"min_share must lie in [0, 1), got {settings.min_share!r}"
    if settings.n_clusters is not None and settings.n_clusters < 2:
        return f"n_clusters must be at least 2 (a potency cluster needs others), got {settings.n_clusters}"
    if settings.integrate_theta < 0:
        return f"integrate_theta must be non-negative, got {settings.integrate_theta!r}"
    if settings.resolution <= 0:
        return f"resolution must be positive, got {settings.resolution!r}"
    if settings.random_state < 0:
        return f"random_state must be a non-negative integer, got {settings.random_state}"
    for name in ("min_genes", "min_cells_per_lot", "n_top_genes", "n_comps", "n_permutations"):
        if getattr(settings, name) < 1:
            return f"{name} must be a positive integer, got {getattr(settings, name)!r}"
    if not 0 < settings.max_pct_mito <= 100:
        return f"max_pct_mito must lie in (0, 100], got {settings.max_pct_mito!r}"
    if not settings.mito_prefix.strip():
        return "mito_prefix must not be empty (it would count every gene as mitochondrial)"
    choices = {
        "qc_thresholds": ("fixed", "mad"),
        "integrate": ("none", "harmony", "scvi"),
        "mapping_method": ("anchors", "fast", "scvi"),
        "prediction_interval": ("auto", "jackknife+", "t"),
    }
    for name, allowed in choices.items():
        if getattr(settings, name) not in allowed:
            return f"{name} must be one of {list(allowed)}, got {getattr(settings, name)!r}"
    return None


def settings_file_values(path: str | os.PathLike) -> dict[str, Any]:
    """The settings a TOML file gives (flattened, checked, typed), and only those."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        msg = f"settings file {str(path)!r} does not exist"
        raise FileNotFoundError(msg) from error
    except tomllib.TOMLDecodeError as error:
        msg = f"settings file {str(path)!r} is not valid TOML: {error}"
        raise ValueError(msg) from error
    return _typed(_flatten(raw, path), path)


def load_settings(path: str | os.PathLike, **overrides: Any) -> AnalysisSettings:
    """Settings from a TOML file, then ``overrides`` (command-line options; ``None`` = not given).

    Parameters
    ----------
    path
        A TOML file of settings (top-level keys or keys under ``[data]``, ``[qc]``,
        ``[cluster]``, ``[association]``, ``[release]``).
    **overrides
        AnalysisSettings that take precedence over the file.

    Returns
    -------
    The resolved :class:`AnalysisSettings`.
    """
    flat = settings_file_values(path)
    settings = AnalysisSettings().replace(**flat)
    if "resolution" in flat and "n_clusters" not in flat:  # a fixed resolution, no target k
        settings = dataclasses.replace(settings, n_clusters=None)
    return settings.replace(**overrides)


def _flatten(raw: dict[str, Any], path: Path) -> dict[str, Any]:
    """Top-level keys and the keys of known sections, one level; duplicates are errors."""
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        items = value.items() if key in SECTIONS and isinstance(value, dict) else [(key, value)]
        for name, item in items:
            if name in flat:
                msg = f"settings file {str(path)!r} sets {name!r} twice"
                raise ValueError(msg)
            flat[name] = item
    unknown = sorted(set(flat) - set(_field_types()))
    if unknown:
        msg = f"settings file {str(path)!r}: unknown settings {unknown}; known: {sorted(_field_types())}"
        raise ValueError(msg)
    return flat


def _typed(flat: dict[str, Any], path: Path) -> dict[str, Any]:
    """Check each value's type against its field (an int is a valid float)."""
    for name, value in flat.items():
        kind = _field_types()[name]
        ok = (
            (isinstance(value, bool) and "bool" in kind)
            or (
                isinstance(value, int)
                and not isinstance(value, bool)
                and ("int" in kind or "float" in kind)
            )
            or (isinstance(value, float) and "float" in kind)
            or (isinstance(value, str) and ("str" in kind or "Literal" in kind))
        )
        if not ok:
            msg = f"settings file {str(path)!r}: {name} = {value!r} should be {kind}"
            raise ValueError(msg)
    return flat
