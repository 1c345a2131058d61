"""The potency marker in the potency-like cells of mapped lots, compared between sets (tissues).

:func:`marker_by_set` compares one gene's expression in the potency-like cells between
study arms: lots are the replicates (a permutation Kruskal-Wallis test across arms, exact
Mann-Whitney tests of each arm against a reference arm).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse, stats

from ... import _keys, _stats
from ..._docs import doc_params
from ..._provenance import record
from ..._registry import MAPPING, MARKER_BY_SET
from ..._stored import stored
from ..._validate import lots_of
from ._harmonise import query_counts
from ._mapped import mapped_cluster, mapped_labels, set_order, sets_of_lots


@doc_params
@record("tl.marker_by_set")
def marker_by_set(
    adata: AnnData,
    gene: str,
    *,
    mapping_key: str = MAPPING.key,
    cluster: str | None = None,
    set_key: str = _keys.SET,
    lot_key: str = _keys.LOT,
    layer: str | None = _keys.COUNTS_LAYER,
    reference_set: str | None = None,
    min_cells: int = 5,
    n_permutations: int = 9999,
    random_state: int = 0,
    key_added: str = MARKER_BY_SET.key,
    copy: bool = False,
) -> AnnData | None:
    """Expression of one gene in the potency-like cells, compared between sets (tissues).

    Cells are not replicates: each lot contributes the mean log-normalised expression of the
    gene in its potency-like cells (normalised from counts exactly as the mapping did), and
    sets are compared on these lot means — a Kruskal-Wallis test across all sets with a
    permutation p-value (lots shuffled between sets) and exact two-sided Mann-Whitney tests
    of every set against ``reference_set``. Cell-level summaries are reported beside them.

    Parameters
    ----------
    adata
        {adata}
        Query cells mapped with :func:`mscpotency.tl.map_to_reference`, raw counts in
        ``layers[layer]`` (or ``X``).
    gene
        The gene to compare (e.g. the potency marker ``"LRRC75A"``).
    cluster
        {cluster}
        Here a reference label; ``None``: the reference's potency cluster, as the mapping
        recorded it.
    reference_set
        Set the others are compared against (default: the first set).
    min_cells
        Lots with fewer potency-like cells are left out of the lot-level tests (and listed).

    Returns
    -------
    ``None``, or the copy when ``copy=True``. Writes ``adata.uns[key_added]`` with
    ``'tests'`` : DataFrame (Kruskal-Wallis across sets and each set vs ``reference_set``:
    statistic, pvalue, difference, log2_ratio), ``'sets'`` : DataFrame (one row per set:
    n_lots, mean_of_lots, sd_of_lots, n_cells, cell_mean, cell_pct_expressing), ``'lots'`` :
    DataFrame (one row per lot: set, n_cells, mean_expression, pct_expressing, tested),
    ``'gene'``, ``'potency_cluster'`` and ``'params'``.
    """
    cluster = mapped_cluster(adata, mapping_key, cluster)
    if gene not in adata.var_names:
        msg = f"gene {gene!r} is not in adata.var_names"
        raise KeyError(msg)
    labels = mapped_labels(adata, mapping_key)
    lots = lots_of(adata, lot_key)
    target_sum = float(stored(adata, MAPPING, mapping_key).get("target_sum", 1e4))
    values = _normalised_gene(adata, gene, layer, target_sum)
    inside = labels.astype(str).to_numpy() == cluster
    if inside.sum() == 0:
        msg = f"no cell carries the label {cluster!r}; nothing to compare"
        raise ValueError(msg)
    cells = pd.DataFrame({"lot": lots.astype(str).to_numpy(), "value": values})[inside]
    lot_index = pd.Index(sorted(lots.astype(str).unique()), name=lot_key)
    sets = sets_of_lots(adata, set_key, lot_key, lot_index)
    lots_table = _lots_table(cells, sets, min_cells)
    set_names = set_order(adata, set_key, sets)
    reference_set = set_names[0] if reference_set is None else reference_set
    if reference_set not in set_names:
        msg = f"reference_set {reference_set!r} is not a set; sets are {set_names}"
        raise ValueError(msg)
    tested = lots_table[lots_table["tested"]]
    sets_table = _sets_table(cells, sets, tested, set_names)
    tests = _set_tests(tested, set_names, reference_set, n_permutations, random_state)
    adata = adata.copy() if copy else adata
    adata.uns[key_added] = {
        "lots": lots_table,
        "sets": sets_table,
        "tests": tests,
        "gene": gene,
        "potency_cluster": cluster,
        "params": {
            "mapping_key": mapping_key,
            "set_key": set_key,
            "lot_key": lot_key,
            "layer": layer,
            "reference_set": reference_set,
            "min_cells": min_cells,
            "n_permutations": n_permutations,
            "random_state": random_state,
            "target_sum": target_sum,
        },
    }
    return adata if copy else None


def _normalised_gene(adata: AnnData, gene: str, layer: str | None, target_sum: float) -> np.ndarray:
    """The gene's log-normalised expression in every cell.

    Normalised exactly as the mapping normalised the query (and ``pp.preprocess`` the
    reference).
    """
    counts = query_counts(adata, layer)
    counts = counts.compute() if hasattr(counts, "compute") else counts
    totals = np.asarray(counts.sum(axis=1), dtype=float).ravel()
    column = counts[:, adata.var_names.get_loc(gene)]
    column = np.asarray(
        column.todense() if sparse.issparse(column) else column, dtype=float
    ).ravel()
    return np.log1p(
        np.divide(column * target_sum, totals, out=np.zeros_like(column), where=totals > 0)
    )


def _share_expressing(values: pd.Series) -> float:
    return float((values > 0).mean())


def _lots_table(cells: pd.DataFrame, sets: pd.Series, min_cells: int) -> pd.DataFrame:
    """Per lot: its set, its potency-like cells, their mean expression, whether it is tested."""
    lot_index = sets.index
    grouped = cells.groupby("lot")
    table = pd.DataFrame(
        {
            "set": sets.to_numpy(),
            "n_cells": grouped.size().reindex(lot_index, fill_value=0).to_numpy(),
            "mean_expression": grouped["value"].mean().reindex(lot_index).to_numpy(),
            "pct_expressing": grouped["value"]
            .apply(_share_expressing)
            .reindex(lot_index)
            .to_numpy(),
        },
        index=lot_index,
    )
    table["tested"] = table["n_cells"] >= min_cells
    return table


def _sets_table(
    cells: pd.DataFrame, sets: pd.Series, tested: pd.DataFrame, set_names: list[str]
) -> pd.DataFrame:
    """Per set: the tested lots' means (the replicates) and the cell-level summaries."""
    cells_by_set = cells.assign(set=sets.reindex(cells["lot"]).to_numpy()).groupby("set")
    by_set = tested.groupby("set")["mean_expression"]
    return pd.DataFrame(
        {
            "n_lots": by_set.size(),
            "mean_of_lots": by_set.mean(),
            "sd_of_lots": by_set.std(),
            "n_cells": cells_by_set.size(),
            "cell_mean": cells_by_set["value"].mean(),
            "cell_pct_expressing": cells_by_set["value"].apply(_share_expressing),
        }
    ).reindex(set_names)


