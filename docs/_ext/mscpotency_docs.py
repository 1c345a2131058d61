"""Write the generated parts of the docs source before Sphinx reads it.

- ``api/index.rst``: the API reference, one ``autosummary`` table per question, listed
  from the package itself (``mscpotency.<namespace>.__all__`` and each object's
  ``__module__``), so a renamed or new function shows up without editing the docs;
- ``tutorials/*.ipynb``: copies of the executed notebooks in ``notebooks/``, rendered by
  myst-nb as they are (``nb_execution_mode = "off"``).

Both folders are rebuilt on every run and are not committed (``.gitignore``).
"""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path

from sphinx.application import Sphinx
from sphinx.config import Config
from sphinx.util import logging

logger = logging.getLogger(__name__)

DOCS = Path(__file__).resolve().parent.parent
ROOT = DOCS.parent

#: The questions tools answer: private module of ``mscpotency.tl`` -> section title.
QUESTIONS = {
    "_population": "Which cells carry potency",
    "_mapping": "New lots: mapping and validation",
    "_robustness": "How sure",
    "_decisions": "Decisions about new lots",
}

#: Plot modules of ``mscpotency.pl`` -> the question they draw (others: general plots).
PLOT_QUESTIONS = {
    "_qc": "_population",
    "_embedding": "_population",
    "_composition": "_population",
    "_association": "_population",
    "_markers": "_population",
    "_mapping": "_mapping",
    "_robustness": "_robustness",
    "_decisions": "_decisions",
}

#: (namespace, title, introduction, how its names are grouped) in page order.
SECTIONS = [
    ("io", "Reading data", "Per-lot single-cell data, lot tables and frozen references.", None),
    ("pp", "Preprocessing", "Pool lots, join lot-level assays, QC, normalise and reduce.", None),
    (
        "tl",
        "Tools",
        "Tools on pooled cells (cells x genes, ``obs['lot']``), by the question they answer. "
        "Each writes ``adata.uns[key_added]``, read back by the ``get`` function of the "
        "same name and drawn by the ``pl`` function of the same name.",
        QUESTIONS,
    ),
    (
        "get",
        "Results as tables",
        "Every stored result as a tidy DataFrame; ``kind`` picks a table where a result "
        "holds several.",
        QUESTIONS,
    ),
    (
        "pl",
        "Plots",
        "One figure per question; every plot takes ``ax``, ``show`` and ``return_fig``.",
        {module: QUESTIONS[question] for module, question in PLOT_QUESTIONS.items()},
    ),
    ("datasets", "Example data", "Simulated MSC lots with known truth.", None),
]

#: The bulk namespace: lines x genes panels, its own data model.
BULK_SECTIONS = [
    ("bulk.pp", "Inputs: probes, promoters, qRT-PCR", None),
    ("bulk.tl", "Tools", None),
    ("bulk.get", "Results as tables", None),
    ("bulk.pl", "Plots", None),
    ("bulk.datasets", "Example data", None),
]


def _public(namespace: str) -> list[tuple[str, object]]:
    """The names a namespace exports, with their objects."""
    module = importlib.import_module(".".join(filter(None, ("mscpotency", namespace))))
    names = getattr(module, "__all__", None)
    if names is None:
        logger.warning("mscpotency.%s has no __all__; the API page cannot list it", namespace)
        return []
    return [(name, getattr(module, name)) for name in names]


def _group_of(namespace: str, obj: object, groups: dict[str, str]) -> str | None:
    """The group title of an object, from the private module it is defined in."""
    parts = getattr(obj, "__module__", "").split(".")
    depth = len(f"mscpotency.{namespace}".split("."))
    private = parts[depth] if len(parts) > depth else ""
    return groups.get(private)


def _table(namespace: str, names: list[str]) -> list[str]:
    """An autosummary table (with stub pages) of ``names`` in ``mscpotency.<namespace>``."""
    prefix = f"{namespace}." if namespace else ""
    lines = [".. autosummary::", "   :toctree: generated", "   :nosignatures:", ""]
    lines += [f"   {prefix}{name}" for name in sorted(names, key=str.lower)]
    return [*lines, ""]


