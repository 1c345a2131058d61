"""Reading a mapped query: the cluster to look at, the transferred labels, lots grouped into sets.

What :func:`mscpotency.tl.validate_potency` and :func:`mscpotency.tl.marker_by_set` both read
from the result of :func:`mscpotency.tl.map_to_reference`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData

from ..._registry import MAPPING
from ..._stored import stored
from ..._validate import lot_level_values, require_obs_column

_RUN_FIRST = f"Run `{MAPPING.producer}` first."


def mapped_cluster(adata: AnnData, mapping_key: str, cluster: str | None) -> str:
    """``cluster`` if given (checked to be a reference label), else the reference's potency cluster."""
    mapping = stored(adata, MAPPING, mapping_key)
    labels = [str(c) for c in mapping.get("reference_labels", [])]
    if cluster is None:
        cluster = str(mapping.get("potency_cluster", "")) or None
        if cluster is None:
            msg = (
                f"adata.uns[{mapping_key!r}] names no potency cluster (the reference had no "
                "`tl.potency_association` result on these labels); pass cluster=."
            )
            raise KeyError(msg)
    if labels and cluster not in labels:
        msg = f"cluster {cluster!r} is not a reference label; labels are {labels}"
        raise ValueError(msg)
    return cluster


def mapped_labels(adata: AnnData, mapping_key: str) -> pd.Series:
    """The transferred label of every cell (``obs[mapping_key]``)."""
    return require_obs_column(adata, mapping_key, what="transferred labels", hint=_RUN_FIRST)


def mapped_probability(adata: AnnData, mapping_key: str, cluster: str) -> np.ndarray:
    """Every cell's probability of ``cluster`` (zeros when the mapping had no such label)."""
    probabilities_key = f"{mapping_key}_probabilities"
    if probabilities_key not in adata.obsm:
        msg = f"adata.obsm has no {probabilities_key!r}. {_RUN_FIRST}"
        raise KeyError(msg)
    probabilities = pd.DataFrame(adata.obsm[probabilities_key])
    if cluster not in probabilities.columns:
        return np.zeros(adata.n_obs)
    return probabilities[cluster].to_numpy(dtype=float)


def on_reference(adata: AnnData, mapping_key: str) -> np.ndarray:
    """Cells not flagged novel, or reaching the mapping's fixed ``min_mapping_score`` if it had one."""
    threshold = stored(adata, MAPPING, mapping_key)["params"].get("min_mapping_score")
    if threshold is None:
        novel = require_obs_column(
            adata, f"{mapping_key}_novel", what="novelty flags", hint=_RUN_FIRST
        )
        return ~novel.to_numpy(dtype=bool)
    threshold = float(threshold)
    scores = require_obs_column(
        adata, f"{mapping_key}_mapping_score", what="mapping scores", hint=_RUN_FIRST
    )
    return scores.to_numpy(dtype=float) >= threshold


def sets_of_lots(adata: AnnData, set_key: str | None, lot_key: str, lots: pd.Index) -> pd.Series:
    """The set (study arm) of every lot in ``lots``; ``"all"`` when ``set_key`` is ``None``."""
    if set_key is None:
        return pd.Series("all", index=lots)
    values = lot_level_values(adata, set_key, lot_key)
    unnamed = values.index[values.isna()].astype(str).tolist()
    if unnamed:
        msg = (
            f"obs[{set_key!r}] is missing for lots {unnamed[:20]}: every lot needs its set (study "
            "arm) to be validated in it; fill them in, or pass set_key=None to validate all lots "
            "as one set."
        )
        raise ValueError(msg)
    values = values.astype(str)
    values.index = values.index.astype(str)
    return values.reindex(lots)


def set_order(adata: AnnData, set_key: str | None, sets: pd.Series) -> list[str]:
    """Sets in the order of obs[set_key]'s categories (or of first appearance)."""
    present = set(sets.astype(str))
    if set_key is None:
        return [s for s in ["all"] if s in present]
    column = adata.obs[set_key]
    if isinstance(column.dtype, pd.CategoricalDtype):
        order = [str(c) for c in column.cat.categories]
    else:
        order = [str(v) for v in pd.unique(column.astype(str))]
    return [s for s in order if s in present]
