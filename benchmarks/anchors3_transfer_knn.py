"""Anchors + TransferData at 10^5 x 10^5 with exact and approximate neighbours, side by side.

Usage (from the repository root; INPUTS.npz from ``anchors3_scale_run.py``)::

    .venv/bin/python benchmarks/anchors3_transfer_knn.py SCRATCH INPUTS.npz auto exact
    .venv/bin/python benchmarks/anchors3_transfer_knn.py SCRATCH INPUTS.npz --recall

Per ``knn_method``: wall and CPU seconds of ``find_transfer_anchors`` + ``transfer_data``,
the anchors, and the labels' potency-like F1 and accuracy against the simulator's truth
(``mapping_vs_seurat.true_labels``); for two methods, their label agreement and the share of
anchor pairs they share. ``--recall``: recall@k of the approximate search against the exact
one on 2,000 sampled cells, for the cross search (k = 30) and the anchor filter (k = 200),
at several probed shares.
"""

import sys
import time

import anndata as ad
import numpy as np
import pandas as pd
from mapping_vs_seurat import true_labels

from mscpotency.tl._mapping import _neighbors
from mscpotency.tl._mapping._anchors import find_transfer_anchors, l2_normalise, transfer_data


def obs_only(path: str) -> ad.AnnData:
    backed = ad.read_h5ad(path, backed="r")
    obs = backed.obs.copy()
    backed.file.close()
    return ad.AnnData(obs=obs)


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    return float(
        np.mean([np.intersect1d(a, b).size / b.size for a, b in zip(found, exact, strict=True)])
    )


def recalls(inputs) -> None:
    ref, qry = l2_normalise(inputs["ref"]), l2_normalise(inputs["qry"])
    rng = np.random.default_rng(1)
    cells = np.sort(rng.choice(qry.shape[0], 2000, replace=False))
    refs = np.sort(rng.choice(ref.shape[0], 2000, replace=False))
    searches = {
        "cross k=30": (ref, qry[cells], 30),
        "filter k=200": (inputs["qry_f"], inputs["ref_f"][refs], 200),
    }
    exact = {name: _neighbors.knn(*s[:2], s[2], method="exact")[0] for name, s in searches.items()}
    for share in (0.1, 0.15, 0.2):
        _neighbors._PROBE_SHARE = share
        found = {
            name: recall(_neighbors.knn(*s[:2], s[2], method="approximate")[0], exact[name])
            for name, s in searches.items()
        }
        print(f"probed share {share}: recall {found}", flush=True)


def compare(scratch: str, inputs, methods: list[str]) -> None:
    frozen = obs_only(scratch + "/frozen.h5ad")
    truth = true_labels(obs_only(scratch + "/reference.h5ad"), obs_only(scratch + "/query.h5ad"))
    categories = frozen.obs["cluster"].astype("category").cat.categories
    codes = pd.Categorical(frozen.obs["cluster"].astype(str), categories=categories).codes
    potency, out = "CL5", {}
    for method in methods:
        start, cpu = time.perf_counter(), time.process_time()
        anchors = find_transfer_anchors(
            inputs["ref"],
            inputs["qry"],
            reference_filter=inputs["ref_f"],
            query_filter=inputs["qry_f"],
            knn_method=method,
        )
        probabilities = transfer_data(
            inputs["qry"], anchors, codes, len(categories), knn_method=method
        )
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        labels = np.asarray(categories)[probabilities.argmax(axis=1)]
        called, true = labels == potency, truth == potency
        f1 = 2 * (called & true).sum() / max(called.sum() + true.sum(), 1)
        out[method] = (labels, anchors)
        print(
            f"{method}: wall {wall:.1f} s cpu {cpu:.1f} s; anchors {anchors.reference.size} "
            f"(mnn {anchors.n_mnn}); F1 potency-like {f1:.4f} accuracy {(labels == truth).mean():.4f}",
            flush=True,
        )
    if len(out) == 2:
        (one, first), (two, second) = out.values()
        pairs_one = set(zip(first.reference.tolist(), first.query.tolist(), strict=True))
        pairs_two = set(zip(second.reference.tolist(), second.query.tolist(), strict=True))
        shared = len(pairs_one & pairs_two) / len(pairs_one | pairs_two)
        print(f"label agreement {(one == two).mean():.6f}; anchor pairs shared {shared:.4f}")


if __name__ == "__main__":
    inputs = np.load(sys.argv[2])
    if sys.argv[3] == "--recall":
        recalls(inputs)
    else:
        compare(sys.argv[1], inputs, sys.argv[3:])
