"""The report of an analysed reference (and, optionally, of new lots released against it).

:func:`report` is the public entry point (``mscpotency.report``): the same page that
``mscpotency analyse``, ``map`` and ``reproduce`` write, from AnnData a notebook user holds.
Summary first (which population tracks potency, how strongly, how robust, its markers, the
verdict of each new lot with its rule), then the detail, then the settings and provenance.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from anndata import AnnData

from .. import _registry, get, pl
from .._provenance import package_versions
from .._stored import potency_cluster, stored
from ._analyse import WORKFLOW_KEY
from ._document import Report

logger = logging.getLogger("mscpotency")


def save_figure(fig_or_ax, path: Path) -> Path:
    """Save a Figure (or the figure of Axes) as PNG and close it."""
    fig = fig_or_ax if isinstance(fig_or_ax, plt.Figure) else np.ravel(fig_or_ax)[0].figure
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def default_title(adata: AnnData, query: AnnData | None = None) -> str:
    """A title naming the data: the user's, else the lots' source and the potency assay."""
    flow = adata.uns.get(WORKFLOW_KEY, {})
    settings = flow.get("settings", {})
    if query is not None and query.uns.get(WORKFLOW_KEY, {}).get("settings", {}).get("title"):
        return str(query.uns[WORKFLOW_KEY]["settings"]["title"])  # the release's own title
    if settings.get("title"):
        return str(settings["title"])
    inputs = flow.get("inputs", {})
    source = str(inputs["lots"]).split(":")[0] if "lots" in inputs else None
    if source is None and "simulation" in adata.uns:
        source = f"simulated {adata.uns['simulation'].get('preset', 'custom')} preset"
    lot_key = settings.get("lot_key", "lot")
    n_lots = get.lot_fractions(adata).shape[0]
    title = f"Potency population of {n_lots} reference lots ({source or 'own data'}), potency = {settings.get('potency', 'vegf')}"
    if query is not None:
        title += f"; release of {query.obs[lot_key].nunique()} new lots"
    return title


def summary_text(adata: AnnData) -> list[str]:
    """The summary paragraphs: the population, its strength, its robustness, its markers."""
    association = get.potency_association(adata)
    cluster = potency_cluster(adata, if_not_significant="ignore")
    row = association.loc[cluster]
    alpha = stored(adata, _registry.POTENCY_ASSOCIATION)["params"].get("alpha", 0.05)
    significant = row["fdr"] <= alpha
    fractions = get.lot_fractions(adata)
    n_cells = int(get.lot_fractions(adata, kind="n_cells").to_numpy().sum())
    lines = [
        f"{fractions.shape[0]} reference lots, {n_cells:,} cells after QC, "
        f"{fractions.shape[1]} clusters. The cluster whose share of each lot tracks {_potency_name(adata)} "
        f"is {cluster}: Spearman rho = {row['rho']:.2f}, {row['pvalue_method']} p = {row['pvalue']:.2g}, "
        f"FDR = {row['fdr']:.2g} ({'significant' if significant else 'NOT significant'} at FDR {alpha:g}), "
        f"95% bootstrap CI of rho {row['ci_low']:.2f} to {row['ci_high']:.2f}; leaving out one lot at a "
        f"time, rho ranges {row['loo_min']:.2f} to {row['loo_max']:.2f}."
    ]
    lines.append(_lot_mix_text(row, cluster))
    lines.append(_search_text(adata, cluster))
    if _registry.POTENCY_MARKERS.key in adata.uns:
        markers = get.potency_markers(adata)
        name = "symbol" if "symbol" in markers.columns else "gene"
        top = ", ".join(
            f"{g} (up in {int(u)}/{int(t)} lots)"
            for g, u, t in markers[[name, "n_lots_up", "n_lots_tested"]].head(5).to_numpy()
        )
        lines.append(f"Top marker genes of {cluster} (by symbol): {top}.")
    if "association_stability" in adata.uns:
        lines.append(_stability_text(adata))
    return lines


def _potency_name(adata: AnnData) -> str:
    """The potency assay's column, as the analysis recorded it."""
    settings = adata.uns.get(WORKFLOW_KEY, {}).get("settings", {})
    if settings.get("potency"):
        return str(settings["potency"])
    return str(stored(adata, _registry.POTENCY_ASSOCIATION)["params"].get("potency", "potency"))


