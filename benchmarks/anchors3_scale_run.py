"""One cold ``anchors`` mapping at 10^5 x 10^5: steps, CPU, results, and the transfer's inputs.

Usage (from the repository root; SCRATCH kept by ``mapping_scale.py --keep-scratch``)::

    .venv/bin/python benchmarks/anchors3_scale_run.py SCRATCH OUT.npz [knn_method] [INPUTS.npz]

As ``mapspeed2_scale_steps.py`` (warm-up on the small reference, every mapping cache cleared,
one call timed step by step), then every ``obs`` column of the mapped query and its label
probabilities are saved to ``OUT.npz`` (``anchors3_score.py`` scores them). With
``INPUTS.npz``, the first ``find_transfer_anchors`` call on the full reference also saves its
inputs (reference and query embeddings, both filter spaces) for ``anchors3_transfer_knn.py``.
"""

import gc
import os
import resource
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np
from mapping_profile import StepTimer, print_steps

import mscpotency as mp
from mscpotency.tl._mapping import _anchors, _cache


def capture_inputs(path: str) -> None:
    """Wrap ``find_transfer_anchors`` to save the inputs of its first call on >50,000 cells."""
    original = _anchors.find_transfer_anchors
    saved = []

    def wrapped(reference_embedding, query_embedding, **kwargs):
        if not saved and reference_embedding.shape[0] > 50_000:
            saved.append(True)
            cells = np.arange(reference_embedding.shape[0])
            given = kwargs["reference_filter"]
            reference_filter = given(cells) if callable(given) else given
            np.savez(
                path,
                ref=reference_embedding,
                qry=query_embedding,
                ref_f=reference_filter,
                qry_f=kwargs["query_filter"],
            )
        return original(reference_embedding, query_embedding, **kwargs)

    _anchors.find_transfer_anchors = wrapped


def main() -> None:
    scratch, out = Path(sys.argv[1]), sys.argv[2]
    knn_method = sys.argv[3] if len(sys.argv) > 3 else "auto"
    if len(sys.argv) > 4:
        capture_inputs(sys.argv[4])
    query = ad.read_h5ad(scratch / "query.h5ad")
    reference = mp.io.read_reference(scratch / "frozen.h5ad")
    small = mp.io.read_reference(scratch / "frozen_small.h5ad")
    warm = ad.read_h5ad(scratch / "query_small.h5ad")
    mp.tl.map_to_reference(warm, small, method="anchors", copy=True, knn_method=knn_method)
    del small, warm
    _cache.clear_caches()
    gc.collect()
    with StepTimer() as timer:
        print("load before", os.getloadavg(), flush=True)
        start, cpu = time.perf_counter(), time.process_time()
        mp.tl.map_to_reference(query, reference, method="anchors", knn_method=knn_method)
        seconds = time.perf_counter() - start
        cpu = time.process_time() - cpu
        print(f"wall {seconds:.1f} cpu {cpu:.1f} load after {os.getloadavg()}", flush=True)
        steps = dict(timer.seconds)
    print_steps("anchors", {"cold 10^5": (seconds, steps)})
    print("maxrss GiB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
    save = {}
    for column in query.obs.columns:
        values = query.obs[column]
        textual = values.dtype.name in ("category", "object")
        save[column] = np.asarray(values.astype(str) if textual else values)
    for key, value in query.obsm.items():
        if key.startswith("predicted") and "probab" in key:
            save["obsm_" + key] = np.asarray(value)
    np.savez(out, **save)


if __name__ == "__main__":
    main()