def _heading(title: str, mark: str) -> list[str]:
    return [title, mark * len(title), ""]


def _section(namespace: str, title: str, intro: str | None, groups, mark: str) -> list[str]:
    """One namespace: a heading, its introduction and one table per group."""
    lines = _heading(f"{title}: ``{namespace}``", mark)
    if intro:
        lines += [intro, ""]
    entries = _public(namespace)
    if not groups:
        return lines + _table(namespace, [name for name, _ in entries])
    grouped: dict[str | None, list[str]] = {}
    for name, obj in entries:
        group = _group_of(namespace, obj, groups)
        if group is None and namespace == "tl":
            logger.warning(
                "mscpotency.tl.%s is defined in %s, which has no question in docs/_ext/"
                "mscpotency_docs.py (QUESTIONS)",
                name,
                getattr(obj, "__module__", "?"),
            )
        grouped.setdefault(group, []).append(name)
    if None in grouped:
        lines += _table(namespace, grouped.pop(None))
    sub = "^" if mark == "-" else '"'
    for group in dict.fromkeys(groups.values()):
        if group in grouped:
            lines += _heading(group, sub) + _table(namespace, grouped[group])
    return lines


def api_page() -> str:
    """The text of ``api/index.rst``."""
    lines = [
        *_heading("API reference", "="),
        "``import mscpotency as mp``: ``mp.io`` reads, ``mp.pp`` prepares, ``mp.tl`` computes "
        "and stores results in ``adata.uns``, ``mp.get`` returns them as tables and ``mp.pl`` "
        "draws them. Bulk lines x genes panels have their own namespace, ``mp.bulk``.",
        "",
        ".. currentmodule:: mscpotency",
        "",
    ]
    for namespace, title, intro, groups in SECTIONS:
        lines += _section(namespace, title, intro, groups, "-")
    lines += _heading("Bulk lines x genes panels: ``bulk``", "-")
    lines += [
        "iPS lines (or any lines) x genes, probes or promoters; the outcome is a line-level "
        "score such as differentiation propensity.",
        "",
    ]
    for namespace, title, intro in BULK_SECTIONS:
        lines += _section(namespace, title, intro, None, "^")
    # mscpotency.__all__ beyond the subpackages: the workflow, and replay (provenance)
    top = [name for name, obj in _public("") if callable(obj) and name != "replay"]
    if top:
        lines += _heading("Workflow: lots on disk to a report", "-")
        lines += [
            "What ``mscpotency analyse`` and ``mscpotency map`` run, callable from a notebook.",
            "",
        ]
        lines += _table("", top)
    lines += _heading("Provenance", "-")
    lines += ["Every ``pp``/``tl`` call is logged in ``adata.uns['mscpotency']['log']``.", ""]
    lines += _table("", ["replay"])
    return "\n".join(lines)


def write_api(docs: Path = DOCS) -> None:
    """Rewrite ``api/`` (the page and, through autosummary, its stub pages)."""
    target = docs / "api"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir()
    (target / "index.rst").write_text(api_page())


def copy_tutorials(docs: Path = DOCS, notebooks: Path = ROOT / "notebooks") -> None:
    """Copy the executed notebooks into ``tutorials/`` (replacing stale copies)."""
    target = docs / "tutorials"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir()
    found = sorted(notebooks.glob("*.ipynb"))
    if not found:
        logger.warning("no executed notebooks in %s: run `make notebooks`", notebooks)
    for notebook in found:
        shutil.copy2(notebook, target / notebook.name)


def _generate(app: Sphinx, config: Config) -> None:
    write_api(Path(app.srcdir))
    copy_tutorials(Path(app.srcdir))


def setup(app: Sphinx) -> dict[str, object]:
    """Register the generation step (before autosummary and the reader run)."""
    app.connect("config-inited", _generate)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