def _lot_mix_text(row: pd.Series, cluster: str) -> str:
    """Which lots make up the potency cluster, and the warning when one or a few dominate."""
    if "lot_dominated" not in row.index:
        return "The lots making up the potency cluster were not checked (no tl.lot_specificity)."
    mix = (
        f"{cluster} holds cells of {int(row['n_lots_contributing'])} lots; the largest, "
        f"{row['top_lot']}, makes up {row['top_lot_share']:.0%} of them."
    )
    if bool(row["lot_dominated"]):
        return (
            f"WARNING: {mix} The cluster is dominated by few lots, so its share may track "
            "potency only because one lot (a donor or site) carries it: a possible lot artefact, "
            "not a quality attribute. Consider --integrate harmony."
        )
    return mix + " It is not dominated by any lot."


def _search_scope(adata: AnnData) -> str:
    """What the search scanned: with its local view, each cluster's own representation too."""
    params = stored(adata, _registry.POTENCY_POPULATION).get("params", {})
    if params.get("local_representation", False):
        return "resolution scan, sub-clusters, and each cluster sub-clustered in a PCA of its own"
    return "resolution scan and sub-clusters"


def _search_text(adata: AnnData, cluster: str) -> str:
    if _registry.POTENCY_POPULATION.key not in adata.uns:
        return "The potency-population search (resolution scan, sub-clusters) was not run."
    summary = get.potency_population(adata, kind="summary").iloc[0]
    if not bool(summary["found"]):
        return f"The potency-population search found no population whose share tracks potency: {summary.get('message', '')}"
    text = (
        f"The potency-population search ({_search_scope(adata)}, selection-aware "
        f"permutation p = {summary['pvalue']:.2g}) found {summary['population']} "
        f"({int(summary['n_cells'])} cells, rho = {summary['rho']:.2f})"
    )
    if bool(summary.get("lot_dominated", False)):
        text += (
            f" (WARNING: {summary['top_lot']} holds {summary['top_lot_share']:.0%} of its cells, "
            "a possible lot artefact)"
        )
    if str(summary.get("lot_splits_skipped", "")):
        text += (
            f" (stronger candidates set aside before the test as not cell states of their own, "
            f"their cells mixing with the rest of their cluster once lot effects are removed: "
            f"{summary['lot_splits_skipped']})"
        )
    if bool(summary["changed"]):
        return (
            text + f", which CHANGES the fixed-k answer ({cluster}); the steps below use {cluster}."
        )
    return text + f", which agrees with the fixed-k cluster {cluster}."


def _stability_text(adata: AnnData) -> str:
    row = get.association_stability(adata, kind="summary").iloc[0]
    return f"Robustness: {row['text']}"


def _folders(out: Path) -> tuple[Path, Path]:
    figures, tables = out / "figures", out / "tables"
    figures.mkdir(parents=True, exist_ok=True)
    tables.mkdir(parents=True, exist_ok=True)
    return figures, tables


def verdict_summary(query: AnnData) -> pd.DataFrame:
    """The verdict table of the summary: one line per new lot."""
    table = query.uns[WORKFLOW_KEY]["release"]
    return pd.DataFrame(
        {
            "verdict": table["verdict"],
            "potency-like share [CI]": [
                f"{r.share:.1%} [{r.share_low:.1%}, {r.share_high:.1%}]" for r in table.itertuples()
            ],
            "predicted potency [PI]": [
                f"{_num(r.prediction)} [{_num(r.prediction_low)}, {_num(r.prediction_high)}]"
                for r in table.itertuples()
            ],
            "comparable": table["comparable"].map({True: "yes", False: "no"}).fillna("n/a"),
            "off-reference": [f"{v:.1%}" for v in table["off_reference"]],
            "low quality": [f"{v:.1%}" for v in table["low_quality"]],
            "reasons": table["reasons"],
        },
        index=table.index,
    )


def _num(value: float) -> str:
    """A potency value: thousands separated above 100, three significant digits below."""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


#: How the provenance table names the content hashes of the written reference pair.
_HASH_NAMES = {"reference_hash": "frozen reference hash", "lot_model_hash": "lot model hash"}

_VERDICT_COLOURS = {"PASS": "#2e7d32", "REVIEW": "#e69f00", "FAIL": "#c62828"}


