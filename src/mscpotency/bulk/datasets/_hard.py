"""A harder iPS-lines preset, with the inputs as a lab has them and the truth kept apart.

The lines, propensities and planted markers come from :func:`simulate_lines`; this module
turns its clean log2 values into what instruments write:

- the microarray reads 1-3 probes per gene, each with its own affinity, an additive
  background, saturation at the top of the scanner's range and probe noise; the probe IDs
  carry no gene name (an annotation table maps them, a few probes are unannotated);
- CAGE gives raw tag counts per promoter (``p1@GENE``, ``p2@GENE``) for libraries of
  different sizes;
- qRT-PCR gives Ct tables: the embryoid-body panel as raw Ct with a reference gene
  (``GAPDH``) and ``"Undetermined"`` wells past the cycle cut-off; the neural panels as
  ΔCt (Ct(gene) - Ct(GAPDH): higher = *less* expressed), also with ``"Undetermined"``.

Biological line-to-line variation is shared by both platforms (chance correlations of
real biology replicate across platforms), and each platform carries an artefact that
follows one lineage's propensity in the training lines only.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData

from ... import _keys
from ..._docs import doc_params
from ._lines import LINEAGES, NEURAL_METHODS, LinesConfig, PlatformSpec, simulate_lines

#: The qRT-PCR reference gene and the cycle cut-off past which a well reads "Undetermined".
REFERENCE_GENE = "GAPDH"
CT_CUTOFF = 35.0
#: Var columns of the clean simulation that hold truth (kept apart in the hard preset).
_TRUTH_PREFIX = "true_"


@doc_params
def ips_lines_hard_config(*, n_genes: int = 15000, **overrides) -> LinesConfig:
    """Settings of the harder preset: 39 planted genes, two platforms with artefacts.

    Free biological variation is well measured on both platforms (reliability 0.5-0.95)
    and 40% of the genes move with one of 8 shared biological modules unrelated to
    differentiation, so chance correlations of ten lines replicate across platforms and
    come in correlated blocks; planted markers have the default strengths.
    """
    platforms = (
        PlatformSpec(
            "array",
            "mrna",
            reliability=(0.5, 0.95),
            n_technical=300,
            technical_target="mesoderm",
        ),
        PlatformSpec(
            "cage",
            "cage",
            reliability=(0.45, 0.9),
            n_technical=300,
            technical_target="ectoderm",
        ),
    )
    settings = {
        "platforms": platforms,
        "n_genes": n_genes,
        "gene_markers": (
            ("bias", 5),
            ("ectoderm", 5),
            ("mesoderm", 6),
            ("endoderm", 5),
            ("neural", 8),
            ("suspension", 5),
            ("adhesion", 5),
        ),
        "n_modules": 8,
        "module_share": 0.4,
        "module_loading": (0.3, 0.8),
        "preset": "ips_lines_hard",
    }
    settings.update(overrides)
    return LinesConfig(**settings)


def _split_truth(adata: AnnData) -> tuple[AnnData, pd.DataFrame]:
    """The AnnData without truth columns in var, and the truth table (features x truth)."""
    truth_columns = [c for c in adata.var.columns if c.startswith(_TRUTH_PREFIX)]
    truth = adata.var[["gene", *truth_columns]].copy()
    out = adata.copy()
    out.var = pd.DataFrame(index=adata.var_names.copy())
    out.obs = out.obs[[_keys.SET]].copy()
    return out, truth


def _probe_design(genes: pd.Index, rng: np.random.Generator) -> pd.DataFrame:
    """1-3 probes per gene with an affinity and background; shuffled opaque probe IDs."""
    n_probes = rng.choice([1, 2, 3], size=len(genes), p=[0.5, 0.3, 0.2])
    gene_of = np.repeat(genes.to_numpy(), n_probes)
    design = pd.DataFrame(
        {
            "gene": gene_of,
            "log2_affinity": rng.normal(0.0, 1.0, size=gene_of.size),
            "background": 2.0 ** rng.uniform(4.0, 6.0, size=gene_of.size),
        }
    )
    design = design.iloc[rng.permutation(len(design))].reset_index(drop=True)
    ids = rng.choice(np.arange(100000, 999999), size=len(design), replace=False)
    design.index = pd.Index([f"A_23_P{i}" for i in ids], name="probe_id")
    return design


def _probe_intensities(levels: np.ndarray, design: pd.DataFrame, gene_pos, rng) -> np.ndarray:
    """log2 probe intensities: background + affinity x signal, saturating, with probe noise."""
    signal = 2.0 ** (levels[:, gene_pos] + design["log2_affinity"].to_numpy())
    raw = design["background"].to_numpy() + signal
    saturation = 2.0**15
    saturated = raw * saturation / (raw + saturation)
    return np.log2(saturated) + rng.normal(0.0, 0.15, size=saturated.shape)


def _array(train: AnnData, test: AnnData, rng: np.random.Generator):
    """The gene-level array as probe-level intensities, and the probe annotation table."""
    genes = train.var_names
    design = _probe_design(genes, rng)
    gene_pos = pd.Series(np.arange(len(genes)), index=genes).loc[design["gene"]].to_numpy()
    levels = np.vstack([train.X, test.X])
    X = _probe_intensities(levels, design, gene_pos, rng)
    annotation = pd.DataFrame(
        {"gene_symbol": design["gene"].astype(str).to_numpy()}, index=design.index
    )
    unannotated = rng.random(len(annotation)) < 0.03
    annotation.loc[unannotated, "gene_symbol"] = ""
    out = []
    for part, rows in ((train, slice(0, train.n_obs)), (test, slice(train.n_obs, None))):
        adata = AnnData(
            X=X[rows], obs=part.obs[[_keys.SET]].copy(), var=pd.DataFrame(index=design.index.copy())
        )
        adata.uns["platform"] = "array"
        out.append(adata)
    probe_truth = design.assign(annotated=~unannotated)
    return out[0], out[1], annotation, probe_truth


def _cage(train: AnnData, test: AnnData, rng: np.random.Generator):
    """Promoter log2 levels as raw tag counts of libraries of different sizes."""
    levels = np.vstack([train.X, test.X])
    library = rng.uniform(4e6, 1.5e7, size=levels.shape[0])
    expected = library[:, None] * 2.0**levels / 1e6
    counts = rng.poisson(expected).astype(np.float64)
    annotation = pd.DataFrame(
        {"gene_symbol": [name.split("@", 1)[1] for name in train.var_names]},
        index=pd.Index(train.var_names.astype(str), name="promoter"),
    )
    out = []
    for part, rows in ((train, slice(0, train.n_obs)), (test, slice(train.n_obs, None))):
        adata = AnnData(
            X=counts[rows],
            obs=part.obs[[_keys.SET]].copy(),
            var=pd.DataFrame(index=train.var_names.copy()),
        )
        adata.obs["library_size"] = counts[rows].sum(axis=1)
        adata.uns["platform"] = "cage"
        out.append(adata)
    return out[0], out[1], annotation


def _ct_table(panel: AnnData, reference_ct: np.ndarray, *, delta: bool) -> pd.DataFrame:
    """-ΔCt values as a Ct (or ΔCt) table with "Undetermined" past the cut-off."""
    neg_delta = np.asarray(panel.X, dtype=float)
    ct = reference_ct[:, None] - neg_delta
    values = ct - reference_ct[:, None] if delta else ct
    table = pd.DataFrame(
        np.round(values, 2), index=panel.obs_names.copy(), columns=panel.var_names.copy()
    )
    table = table.astype(object)
    table[ct > CT_CUTOFF] = "Undetermined"
    if not delta:
        table.insert(0, REFERENCE_GENE, np.round(reference_ct, 2))
    table.index.name = "line"
    return table


def _qpcr(panels: dict, rng: np.random.Generator) -> tuple[dict, pd.DataFrame]:
    """Every panel as the lab's table: EB panel as Ct with GAPDH, neural panels as ΔCt."""
    tables: dict[str, dict[str, pd.DataFrame]] = {}
    for part, by_panel in panels.items():
        tables[part] = {}
        for name, panel in by_panel.items():
            reference_ct = rng.normal(18.0, 0.6, size=panel.n_obs)
            tables[part][name] = _ct_table(panel, reference_ct, delta=name != "embryoid_body")
    eb = panels["train"]["embryoid_body"]
    genes = pd.DataFrame({"lineage": eb.var["lineage"].astype(str)}, index=eb.var_names.copy())
    for method in NEURAL_METHODS:
        neural = panels["train"][f"neural_{method}"].var_names
        genes = pd.concat(
            [genes, pd.DataFrame({"lineage": "neural"}, index=neural.difference(genes.index))]
        )
    genes.index.name = "gene"
    return tables, genes


