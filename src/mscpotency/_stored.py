"""Reading stored results: the one place that turns a missing result into "run X first".

Accessors (``get``), plots (``pl``) and tools that build on an earlier result read
``adata.uns`` only through these helpers, which take a :class:`~mscpotency._registry.Result`
and so know which tool to name when something is missing.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any, Literal

import pandas as pd
from anndata import AnnData

from ._registry import POTENCY_ASSOCIATION, Result


def stored(adata: AnnData, result: Result, key: str | None = None) -> dict:
    """``adata.uns[key]`` as written by ``result``'s producer.

    Parameters
    ----------
    adata
        The annotated data the producer wrote into.
    result
        The declared result.
    key
        The key it was written under (the producer's ``key_added``); ``None`` for the default.

    Raises
    ------
    KeyError
        When ``adata.uns`` has no such key, or holds something the producer did not write;
        the message names the tool to run first.
    """
    key = result.key if key is None else key
    if key not in adata.uns:
        msg = (
            f"adata.uns has no {key!r}. Run `{result.producer}` first "
            "(or pass the key it was written under)."
        )
        raise KeyError(msg)
    value = adata.uns[key]
    if not isinstance(value, Mapping) or "params" not in value:
        msg = (
            f"adata.uns[{key!r}] does not look like the output of `{result.producer}`; "
            f"run `{result.producer}` again."
        )
        raise KeyError(msg)
    return value


def stored_table(
    adata: AnnData, result: Result, kind: str | None = None, key: str | None = None
) -> pd.DataFrame:
    """One table of a stored result, as a DataFrame copy.

    ``kind`` is one of ``result.tables`` (``None``: the first). A field holding a dict of
    scalars (a summary) comes back as a one-row DataFrame.

    Raises
    ------
    ValueError
        When ``kind`` is not one of the result's tables (the message lists them).
    KeyError
        When the result, or that table of it, is missing.
    """
    kind = result.tables[0] if kind is None else kind
    if kind not in result.tables:
        msg = f"kind must be one of {list(result.tables)}, got {kind!r}"
        raise ValueError(msg)
    value = stored(adata, result, key)
    if kind not in value:
        where = result.key if key is None else key
        msg = f"adata.uns[{where!r}] has no {kind!r}; run `{result.producer}` again."
        raise KeyError(msg)
    table = value[kind]
    if isinstance(table, Mapping) and not isinstance(table, pd.DataFrame):
        if all(not isinstance(v, Mapping | list | tuple) for v in table.values()):
            return pd.DataFrame([dict(table)])
    return pd.DataFrame(table).copy()


def params(adata: AnnData, result: Result, key: str | None = None) -> dict[str, Any]:
    """The parameters a stored result was produced with."""
    return dict(stored(adata, result, key)["params"])


class NotSignificantWarning(UserWarning):
    """A potency cluster or population was looked up or named without being significant."""


class LotDominatedWarning(UserWarning):
    """A potency cluster was named or looked up although one or a few lots make up its cells."""


class LowQualityClusterWarning(UserWarning):
    """Clusters made of low-quality cells (damaged cells that QC kept, not a cell state)."""


def potency_cluster(
    adata: AnnData,
    *,
    cluster: str | None = None,
    association_key: str | None = None,
    if_not_significant: Literal["warn", "raise", "ignore"] = "warn",
) -> str:
    """The cluster a tool should work on: ``cluster`` if given, else the potency cluster.

    The potency cluster is the one :func:`mscpotency.tl.potency_association` named (stored
    under ``association_key``): the cluster whose share rises most with potency. Unless
    its FDR is at most the association's ``alpha`` it is only a candidate, and the
    lookup says so (``if_not_significant``): ``"warn"`` (a :class:`NotSignificantWarning`, the default
    for tools building on it: markers, validation, prediction), ``"raise"`` (a
    ``ValueError``) or ``"ignore"`` (plots, which show the p-value themselves). Unless
    ``"ignore"``, a potency cluster the association found lot-dominated (made of one or a
    few lots' cells) raises a :class:`LotDominatedWarning` too. An explicit ``cluster`` is
    the user's choice and is never questioned.

    Raises
    ------
    KeyError
        When ``cluster`` is ``None`` and no potency association names a cluster.
    ValueError
        With ``if_not_significant="raise"``, when the named cluster is not significant.
    """
    if cluster is not None:
        return str(cluster)
    key = POTENCY_ASSOCIATION.key if association_key is None else association_key
    association = stored(adata, POTENCY_ASSOCIATION, key)
    name = association.get("potency_cluster")
    if name is None or str(name) == "":
        msg = (
            f"adata.uns[{key!r}] names no potency cluster (no cluster's share rises with "
            "potency); pass cluster= to choose one."
        )
        raise KeyError(msg)
    name = str(name)
    if if_not_significant != "ignore" and not _significant(association, name):
        table = association.get("table")
        fdr = float(table.loc[name, "fdr"]) if isinstance(table, pd.DataFrame) else float("nan")
        alpha = float(association["params"].get("alpha", 0.05))
        msg = (
            f"the potency cluster {name!r} of adata.uns[{key!r}] is not significant "
            f"(FDR = {fdr:.3g} > alpha = {alpha:g}): no cluster's share is shown to track "
            "potency, so what is built on it may describe noise. Run `tl.potency_population` "
            "to search finer populations, or pass cluster= to choose one explicitly."
        )
        if if_not_significant == "raise":
            raise ValueError(msg)
        warnings.warn(msg, NotSignificantWarning, stacklevel=3)
    if if_not_significant != "ignore" and association.get("lot_dominated", False):
        msg = (
            f"the potency cluster {name!r} of adata.uns[{key!r}] is lot-dominated (one or a "
            "few lots make up its cells; see get.lot_specificity): what is built on it may "
            "describe a donor, not potency. Correct lot effects (pp.integrate) and cluster "
            "again, or pass cluster= to choose one explicitly."
        )
        warnings.warn(msg, LotDominatedWarning, stacklevel=3)
    return name


def _significant(association: Mapping, name: str) -> bool:
    """Whether the stored association's potency cluster has FDR <= its alpha.

    Results written before ``'found'`` was stored are judged from their table.
    """
    if "found" in association:
        return bool(association["found"])
    table = association.get("table")
    if not isinstance(table, pd.DataFrame) or name not in table.index or "fdr" not in table:
        return True  # nothing to judge by: do not cry wolf
    alpha = float(association["params"].get("alpha", 0.05))
    fdr = float(table.loc[name, "fdr"])
    return bool(fdr == fdr and fdr <= alpha)


def potency_column(adata: AnnData, *, association_key: str | None = None) -> str:
    """The obs column of lot-level potency that :func:`mscpotency.tl.potency_association` used."""
    return str(params(adata, POTENCY_ASSOCIATION, association_key)["potency"])