def release_figure(query: AnnData) -> plt.Figure:
    """The release at a glance: one row per new lot, coloured by verdict.

    Lot names are on the axis, so they never overlap: each lot's share with its interval
    against the reference lots' tolerance limits, and its predicted potency with its
    prediction interval (measured potency as x).
    """
    table = query.uns[WORKFLOW_KEY]["release"]
    settings = query.uns[WORKFLOW_KEY]["settings"]
    rows = np.arange(len(table))[::-1]
    fig, (left, right) = plt.subplots(
        1, 2, figsize=(11, 1.2 + 0.38 * len(table)), sharey=True, layout="constrained"
    )
    colours = [_VERDICT_COLOURS[v] for v in table["verdict"]]
    left.axvspan(table["tolerance_low"].iloc[0] * 100, table["tolerance_high"].iloc[0] * 100,
                 color="#e3ecf7", label="reference tolerance limits")  # fmt: skip
    for row, colour, (_, lot) in zip(rows, colours, table.iterrows(), strict=True):
        left.plot([lot["share_low"] * 100, lot["share_high"] * 100], [row, row], color=colour, lw=2)
        right.plot([lot["prediction_low"], lot["prediction_high"]], [row, row], color=colour, lw=2)
    left.scatter(table["share"] * 100, rows, c=colours, zorder=3, edgecolor="black", linewidth=0.5)
    right.scatter(table["prediction"], rows, c=colours, zorder=3, edgecolor="black", linewidth=0.5)
    if "measured_potency" in table:
        right.scatter(
            table["measured_potency"], rows, marker="x", color="black", zorder=4, label="measured"
        )
    for ax, key in ((left, "min_share"), (right, "min_potency")):
        value = settings.get(key, "")
        if value != "" and value is not None:
            ax.axvline(
                float(value) * (100 if key == "min_share" else 1),
                color="#c62828",
                ls="--",
                label="minimum",
            )
    cluster = table.attrs.get("cluster", "potency cluster")
    left.set(yticks=rows, yticklabels=table.index.astype(str), xlabel=f"{cluster}-like cells (% of the lot's cells)",
             title=f"Share, {float(settings['share_level']):.0%} CI")  # fmt: skip
    potency = settings.get("potency", "potency")
    right.set(
        xlabel=f"{potency} (units of the lot table)",
        title=f"Predicted {potency}, {float(settings['prediction_level']):.0%} PI",
    )
    handles = {}
    for ax in (left, right):
        handles.update(zip(*ax.get_legend_handles_labels()[::-1], strict=True))
    handles.update(
        {
            f"verdict {v}": plt.Line2D([], [], marker="o", ls="", color=c)
            for v, c in _VERDICT_COLOURS.items()
        }
    )
    fig.legend(
        list(handles.values()),
        list(handles),
        loc="outside lower center",
        ncols=4,
        fontsize=8,
        frameon=False,
    )
    return fig


def build_report(
    adata: AnnData, out: Path, *, query: AnnData | None = None, title: str | None = None
) -> Report:
    """The report's sections (figures and tables written under ``out``); see :func:`report`."""
    figures, tables = _folders(out)
    report = Report(title or default_title(adata, query))
    summary = report.section("Summary")
    summary.extend(summary_text(adata))
    if query is not None:
        _release_summary(summary, query, figures)
    warned = [str(w) for w in adata.uns.get(WORKFLOW_KEY, {}).get("warnings", [])]
    if query is not None:
        warned += [f"(new lots) {w}" for w in query.uns.get(WORKFLOW_KEY, {}).get("warnings", [])]
    if warned:
        summary.append("Warnings raised by the analysis: " + " | ".join(map(str, warned)))
    if "cluster" in adata.obs:  # the analysed cells (a lot model holds lots only)
        _reference_sections(report, adata, figures, tables)
    else:
        _model_section(report, adata, figures, tables)
    if query is not None:
        _release_sections(report, query, adata, figures, tables)
    return report


def _release_summary(items: list, query: AnnData, figures: Path) -> None:
    flow = query.uns[WORKFLOW_KEY]
    settings = flow["settings"]
    items.append(
        f"New lots, mapped onto the frozen reference {flow['reference_hash']}: the potency-like "
        f"share with its {float(settings['share_level']):.0%} confidence interval (label and sampling "
        f"uncertainty), the predicted potency with its {float(settings['prediction_level']):.0%} "
        "prediction interval, comparability with the reference lots and the share of cells "
        "the reference does not represent. Verdict rule: " + flow["verdict_rule"]
    )
    items.append(verdict_summary(query))
    items.append(save_figure(release_figure(query), figures / "release.png"))


