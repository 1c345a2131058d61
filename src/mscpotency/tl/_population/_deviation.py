"""How far each lot's composition is from the pooled population."""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
from anndata import AnnData

from ... import _registry
from ..._docs import doc_params
from ..._provenance import record
from ..._stats import clr
from ..._stored import stored

Metric = Literal["jsd", "tvd", "aitchison"]


def composition_distance(lot: np.ndarray, pooled: np.ndarray, metric: Metric) -> np.ndarray:
    """Distance of each row of ``lot`` (fractions) from ``pooled`` (fractions).

    ``jsd``: Jensen-Shannon divergence in bits (0-1); ``tvd``: total variation distance
    (0-1, the share of cells that would have to change cluster); ``aitchison``: Euclidean
    distance of CLR-transformed compositions (pseudocount half the smallest positive fraction).
    """
    lot = np.atleast_2d(lot)
    if metric == "tvd":
        return 0.5 * np.abs(lot - pooled).sum(axis=1)
    if metric == "jsd":
        middle = 0.5 * (lot + pooled)
        with np.errstate(divide="ignore", invalid="ignore"):
            a = np.where(lot > 0, lot * np.log2(lot / middle), 0.0).sum(axis=1)
            b = np.where(pooled > 0, pooled * np.log2(pooled / middle), 0.0).sum(axis=1)
        return 0.5 * (a + b)
    if metric == "aitchison":
        both = clr(np.vstack([lot, pooled]))
        return np.sqrt(((both[:-1] - both[-1]) ** 2).sum(axis=1))
    msg = f"metric must be 'jsd', 'tvd' or 'aitchison', got {metric!r}"
    raise ValueError(msg)


@doc_params
@record("tl.composition_deviation")
def composition_deviation(
    adata: AnnData,
    *,
    fractions_key: str = _registry.LOT_FRACTIONS.key,
    metric: Metric = "jsd",
    n_simulations: int = 1000,
    random_state: int = 0,
    key_added: str = _registry.COMPOSITION_DEVIATION.key,
    copy: bool = False,
) -> AnnData | None:
    """Compare every lot's cluster composition with the pooled population's.

    The pooled composition is the share of all cells in each cluster. A lot of ``n`` cells
    drawn from the pool would still differ from it by chance; ``sampling_p`` is the share of
    ``n_simulations`` multinomial draws of ``n`` pooled cells that lie at least as far away,
    so a small value says the lot's composition differs beyond counting noise (cells are
    not independent in practice, so read it as a screen, not a test of the lot).

    Parameters
    ----------
    adata
        {adata}
        Needs ``uns[fractions_key]`` from :func:`mscpotency.tl.lot_fractions`.
    metric
        ``"jsd"``, ``"tvd"`` or ``"aitchison"``; see :func:`composition_distance`.
    n_simulations
        Multinomial draws for ``sampling_p``.

    Returns
    -------
    ``None``, or the copy when ``copy=True``. Writes ``adata.uns[key_added]`` with
    ``'per_lot'`` : DataFrame (lot, n_cells, distance, sampling_p, most deviating cluster and
    its log2 ratio), ``'log2_ratio'`` : DataFrame (lots x clusters, log2 of lot over pooled
    fraction), ``'pooled'`` : pooled fractions and ``'params'``.
    """
    fractions_result = stored(adata, _registry.LOT_FRACTIONS, fractions_key)
    counts: pd.DataFrame = fractions_result["counts"]
    if counts.shape[0] < 2:
        msg = f"composition_deviation needs at least 2 lots, got {counts.shape[0]}"
        raise ValueError(msg)
    n_cells = counts.sum(axis=1).to_numpy()
    pooled = counts.sum(axis=0).to_numpy() / counts.to_numpy().sum()
    fractions = counts.div(n_cells, axis=0).to_numpy()
    distance = composition_distance(fractions, pooled, metric)
    sampling_p = _sampling_p(distance, n_cells, pooled, metric, n_simulations, random_state)
    log2_ratio = _log2_ratio(counts, fractions, pooled)
    weighted = bool(fractions_result["params"].get("weights_key"))
    per_lot = _per_lot_table(
        n_cells if weighted else np.rint(n_cells).astype(int), distance, sampling_p, log2_ratio
    )
    adata = adata.copy() if copy else adata
    adata.uns[key_added] = {
        "per_lot": per_lot,
        "log2_ratio": log2_ratio,
        "pooled": pd.DataFrame({"fraction": pooled}, index=counts.columns),
        "params": {
            "fractions_key": fractions_key,
            "metric": metric,
            "n_simulations": n_simulations,
            "random_state": random_state,
        },
    }
    return adata if copy else None


def _sampling_p(
    distance: np.ndarray,
    n_cells: np.ndarray,
    pooled: np.ndarray,
    metric: Metric,
    n_simulations: int,
    random_state: int,
) -> np.ndarray:
    """Share of multinomial draws of each lot's size from the pool at least as far away."""
    rng = np.random.default_rng(random_state)
    sampling_p = np.empty(len(distance))
    for i, n in enumerate(np.rint(n_cells).astype(int)):
        draws = rng.multinomial(max(n, 1), pooled, size=n_simulations) / max(n, 1)
        null = composition_distance(draws, pooled, metric)
        sampling_p[i] = (1 + (null >= distance[i] - 1e-12).sum()) / (1 + n_simulations)
    return sampling_p


def _log2_ratio(counts: pd.DataFrame, fractions: np.ndarray, pooled: np.ndarray) -> pd.DataFrame:
    """Lots x clusters log2 of the lot's over the pooled fraction (floored at half a cell)."""
    floor = 0.5 / max(counts.sum(axis=1).max(), 1)
    return pd.DataFrame(
        np.log2((fractions + floor) / (pooled + floor)), index=counts.index, columns=counts.columns
    )


def _per_lot_table(
    n_cells: np.ndarray, distance: np.ndarray, sampling_p: np.ndarray, log2_ratio: pd.DataFrame
) -> pd.DataFrame:
    """Per lot: cells, distance, sampling p and the cluster deviating most with its log2 ratio."""
    ratios = log2_ratio.to_numpy()
    most = np.abs(ratios).argmax(axis=1)
    return pd.DataFrame(
        {
            "n_cells": n_cells,
            "distance": distance,
            "sampling_p": sampling_p,
            "most_deviating_cluster": log2_ratio.columns.to_numpy()[most].astype(str),
            "log2_ratio_of_most_deviating": ratios[np.arange(len(most)), most],
        },
        index=log2_ratio.index,
    )
