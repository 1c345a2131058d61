"""Lot splits set aside before the test: what it buys, and the shared views' lifts (issue 12).

A filter that reads no potency may remove candidates from the observed maximum and from
every permutation's maximum alike, and the max-statistic test stays exact with fewer
candidates. ``tl.potency_population`` does so with every candidate's lot-split lift read
from views shared by the candidates spanning the same fixed-k clusters
(``_lot_split_lifts``). This measures, per seed: every candidate's lift with a view built
for that candidate alone (``_lot_split_lift_alone``: the candidate and the cluster it is
compared with, the definition before the views were shared) and with the search's shared
views (how many candidates the two call a split differently, the largest difference, the
seconds of each), and the selection-aware p of the best candidate over all candidates and
over the candidates that are not splits (lift > 0.4), on the same 9,999 permutations'
seed.

    .venv/bin/python benchmarks/lot_split_filter.py --preset hard --seeds 11 --cache /tmp/ppm

``--cache`` holds the reference analyses of ``potency_population.py`` (``<preset><seed>.h5ad``,
``<preset>_null<seed>.h5ad`` with ``--null``). Writes ``results/lot_split_filter.{csv,md}``
(a row per data set, replaced when re-run).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from _results import write_results
from potency_population import _seeds  # the same --seeds syntax and cache layout

import mscpotency as mp
from mscpotency.tl._population import _search
from mscpotency.tl._population._association import lot_outcome
from mscpotency.tl._population._local import cohesion_lift, local_view

mp.settings.progress = False
RESULTS = Path(__file__).parent / "results"


def one_seed(path: Path) -> dict:
    """Lifts of every candidate, and the selection-aware p with and without the splits."""
    adata = ad.read_h5ad(path)
    inputs = _search._search_inputs(adata, "cluster", "lot")
    _, lots, _, _ = inputs
    outcome, _ = lot_outcome(adata, "vegf", pd.Index(lots.cat.categories), "lot")
    candidates = _search._search_candidates(
        adata,
        inputs,
        resolutions=_search.DEFAULT_RESOLUTIONS,
        sub_resolutions=_search.DEFAULT_SUB_RESOLUTIONS,
        n_graph_neighbours=2,
        local_representation=True,
        min_cells=max(10, int(np.ceil(0.02 * adata.n_obs))),
        seed=0,
    )
    shares = _search._lot_shares(candidates, lots, 0.02)
    y = outcome.to_numpy(dtype=float)
    start = time.perf_counter()
    lifts = np.array(
        [
            _lot_split_lift_alone(adata, _search._members(candidates, i, adata.n_obs), inputs)
            for i in range(len(candidates.source))
        ]
    )
    seconds = time.perf_counter() - start
    start = time.perf_counter()
    shared = _search._lot_split_lifts(adata, candidates, inputs, 0).lifts
    seconds_shared = time.perf_counter() - start
    row = {"data": path.stem, "n_candidates": lifts.size, "seconds_lifts": round(seconds, 1)}
    bar = _search.LOT_SPLIT_MAX_LIFT
    row["seconds_shared_views"] = round(seconds_shared, 1)
    row["n_called_differently"] = int(((lifts <= bar) != (shared <= bar)).sum())
    row["max_abs_difference"] = round(float(np.nanmax(np.abs(lifts - shared))), 3)
    cohesive = ~(lifts <= _search.LOT_SPLIT_MAX_LIFT)
    row["n_splits"] = int((~cohesive).sum())
    sizes = candidates.counts.sum(axis=1)
    for label, keep in (("all", np.ones(lifts.size, bool)), ("cohesive", cohesive)):
        search = _search._selection_aware_search(
            shares[keep], y, "greater", 9999, 0.03, np.random.default_rng(0), sizes=sizes[keep]
        )
        row[f"best_rho_{label}"] = round(search.best, 3)
        row[f"p_{label}"] = search.pvalue
        row[f"null_q95_{label}"] = round(float(np.quantile(search.null_max, 0.95)), 3)
    return row


def _lot_split_lift_alone(adata, cells: np.ndarray, inputs) -> float:
    """Cohesion lift of ``cells`` in a lot-corrected view of them and their comparison cluster."""
    base, lots, connectivities, cluster_params = inputs
    codes = np.asarray(base.codes, dtype=np.int64)
    parent = _search._comparison_cluster(codes, cells, connectivities)
    members = np.flatnonzero((codes == parent) | cells)
    lot_codes = np.asarray(lots.cat.codes, dtype=np.int64)[members]
    options = _search._local_options(adata, cluster_params, 0)
    view = local_view(adata.X, members, resolutions=(), lots=lot_codes, **options)
    return float("nan") if view is None else cohesion_lift(view, cells[members])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="hard", choices=["hard", "study"])
    parser.add_argument("--seeds", default="11")
    parser.add_argument("--null", action="store_true")
    parser.add_argument("--cache", type=Path, required=True)
    args = parser.parse_args()
    csv = RESULTS / "lot_split_filter.csv"
    rows = pd.read_csv(csv).to_dict("records") if csv.exists() else []
    for seed in _seeds(args.seeds):
        name = f"{args.preset}{'_null' if args.null else ''}{seed}"
        rows = [row for row in rows if row["data"] != name]  # a re-run replaces its row
        rows.append(one_seed(args.cache / f"{name}.h5ad"))
        print(rows[-1], flush=True)
        table = pd.DataFrame(rows)
        table.to_csv(csv, index=False)
        text = (
            "# Lot splits set aside before the test: the selection-aware p over all "
            "candidates and over those that are not splits, and the lifts from shared views\n\n"
            + table.to_markdown(index=False)
        )
        write_results(RESULTS / "lot_split_filter.md", text, keep_notes=True)


if __name__ == "__main__":
    main()