def _reference_sections(report: Report, adata: AnnData, figures: Path, tables: Path) -> None:
    cluster = potency_cluster(adata, if_not_significant="ignore")
    frames = {
        "qc_per_lot": get.qc(adata),
        "qc_thresholds": get.qc(adata, kind="thresholds"),
        "lot_fractions": get.lot_fractions(adata),
        "composition_deviation": get.composition_deviation(adata),
        "potency_association": get.potency_association(adata),
        "potency_markers": get.potency_markers(adata),
        "lots": get.lot_table(adata),
    }
    for name, frame in frames.items():
        frame.to_csv(tables / f"{name}.csv")
    qc = report.section("Quality control")
    qc.append("Cell filters (every threshold used):")
    qc.append(frames["qc_thresholds"])
    qc.append(frames["qc_per_lot"])
    qc.append(save_figure(pl.qc(adata, show=False), figures / "qc_per_lot.png"))
    clusters = report.section("Clusters and the composition of each lot")
    if "X_umap" in adata.obsm:
        clusters.append(
            save_figure(
                pl.umap(adata, color=["cluster", "lot"], return_fig=True, show=False),
                figures / "umap.png",
            )
        )
    else:
        clusters.append("No UMAP in obsm['X_umap'] (run scanpy.tl.umap to add the cluster map).")
    clusters.append(
        save_figure(
            pl.lot_fractions(adata, return_fig=True, show=False), figures / "lot_composition.png"
        )
    )
    clusters.append(
        "Distance of each lot's composition from the pooled population (Jensen-Shannon, bits); "
        "sampling_p: share of same-size draws from the pool at least as far away."
    )
    clusters.append(frames["composition_deviation"])
    assoc = report.section("Association of cluster shares with potency")
    assoc.append(str(stored(adata, _registry.POTENCY_ASSOCIATION).get("note", "")))
    assoc.append(frames["potency_association"].drop(columns=["n_lots"], errors="ignore"))
    assoc.append(
        save_figure(
            pl.potency_scatter(adata, return_fig=True, show=False), figures / "potency_scatter.png"
        )
    )
    assoc.append(
        save_figure(
            pl.potency_association(adata, return_fig=True, show=False),
            figures / "association_overview.png",
        )
    )
    if "association_stability" in adata.uns:
        stability = get.association_stability(adata)
        stability.to_csv(tables / "association_stability.csv")
        assoc.append("Stability across Leiden resolutions (is the potency cluster recovered?):")
        assoc.append(stability)
        assoc.append(
            save_figure(
                pl.association_stability(adata, return_fig=True, show=False),
                figures / "association_stability.png",
            )
        )
    if _registry.POTENCY_POPULATION.key in adata.uns:
        search = get.potency_population(adata).head(10)
        search.to_csv(tables / "potency_population.csv")
        assoc.append("The strongest candidates of the potency-population search:")
        assoc.append(search)
    mark = report.section(f"Marker genes of {cluster}")
    mark.append(
        frames["potency_markers"].set_index("rank")
        if "rank" in frames["potency_markers"]
        else frames["potency_markers"]
    )
    mark.append(
        save_figure(pl.potency_markers(adata, return_fig=True, show=False), figures / "markers.png")
    )
    _model_section(report, adata, figures, tables)


def _model_section(report: Report, adata: AnnData, figures: Path, tables: Path) -> None:
    if _registry.POTENCY_MODEL.key in adata.uns:
        model = report.section("Potency model (predicting a lot's potency from its share)")
        cv = get.fit_potency_model(adata, kind="cv")
        cv.to_csv(tables / "potency_model_cv.csv")
        model.append(
            "Each reference lot predicted by the model fitted without it (leave-one-lot-out):"
        )
        model.append(cv)
        model.append(
            save_figure(
                pl.fit_potency_model(adata, return_fig=True, show=False),
                figures / "potency_model.png",
            )
        )
        lots = get.fit_potency_model(adata, kind="lots")
        lots.to_csv(tables / "potency_model_lots.csv")
        model.append(lots)


def _release_sections(
    report: Report, query: AnnData, model: AnnData, figures: Path, tables: Path
) -> None:
    flow = query.uns[WORKFLOW_KEY]
    release = flow["release"]
    release.to_csv(tables / "release.csv")
    mapping = get.map_to_reference(query)
    mapping.to_csv(tables / "mapping_qc.csv")
    items = report.section("New lots: release detail")
    items.append(
        "Share interval: Clopper-Pearson interval of n x mean label probability in n cells, "
        "which is exactly the distribution of the count when cells are resampled and each "
        "resampled cell's label is drawn from its probability (label and sampling uncertainty; "
        "exact for certain labels, conservative for calibrated uncertain ones; it cannot correct "
        "a biased mapping, which off_reference and low_confidence flag). "
        "low_quality: the share of the lot's cells mapped onto a reference cluster of damaged "
        "cells (tl.cluster_quality); they count in the share as the reference's do. "
        "outside_by: how far the share lies outside the reference lots' tolerance limits "
        "(0 inside; share units)."
    )
    items.append(release.drop(columns=["reasons"]))
    items.append("Mapping QC per lot (off-reference: cells the reference does not represent):")
    items.append(mapping)
    items.append(
        save_figure(
            pl.comparability(query, return_fig=True, show=False), figures / "comparability.png"
        )
    )
    if _registry.VALIDATE_POTENCY.key in query.uns:
        per_set = get.validate_potency(query)
        per_set.to_csv(tables / "validation.csv")
        items.append("Measured potency of the new lots: does their share still track it?")
        items.append(per_set)
        items.append(str(query.uns[_registry.VALIDATE_POTENCY.key].get("note", "")))


