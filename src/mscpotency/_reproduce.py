"""The main job: the reference analysis of the study-shaped preset, end to end.

``mscpotency reproduce --out DIR`` simulates the study (11 bone-marrow training lots, 4
held-out bone-marrow lots, 4 adipose and 5 umbilical-cord lots), runs the reference
analysis on the training lots and writes figures (PNG), tables (CSV) and a report
(Markdown and HTML) that a QC scientist can read.
"""

from __future__ import annotations

import html
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import scanpy as sc
from anndata import AnnData

from . import _registry, _stored, bulk, datasets, get, pl, pp, tl
from ._provenance import package_versions

logger = logging.getLogger("mscpotency")


@dataclass
class Report:
    """Sections of the report, written as Markdown and HTML at the end."""

    title: str
    sections: list[tuple[str, list]] = field(default_factory=list)

    def section(self, heading: str) -> list:
        """Start a section; append str (paragraphs), DataFrames (tables) or Paths (figures)."""
        items: list = []
        self.sections.append((heading, items))
        return items

    def markdown(self, root: Path) -> str:
        """The report as Markdown, figures linked relative to ``root``.

        Every string is written as text, never as markup: no raw HTML (``<tag``, entities)
        survives, table cells cannot break their row, image links cannot leave their
        brackets (see :func:`_md_text`).
        """
        lines = [f"# {_md_line(self.title)}", ""]
        for heading, items in self.sections:
            lines += [f"## {_md_line(heading)}", ""]
            for item in items:
                if isinstance(item, pd.DataFrame):
                    lines += [_markdown_table(item), ""]
                elif isinstance(item, Path):
                    alt = re.sub(r"([\\\[\]])", r"\\\1", _md_line(item.stem))
                    lines += [f"![{alt}]({_url(item, root)})", ""]
                else:
                    lines += [_md_text(item), ""]
        return "\n".join(lines)

    def html(self, root: Path) -> str:
        """The report as a standalone HTML page; every string is escaped as text."""
        body = [f"<h1>{_html_text(self.title)}</h1>"]
        for heading, items in self.sections:
            body.append(f"<h2>{_html_text(heading)}</h2>")
            for item in items:
                if isinstance(item, pd.DataFrame):
                    body.append(
                        item.to_html(
                            float_format=_format_float, border=0, classes="table", escape=True
                        )
                    )
                elif isinstance(item, Path):
                    src, alt = _html_text(_url(item, root)), _html_text(item.stem)
                    body.append(f'<img src="{src}" alt="{alt}">')
                else:
                    body.append(f"<p>{_html_text(item)}</p>")
        style = (
            "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
            "table{border-collapse:collapse;font-size:0.9em;margin:1em 0}"
            "td,th{padding:3px 8px;border-bottom:1px solid #ddd;text-align:right}"
            "img{max-width:100%;margin:1em 0}"
        )
        return (
            f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{_html_text(self.title)}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>"
        )


def _html_text(value: object) -> str:
    """``value`` as HTML text, safe in element content and in quoted attribute values."""
    return html.escape(str(value), quote=True)


def _md_text(value: object) -> str:
    """``value`` as Markdown text that renders as itself, never as HTML.

    Markdown passes raw HTML through, so a ``<`` that could open a tag, a comment or an
    autolink (``<script``, ``</``, ``<!``, ``<?``) and an ``&`` that could start an entity
    are written as entities, and ``](`` cannot make a link; a plain ``p < 0.05`` stays as
    it is.
    """
    text = re.sub(r"&(?=[#A-Za-z])", "&amp;", str(value))
    text = text.replace("](", "]\\(")  # nor a link: [text](url)
    return re.sub(r"<(?=[A-Za-z/!?])", "&lt;", text)


def _md_line(value: object) -> str:
    """:func:`_md_text` on one line (headings, table cells, image text)."""
    return " ".join(_md_text(value).split())


def _md_cell(value: object) -> str:
    """A Markdown table cell: one line, ``|`` escaped so that it cannot end the cell."""
    return _md_line(value).replace("|", "\\|")


