"""The glossary: one name per concept, and the one text that documents it.

Every public function that takes one of these parameters uses this name for it (checked by
``tests/test_package_structure.py``, which also rejects the synonyms in :data:`SYNONYMS`),
and is decorated with :func:`doc_params`, which writes the glossary's text into its
docstring. So a parameter is described once, here, and reads the same everywhere; a
docstring lists only the parameters that are the function's own.

Concepts
--------
lot
    One manufacturing lot or donor line; ``obs[lot_key]`` names each cell's lot. Lot-level
    statistics treat lots, not cells, as the replicates.
potency
    A lot-level assay (e.g. VEGF secreted under ischemia) in an obs column constant
    within lots. In :mod:`mscpotency.bulk` the line-level counterpart is the *outcome*
    (a differentiation-propensity score): lines are not lots and propensity is not potency.
cluster
    A label of ``obs[cluster_key]`` (a Leiden cluster, or a label transferred by mapping).
    The *potency cluster* is the cluster whose per-lot share tracks potency best
    (:func:`mscpotency.tl.potency_association`); tools that describe one cluster take
    ``cluster=None`` to mean it.
key / key_added
    ``key_added`` is where a tool writes (``adata.uns[key_added]``; for mapping also the
    prefix of its obs columns); ``key`` is where an accessor or a plot reads that result
    back; ``<result>_key`` (``fractions_key``, ``association_key`` ...) is where a tool
    reads an earlier tool's result.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from textwrap import dedent, indent
from typing import TypeVar

from . import _checks

F = TypeVar("F", bound=Callable)

#: Parameter name -> its one description (numpydoc text, without the name line).
GLOSSARY: dict[str, str] = {
    "adata": "Annotated data matrix: cells x genes (lines x genes in ``bulk``).",
    "lot_key": "obs column with the lot of each cell.",
    "set_key": "obs column with the study arm of each cell (``BM-train``, ``AD`` ...).",
    "cluster_key": "obs column with the cluster (or transferred label) of each cell.",
    "cluster": (
        "The cluster to work on, a label of ``obs[cluster_key]``; ``None``: the potency "
        "cluster that :func:`mscpotency.tl.potency_association` named."
    ),
    "potency": (
        "obs column with the lot-level potency assay (constant within lots); ``None``: the "
        "column the potency association used."
    ),
    "outcome": "obs column(s) with the line-level outcome (e.g. a propensity score).",
    "layer": (
        "Layer to read instead of ``X`` (``None``: ``X``); where raw counts are needed, the "
        "layer that holds them (the function says what it does when the layer is absent)."
    ),
    "use_rep": "obsm key of the representation to build neighbours on (e.g. ``'X_pca'``).",
    "fractions_key": "Key of the lot fractions in ``adata.uns`` (from ``tl.lot_fractions``).",
    "association_key": (
        "Key of the potency association in ``adata.uns`` (from ``tl.potency_association``)."
    ),
    "mapping_key": "Key of the mapping in ``adata.uns`` and prefix of its obs columns.",
    "key": "Key in ``adata.uns`` of the stored result to read (the producer's ``key_added``).",
    "key_added": "Key in ``adata.uns`` the result is written to.",
    "kind": "Which table of the stored result to return.",
    "copy": "Return a copy instead of writing in place.",
    "alternative": (
        "Direction of the test (the options are listed in the signature; ``'greater'``: the "
        "feature rises with the outcome or potency)."
    ),
    "alpha": (
        "Significance level: a result is called significant when its p-value is at most "
        "``alpha`` (its FDR, where the function says so)."
    ),
    "level": "Coverage of every interval returned (e.g. 0.95 for 95% intervals).",
    "method": "How to compute the result; the options are listed in the signature.",
    "n_permutations": "Number of random permutations where a p-value is not exact.",
    "n_bootstrap": "Number of bootstrap resamples of lots (0: no bootstrap interval).",
    "exact_max_n": "Largest number of lots for which p-values are exact (all n! orderings).",
    "random_state": "Seed of every random step; the same seed gives identical results.",
    "min_cells_per_lot": "Lots with fewer cells get a warning (their fractions are noisy).",
    "ax": "Axes to draw on; a new figure when ``None``.",
    "show": "Show the figure; ``None`` follows ``scanpy.settings.autoshow``.",
    "return_fig": "Return the Figure instead of the Axes.",
}

#: Names that mean a glossary concept and must not be used for a parameter
#: (synonym -> the glossary name). ``outcome`` is the bulk namespace's own concept.
SYNONYMS: dict[str, str] = {
    "lot_column": "lot_key",
    "label_key": "cluster_key",
    "potency_label": "cluster",
    "counts_layer": "layer",
    "fdr_level": "alpha",
    "ci_level": "level",
    "confidence": "level",
    "confidence_level": "level",
    "test": "alternative",
    "table": "kind",
    "which": "kind",
}

_PLACEHOLDER = re.compile(r"^(?P<indent>[ \t]*)\{(?P<name>[a-z_]+)\}[ \t]*$", re.MULTILINE)
_SECTION = re.compile(
    r"^(?P<indent>[ \t]*)(?P<title>[A-Z][A-Za-z ]+)\n(?P=indent)-{3,}[ \t]*$", re.MULTILINE
)


def doc_params(func: F) -> F:
    """Document ``func``'s glossary parameters with the glossary's text.

    Two ways, both checked at import time (an unknown name is an error):

    - a glossary parameter the Parameters section does not list is added with the
      glossary's text, in signature order; so most docstrings list only the parameters
      that are the function's own;
    - a ``{name}`` line stands for the glossary's text where a function adds a sentence of
      its own::

          random_state
              {random_state}
              The default reproduces the documented figures.

    It also makes every call check its arguments (:func:`mscpotency._checks.checked`:
    ``Literal`` options and numeric ranges), unless ``func`` checks them already (a
    ``@record`` tool).
    """
    if func.__doc__ is None:
        return _checks.checked(func)
    doc = dedent(func.__doc__) if func.__doc__.startswith("\n") else func.__doc__

    def fill(match: re.Match[str]) -> str:
        name = match.group("name")
        if name not in GLOSSARY:
            msg = f"{func.__qualname__}: no glossary entry {name!r} (mscpotency._docs.GLOSSARY)"
            raise KeyError(msg)
        return indent(GLOSSARY[name], match.group("indent"))

    names = list(inspect.signature(func).parameters)
    func.__doc__ = _with_glossary_entries(_PLACEHOLDER.sub(fill, doc), names)
    return _checks.checked(func)


def _with_glossary_entries(doc: str, names: list[str]) -> str:
    """Add the glossary parameters missing from the Parameters section, in signature order."""
    missing = [n for n in names if n in GLOSSARY]
    sections = list(_SECTION.finditer(doc))
    params = next((s for s in sections if s.group("title") == "Parameters"), None)
    if params is None:
        if not missing:
            return doc
        at, base = (
            (sections[0].start(), sections[0].group("indent")) if sections else (len(doc), "")
        )
        header = f"{base}Parameters\n{base}----------\n"
        doc = doc[:at] + header + ("\n" if sections else "") + doc[at:]
        sections = list(_SECTION.finditer(doc))
        params = next(s for s in sections if s.group("title") == "Parameters")
    base = params.group("indent")
    following = [s.start() for s in sections if s.start() > params.start()]
    end = following[0] if following else len(doc)
    body = doc[params.end() + 1 : end]
    trailing = "\n\n" if following else body[len(body.rstrip()) :]
    entries: dict[str, list[str]] = {}
    for line in body.rstrip().split("\n"):
        if line.startswith(base) and line[len(base) : len(base) + 1] not in (" ", "\t", ""):
            name = line.strip().split(" : ")[0].lstrip("*")
            entries[name] = [line]
        elif entries:
            entries[next(reversed(entries))].append(line)
    ordered = [n for n in names if n in entries or n in GLOSSARY]
    ordered += [n for n in entries if n not in ordered]
    lines = []
    for name in ordered:
        lines += entries.get(name) or [base + name, indent(GLOSSARY[name], base + "    ")]
    return doc[: params.end() + 1] + "\n".join(lines) + trailing + doc[end:]
