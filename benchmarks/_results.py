"""Writing a results file whose generated part (summary and table) is followed by notes written by hand."""

from __future__ import annotations

from pathlib import Path


def notes_of(path: Path) -> str:
    """What follows the last table row of a results file (its hand-written notes), or ``""``."""
    if not path.exists():
        return ""
    lines = path.read_text().splitlines()
    rows = [i for i, line in enumerate(lines) if line.startswith("|")]
    if not rows:
        return ""
    return "\n".join(lines[rows[-1] + 1 :]).strip("\n")


def write_results(path: Path, generated: str, *, keep_notes: bool) -> None:
    """Write ``generated``; with ``keep_notes`` (rows appended to a file) the old notes follow it.

    Without it the notes of the file replaced are dropped (they described other rows), and
    how many lines were dropped is printed.
    """
    notes = notes_of(path)
    if notes and not keep_notes:
        print(f"{path.name}: {len(notes.splitlines())} lines of notes dropped (a fresh run)")
    text = generated.rstrip("\n") + "\n"
    if notes and keep_notes:
        text += "\n" + notes + "\n"
    path.write_text(text)
