"""Profile: where one ``tl.map_to_reference`` call spends its time, warm and cold.

Usage (from the repository root)::

    .venv/bin/python benchmarks/mapping_profile.py                         # study preset, fast + anchors
    .venv/bin/python benchmarks/mapping_profile.py --save before.npz       # also keep every result
    .venv/bin/python benchmarks/mapping_profile.py --compare before.npz after.npz
    .venv/bin/python benchmarks/mapping_profile.py --cprofile              # + cProfile, top functions
    .venv/bin/python benchmarks/mapping_profile.py --methods anchors --kinds warm   # one pass only

What it does
------------
1. Builds the study reference once (``mscpotency.datasets.study()``, seed 0; the 11 BM-train
   lots after ``pp.qc``, ``pp.preprocess``, ``tl.cluster(n_clusters=8)``,
   ``tl.lot_fractions``, ``tl.potency_association``, then ``tl.freeze_reference``) and the
   held-out query sets (BM-test, AD, UC after ``pp.qc``), and keeps them in ``--cache``
   so later runs (before/after a change) map exactly the same data.
2. Per backend: one untimed call (compilation), every in-process cache cleared, then per
   set, in three passes: **sequence** (the sets mapped one after the other, as a study
   does: the temperature calibration is fitted by the first and reused; the novelty
   calibration depends on each set's depth and on how its lot size splits the held-out
   reference lots), **warm** (the set mapped once
   just before: every calibration cached) and **cold** (every in-process cache cleared
   first: the temperature and novelty calibrations are fitted again).
3. Per-step wall times: the mapping's steps are wrapped in timers (inclusive seconds; a
   step called inside another counts in both). ``--cprofile`` adds cProfile's top
   functions by cumulative time for one warm and one cold call (compiled kernels run in
   threads; their time shows in the Python function that waits for them).
4. ``--save`` keeps every written result (labels, scores, probabilities, novelty p-values,
   prediction sets, mapping scores, UMAP placement, temperature) of the warm and sequence
   calls, and ``--compare`` checks two such files are identical (floats to 1e-10; a file
   with no results compares as different).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import functools
import io
import os
import pstats
import time
from pathlib import Path

import anndata as ad
import numpy as np

import mscpotency as mp
from mscpotency.tl._mapping import (
    _anchors,
    _api,
    _cache,
    _fast,
    _novelty,
    _pca_backends,
    _scoring,
)

SETS = ("BM-test", "AD", "UC")
TOLERANCE = 1e-10

#: (module, attribute, step name): the steps timed; ``knn`` is timed where each caller uses it.
STEPS = [
    (_api, "harmonise", "harmonise"),
    (_api, "_prepare", "prepare"),
    (_scoring, "mapping_score", "mapping score"),
    (_scoring, "own_axes", "own axes"),
    (_scoring, "_smoothed_within_groups", "smoothing"),
    (_pca_backends.ProjectionOptions, "transfer", "transfer"),
    (_pca_backends, "held_out_calibration", "temperature calibration"),
    (_anchors, "filter_space", "filter space"),
    (_anchors, "find_transfer_anchors", "find anchors"),
    (_anchors, "transfer_data", "transfer data"),
    (_fast, "fast_transfer", "kNN votes"),
    (_api, "_novelty_scores", "novelty scores"),
    (_api, "_cell_flags", "cell flags"),
    (_novelty, "held_out_mapping_scores", "novelty calibration"),
    (_api, "_umap_placement", "UMAP placement"),
    (_api, "_write_cells", "write results"),
]
#: Modules whose ``knn`` calls are timed.
KNN_USERS = [_anchors, _fast, _scoring, _api]


class StepTimer:
    """Wraps the mapping's steps in wall-clock timers.

    Seconds are kept per path of nested steps (``transfer > find anchors > kNN``), in the
    order the steps first started.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._stack: list[str] = []
        self._originals: list[tuple[object, str, object]] = []

    def _wrap(self, owner: object, attribute: str, name: str) -> None:
        original = (
            owner.__dict__[attribute] if isinstance(owner, type) else getattr(owner, attribute)
        )

        @functools.wraps(original)
        def timed(*args, **kwargs):
            self._stack.append(name)
            path = " > ".join(self._stack)
            self.seconds.setdefault(path, 0.0)
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[path] += time.perf_counter() - start
                self._stack.pop()

        self._originals.append((owner, attribute, original))
        setattr(owner, attribute, timed)

    def __enter__(self) -> StepTimer:
        for owner, attribute, name in STEPS:
            self._wrap(owner, attribute, name)
        for module in KNN_USERS:
            self._wrap(module, "knn", "kNN")
        return self

    def __exit__(self, *exc) -> None:
        for owner, attribute, original in reversed(self._originals):
            setattr(owner, attribute, original)
        self._originals.clear()

    def reset(self) -> None:
        self.seconds.clear()


