"""Execute every tutorial (tutorials/*.py, jupytext percent format) into notebooks/*.ipynb.

Run with ``make notebooks``; the executed notebooks keep their figures and tables.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import jupytext
import nbclient

ROOT = Path(__file__).resolve().parent.parent
# tqdm warns in every kernel without ipywidgets, with the installing machine's path: noise
# in a published notebook, not a finding (the kernel inherits this environment)
os.environ.setdefault("PYTHONWARNINGS", "ignore:IProgress not found")
# progress bars are for people watching a run, not for a published notebook's stderr
os.environ["MSCPOTENCY_PROGRESS"] = "0"


def build(tutorial: Path, out_dir: Path) -> Path:
    """Execute one tutorial and write the notebook with its outputs."""
    notebook = jupytext.read(tutorial)
    nbclient.NotebookClient(
        notebook,
        timeout=1200,
        kernel_name="python3",
        resources={"metadata": {"path": str(out_dir)}},
    ).execute()
    target = out_dir / f"{tutorial.stem}.ipynb"
    jupytext.write(notebook, target, fmt="ipynb")
    return target


def main(names: list[str]) -> int:
    """Build the named tutorials (stems), or all of them."""
    out_dir = ROOT / "notebooks"
    out_dir.mkdir(exist_ok=True)
    tutorials = sorted((ROOT / "tutorials").glob("*.py"))
    if names:
        tutorials = [t for t in tutorials if t.stem in names]
    for tutorial in tutorials:
        print(f"executing {tutorial.name} ...", flush=True)
        print(f"wrote {build(tutorial, out_dir).relative_to(ROOT)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
