"""The main job: the reference analysis of the study-shaped preset, end to end.

``mscpotency reproduce --out DIR`` simulates the study (11 bone-marrow training lots, 4
held-out bone-marrow lots, 4 adipose and 5 umbilical-cord lots), runs the reference
analysis on the training lots and writes figures (PNG), tables (CSV) and a report
(Markdown and HTML) that a QC scientist can read.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from anndata import AnnData

from . import _stored, bulk, datasets, get
from ._workflow import AnalysisSettings, release_lots
from ._workflow._analyse import analyse_adata
from ._workflow._document import Report
from ._workflow._report import build_report, save_figure, settings_and_provenance, write_report
from ._workflow._run import save_reference

logger = logging.getLogger("mscpotency")


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
        train,
        rules=IPS_RULES,
        platforms=["mrna", "cage"],
        match_on="gene",
        combine="all_significant",  # the report's narrative: every cell significant
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
        tested = bulk.get.rank_association(train["mrna"], outcome=outcome)
        rows.append(
            {
                "rule": rule,
                "direction": ", ".join(
                    f"{'up' if sign > 0 else 'down'} with {name}" for name, sign in signs.items()
                ),
                "single-platform candidates (mRNA, P<0.05)": int((tested["pvalue"] < 0.05).sum()),
                "expected by chance (0.05 x features tested)": round(0.05 * len(tested), 1),
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
        "Single-platform calls at P < 0.05 include about 5% of the features tested by chance "
        "alone (the column 'expected by chance'); false positives are removed by agreement "
        "across platforms and differentiation methods, in the direction each rule states, then "
        "by confirmation on the held-out lines:"
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
    items.append(save_figure(fig, figures / "ips_markers.png"))


def reproduce(
    out: str | Path,
    *,
    random_state: int = 0,
    n_clusters: int = 8,
    preset: str = "study",
    mapping: bool = True,
    ips: bool = True,
) -> Path:
    """The demo: ``analyse`` + ``map`` on the built-in data, and the bulk iPS analysis.

    The same functions as ``mscpotency analyse`` and ``mscpotency map`` run on the
    simulated lots in memory (the reference arm, then the held-out and other-tissue lots),
    and the same report builder writes the report; a check against the simulator's truth
    and the iPS section are added.

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
        Also release the held-out bone-marrow, adipose and umbilical-cord lots.
    ips
        Also run the bulk iPS-line analysis (differentiation-propensity markers).

    Returns
    -------
    Path of the HTML report.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    presets = {"study": datasets.study, "tiny": datasets.tiny}
    if preset not in presets:
        msg = f"preset must be one of {sorted(presets)}, got {preset!r}"
        raise ValueError(msg)
    study = presets[preset](random_state=random_state)
    settings = AnalysisSettings(
        title=f"Potency population of simulated MSC lots ({preset} preset, seed {random_state})",
        n_clusters=n_clusters,
        random_state=random_state,
    )
    reference = study[study.obs["set"] == "BM-train"].copy()
    analyse_adata(reference, settings)
    path = save_reference(reference, settings, out)
    query = None
    if mapping:
        query, _ = release_lots(
            study[study.obs["set"] != "BM-train"].copy(), path, settings=settings
        )
    document = build_report(reference, out, query=query)
    truth = document.section("Check against the simulator's truth")
    truth.append(truth_summary(reference))
    if query is not None:
        truth.append(release_truth(query))
    if ips:
        ips_analysis(document, out / "figures", out / "tables", random_state=random_state)
    settings_and_provenance(document, reference, query, tables=out / "tables")
    document.sections[-1][1].append(f"Total time {time.perf_counter() - start:.0f} s.")
    return write_report(document, out)


def release_truth(query: AnnData) -> pd.DataFrame:
    """Each new lot's reported share and interval beside its true potency-cell share."""
    table = query.uns["workflow"]["release"]
    truth = query.obs.groupby("lot", observed=True)["true_potency_cell"].mean()
    frame = table[["share", "share_low", "share_high"]].copy()
    frame["true_share"] = truth.reindex(frame.index.astype(str)).to_numpy()
    frame["covered"] = (frame["share_low"] <= frame["true_share"]) & (
        frame["true_share"] <= frame["share_high"]
    )
    return frame