def _url(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` as a percent-encoded URL path (quotes, spaces, ``<``).

    A figure outside the report's folder (``..`` in a name) is an error, not a link.
    """
    try:
        relative = path.resolve().relative_to(root.resolve())
    except ValueError as error:
        msg = f"figure {str(path)!r} lies outside the report folder {str(root)!r}"
        raise ValueError(msg) from error
    return quote(relative.as_posix(), safe="/")


def _format_float(value: float) -> str:
    if not np.isfinite(value):
        return ""
    return f"{value:.3g}"


def _markdown_table(frame: pd.DataFrame) -> str:
    frame = frame.reset_index()
    header = "| " + " | ".join(map(_md_cell, frame.columns)) + " |"
    rule = "|" + "---|" * len(frame.columns)
    rows = []
    for _, row in frame.iterrows():
        cells = [_format_float(v) if isinstance(v, (float, np.floating)) else v for v in row]
        rows.append("| " + " | ".join(map(_md_cell, cells)) + " |")
    return "\n".join([header, rule, *rows])


def _save(fig_or_ax, path: Path) -> Path:
    fig = fig_or_ax if isinstance(fig_or_ax, plt.Figure) else np.ravel(fig_or_ax)[0].figure
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def reference_analysis(adata: AnnData, *, n_clusters: int = 8, random_state: int = 0) -> AnnData:
    """Run the reference analysis on pooled training lots (in place) and return them."""
    pp.qc(adata)
    pp.preprocess(adata, random_state=random_state)
    tl.cluster(adata, n_clusters=n_clusters, random_state=random_state)
    sc.tl.umap(adata, neighbors_key="cluster_neighbors", random_state=random_state)
    tl.lot_fractions(adata)
    tl.composition_deviation(adata, random_state=random_state)
    tl.potency_association(adata, "vegf", random_state=random_state)
    tl.potency_markers(adata)
    return adata


def truth_summary(adata: AnnData) -> pd.DataFrame:
    """How the analysis compares with the simulator's truth (only for simulated data)."""
    from sklearn.metrics import adjusted_rand_score

    cluster = _stored.potency_cluster(adata)
    truth = adata.obs["true_potency_cell"].to_numpy()
    found = (adata.obs["cluster"] == cluster).to_numpy()
    f1 = 2 * (truth & found).sum() / (truth.sum() + found.sum())
    marker = adata.uns["simulation"]["marker_gene"]
    genes = list(get.potency_markers(adata)["gene"])
    rank = genes.index(marker) + 1 if marker in genes else np.nan
    return pd.DataFrame(
        {
            "value": [
                adjusted_rand_score(adata.obs["true_subpopulation"], adata.obs["cluster"]),
                f1,
                rank,
            ]
        },
        index=pd.Index(
            [
                "ARI of clusters vs true subpopulations",
                f"F1 of {cluster} vs true potency cells",
                f"rank of the planted marker {marker}",
            ],
            name="check",
        ),
    )


def mapping_analysis(
    report: Report,
    figures: Path,
    tables: Path,
    reference: AnnData,
    query: AnnData,
    out: Path,
    *,
    random_state: int = 0,
) -> AnnData:
    """Map held-out and other-tissue lots onto the frozen reference; check their potency-like share."""
    from . import io

    frozen = tl.freeze_reference(reference)
    path = io.write_reference(frozen, out / "reference_frozen.h5ad", overwrite=True)
    pp.qc(query)
    start = time.perf_counter()
    tl.map_to_reference(query, path, method="anchors", random_state=random_state)
    seconds = time.perf_counter() - start
    tl.lot_fractions(
        query,
        cluster_key=_registry.MAPPING.key,
        weights_key=f"{_registry.MAPPING.key}_probabilities",
        min_cells_per_lot=50,
    )
    tl.validate_potency(query, "vegf", random_state=random_state)
    marker = reference.uns["potency_markers"]["table"]["gene"].iloc[0]
    tl.marker_by_set(query, marker)
    cluster = _stored.potency_cluster(reference)
    qc = get.map_to_reference(query)
    per_set = get.validate_potency(query)
    combined = get.validate_potency(query, kind="combined")
    markers_by_set = get.marker_by_set(query)
    for name, frame in {
        "mapping_qc": qc,
        "query_potency_per_set": per_set,
        "query_potency_combined": combined,
        "query_marker_by_set": markers_by_set,
        "query_lots": get.validate_potency(query, kind="lots"),
    }.items():
        frame.to_csv(tables / f"{name}.csv")
    items = report.section(
        f"Held-out and other-tissue lots mapped onto the reference ({cluster}-like cells)"
    )
    items.append(
        f"{query.obs['lot'].nunique()} lots ({', '.join(map(str, query.obs['set'].cat.categories))}), "
        f"{query.n_obs:,} cells after QC, mapped onto the frozen bone-marrow reference "
        f"(hash {frozen.uns['reference']['hash']}) with the anchors backend in {seconds:.0f} s. "
        "Labels come with calibrated scores and a mapping score (low = the reference does not "
        "represent the cell)."
    )
    items.append(qc)
    items.append(
        _save(
            pl.map_to_reference(query, frozen, color="label", return_fig=True, show=False),
            figures / "mapping_umap.png",
        )
    )
    items.append(
        f"Does the share of {cluster}-like cells still track VEGF? Exact Spearman per set, and combined:"
    )
    items.append(per_set)
    items.append(combined)
    items.append(str(query.uns["validate_potency"]["note"]))
    items.append(
        _save(
            pl.validate_potency(query, return_fig=True, show=False),
            figures / "potency_validation.png",
        )
    )
    items.append(f"Expression of {marker} in {cluster}-like cells by set:")
    items.append(markers_by_set)
    items.append(
        _save(pl.marker_by_set(query, return_fig=True, show=False), figures / "marker_by_set.png")
    )
    return query


LINEAGES = ("ectoderm", "mesoderm", "endoderm")
NEURAL_METHODS = ("neural_suspension", "neural_adhesion")
#: Sign rules of the iPS analysis: which propensities a marker must track, and in which direction.
IPS_RULES = {
    "ectoderm": {"ectoderm": 1},
    "mesoderm": {"mesoderm": 1},
    "endoderm": {"endoderm": 1},
    "neural (both methods)": {"neural_suspension": 1, "neural_adhesion": 1},
    "ectoderm vs meso/endoderm (SALL3 pattern)": {"ectoderm": 1, "mesoderm": -1, "endoderm": -1},
}


def ips_propensity(
    panels: dict[str, AnnData], reference: dict[str, AnnData] | None = None
) -> pd.DataFrame:
    """Propensity of every line for each lineage (embryoid bodies) and neural method (lines x outcomes).

    With ``reference`` (the training panels), held-out lines are scored on the training loadings.
    """
    eb = panels["embryoid_body"]
    for lineage in LINEAGES:
        if reference is None:
            markers = eb.var_names[eb.var["lineage"] == lineage].tolist()
            bulk.tl.fit_propensity(eb, markers=markers, key_added=lineage)
        else:
            bulk.tl.apply_propensity(eb, reference["embryoid_body"], key_added=lineage)
    for method in NEURAL_METHODS:
        if reference is None:
            bulk.tl.fit_propensity(panels[method], key_added=method)
        else:
            bulk.tl.apply_propensity(panels[method], reference[method], key_added=method)
    return pd.concat(
        [eb.obs[list(LINEAGES)]] + [panels[m].obs[[m]] for m in NEURAL_METHODS], axis=1
    )


def ips_analysis(report: Report, figures: Path, tables: Path, *, random_state: int = 0) -> None:
    """Differentiation-propensity markers of iPS lines: rank association, consensus, validation."""
    import warnings

    data = bulk.datasets.ips_lines(random_state=random_state)
    train, test, panels = data["train"], data["test"], data["panels"]
    propensity = ips_propensity(panels["train"])
    propensity_test = ips_propensity(panels["test"], reference=panels["train"])
    excluded = {}
    for platform, adata in train.items():
        with warnings.catch_warnings():
            # constant features are listed in uns['rank_association']['excluded'] and reported below
            warnings.filterwarnings("ignore", message=".*constant.*", category=UserWarning)
            bulk.tl.rank_association(adata, propensity, random_state=random_state)
        excluded[platform] = len(adata.uns["rank_association"]["excluded"])
    counts = bulk.get.marker_counts(train)
    consensus = bulk.tl.consensus(
        train, rules=IPS_RULES, platforms=["mrna", "cage"], match_on="gene"
    )
    rows = []
    for rule, signs in IPS_RULES.items():
        outcome = next(iter(signs))
        candidates = bulk.get.consensus(consensus, rule=rule, outcome=outcome)
        key = f"validation_{len(rows)}"
        if len(candidates):
            bulk.tl.validate_markers(
                test["mrna"], candidates, outcome=propensity_test[outcome], key_added=key
            )
            table = bulk.get.validate_markers(test["mrna"], key=key)
            kept = table.index[table["validated"]].tolist()
        else:
            kept = []
        rows.append(
            {
                "rule": rule,
                "single-platform candidates (mRNA, P<0.05)": int(
                    (
                        bulk.get.rank_association(train["mrna"], outcome=outcome)["pvalue"] < 0.05
                    ).sum()
                ),
                "agree across platforms/methods": len(candidates),
                "validated on held-out lines": len(kept),
                "validated (first 8)": ", ".join(map(str, kept[:8])),
            }
        )
    summary = pd.DataFrame(rows).set_index("rule")
    propensity.to_csv(tables / "ips_propensity.csv")
    counts.to_csv(tables / "ips_marker_counts.csv")
    consensus.table.to_csv(tables / "ips_consensus.csv")
    summary.to_csv(tables / "ips_validation_summary.csv")
    items = report.section("iPS lines: markers of differentiation propensity (bulk, simulated)")
    items.append(
        f"{len(propensity)} training and {len(propensity_test)} held-out lines on three platforms "
        "(mRNA array, miRNA array, CAGE). Propensity = PC1 of each lineage's marker panel after "
        "differentiation; baseline features rank-correlated with it (exact Spearman p). "
        f"Constant features excluded before testing: {excluded}."
    )
    items.append(counts)
    items.append(
        "False positives are removed by agreement across platforms and differentiation methods, "
        "then by confirmation on the held-out lines:"
    )
    items.append(summary)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), layout="constrained")
    bulk.pl.rank_association(
        train["mrna"], outcome="ectoderm", highlight=["SALL3"], ax=axes[0], show=False
    )
    bulk.tl.validate_markers(
        test["mrna"], {"PF4": 1}, outcome=propensity_test["mesoderm"], key_added="validation_PF4"
    )
    bulk.pl.validation_scatter(test["mrna"], "PF4", key="validation_PF4", ax=axes[1], show=False)
    items.append(_save(fig, figures / "ips_markers.png"))


def reproduce(
    out: str | Path,
    *,
    random_state: int = 0,
    n_clusters: int = 8,
    preset: str = "study",
    mapping: bool = True,
    ips: bool = True,
) -> Path:
    """Run the main job and write figures, tables and the report under ``out``.

    Parameters
    ----------
    out
        Output folder (created).
    random_state
        Seed of the simulation and of every random step.
    n_clusters
        Target number of Leiden clusters.
    preset
        ``"study"`` (the study-shaped dataset) or ``"tiny"`` (a quick smoke run).
    mapping
        Also map the held-out bone-marrow, adipose and umbilical-cord lots onto the reference.
    ips
        Also run the bulk iPS-line analysis (differentiation-propensity markers).

    Returns
    -------
    Path of the HTML report.
    """
    out = Path(out)
    figures, tables = out / "figures", out / "tables"
    figures.mkdir(parents=True, exist_ok=True)
    tables.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    presets = {"study": datasets.study, "tiny": datasets.tiny}
    if preset not in presets:
        msg = f"preset must be one of {sorted(presets)}, got {preset!r}"
        raise ValueError(msg)
    study = presets[preset](random_state=random_state)
    reference = study[study.obs["set"] == "BM-train"].copy()
    reference_analysis(reference, n_clusters=n_clusters, random_state=random_state)

    association = get.potency_association(reference)
    markers = get.potency_markers(reference)
    cluster = _stored.potency_cluster(reference)
    row = association.loc[cluster]
    fractions = get.lot_fractions(reference)
    deviation = get.composition_deviation(reference)
    qc_report = get.qc(reference)
    lot_table = get.lot_table(reference)
    provenance = get.provenance(reference)

    for name, frame in {
        "qc_per_lot": qc_report,
        "lot_fractions": fractions,
        "lot_counts": get.lot_fractions(reference, kind="counts"),
        "composition_deviation": deviation,
        "potency_association": association,
        "potency_markers": markers,
        "lots": lot_table,
        "provenance": provenance.assign(
            params=provenance["params"].map(str), versions=provenance["versions"].map(str)
        ),
    }.items():
        frame.to_csv(tables / f"{name}.csv")

    report = Report(
        "mscpotency: potency-linked subpopulation of MSC lots (study-shaped simulation)"
    )
    intro = report.section("Summary")
    intro.append(
        f"{reference.obs['lot'].nunique()} bone-marrow training lots, {reference.n_obs:,} cells after QC, "
        f"clustered into {reference.obs['cluster'].nunique()} Leiden clusters. "
        f"The cluster whose share of each lot tracks VEGF under ischemia is {cluster}: "
        f"Spearman rho = {row['rho']:.2f}, {row['pvalue_method']} p = {row['pvalue']:.2g} "
        f"(asymptotic p = {row['pvalue_asymptotic']:.2g}), FDR = {row['fdr']:.2g}, "
        f"95% bootstrap CI of rho {row['ci_low']:.2f} to {row['ci_high']:.2f}, "
        f"leave-one-lot-out rho {row['loo_min']:.2f} to {row['loo_max']:.2f}. "
        f"Its top marker gene is {markers['gene'].iloc[0]} (up in {int(markers['n_lots_up'].iloc[0])} "
        f"of {int(markers['n_lots_tested'].iloc[0])} lots)."
    )
    intro.append(_stored.stored(reference, _registry.POTENCY_ASSOCIATION)["note"])
    truth = report.section("Check against the simulator's truth")
    truth.append(truth_summary(reference))

    qc_items = report.section("Quality control per lot")
    qc_items.append(qc_report)
    qc_items.append(_save(pl.qc(reference, show=False), figures / "qc_per_lot.png"))

    clusters = report.section("Clusters")
    clusters.append(
        _save(
            pl.umap(reference, color=["cluster", "lot"], return_fig=True, show=False),
            figures / "umap.png",
        )
    )
    comp = report.section("Composition of each lot")
    comp.append(
        _save(
            pl.lot_fractions(reference, return_fig=True, show=False),
            figures / "lot_composition.png",
        )
    )
    comp.append(
        "Distance of each lot's composition from the pooled population (Jensen-Shannon, bits); "
        "sampling_p: share of same-size draws from the pool at least as far away."
    )
    comp.append(deviation)
    comp.append(
        _save(
            pl.composition_deviation(reference, return_fig=True, show=False),
            figures / "composition_deviation.png",
        )
    )

    assoc = report.section("Association of cluster fractions with potency")
    assoc.append(association.drop(columns=["n_lots"]))
    assoc.append(
        _save(
            pl.potency_association(reference, return_fig=True, show=False),
            figures / "association_overview.png",
        )
    )
    assoc.append(
        _save(
            pl.potency_scatter(reference, return_fig=True, show=False),
            figures / "potency_scatter.png",
        )
    )
    assoc.append(
        _save(
            pl.potency_scatter(reference, cluster="all", return_fig=True, show=False),
            figures / "potency_scatter_all.png",
        )
    )

    mark = report.section(f"Marker genes of {cluster}")
    mark.append(
        markers[
            [
                "rank",
                "gene",
                "score",
                "logfoldchange",
                "pvalue_adj",
                "pct_in",
                "pct_out",
                "n_lots_up",
                "n_lots_tested",
                "lot_sign_pvalue",
                "median_lot_log2fc",
            ]
        ].set_index("rank")
    )
    mark.append(
        _save(pl.potency_markers(reference, return_fig=True, show=False), figures / "markers.png")
    )

    if mapping:
        query = study[study.obs["set"] != "BM-train"].copy()
        mapping_analysis(report, figures, tables, reference, query, out, random_state=random_state)
    if ips:
        ips_analysis(report, figures, tables, random_state=random_state)

    prov = report.section("Provenance")
    prov.append(
        f"mscpotency {package_versions()['mscpotency']}, scanpy {package_versions()['scanpy']}, "
        f"anndata {package_versions()['anndata']}; random_state = {random_state}; "
        f"total time {time.perf_counter() - start:.0f} s."
    )
    prov.append(provenance[["function", "input_fingerprint", "random_state", "seconds"]])

    (out / "report.md").write_text(report.markdown(out), encoding="utf-8")
    (out / "report.html").write_text(report.html(out), encoding="utf-8")
    reference.strings_to_categoricals()  # as write_h5ad would, without its per-column notice
    reference.write_h5ad(out / "reference.h5ad")
    logger.info("report written to %s", out / "report.html")
    return out / "report.html"
