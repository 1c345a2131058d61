"""Command line: mscpotency analyse, mscpotency map and mscpotency reproduce.

Arguments are checked before any work starts; a user error (a missing file, an unreadable
lot, a bad setting) ends with exit status 2 and one line on stderr
(``mscpotency <command>: error: ...``), never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import NoReturn

from ._settings import settings

#: Exit status of a user error (as argparse's own).
USAGE_ERROR = 2


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line: the problem and where to read more."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _version() -> str:
    from . import __version__

    return f"mscpotency {__version__}"


def _add_reproduce(commands) -> argparse.ArgumentParser:
    reproduce = commands.add_parser(
        "reproduce",
        help="the demo: analyse + map on the built-in study-shaped dataset",
        description="Simulate the study-shaped dataset and run the same code path as "
        "`analyse` and `map` (reference lots, then held-out and other-tissue lots), plus "
        "the bulk iPS-line analysis; writes report.html, figures, tables and the reference.",
    )
    reproduce.add_argument("--out", default="results", help="output folder (default: results)")
    reproduce.add_argument(
        "--seed", type=int, default=0, help="random seed, a non-negative integer (default: 0)"
    )
    reproduce.add_argument(
        "--clusters", type=int, default=8, help="target number of clusters, at least 2 (default: 8)"
    )
    reproduce.add_argument(
        "--preset",
        choices=["study", "tiny"],
        default="study",
        help="built-in dataset: the study-shaped one (default) or a tiny one for a smoke run",
    )
    return reproduce


def _add_analyse(commands) -> argparse.ArgumentParser:
    analyse = commands.add_parser(
        "analyse",
        help="the reference analysis of your own lots -> report, tables, frozen reference",
        description="Read a folder of lots (10x mtx folders, 10x .h5, Cell Ranger <lot>/outs/, "
        ".h5ad, CSV/TSV count matrices) and a lot table, find the population whose share "
        "tracks the potency column, and write report.html, figures/, tables/, analysed.h5ad, "
        "reference.h5ad (frozen) and reference_lots.h5ad (the lot model `map` needs) to --out. "
        "Options override the --config file; every resolved setting is printed in the report.",
    )
    analyse.add_argument("--lots", required=True, help="folder with one entry per lot")
    analyse.add_argument("--lot-table", required=True, help="CSV/TSV/Excel table, one row per lot")
    analyse.add_argument("--potency", help="potency column of the lot table (default: vegf)")
    analyse.add_argument("--out", required=True, help="output folder (created)")
    analyse.add_argument("--config", help="settings file (TOML); options given here win")
    group = analyse.add_mutually_exclusive_group()
    group.add_argument("--clusters", type=int, help="target number of clusters (default: 8)")
    group.add_argument(
        "--resolution", type=float, help="fixed Leiden resolution instead of --clusters"
    )
    analyse.add_argument("--seed", type=int, help="random seed (default: 0)")
    analyse.add_argument("--title", help="report title (default: named after the inputs)")
    analyse.add_argument("--lot-key", help="lot column of the lot table (default: lot)")
    analyse.add_argument(
        "--min-genes", type=int, help="QC: fewest genes per cell (fixed thresholds; default: 200)"
    )
    analyse.add_argument(
        "--max-pct-mito",
        type=float,
        help="QC: highest mitochondrial %% (fixed thresholds; default: 20)",
    )
    analyse.add_argument(
        "--no-mito-filter",
        action="store_true",
        help="QC: the data hold no mitochondrial genes (a targeted panel): no mitochondrial "
        "threshold, no warning that none was found",
    )
    analyse.add_argument(
        "--mito-prefix", help="QC: prefix of mitochondrial gene symbols (default: MT-)"
    )
    analyse.add_argument(
        "--symbol-key",
        help="QC: var column of gene symbols when the gene names are ids (e.g. feature_name)",
    )
    analyse.add_argument(
        "--qc-thresholds",
        choices=["fixed", "mad"],
        help="QC thresholds: fixed, or per lot, 3 MADs from its median (default: fixed)",
    )
    analyse.add_argument("--min-cells-per-lot", type=int, help="smallest lot kept (default: 50)")
    analyse.add_argument("--batch-key", help="obs column of a lot effect for gene selection")
    analyse.add_argument(
        "--integrate",
        choices=("none", "harmony", "scvi"),
        help="correct lot effects before clustering (Harmony or the scVI latent space, "
        "lots as batches; default none)",
    )
    analyse.add_argument(
        "--integrate-covariate",
        help="obs column of a technical covariate corrected with the lots (e.g. site)",
    )
    analyse.add_argument(
        "--integrate-theta",
        type=float,
        help="Harmony's diversity penalty for the lots (default: 4)",
    )
    analyse.add_argument(
        "--no-search", action="store_true", help="skip the potency-population search"
    )
    analyse.add_argument(
        "--no-stability",
        action="store_true",
        help="skip the stability check across resolutions and cell subsamples",
    )
    return analyse


def _add_map(commands) -> argparse.ArgumentParser:
    mapping = commands.add_parser(
        "map",
        help="release check of new lots against a frozen reference -> verdict per lot",
        description="Map new lots onto the frozen reference written by `analyse` and give each "
        "lot its potency-like share (with a confidence interval carrying label uncertainty), "
        "its predicted potency (prediction interval, extrapolation flag), comparability with "
        "the reference lots, mapping QC and a verdict with the rule that produced it.",
    )
    mapping.add_argument("--reference", required=True, help="frozen reference (reference.h5ad)")
    mapping.add_argument("--lot-model", help="lot model (default: <reference>_lots.h5ad beside it)")
    mapping.add_argument("--expected-hash", help="refuse any reference whose content hash differs")
    mapping.add_argument("--lots", required=True, help="folder with one entry per new lot")
    mapping.add_argument("--lot-table", help="table of the new lots (measured potency: validation)")
    mapping.add_argument("--out", required=True, help="output folder (created)")
    mapping.add_argument(
        "--config",
        help="settings file (TOML) changing the reference's stored settings it names; "
        "options given here win",
    )
    mapping.add_argument("--title", help="report title (default: named after the inputs)")
    mapping.add_argument(
        "--min-share", type=float, help="verdict: minimum potency-like share (default: none)"
    )
    mapping.add_argument(
        "--min-potency", type=float, help="verdict: minimum predicted potency (default: none)"
    )
    mapping.add_argument(
        "--max-off-reference",
        type=float,
        help="verdict: highest off-reference share (default: 0.25)",
    )
    mapping.add_argument(
        "--share-level", type=float, help="confidence level of the share (default: 0.95)"
    )
    return mapping


def _parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The command's parser, and the parser of each subcommand by name."""
    parser = _Parser(prog="mscpotency", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=_version())
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    return parser, {
        "analyse": _add_analyse(commands),
        "map": _add_map(commands),
        "reproduce": _add_reproduce(commands),
    }


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


