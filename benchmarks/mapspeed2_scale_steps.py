"""Per-step wall times, CPU seconds and peak RSS of one cold mapping call at 10^5 x 10^5 (issue 19).

Usage (from the repository root; SCRATCH kept by ``mapping_scale.py --keep-scratch``)::

    .venv/bin/python benchmarks/mapspeed2_scale_steps.py SCRATCH anchors benchmarks

Warm-up on the small reference (compilation), every mapping cache cleared, then one
``tl.map_to_reference`` call timed with ``mapping_profile.StepTimer``; an RSS sampler (20 ms)
records the peak and the step running at it.
"""

import gc
import os
import resource
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, sys.argv[3] if len(sys.argv) > 3 else "benchmarks")
import anndata as ad
from mapping_profile import StepTimer, print_steps

import mscpotency as mp
from mscpotency.tl._mapping import _cache


def rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096


def main() -> None:
    scratch, method = Path(sys.argv[1]), sys.argv[2]
    query = ad.read_h5ad(scratch / "query.h5ad")
    reference = mp.io.read_reference(scratch / "frozen.h5ad")
    small = mp.io.read_reference(scratch / "frozen_small.h5ad")
    warm = ad.read_h5ad(scratch / "query_small.h5ad")
    mp.tl.map_to_reference(warm, small, method=method, copy=True)
    del small, warm
    _cache.clear_caches()
    gc.collect()
    peak = {"rss": 0, "at": ""}
    base = rss()
    stop = threading.Event()
    with StepTimer() as timer:

        def sample() -> None:
            while not stop.is_set():
                value = rss()
                if value > peak["rss"]:
                    peak.update(rss=value, at=" > ".join(timer._stack))
                time.sleep(0.02)

        threading.Thread(target=sample, daemon=True).start()
        print("load before", os.getloadavg(), flush=True)
        start, cpu = time.perf_counter(), time.process_time()
        mp.tl.map_to_reference(query, reference, method=method)
        seconds = time.perf_counter() - start
        print(f"wall {seconds} cpu {time.process_time() - cpu} load after {os.getloadavg()}")
        steps = dict(timer.seconds)
        stop.set()
    print(
        f"RSS before the call {base / 2**30:.2f} GiB; peak {peak['rss'] / 2**30:.2f} GiB "
        f"(+{(peak['rss'] - base) / 2**30:.2f}) during: {peak['at']}"
    )
    print_steps(method, {"cold 10^5": (seconds, steps)})
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print("maxrss GiB (whole process: data + call)", maxrss)


if __name__ == "__main__":
    main()
