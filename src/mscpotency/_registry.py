"""Every result the package stores, declared once.

A :class:`Result` names the ``adata.uns`` key a tool writes by default, the tool(s) that
write it, the tables inside it, the ``get`` accessor that returns them and the ``pl``
functions that draw them. Tools take their default ``key_added`` from here, accessors and
plots read through :mod:`mscpotency._stored` (whose "run ``tl.X`` first" messages come from
here too), and ``tests/test_package_structure.py`` checks that every declared name exists.
No result key is spelled anywhere else.

The producer, its accessor and its first plot share one name: ``tl.lot_fractions`` →
``get.lot_fractions`` → ``pl.lot_fractions``. A result without an accessor or a plot says
why in ``no_accessor`` / ``no_plot``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Result:
    """One stored result.

    Attributes
    ----------
    key
        Default ``adata.uns`` key (the tool's default ``key_added``).
    producers
        Public functions that write it, first the one it is named after
        (``"tl.lot_fractions"``; bulk tools as ``"bulk.tl.rank_association"``).
    tables
        Fields of ``adata.uns[key]`` that hold tables, first the accessor's default
        ``kind``. One-row summaries (dicts of scalars) are listed too.
    accessor
        The ``get`` function returning the tables, or ``None`` (then ``no_accessor`` says why).
    plots
        The ``pl`` functions drawing it, first the one sharing the producer's name.
    no_accessor, no_plot
        Why there is no accessor / no plot.
    """

    key: str
    producers: tuple[str, ...]
    tables: tuple[str, ...] = ()
    accessor: str | None = None
    plots: tuple[str, ...] = ()
    no_accessor: str = ""
    no_plot: str = ""

    @property
    def producer(self) -> str:
        """The tool named in "run it first" messages."""
        return self.producers[0]

    @property
    def name(self) -> str:
        """The name producer, accessor and first plot share."""
        return self.producer.rsplit(".", 1)[-1]


def _named(
    producers: str | tuple[str, ...], key: str, tables: tuple[str, ...] = (), **kwargs
) -> Result:
    """A result whose accessor and first plot share the producer's name (unless overridden)."""
    producers = (producers,) if isinstance(producers, str) else producers
    namespace, name = producers[0].rsplit(".", 1)
    getter = namespace.replace("tl", "get").replace("pp", "get")
    kwargs.setdefault("accessor", f"{getter}.{name}")
    if "plots" not in kwargs and not kwargs.get("no_plot"):
        kwargs["plots"] = (f"{namespace.replace('tl', 'pl').replace('pp', 'pl')}.{name}",)
    if kwargs["accessor"] is None and not kwargs.get("no_accessor"):
        msg = f"{producers[0]}: a result without an accessor must say why"
        raise ValueError(msg)
    return Result(key=key, producers=producers, tables=tables, **kwargs)


# --- pooled cells: which cells carry potency ---------------------------------------------
QC = _named("pp.qc", "qc", ("per_lot", "thresholds", "lots_flagged", "genes_removed"))
PREPROCESS = _named(
    "pp.preprocess",
    "preprocess",
    accessor=None,
    no_accessor="parameters only; the reduction is in obsm['X_pca'] and varm['PCs']",
    no_plot="sc.pl.pca_variance_ratio and sc.pl.pca draw the reduction",
)
CLUSTER = _named(
    "tl.cluster",
    "cluster",
    accessor=None,
    no_accessor="the labels are obs['cluster']; uns['cluster'] holds the search's parameters",
    no_plot="the labels are drawn by pl.umap (and sc.pl.umap)",
)
LOT_FRACTIONS = _named("tl.lot_fractions", "lot_fractions", ("fractions", "counts", "n_cells"))
COMPOSITION_DEVIATION = _named(
    "tl.composition_deviation", "composition_deviation", ("per_lot", "pooled", "log2_ratio")
)
POTENCY_ASSOCIATION = _named(
    "tl.potency_association",
    "potency_association",
    ("table", "lots"),
    plots=("pl.potency_association", "pl.potency_scatter"),
)
POTENCY_MARKERS = _named("tl.potency_markers", "potency_markers", ("table",))
POTENCY_POPULATION = _named(
    "tl.potency_population",
    "potency_population",
    ("candidates", "summary", "lots", "overlap", "boundary"),
)
LOT_SPECIFICITY = _named("tl.lot_specificity", "lot_specificity", ("table", "summary"))
CLUSTER_QUALITY = _named(
    "tl.cluster_quality",
    "cluster_quality",
    ("table", "summary"),
    no_plot="sc.pl.violin(adata, ['n_genes_by_counts', 'total_counts'], groupby=cluster_key) "
    "draws the metrics per cluster",
)
INTEGRATE = _named("pp.integrate", "integrate", ("metrics",))

# --- new lots: frozen reference, mapping, validation --------------------------------------
FROZEN_REFERENCE = _named(
    "tl.freeze_reference",
    "reference",
    no_plot="a frozen reference is an input of tl.map_to_reference; plot the analysed reference",
)
MAPPING = _named(
    "tl.map_to_reference",
    "predicted",
    ("per_lot", "reliability_after", "reliability_before"),
    plots=("pl.map_to_reference", "pl.mapping_confidence", "pl.mapping_calibration"),
)
VALIDATE_POTENCY = _named(
    "tl.validate_potency", "validate_potency", ("per_set", "combined", "lots")
)
MARKER_BY_SET = _named("tl.marker_by_set", "marker_by_set", ("tests", "sets", "lots"))

# --- how sure: robustness and second opinions ---------------------------------------------
ASSOCIATION_STABILITY = _named(
    "tl.association_stability",
    "association_stability",
    ("resolutions", "subsamples", "clusters", "summary"),
)
INFLUENTIAL_LOTS = _named("tl.influential_lots", "influential_lots", ("table",))
COUNT_ASSOCIATION = _named(
    "tl.count_association",
    "count_association",
    ("table",),
    no_plot="drawn beside the other methods by pl.method_agreement",
)
NEIGHBOURHOOD_ASSOCIATION = _named(
    "tl.neighbourhood_association", "neighbourhood_association", ("nhoods", "clusters")
)
METHOD_AGREEMENT = _named("tl.method_agreement", "method_agreement", ("table", "summary"))
PSEUDOBULK_MARKERS = _named(
    "tl.pseudobulk_markers",
    "pseudobulk_markers",
    ("table",),
    no_plot="a per-gene table beside pl.potency_markers' cell-level view",
)
GENE_ASSOCIATION = _named(
    "tl.gene_association",
    "gene_association",
    ("table", "expression"),
    no_plot="a per-gene table; pl.potency_scatter draws one feature against potency",
)

# --- decisions about new lots -------------------------------------------------------------
POTENCY_MODEL = _named("tl.fit_potency_model", "potency_model", ("lots", "coefficients", "cv"))
POTENCY_PREDICTION = _named("tl.predict_potency", "potency_prediction", ("table",))
COMPARABILITY = _named("tl.comparability", "comparability", ("table", "limits", "values"))

# --- bulk lines x genes panels ------------------------------------------------------------
PROPENSITY = _named(
    ("bulk.tl.fit_propensity", "bulk.tl.apply_propensity"),
    "propensity",
    ("scores", "loadings"),
)
RANK_ASSOCIATION = _named("bulk.tl.rank_association", "rank_association", ("table",))
MARKER_VALIDATION = _named(
    "bulk.tl.validate_markers",
    "marker_validation",
    ("table", "summary"),
    plots=("bulk.pl.validate_markers", "bulk.pl.validation_scatter"),
)

#: Every stored result, by default key.
RESULTS: dict[str, Result] = {
    result.key: result
    for result in (
        QC,
        PREPROCESS,
        CLUSTER,
        LOT_FRACTIONS,
        COMPOSITION_DEVIATION,
        POTENCY_ASSOCIATION,
        POTENCY_MARKERS,
        POTENCY_POPULATION,
        FROZEN_REFERENCE,
        MAPPING,
        VALIDATE_POTENCY,
        MARKER_BY_SET,
        ASSOCIATION_STABILITY,
        INFLUENTIAL_LOTS,
        COUNT_ASSOCIATION,
        NEIGHBOURHOOD_ASSOCIATION,
        METHOD_AGREEMENT,
        PSEUDOBULK_MARKERS,
        GENE_ASSOCIATION,
        POTENCY_MODEL,
        POTENCY_PREDICTION,
        COMPARABILITY,
        PROPENSITY,
        RANK_ASSOCIATION,
        MARKER_VALIDATION,
        LOT_SPECIFICITY,
        CLUSTER_QUALITY,
        INTEGRATE,
    )
}
