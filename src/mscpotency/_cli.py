"""Command line: ``mscpotency reproduce --out DIR``.

Arguments are checked before any work starts; a user error ends with exit status 2 and one
line on stderr (``mscpotency: error: ...``), never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import NoReturn

#: Exit status of a user error (as argparse's own).
USAGE_ERROR = 2


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line: the problem and where to read more."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _version() -> str:
    from . import __version__

    return f"mscpotency {__version__}"


def _parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The command's parser, and the parser of each subcommand by name."""
    parser = _Parser(prog="mscpotency", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=_version())
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    reproduce = commands.add_parser(
        "reproduce",
        help="run the full reference analysis on the built-in study-shaped dataset",
        description="Simulate the study-shaped dataset, run the reference analysis and write "
        "figures (PNG), tables (CSV) and a report (report.html, report.md) to --out.",
    )
    reproduce.add_argument("--out", default="results", help="output folder (default: results)")
    reproduce.add_argument(
        "--seed", type=int, default=0, help="random seed, a non-negative integer (default: 0)"
    )
    reproduce.add_argument(
        "--clusters",
        type=int,
        default=8,
        help="target number of clusters, at least 2 (default: 8)",
    )
    reproduce.add_argument(
        "--preset",
        choices=["study", "tiny"],
        default="study",
        help="built-in dataset: the study-shaped one (default) or a tiny one for a smoke run",
    )
    return parser, {"reproduce": reproduce}


def _check_out(out: str) -> str | None:
    """Why ``out`` cannot be the output folder (``None``: it can), creating nothing."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        return f"--out {out!r} is a file, not a folder: name a folder (it is created)"
    existing = next((p for p in [path, *path.parents] if p.exists()), Path("."))
    if not existing.is_dir():
        return f"--out {out!r} lies under the file {str(existing)!r}: name a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"--out {out!r}: the folder {str(existing)!r} is not writable"
    return None


def _check_reproduce(args: argparse.Namespace) -> str | None:
    """The first problem with the ``reproduce`` arguments, or ``None``."""
    if args.clusters < 2:
        return (
            f"--clusters must be at least 2 (a potency cluster needs others), got {args.clusters}"
        )
    if args.seed < 0:
        return f"--seed must be a non-negative integer, got {args.seed}"
    return _check_out(args.out)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``mscpotency`` console command."""
    parser, commands = _parser()
    args = parser.parse_args(argv)
    if args.command == "reproduce":
        problem = _check_reproduce(args)
        if problem is not None:
            commands["reproduce"].error(problem)
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        from ._reproduce import reproduce as run

        report = run(args.out, random_state=args.seed, n_clusters=args.clusters, preset=args.preset)
        print(f"report: {report}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