def kruskal_permutation(
    values: np.ndarray, groups: np.ndarray, *, n_permutations: int, random_state: int
) -> tuple[float, float, str]:
    """Kruskal-Wallis H with a permutation p-value: exact enumeration when feasible, else sampled."""
    values = np.asarray(values, dtype=float)
    _, codes = np.unique(groups, return_inverse=True)
    sizes = np.bincount(codes)
    ranks = _stats.midranks(values)

    def h_statistic(assignment: np.ndarray) -> float:
        sums = np.bincount(assignment, weights=ranks, minlength=sizes.size)
        n = values.size
        return float(12 / (n * (n + 1)) * (sums**2 / sizes).sum() - 3 * (n + 1))

    observed = h_statistic(codes)
    n_assignments = math.factorial(values.size) // math.prod(math.factorial(int(s)) for s in sizes)
    if n_assignments <= 200_000:
        null = np.array([h_statistic(a) for a in _assignments(sizes)])
        return observed, float((null >= observed - 1e-9).mean()), "exact"
    rng = np.random.default_rng(random_state)
    null = np.array([h_statistic(rng.permutation(codes)) for _ in range(n_permutations)])
    return (
        observed,
        float((1 + (null >= observed - 1e-9).sum()) / (1 + n_permutations)),
        "permutation",
    )


def _assignments(sizes: np.ndarray):
    """Every way to split ``sum(sizes)`` items into groups of the given sizes (as code arrays)."""
    n = int(sizes.sum())

    def fill(remaining: tuple[int, ...], group: int, assignment: np.ndarray):
        if group == sizes.size - 1:
            out = assignment.copy()
            out[list(remaining)] = group
            yield out
            return
        for chosen in itertools.combinations(remaining, int(sizes[group])):
            out = assignment.copy()
            out[list(chosen)] = group
            rest = tuple(i for i in remaining if i not in set(chosen))
            yield from fill(rest, group + 1, out)

    yield from fill(tuple(range(n)), 0, np.zeros(n, dtype=np.int64))


def _set_tests(
    tested: pd.DataFrame,
    set_names: list[str],
    reference_set: str,
    n_permutations: int,
    random_state: int,
) -> pd.DataFrame:
    rows = []
    present = [s for s in set_names if (tested["set"] == s).sum() >= 1]
    if len(present) >= 2:
        statistic, pvalue, how = kruskal_permutation(
            tested["mean_expression"].to_numpy(),
            tested["set"].to_numpy(),
            n_permutations=n_permutations,
            random_state=random_state,
        )
        rows.append(
            {
                "comparison": "all sets",
                "test": f"Kruskal-Wallis ({how} permutation)",
                "statistic": statistic,
                "pvalue": pvalue,
                "difference": np.nan,
                "log2_ratio": np.nan,
            }
        )
    base = tested.loc[tested["set"] == reference_set, "mean_expression"].to_numpy()
    for name in set_names:
        if name == reference_set:
            continue
        other = tested.loc[tested["set"] == name, "mean_expression"].to_numpy()
        if base.size == 0 or other.size == 0:
            continue
        result = stats.mannwhitneyu(other, base, alternative="two-sided", method="exact")
        difference = float(other.mean() - base.mean())
        # lot means are natural-log expression; the ratio of the expm1 means is on the linear scale
        ratio = (
            np.log2(np.expm1(other.mean()) / np.expm1(base.mean()))
            if base.mean() > 0 and other.mean() > 0
            else np.nan
        )
        rows.append(
            {
                "comparison": f"{name} vs {reference_set}",
                "test": "Mann-Whitney (exact, lots)",
                "statistic": float(result.statistic),
                "pvalue": float(result.pvalue),
                "difference": difference,
                "log2_ratio": float(ratio),
            }
        )
    columns = ["comparison", "test", "statistic", "pvalue", "difference", "log2_ratio"]
    return pd.DataFrame(rows, columns=columns).set_index("comparison")
