"""Array probes and CAGE promoters to genes, by a stated rule that keeps the mapping.

:func:`collapse_probes` keeps, per gene, the probe with the highest mean log2 intensity
over the lines (``method="max_mean"``, the usual rule: the best-measured probe speaks) or
averages them (``"mean"``). :func:`normalize_cage` turns raw tag counts into log2 CPM and,
given the promoter -> gene table, sums each gene's promoters first. Both return a new
AnnData of genes whose ``uns['feature_mapping']`` holds the feature -> gene table (which
feature was kept), so validation can go back to the features or forward to genes.
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from ..._docs import doc_params
from ..._provenance import record
from .._lines import dense_matrix

logger = logging.getLogger("mscpotency")

CollapseMethod = Literal["max_mean", "mean"]
#: Where the feature -> gene table of a collapsed AnnData is written.
MAPPING_KEY = "feature_mapping"


def _annotation(
    adata: AnnData, annotation: pd.DataFrame | pd.Series | None, gene_key: str
) -> pd.Series:
    """Feature -> gene ('' or missing: unannotated) for every feature of ``adata``."""
    if annotation is None:
        if gene_key not in adata.var.columns:
            msg = (
                f"adata.var has no column {gene_key!r} with the gene of each feature; pass the "
                "platform's annotation table (feature -> gene) as annotation="
            )
            raise KeyError(msg)
        genes = adata.var[gene_key]
    elif isinstance(annotation, pd.DataFrame):
        if gene_key not in annotation.columns:
            msg = f"the annotation table has no column {gene_key!r}; its columns are {list(annotation.columns)}"
            raise KeyError(msg)
        genes = annotation[gene_key]
    elif isinstance(annotation, pd.Series):
        genes = annotation
    else:
        msg = f"annotation must be a DataFrame or a Series (feature -> gene), got {type(annotation).__name__}"
        raise TypeError(msg)
    genes = genes.copy()
    genes.index = genes.index.astype(str)
    if genes.index.duplicated().any():
        msg = f"the annotation names features {genes.index[genes.index.duplicated()][:5].tolist()} more than once"
        raise ValueError(msg)
    features = adata.var_names.astype(str)
    absent = features.difference(genes.index)
    if len(absent):
        msg = (
            f"{len(absent)} features of the data are not in the annotation (e.g. "
            f"{absent[:5].tolist()}); give the platform's full annotation table"
        )
        raise KeyError(msg)
    return genes.reindex(features).fillna("").astype(str).str.strip()


def _collapse(X: np.ndarray, gene_of: np.ndarray, method: str) -> tuple[np.ndarray, pd.DataFrame]:
    """Genes' values and the mapping table (feature, gene, mean, kept) from features."""
    mean = X.mean(axis=0)
    mapping = pd.DataFrame({"gene": gene_of, "mean": mean})
    genes = pd.unique(gene_of)
    if method == "max_mean":
        best = mapping.sort_values(["gene", "mean"], ascending=[True, False], kind="stable")
        chosen = best.drop_duplicates("gene").index.to_numpy()
        mapping["kept"] = np.isin(np.arange(len(mapping)), chosen)
        position = pd.Series(chosen, index=mapping.loc[chosen, "gene"].to_numpy())
        return X[:, position.loc[genes].to_numpy()], mapping
    mapping["kept"] = True
    codes = pd.Categorical(gene_of, categories=genes).codes
    sums = np.zeros((X.shape[0], len(genes)))
    np.add.at(sums.T, codes, X.T)
    return sums / np.bincount(codes, minlength=len(genes)), mapping


def _gene_adata(
    adata: AnnData, values: np.ndarray, mapping: pd.DataFrame, record_: dict
) -> AnnData:
    """The genes x lines AnnData with the mapping and the rule recorded."""
    genes = pd.unique(mapping["gene"])
    kept = mapping[mapping["kept"]]
    var = pd.DataFrame(
        {
            "n_features": mapping.groupby("gene", sort=False).size().reindex(genes).to_numpy(),
            "feature": kept.groupby("gene", sort=False)["feature"]
            .agg(";".join)
            .reindex(genes)
            .to_numpy(),
        },
        index=pd.Index(genes.astype(str), name="gene"),
    )
    out = AnnData(X=values, obs=adata.obs.copy(), var=var)
    out.uns = {k: v for k, v in adata.uns.items() if k == "platform"}
    out.uns[MAPPING_KEY] = {"table": mapping.set_index("feature"), **record_}
    return out


