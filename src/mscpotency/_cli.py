"""Command line: ``mscpotency reproduce --out DIR``."""

from __future__ import annotations

import argparse
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``mscpotency`` console command."""
    parser = argparse.ArgumentParser(prog="mscpotency", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    reproduce = commands.add_parser(
        "reproduce",
        help="run the full reference analysis on the built-in study-shaped dataset",
        description="Simulate the study-shaped dataset, run the reference analysis and write "
        "figures (PNG), tables (CSV) and a report (report.html, report.md) to --out.",
    )
    reproduce.add_argument("--out", default="results", help="output folder (default: results)")
    reproduce.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    reproduce.add_argument(
        "--clusters", type=int, default=8, help="target number of clusters (default: 8)"
    )
    reproduce.add_argument(
        "--preset",
        choices=["study", "tiny"],
        default="study",
        help="built-in dataset: the study-shaped one (default) or a tiny one for a smoke run",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.command == "reproduce":
        from ._reproduce import reproduce as run

        report = run(args.out, random_state=args.seed, n_clusters=args.clusters, preset=args.preset)
        print(f"report: {report}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
