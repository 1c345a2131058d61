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


def write_table(
    stem: Path,
    table,
    *,
    title: str,
    command: str,
    summary: str,
    remark: str = "",
    keep_notes: bool = False,
) -> None:
    """Write ``<stem>.csv`` (the table) and ``<stem>.md``: title, command, summary, table.

    The markdown names the command that made it ("the docstring says what each column
    is", then ``remark``), a summary and the table; ``keep_notes`` as :func:`write_results`.
    """
    table.to_csv(f"{stem}.csv", index=False)
    generated = (
        f"# {title}\n\nCommand: `{command}` (the docstring says what each column is).{remark}"
        "\n\n" + summary.rstrip("\n") + "\n\n" + table.to_markdown(index=False)
    )
    write_results(Path(f"{stem}.md"), generated, keep_notes=keep_notes)