def clear_caches() -> None:
    """Forget every per-reference calibration fitted in this process."""
    _cache.clear_caches()


def prepare(cache: Path, preset: str, seed: int) -> tuple[ad.AnnData, dict[str, ad.AnnData]]:
    """The frozen reference and the query sets (built once, then read from ``cache``)."""
    cache = cache / f"{preset}_{seed}"
    names = {"reference": cache / "reference.h5ad"} | {s: cache / f"{s}.h5ad" for s in SETS}
    if not all(path.exists() for path in names.values()):
        cache.mkdir(parents=True, exist_ok=True)
        adata = getattr(mp.datasets, preset)(random_state=seed)
        reference = adata[adata.obs["set"] == "BM-train"].copy()
        mp.pp.qc(reference)
        mp.pp.preprocess(reference)
        mp.tl.cluster(reference, n_clusters=8)
        mp.tl.lot_fractions(reference)
        mp.tl.potency_association(reference, "vegf")
        mp.tl.freeze_reference(reference).write_h5ad(names["reference"])
        for name in SETS:
            query = adata[adata.obs["set"] == name].copy()
            mp.pp.qc(query)
            query.write_h5ad(names[name])
    reference = ad.read_h5ad(names["reference"])
    return reference, {name: ad.read_h5ad(names[name]) for name in SETS}


def result_arrays(mapped: ad.AnnData, key: str = "predicted") -> dict[str, np.ndarray]:
    """Everything a mapping wrote per cell, as arrays."""
    obs, obsm = mapped.obs, mapped.obsm
    arrays = {
        "labels": obs[key].astype(str).to_numpy(),
        "score": obs[f"{key}_score"].to_numpy(),
        "novelty_p": obs[f"{key}_novelty_p"].to_numpy(),
        "novel": obs[f"{key}_novel"].to_numpy(),
        "mapping_score": obs[f"{key}_mapping_score"].to_numpy(),
        "probabilities": obsm[f"{key}_probabilities"].to_numpy(),
        "temperature": np.array([mapped.uns[key]["calibration"]["temperature"]]),
    }
    if f"{key}_set" in obsm:
        arrays["set"] = obsm[f"{key}_set"].to_numpy()
    if f"{key}_umap" in obsm:
        arrays["umap"] = np.asarray(obsm[f"{key}_umap"])
    return arrays


def compare(before: Path, after: Path) -> bool:
    """Whether two ``--save`` files hold the same results (floats to :data:`TOLERANCE`)."""
    a, b = np.load(before, allow_pickle=True), np.load(after, allow_pickle=True)
    if not a.files or not b.files:
        print("nothing to compare: a file holds no results (run a warm or sequence pass)")
        return False
    same = sorted(a.files) == sorted(b.files)
    if not same:
        print("different fields:", sorted(set(a.files) ^ set(b.files)))
    for name in sorted(set(a.files) & set(b.files)):
        x, y = a[name], b[name]
        if x.shape != y.shape:
            ok, gap = False, "shape"
        elif x.dtype.kind in "fc":
            gap = float(np.nanmax(np.abs(x - y))) if x.size else 0.0
            ok = bool(np.array_equal(np.isnan(x), np.isnan(y))) and gap <= TOLERANCE
        else:
            ok, gap = bool(np.array_equal(x, y)), int((x != y).sum())
        same &= ok
        print(f"{'same' if ok else 'DIFFERENT':9s} {name:34s} {gap}")
    print("identical" if same else "NOT identical")
    return same


