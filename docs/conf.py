"""Sphinx configuration of the mscpotency docs (``make docs``).

The API reference and the tutorials are generated at build time (``_ext/mscpotency_docs.py``):
the API pages from the package's ``__all__`` lists, grouped by the question each tool
answers, and the tutorials from the executed notebooks in ``notebooks/``, rendered by
myst-nb without running them. Nothing here reaches the network.
"""

from __future__ import annotations

import sys
from datetime import date
from importlib.metadata import version as _version
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))

project = "mscpotency"
author = "mscpotency developers"
copyright = f"{date.today().year}, {author}"
release = _version("mscpotency")
version = ".".join(release.split(".")[:2])

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "mscpotency_docs",
]

# .rst first: autosummary writes its stub pages with the first suffix
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
root_doc = "index"
exclude_patterns = ["_build", "_ext", "_templates", "Thumbs.db", ".DS_Store"]
templates_path = ["_templates"]

# --- API reference ---------------------------------------------------------------------
autosummary_generate = True
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented"
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
napoleon_use_param = True
napoleon_use_ivar = True

# --- notebooks and MyST ----------------------------------------------------------------
nb_execution_mode = "off"  # the notebooks in notebooks/ are already executed
nb_merge_streams = True
myst_enable_extensions = ["colon_fence", "dollarmath", "deflist"]
myst_heading_anchors = 3

# --- output ----------------------------------------------------------------------------
try:
    import furo  # noqa: F401

    html_theme = "furo"
except ImportError:  # pragma: no cover - the docs extra installs furo
    html_theme = "alabaster"
html_title = f"mscpotency {release}"
html_static_path: list[str] = []  # no local assets
# no intersphinx: the build must not depend on the network