def settings_and_provenance(
    report: Report, adata: AnnData, query: AnnData | None = None, *, tables: Path | None = None
) -> None:
    """The last sections: every resolved setting, versions, inputs' fingerprints, the log.

    With ``tables``, the settings and the provenance log are also written there as CSV.
    """
    from ._settings import SECTIONS

    flow = (query if query is not None else adata).uns.get(WORKFLOW_KEY, {})
    settings = flow.get("settings", adata.uns.get(WORKFLOW_KEY, {}).get("settings", {}))
    rows = [
        (section, name, "not set" if settings.get(name, "") == "" else str(settings[name]))
        for section, names in SECTIONS.items()
        for name in names
        if name in settings
    ]
    items = report.section("Settings (resolved, defaults included)")
    resolved = pd.DataFrame(rows, columns=["section", "setting", "value"]).set_index("setting")
    items.append(resolved)
    prov = report.section("Provenance")
    versions = package_versions()
    prov.append(", ".join(f"{k} {v}" for k, v in versions.items()))
    inputs = {**adata.uns.get(WORKFLOW_KEY, {}).get("inputs", {})}
    for name in ("reference_hash", "lot_model_hash"):  # the written pair's content hashes
        if adata.uns.get(WORKFLOW_KEY, {}).get(name):
            inputs[_HASH_NAMES[name]] = str(adata.uns[WORKFLOW_KEY][name])
    if query is not None:
        inputs.update(
            {f"new {k}": v for k, v in query.uns.get(WORKFLOW_KEY, {}).get("inputs", {}).items()}
        )
        inputs["frozen reference hash"] = flow.get("reference_hash", "")
    prov.append(pd.DataFrame({"fingerprint": inputs}).rename_axis("input"))
    logs = {"reference": adata} if query is None else {"reference": adata, "new lots": query}
    log = pd.concat(
        [get.provenance(data).assign(data=name) for name, data in logs.items()], ignore_index=True
    )
    prov.append(log[["data", "function", "input_fingerprint", "random_state", "seconds"]])
    if tables is not None:
        resolved.to_csv(tables / "settings.csv")
        log.assign(params=log["params"].map(str), versions=log["versions"].map(str)).to_csv(
            tables / "provenance.csv", index=False
        )


def write_report(report: Report, out: Path) -> Path:
    """Write ``report.html`` (self-contained) and ``report.md`` under ``out``."""
    (out / "report.md").write_text(report.markdown(out), encoding="utf-8")
    path = out / "report.html"
    path.write_text(report.html(out), encoding="utf-8")
    logger.info("report written to %s", path)
    return path


def report(
    adata: AnnData,
    out: str | os.PathLike,
    *,
    query: AnnData | None = None,
    title: str | None = None,
) -> Path:
    """Write the QC report of an analysed reference (and of new lots released against it).

    Parameters
    ----------
    adata
        The analysed reference lots (after ``mscpotency.analyse`` or the ``tl`` steps up to
        :func:`mscpotency.tl.potency_markers`; :func:`mscpotency.tl.fit_potency_model` and
        :func:`mscpotency.tl.potency_population` are reported where present). For a release
        report, the lot model (:func:`mscpotency.release`'s reference side) works too.
    out
        Output folder (created): ``report.html`` (one self-contained file, figures
        embedded), ``report.md``, ``figures/*.png``, ``tables/*.csv``.
    query
        New lots after :func:`mscpotency.release`: adds the verdict table and release detail.
    title
        Report title; default: named after the inputs and the potency assay.

    Returns
    -------
    Path of ``report.html``.
    """
    out = Path(out)
    document = build_report(adata, out, query=query, title=title)
    settings_and_provenance(document, adata, query, tables=out / "tables")
    return write_report(document, out)