@doc_params
@record("bulk.pp.collapse_probes")
def collapse_probes(
    adata: AnnData,
    annotation: pd.DataFrame | pd.Series | None = None,
    *,
    gene_key: str = "gene_symbol",
    method: CollapseMethod = "max_mean",
    layer: str | None = None,
) -> AnnData:
    """Collapse array probes to genes by a stated rule, keeping the probe -> gene mapping.

    Parameters
    ----------
    adata
        {adata}
        Here lines x probes, log2 intensities.
    annotation
        The platform's annotation table: a DataFrame indexed by probe ID with a
        ``gene_key`` column, or a probe -> gene Series (default: ``adata.var[gene_key]``).
        Probes without a gene (empty or missing) are dropped and counted.
    gene_key
        Column of the annotation with the gene symbol.
    method
        {method}
        ``"max_mean"``: per gene the probe with the highest mean intensity over the lines;
        ``"mean"``: the mean of the gene's probes.

    Returns
    -------
    A new AnnData, lines x genes: ``var['n_features']`` (probes of the gene),
    ``var['feature']`` (the probe(s) kept), ``uns['feature_mapping']`` with ``'table'``
    (probe -> gene, mean, kept), ``'method'``, ``'dropped'`` (unannotated probes) and
    ``'kind'`` (``'probes'``).
    """
    if method not in ("max_mean", "mean"):
        msg = f"method must be 'max_mean' or 'mean', got {method!r}"
        raise ValueError(msg)
    gene_of = _annotation(adata, annotation, gene_key)
    annotated = (gene_of != "").to_numpy()
    if not annotated.any():
        msg = f"no probe has a gene in the annotation column {gene_key!r}"
        raise ValueError(msg)
    X = dense_matrix(adata, layer)[:, annotated]
    if not np.isfinite(X).all():
        msg = "the probe intensities have missing or infinite values; filter or impute them first"
        raise ValueError(msg)
    values, mapping = _collapse(X, gene_of.to_numpy()[annotated], method)
    mapping.insert(0, "feature", adata.var_names.astype(str).to_numpy()[annotated])
    dropped = adata.var_names.astype(str)[~annotated].tolist()
    logger.info(
        "collapse_probes: %d probes -> %d genes (%s); %d unannotated probes dropped",
        annotated.sum(),
        values.shape[1],
        method,
        len(dropped),
    )
    return _gene_adata(
        adata, values, mapping, {"method": method, "dropped": dropped, "kind": "probes"}
    )


def _raw_counts(X: np.ndarray) -> None:
    """Refuse values that are not raw counts (already normalised or log-transformed)."""
    if sparse.issparse(X):
        X = X.toarray()
    finite = np.isfinite(X).all()
    if not finite or (X < 0).any() or not np.allclose(X, np.round(X)):
        msg = (
            "normalize_cage takes raw tag counts (non-negative integers); these values are not "
            "(already normalised or log-transformed?). Use them as they are, or pass the raw counts."
        )
        raise ValueError(msg)


@doc_params
@record("bulk.pp.normalize_cage")
def normalize_cage(
    adata: AnnData,
    annotation: pd.DataFrame | pd.Series | None = None,
    *,
    gene_key: str = "gene_symbol",
    pseudocount: float = 1.0,
    layer: str | None = None,
) -> AnnData:
    """CAGE tag counts to log2 CPM, per promoter or (with an annotation) per gene.

    Each line's counts are scaled to counts per million of its library (the column sums),
    so lines sequenced to different depths compare; with ``annotation`` (promoter -> gene)
    a gene's promoters are summed (in CPM) before the log. ``log2(CPM + pseudocount)``.

    Parameters
    ----------
    adata
        {adata}
        Here lines x promoters, raw tag counts.
    annotation
        promoter -> gene table (a DataFrame with a ``gene_key`` column or a Series);
        ``None`` keeps promoters. Promoters without a gene are dropped and counted.
    gene_key
        Column of the annotation with the gene symbol.
    pseudocount
        Added to the CPM before the log2.

    Returns
    -------
    A new AnnData (lines x promoters or genes) of log2 CPM with ``obs['library_size']``
    and ``uns['feature_mapping']`` (promoter -> gene, ``'method'`` ``'sum'``, ``'dropped'``,
    ``'kind'`` ``'promoters'``) when aggregated, else ``uns['normalization']``.
    """
    if not pseudocount > 0:
        msg = f"pseudocount must be > 0, got {pseudocount}"
        raise ValueError(msg)
    X = dense_matrix(adata, layer)
    _raw_counts(X)
    library = X.sum(axis=1)
    if (library == 0).any():
        msg = f"lines {adata.obs_names[library == 0].tolist()} have no counts; drop them"
        raise ValueError(msg)
    cpm = X / library[:, None] * 1e6
    if annotation is None:
        out = AnnData(X=np.log2(cpm + pseudocount), obs=adata.obs.copy(), var=adata.var.copy())
        out.uns = {k: v for k, v in adata.uns.items() if k == "platform"}
    else:
        gene_of = _annotation(adata, annotation, gene_key)
        annotated = (gene_of != "").to_numpy()
        sums, mapping = _collapse(cpm[:, annotated], gene_of.to_numpy()[annotated], "mean")
        sums *= (
            mapping.groupby("gene", sort=False)
            .size()
            .reindex(pd.unique(mapping["gene"]))
            .to_numpy()
        )
        mapping.insert(0, "feature", adata.var_names.astype(str).to_numpy()[annotated])
        dropped = adata.var_names.astype(str)[~annotated].tolist()
        out = _gene_adata(
            adata,
            np.log2(sums + pseudocount),
            mapping,
            {"method": "sum", "dropped": dropped, "kind": "promoters"},
        )
    out.obs["library_size"] = library
    out.uns["normalization"] = {"unit": "log2 CPM", "pseudocount": pseudocount}
    return out