def _check_inputs(args: argparse.Namespace, names: tuple[str, ...]) -> str | None:
    """The first input path among ``names`` that does not exist, or ``None``."""
    for name in names:
        value = getattr(args, name.replace("-", "_"), None)
        if value is not None and not Path(value).exists():
            return f"--{name} {value!r} does not exist"
    return _check_out(args.out)


_ANALYSE_OPTIONS = {
    "potency": "potency",
    "clusters": "n_clusters",
    "resolution": "resolution",
    "seed": "random_state",
    "title": "title",
    "lot_key": "lot_key",
    "min_genes": "min_genes",
    "max_pct_mito": "max_pct_mito",
    "mito_prefix": "mito_prefix",
    "symbol_key": "symbol_key",
    "qc_thresholds": "qc_thresholds",
    "min_cells_per_lot": "min_cells_per_lot",
    "batch_key": "batch_key",
    "integrate": "integrate",
    "integrate_covariate": "integrate_covariate",
    "integrate_theta": "integrate_theta",
}
_MAP_OPTIONS = {
    "title": "title",
    "min_share": "min_share",
    "min_potency": "min_potency",
    "max_off_reference": "max_off_reference",
    "share_level": "share_level",
}


def _overrides(args: argparse.Namespace, options: dict[str, str]) -> dict:
    """Settings given on the command line (``None``: not given)."""
    given = {field: getattr(args, option) for option, field in options.items()}
    if getattr(args, "no_search", False):
        given["search"] = False
    if getattr(args, "no_stability", False):
        given["stability"] = False
    if getattr(args, "no_mito_filter", False):
        given["mito_filter"] = False
    return {k: v for k, v in given.items() if v is not None}


def _settings(args: argparse.Namespace, options: dict[str, str]):
    """The resolved settings: defaults, then --config, then options (ValueError: a bad one)."""
    import dataclasses

    from ._workflow import AnalysisSettings, load_settings

    overrides = _overrides(args, options)
    settings = load_settings(args.config) if args.config else AnalysisSettings()
    settings = settings.replace(**overrides)
    if getattr(args, "resolution", None) is not None:  # a fixed resolution, no target k
        settings = dataclasses.replace(settings, n_clusters=None)
    return settings, overrides


def _run_analyse(args: argparse.Namespace) -> Path:
    from ._workflow import write_analysis
    from ._workflow._analyse import analyse_adata, read_inputs

    settings, _ = _settings(args, _ANALYSE_OPTIONS)
    adata = read_inputs(args.lots, args.lot_table, settings)
    analyse_adata(adata, settings)
    return write_analysis(adata, settings, args.out)


def _run_map(args: argparse.Namespace) -> Path:
    from ._workflow import release_lots, write_release
    from ._workflow._settings import settings_file_values

    _, overrides = _settings(args, _MAP_OPTIONS)
    # the settings the reference was analysed with, changed only where the file or the
    # command line says so (a --config with one key had replaced every stored setting)
    from_file = settings_file_values(args.config) if args.config else {}
    query, model = release_lots(
        args.lots,
        args.reference,
        lot_model=args.lot_model,
        lot_table=args.lot_table,
        settings=None,
        overrides={**from_file, **overrides},
        expected_hash=args.expected_hash,
    )
    return write_release(query, model, args.out)


#: Errors that mean the user's input is wrong (a file, a table, a setting), not a bug.
_USER_ERRORS = (ValueError, KeyError, FileNotFoundError)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``mscpotency`` console command."""
    parser, commands = _parser()
    args = parser.parse_args(argv)
    checks = {
        "reproduce": _check_reproduce,
        "analyse": lambda a: _check_inputs(a, ("lots", "lot-table", "config")),
        "map": lambda a: _check_inputs(
            a, ("reference", "lot-model", "lots", "lot-table", "config")
        ),
    }
    problem = checks[args.command](args)
    if problem is not None:
        commands[args.command].error(problem)
    settings.verbosity = "info"  # one line per step, through the package's own handler
    if args.command == "reproduce":
        from ._reproduce import reproduce as run

        report = run(args.out, random_state=args.seed, n_clusters=args.clusters, preset=args.preset)
    else:
        try:
            report = (_run_analyse if args.command == "analyse" else _run_map)(args)
        except _USER_ERRORS as error:
            if os.environ.get("MSCPOTENCY_DEBUG"):
                raise
            message = error.args[0] if error.args else str(error)
            commands[args.command].error(f"{message} (set MSCPOTENCY_DEBUG=1 for the traceback)")
    print(f"report: {report}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
