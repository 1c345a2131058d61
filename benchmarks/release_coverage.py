"""Coverage of the release check's intervals on held-out lots, over several seeds.

For each seed a study-shaped simulation (11 reference bone-marrow lots, 4 held-out
bone-marrow lots; ``--cells`` cells per lot, the tiny preset's genes) goes through the same
code as ``mscpotency analyse`` and ``mscpotency map`` (in memory). For every held-out lot:

- is its measured potency (the assay, with its noise: what a new measurement would give)
  inside the 90% prediction interval of the model fitted on the reference lots?
- is its true share of potency cells (``true_potency_cell``) inside its 95% share interval?

Nominal: 90% and 95%. Writes ``benchmarks/results/release_coverage.csv`` (one row per lot)
and ``.md`` (the coverage, with a binomial 95% interval of each coverage).

    nice -n 10 .venv/bin/python benchmarks/release_coverage.py --seeds 10 --cells 300
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import pandas as pd
from scipy import stats

import mscpotency as mp
from mscpotency._workflow import AnalysisSettings, release_lots
from mscpotency._workflow._analyse import analyse_adata
from mscpotency._workflow._run import save_reference

HERE = Path(__file__).resolve().parent


def one_seed(seed: int, cells: int) -> pd.DataFrame:
    """The release table of the held-out lots of one simulated study, with the truth."""
    config = mp.datasets.tiny_config(
        sets=(
            mp.datasets.SetSpec("BM-train", 11, "BM", "BM"),
            mp.datasets.SetSpec("BM-test", 4, "BM", "BM", first_lot=12),
        ),
        n_cells_per_lot=cells,
    )
    study = mp.datasets.simulate_lots(config, random_state=seed)
    settings = AnalysisSettings(
        n_clusters=8, random_state=seed, n_permutations=999, search=False, stability=False
    )
    reference = study[study.obs["set"] == "BM-train"].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        analyse_adata(reference, settings)
        with tempfile.TemporaryDirectory() as folder:
            path = save_reference(reference, settings, folder)
            query, _ = release_lots(
                study[study.obs["set"] == "BM-test"].copy(), path, settings=settings
            )
    table = query.uns["workflow"]["release"].copy()
    truth = study.obs.groupby("lot", observed=True)["true_potency_cell"].mean()
    table["true_share"] = truth.reindex(table.index.astype(str)).to_numpy()
    table["share_covered"] = (table["share_low"] <= table["true_share"]) & (
        table["true_share"] <= table["share_high"]
    )
    table["potency_covered"] = (table["prediction_low"] <= table["measured_potency"]) & (
        table["measured_potency"] <= table["prediction_high"]
    )
    table["seed"] = seed
    table["fdr"] = mp.get.potency_association(reference)["fdr"].iloc[0]
    return table


def coverage_line(name: str, hits: pd.Series, nominal: float) -> str:
    k, n = int(hits.sum()), len(hits)
    ci = stats.binomtest(k, n).proportion_ci(0.95, method="exact")
    return f"| {name} | {nominal:.0%} | {k}/{n} = {k / n:.1%} | {ci.low:.1%} - {ci.high:.1%} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--cells", type=int, default=300)
    args = parser.parse_args()
    start = time.perf_counter()
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    tables = []
    for seed in range(args.seeds):  # written after every seed: a long run keeps its lots
        tables.append(one_seed(seed, args.cells))
        rows = pd.concat(tables)
        rows.to_csv(results / "release_coverage.csv")
        print(f"seed {seed}: {time.perf_counter() - start:.0f} s", flush=True)
    lines = [
        f"# Release check: interval coverage on held-out lots ({args.seeds} seeds x 4 lots, "
        f"{args.cells} cells per lot, 11 reference lots)",
        "",
        "| interval | nominal | covered | 95% CI of the coverage |",
        "|---|---|---|---|",
        coverage_line(
            "predicted potency (jackknife+), measured potency", rows["potency_covered"], 0.9
        ),
        coverage_line(
            "potency-like share, true share of potency cells", rows["share_covered"], 0.95
        ),
        "",
        f"Verdicts: {rows['verdict'].value_counts().to_dict()}; total "
        f"{time.perf_counter() - start:.0f} s.",
        "Command: `nice -n 10 python benchmarks/release_coverage.py "
        f"--seeds {args.seeds} --cells {args.cells}`",
    ]
    (results / "release_coverage.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