def timed_call(query, reference, method: str, timer: StepTimer, profile: bool):
    """One mapping call: its seconds, its step times and (optionally) its cProfile table."""
    timer.reset()
    profiler = cProfile.Profile() if profile else None
    start, cpu_start = time.perf_counter(), time.process_time()
    with profiler if profiler is not None else contextlib.nullcontext():
        mapped = mp.tl.map_to_reference(query, reference, method=method, copy=True)
    seconds = time.perf_counter() - start
    timer.seconds["CPU seconds (all threads)"] = time.process_time() - cpu_start
    table = ""
    if profiler is not None:
        stream = io.StringIO()
        pstats.Stats(profiler, stream=stream).sort_stats("cumulative").print_stats(30)
        table = stream.getvalue()
    return mapped, seconds, dict(timer.seconds), table


def run(
    reference,
    queries,
    methods,
    profile: bool,
    save: Path | None,
    kinds=("sequence", "warm", "cold"),
) -> None:
    """Per backend and set: the call in sequence, a warm repeat, a cold call; step tables."""
    saved = {}
    with StepTimer() as timer:
        for method in methods:
            first = next(iter(queries.values()))
            mp.tl.map_to_reference(first, reference, method=method, copy=True)  # untimed
            clear_caches()
            steps_by_call = {}
            for kind in kinds:
                for name, query in queries.items():
                    if kind == "cold":
                        clear_caches()
                    if kind == "warm":  # the set itself mapped just before: every cache filled
                        mp.tl.map_to_reference(query, reference, method=method, copy=True)
                    mapped, seconds, steps, table = timed_call(
                        query, reference, method, timer, profile and name == SETS[0]
                    )
                    steps_by_call[f"{kind} {name}"] = (seconds, steps)
                    cpu = steps["CPU seconds (all threads)"]
                    print(
                        f"{method:8s} {kind:8s} {name:8s} {query.n_obs:6d} cells {seconds:6.2f} s "
                        f"(CPU {cpu:6.2f} s, load {os.getloadavg()[0]:.1f})",
                        flush=True,
                    )
                    if table and kind != "sequence":
                        print(table)
                    if kind in ("warm", "sequence"):  # a cold call repeats a warm one's results
                        prefix = f"{method}/{name}" if kind == "warm" else f"{kind}/{method}/{name}"
                        saved |= {f"{prefix}/{k}": v for k, v in result_arrays(mapped).items()}
            print_steps(method, steps_by_call)
    if save is not None:
        np.savez(save, **saved)


def print_steps(method: str, steps_by_call: dict[str, tuple[float, dict[str, float]]]) -> None:
    """A markdown table: step x call, seconds (a step's time includes the steps below it)."""
    calls = list(steps_by_call)
    print(f"\n`{method}`, seconds per step (a step includes the steps nested in it, `a > b`)\n")
    print("| step | " + " | ".join(calls) + " |")
    print("|---|" + "---|" * len(calls))
    print(
        "| **whole call** | " + " | ".join(f"**{steps_by_call[c][0]:.2f}**" for c in calls) + " |"
    )
    paths = list(dict.fromkeys(path for c in calls for path in steps_by_call[c][1]))
    for path in paths:
        values = [steps_by_call[c][1].get(path) for c in calls]
        if max(v or 0.0 for v in values) >= 0.005:
            cells = " | ".join("" if v is None else f"{v:.2f}" for v in values)
            print(f"| {path} | {cells} |")
    print(flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", default="fast,anchors")
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--kinds", default="sequence,warm,cold", help="which passes to run")
    parser.add_argument("--preset", choices=("study", "tiny"), default="study")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/mscpotency_mapping_profile"))
    parser.add_argument("--cprofile", action="store_true")
    parser.add_argument("--save", type=Path)
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"))
    args = parser.parse_args(argv)
    if args.compare:
        raise SystemExit(0 if compare(*args.compare) else 1)
    reference, queries = prepare(args.cache, args.preset, args.seed)
    queries = {name: queries[name] for name in args.sets.split(",")}
    print(f"mscpotency {mp.__version__} from {Path(mp.__file__).parent}; load {os.getloadavg()}")
    print(
        f"reference {reference.n_obs} cells; "
        + ", ".join(f"{k} {v.n_obs}" for k, v in queries.items())
    )
    kinds = tuple(args.kinds.split(","))
    run(reference, queries, args.methods.split(","), args.cprofile, args.save, kinds)
    print(f"load average at the end {os.getloadavg()}")


if __name__ == "__main__":
    main()
