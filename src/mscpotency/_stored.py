"""Reading stored results: the one place that turns a missing result into "run X first".

Accessors (``get``), plots (``pl``) and tools that build on an earlier result read
``adata.uns`` only through these helpers, which take a :class:`~mscpotency._registry.Result`
and so know which tool to name when something is missing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

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


def potency_cluster(
    adata: AnnData, *, cluster: str | None = None, association_key: str | None = None
) -> str:
    """The cluster a tool should work on: ``cluster`` if given, else the potency cluster.

    The potency cluster is the one :func:`mscpotency.tl.potency_association` named (stored
    under ``association_key``).

    Raises
    ------
    KeyError
        When ``cluster`` is ``None`` and no potency association names a cluster.
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
    return str(name)


def potency_column(adata: AnnData, *, association_key: str | None = None) -> str:
    """The obs column of lot-level potency that :func:`mscpotency.tl.potency_association` used."""
    return str(params(adata, POTENCY_ASSOCIATION, association_key)["potency"])
