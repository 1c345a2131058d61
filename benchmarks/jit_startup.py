"""Benchmark: numba compilation at the start of a process, empty cache vs warm cache.

Usage (from the repository root)::

    .venv/bin/python benchmarks/jit_startup.py              # ~2 min on 2 cores
    .venv/bin/python benchmarks/jit_startup.py --warm 2     # two warm processes after the cold one

What it does
------------
Runs the tiny preset's analysis in fresh Python processes that share one numba cache
directory, empty at the start:

1. ``cold``: the first process, every cached kernel compiles and is written to the cache;
2. ``warm``: the next process(es), the same directory, now full.

Each process imports ``mscpotency``, simulates the tiny preset (``datasets.tiny()``) and
runs, on its 8 training lots, ``pp.qc`` -> ``pp.preprocess`` -> ``tl.cluster`` ->
``tl.lot_fractions`` -> ``tl.potency_association("vegf")`` -> ``tl.potency_markers`` ->
``tl.freeze_reference``, then ``pp.qc`` and ``tl.map_to_reference`` (default backend) on
the other lots. It times the first call of each step (``perf_counter``) and then runs the
whole sequence a second time in the same process on fresh copies: every function is
compiled by then, so ``first - again`` is what the first call pays once per process
(compilation, loading compiled code from the cache, lazy imports). A numba event listener
adds up the time spent compiling (outermost ``numba:compile`` events: cache misses only;
loading from the cache is not an event) and names the functions compiled.

Scenarios (``--scenarios``):

``numba_cache_dir``
    ``NUMBA_CACHE_DIR`` set to a new empty temporary directory (the user's setting, which
    wins over the package's default).
``per_user``
    ``NUMBA_CACHE_DIR`` unset and ``HOME`` / ``XDG_CACHE_HOME`` pointed at a new empty
    temporary directory: the package's default per-user cache
    (``$XDG_CACHE_HOME/mscpotency/numba``).

Writes ``benchmarks/results/jit_startup.md`` (per scenario and process: import time,
first-call and repeat time per step, compile time, the functions compiled in the warm
process) and ``jit_startup.csv`` (one row per scenario x process x step).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
STEPS = (
    "qc",
    "preprocess",
    "cluster",
    "lot_fractions",
    "potency_association",
    "potency_markers",
    "freeze_reference",
    "query_qc",
    "map_to_reference",
)
SCENARIOS = ("numba_cache_dir", "per_user")


# --------------------------------------------------------------------------------------
# the child process: one analysis, timed
# --------------------------------------------------------------------------------------
def _compile_timer():
    """A numba listener that adds up the outermost ``numba:compile`` events."""
    import numba.core.event as ev

    class CompileTimer(ev.Listener):
        def __init__(self) -> None:
            self.depth = 0
            self.start = 0.0
            self.seconds = 0.0
            self.functions: list[str] = []

        def on_start(self, event) -> None:
            if self.depth == 0:
                self.start = time.perf_counter()
            self.depth += 1
            dispatcher = event.data["dispatcher"]
            func = dispatcher.py_func
            self.functions.append(f"{func.__module__}.{func.__qualname__}")

        def on_end(self, event) -> None:
            self.depth -= 1
            if self.depth == 0:
                self.seconds += time.perf_counter() - self.start

    return CompileTimer()


def _analysis(mp, adata, timer) -> dict[str, dict]:
    train = adata[adata.obs["set"] == "BM-train"].copy()
    query = adata[adata.obs["set"] != "BM-train"].copy()
    calls = {
        "qc": lambda: mp.pp.qc(train),
        "preprocess": lambda: mp.pp.preprocess(train),
        "cluster": lambda: mp.tl.cluster(train),
        "lot_fractions": lambda: mp.tl.lot_fractions(train),
        "potency_association": lambda: mp.tl.potency_association(train, "vegf"),
        "potency_markers": lambda: mp.tl.potency_markers(train),
        "freeze_reference": lambda: mp.tl.freeze_reference(train),
        "query_qc": lambda: mp.pp.qc(query),
    }
    out: dict[str, dict] = {}
    frozen = None
    for step in STEPS:
        seconds0, n0 = timer.seconds, len(timer.functions)
        start = time.perf_counter()
        if step == "map_to_reference":
            mp.tl.map_to_reference(query, frozen)
        elif step == "freeze_reference":
            frozen = calls[step]()
        else:
            calls[step]()
        out[step] = {
            "seconds": time.perf_counter() - start,
            "compile_seconds": timer.seconds - seconds0,
            "compiled": sorted(set(timer.functions[n0:])),
        }
    return out


def child() -> None:
    """Run in a fresh process: import, simulate, analyse twice; print JSON."""
    start = time.perf_counter()
    import numba.core.event as ev

    timer = _compile_timer()
    ev.register("numba:compile", timer)  # before any mscpotency module is imported
    import mscpotency as mp

    import_seconds = time.perf_counter() - start
    import numba

    adata = mp.datasets.tiny()
    first = _analysis(mp, adata, timer)
    again = _analysis(mp, adata, timer)
    print(
        json.dumps(
            {
                "import_seconds": import_seconds,
                "cache_dir": numba.config.CACHE_DIR,
                "first": first,
                "again": again,
            }
        )
    )


# --------------------------------------------------------------------------------------
# the parent: scenarios, processes, report
# --------------------------------------------------------------------------------------
def _environment(scenario: str, tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    if scenario == "numba_cache_dir":
        env["NUMBA_CACHE_DIR"] = str(tmp / "numba-cache")
    else:
        env["HOME"] = str(tmp / "home")
        env["XDG_CACHE_HOME"] = str(tmp / "xdg-cache")
    return env


def _files_under(path: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(path)) if path.exists() else 0


def run_scenario(scenario: str, n_warm: int) -> list[dict]:
    runs = []
    with tempfile.TemporaryDirectory(prefix="mscpotency-jit-") as tmp_name:
        tmp = Path(tmp_name)
        env = _environment(scenario, tmp)
        for index in range(1 + n_warm):
            label = "cold" if index == 0 else f"warm {index}"
            wall = time.perf_counter()
            result = subprocess.run(
                [sys.executable, __file__, "--child"],
                env=env,
                cwd=ROOT,
                capture_output=True,
                text=True,
                check=False,
            )
            wall = time.perf_counter() - wall
            if result.returncode != 0:
                sys.stderr.write(result.stderr)
                msg = f"{scenario} / {label}: the child process failed"
                raise RuntimeError(msg)
            record = json.loads(result.stdout.strip().splitlines()[-1])
            record.update(scenario=scenario, process=label, wall_seconds=wall)
            record["cache_files"] = _files_under(tmp)
            record["cache_dir"] = record["cache_dir"].replace(str(tmp), "$TMP")
            runs.append(record)
            print(_summary_line(record), flush=True)
    return runs


def _totals(record: dict) -> dict[str, float]:
    first = sum(s["seconds"] for s in record["first"].values())
    again = sum(s["seconds"] for s in record["again"].values())
    compiled = sum(s["compile_seconds"] for s in record["first"].values())
    return {"first": first, "again": again, "overhead": first - again, "compile": compiled}


def _summary_line(record: dict) -> str:
    t = _totals(record)
    return (
        f"{record['scenario']:>16} {record['process']:>7}: import {record['import_seconds']:.1f} s,"
        f" first calls {t['first']:.1f} s, again {t['again']:.1f} s,"
        f" first-call overhead {t['overhead']:.1f} s (compiling {t['compile']:.1f} s),"
        f" process {record['wall_seconds']:.1f} s, {record['cache_files']} cache files"
    )


def write_csv(runs: list[dict], path: Path) -> None:
    lines = ["scenario,process,step,first_seconds,again_seconds,compile_seconds,n_compiled"]
    for r in runs:
        for step in STEPS:
            f, a = r["first"][step], r["again"][step]
            lines.append(
                f"{r['scenario']},{r['process']},{step},{f['seconds']:.3f},"
                f"{a['seconds']:.3f},{f['compile_seconds']:.3f},{len(f['compiled'])}"
            )
        lines.append(f"{r['scenario']},{r['process']},import,{r['import_seconds']:.3f},,,")
    path.write_text("\n".join(lines) + "\n")


def write_markdown(runs: list[dict], path: Path, command: str) -> None:
    import numba

    out = [
        "# JIT start-up: empty vs warm numba cache",
        "",
        f"Command: `{command}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores (shared), Python "
        f"{platform.python_version()}, numba {numba.__version__}; "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "",
        "Each row is one fresh process running the tiny preset's analysis (8 reference lots,",
        "7 query lots); processes of a scenario share one cache directory, empty before the",
        "cold one. *first*: the first call of each step; *again*: the same steps repeated in",
        "the same process (nothing left to compile); *overhead* = first - again, what a",
        "process pays once (compiling, loading compiled code, lazy imports); *compiling*:",
        "time inside numba's compiler (cache misses).",
        "",
        "| scenario | process | import s | first calls s | again s | overhead s "
        "| compiling s | functions compiled | cache files |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        t = _totals(r)
        n = sum(len(s["compiled"]) for s in r["first"].values())
        out.append(
            f"| {r['scenario']} | {r['process']} | {r['import_seconds']:.1f} | {t['first']:.1f} "
            f"| {t['again']:.1f} | {t['overhead']:.1f} | {t['compile']:.1f} | {n} "
            f"| {r['cache_files']} |"
        )
    out += ["", "## Per step (first call / again, seconds; compiling in brackets)", ""]
    header = "| step | " + " | ".join(f"{r['scenario']} {r['process']}" for r in runs) + " |"
    out += [header, "|---" * (len(runs) + 1) + "|"]
    for step in STEPS:
        cells = [
            f"{r['first'][step]['seconds']:.2f} / {r['again'][step]['seconds']:.2f} "
            f"({r['first'][step]['compile_seconds']:.2f})"
            for r in runs
        ]
        out.append(f"| {step} | " + " | ".join(cells) + " |")
    out += _still_compiled(runs)
    path.write_text("\n".join(out) + "\n")


def _still_compiled(runs: list[dict]) -> list[str]:
    """The functions a warm process still compiles (not cached, or cached per process)."""
    out = ["", "## Compiled again in every warm process", ""]
    for r in runs:
        if r["process"] == "cold":
            continue
        names = sorted({f for s in r["first"].values() for f in s["compiled"]})
        out.append(f"- {r['scenario']} / {r['process']}: " + (", ".join(names) or "none"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--warm", type=int, default=1, help="warm processes after the cold one")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--out", type=Path, default=HERE / "results" / "jit_startup.md")
    args = parser.parse_args()
    if args.child:
        child()
        return
    runs = []
    for scenario in args.scenarios.split(","):
        runs += run_scenario(scenario, args.warm)
    command = "python benchmarks/jit_startup.py " + " ".join(sys.argv[1:])
    write_markdown(runs, args.out, command.strip())
    write_csv(runs, args.out.with_suffix(".csv"))
    print(f"wrote {args.out} and {args.out.with_suffix('.csv')}")


if __name__ == "__main__":
    main()