def _lowly_expressed(panels: dict, rng: np.random.Generator) -> dict:
    """Shift a quarter of the EB panel genes down so some wells pass the Ct cut-off."""
    eb_train, eb_test = panels["train"]["embryoid_body"], panels["test"]["embryoid_body"]
    low = rng.random(eb_train.n_vars) < 0.25
    low &= ~eb_train.var["lineage"].astype(str).isin(["pluripotency"]).to_numpy()
    shift = np.where(low, -rng.uniform(8.0, 11.0, size=eb_train.n_vars), 0.0)
    for adata in (eb_train, eb_test):
        adata.X = np.asarray(adata.X, dtype=float) + shift
    return panels


@doc_params
def ips_lines_hard(*, n_genes: int = 15000, random_state: int = 0) -> dict:
    """The harder iPS preset: probe-level array, CAGE counts, Ct/ΔCt tables; truth kept apart.

    10 training and 13 test lines; a probe-level microarray (``'array'``: 1-3 probes per
    gene, affinity, background, saturation; opaque probe IDs and an annotation table) and
    CAGE tag counts per promoter (``'cage'``); embryoid-body qRT-PCR as raw Ct with the
    reference gene ``GAPDH`` and ``"Undetermined"`` wells; neural induction by two methods
    as ΔCt tables. 39 planted gene markers, among them ``SALL3`` (ectoderm vs meso/endoderm),
    ``PF4`` (mesoderm) and ``ROR2`` (neural).

    Parameters
    ----------
    n_genes
        Genes measured (15,000 as in the reference study; fewer for quick tests).
    random_state
        Seed; the same seed gives the same values bit for bit.

    Returns
    -------
    A dict with ``'train'``, ``'test'`` (platform -> AnnData; ``var`` holds feature IDs only,
    ``obs`` the set, CAGE also ``library_size``), ``'annotation'`` (platform -> DataFrame
    feature -> ``gene_symbol``; ``''`` where a probe is unannotated), ``'qpcr'`` (set ->
    panel -> lines x genes table of Ct (``embryoid_body``, with ``GAPDH``) or ΔCt (the
    neural panels), floats and ``"Undetermined"``), ``'panel_genes'`` (gene -> lineage) and
    ``'truth'``: ``'propensity'`` (lines x outcomes), ``'genes'`` (gene x true factor,
    loading and sign per outcome, as ``true_<outcome>``), ``'features'`` (platform ->
    feature truth), ``'probes'`` (probe design), ``'config'``.
    """
    config = ips_lines_hard_config(n_genes=n_genes)
    clean = simulate_lines(config, random_state=random_state)
    rng = np.random.default_rng([random_state, 18])
    panels = _lowly_expressed(clean["panels"], rng)
    array_train, array_test, array_annotation, probes = _array(
        clean["train"]["array"], clean["test"]["array"], rng
    )
    cage_train, cage_test, cage_annotation = _cage(
        clean["train"]["cage"], clean["test"]["cage"], rng
    )
    qpcr, panel_genes = _qpcr(panels, rng)
    _, gene_truth = _split_truth(clean["train"]["array"])
    _, promoter_truth = _split_truth(clean["train"]["cage"])
    truth = dict(clean["truth"])
    truth.update(
        genes=gene_truth.drop(columns="gene").rename_axis("gene"),
        features={"array": probes, "cage": promoter_truth},
        probes=probes,
    )
    return {
        "train": {"array": array_train, "cage": cage_train},
        "test": {"array": array_test, "cage": cage_test},
        "annotation": {"array": array_annotation, "cage": cage_annotation},
        "qpcr": qpcr,
        "panel_genes": panel_genes,
        "truth": truth,
    }


__all__ = ["LINEAGES", "ips_lines_hard", "ips_lines_hard_config"]
