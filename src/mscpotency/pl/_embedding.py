"""Where do clusters and lots sit? A thin wrapper of ``sc.pl.umap`` with the package's colours."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .. import _keys, _registry
from .._docs import doc_params
from .._stored import params
from ._utils import POTENCY_ASSAYS, _category_colors, _finish, potency_label

__all__ = ["umap"]


@doc_params
def umap(
    adata: AnnData,
    *,
    color: str | Sequence[str] | None = None,
    cluster_key: str = _keys.CLUSTER,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
    **kwargs,
) -> Axes | list[Axes] | Figure | None:
    """UMAP of the cells coloured by cluster, lot, potency or any obs column or gene.

    Categorical colourings use ``adata.uns[f"{key}_colors"]`` (created with the package's
    fixed palette when absent), so a cluster has the same colour here as in every other plot.

    Parameters
    ----------
    adata
        {adata}
        Needs ``obsm['X_umap']``: run
        ``sc.tl.umap(adata, neighbors_key='cluster_neighbors')`` after :func:`mscpotency.tl.cluster`.
    color
        What to colour by: one key or a list (one panel each); default ``cluster_key``.
        E.g. ``["cluster", "lot", "vegf"]``.
    cluster_key
        {cluster_key}
        The default colouring.
    ax
        {ax}
        One colour key only.
    **kwargs
        Passed to :func:`scanpy.pl.umap` (``legend_loc``, ``size``, ``ncols`` ...).

    Returns
    -------
    The Figure when ``return_fig=True``; when not shown, the Axes (or a list of Axes for
    several keys); else ``None``.
    """
    import scanpy as sc

    if "X_umap" not in adata.obsm:
        msg = (
            f"adata.obsm has no 'X_umap'. Run `tl.cluster` and then "
            f"`sc.tl.umap(adata, neighbors_key={_neighbors_key(adata, cluster_key)!r})` first."
        )
        raise KeyError(msg)
    keys = [cluster_key] if color is None else [color] if isinstance(color, str) else list(color)
    if not keys:
        msg = "color must name at least one obs column or gene"
        raise ValueError(msg)
    unknown = [k for k in keys if k not in adata.obs.columns and k not in adata.var_names]
    if unknown:
        msg = f"cannot colour by {unknown}: neither obs columns nor genes of adata"
        raise KeyError(msg)
    if ax is not None and len(keys) > 1:
        msg = f"{len(keys)} colour keys draw {len(keys)} panels and cannot share one ax; leave ax=None"
        raise ValueError(msg)
    for k in keys:
        if k in adata.obs.columns:
            if adata.obs[k].dtype == object or adata.obs[k].dtype.name == "string":
                adata.obs[k] = adata.obs[k].astype(
                    "category"
                )  # as scanpy would, so colours are stored
            if adata.obs[k].dtype.name == "category":
                _category_colors(adata, k, list(adata.obs[k].cat.categories))
    assays = [k in adata.obs.columns and str(k).lower() in POTENCY_ASSAYS for k in keys]
    if "title" not in kwargs and any(assays):
        titles = [
            potency_label(k) if is_assay else k for k, is_assay in zip(keys, assays, strict=True)
        ]
        kwargs["title"] = titles if len(titles) > 1 else titles[0]
    with warnings.catch_warnings():
        # scanpy <= 1.11 calls Colormap.set_bad, which matplotlib >= 3.11 flags; nothing for users to act on
        warnings.filterwarnings(
            "ignore", message="The set_bad function", category=PendingDeprecationWarning
        )
        axes = sc.pl.umap(
            adata, color=keys if len(keys) > 1 else keys[0], ax=ax, show=False, save=False, **kwargs
        )
    fig = (axes[0] if isinstance(axes, list) else axes).get_figure()
    return _finish(fig, axes, show, return_fig)


def _neighbors_key(adata: AnnData, cluster_key: str) -> str:
    """The neighbours ``tl.cluster`` stored for ``cluster_key`` (its default when not run)."""
    try:
        return str(params(adata, _registry.CLUSTER, cluster_key)["neighbors_key"])
    except KeyError:
        return f"{cluster_key}_neighbors"
