"""Would setting lot splits aside *before* the test give the search more power? (issue 12)

``tl.potency_population`` checks for a lot split only the candidates it is about to name,
and takes their p against the permutation maxima over all candidates, splits included
(valid, conservative). A filter that reads no potency may instead remove candidates from
the observed maximum and from the null alike, and the test stays exact with fewer
candidates. This measures what that would buy: per seed, every candidate's cohesion lift
(``_lot_split_lift``, the check the search runs), and the selection-aware p of the best
candidate over all candidates and over the candidates that are not splits (lift > 0.4),
on the same 9,999 permutations' seed.

    .venv/bin/python benchmarks/lot_split_filter.py --preset hard --seeds 11 --cache /tmp/ppm

``--cache`` holds the reference analyses of ``potency_population.py`` (``<preset><seed>.h5ad``,
``<preset>_null<seed>.h5ad`` with ``--null``). Writes ``results/lot_split_filter.{csv,md}``
(rows appended).
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
    lifts = []
    for i in range(len(candidates.source)):
        cells = _search._members(candidates, i, adata.n_obs)
        lift, _ = _search._lot_split_lift(adata, cells, inputs, 0)
        lifts.append(lift)
    lifts = np.array(lifts)
    seconds = time.perf_counter() - start
    row = {"data": path.stem, "n_candidates": lifts.size, "seconds_lifts": round(seconds, 1)}
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
        name = f"{args.preset}{'_null' if args.null else ''}{seed}.h5ad"
        rows.append(one_seed(args.cache / name))
        print(rows[-1], flush=True)
        table = pd.DataFrame(rows)
        table.to_csv(csv, index=False)
        text = (
            "# Lot splits set aside before the test: the selection-aware p over all "
            "candidates and over those that are not splits\n\n" + table.to_markdown(index=False)
        )
        write_results(RESULTS / "lot_split_filter.md", text, keep_notes=True)


if __name__ == "__main__":
    main()
