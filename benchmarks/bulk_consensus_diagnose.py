"""Why are the planted SALL3-, PF4- and ROR2-like markers missed? One row per seed and marker.

For every seed of ``bulk.datasets.ips_lines_hard`` (15,000 genes) the lab's inputs go
through the package calls of ``benchmarks/bulk_consensus.py`` up to ``tl.rank_association``;
then, with the package's own kernels (``bulk.tl._combined``, no permutations), every gene's
combined statistic ``|T|`` for the marker's rule. Per marker: whether each platform
measures it (an array gene needs an annotated probe), each platform x outcome rho (signed
by the rule's pattern), each platform's Stouffer score ``S_p``, its rank among all genes by
``|T|`` (1 = first), and whether it passes ``combine="all_significant"`` (every cell in the
pattern's sign with p < 0.05); beside it the ``|T|`` of the gene ranked ``--top``, the
rank the gene would have if the mean ``S_p`` of the platforms that measure it were taken
at face value (no one-platform calibration: for a gene one platform lacks, the most any
missing-platform rule could give), and for rules over several outcomes the correlation
of the first outcome with the others among the training lines.

Usage: ``python benchmarks/bulk_consensus_diagnose.py [--seeds 10] [--first-seed 0]
[--genes 15000] [--top 40] [--correlation spearman|pearson|winsorized] [--agreement weakest|mean]``
writes ``benchmarks/results/bulk_consensus_diagnosis.md`` (other options or first seeds:
``bulk_consensus_diagnosis_<correlation>_<agreement>_seeds<first>-<last>.md``).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

import mscpotency as mp
from mscpotency.bulk.tl import _combined as C

sys.path.insert(0, str(Path(__file__).parent))
import bulk_consensus as bc
from bulk_consensus_fdr import training_platforms

B = mp.bulk
RESULTS = Path(__file__).parent / "results"


def one_seed(seed: int, n_genes: int, options: dict, top: int = 40) -> list[dict]:
    correlation = options["correlation"]
    _, train, tables, outcomes, frame, platforms = training_platforms(seed, n_genes, correlation)
    n = len(frame)
    scores = C.all_scores(platforms, C.standardized(frame.to_numpy(dtype=float), correlation), n)
    rows = []
    for gene, rule in bc.FLAGSHIPS.items():
        pattern = bc.RULES[rule]
        where = C.rule_cells(pattern, list(train), platforms, outcomes, options["agreement"])
        statistic, cell_z = C.rule_statistic(scores, where)
        i = where.entities.get_loc(gene)
        rank = int((np.abs(statistic) > np.abs(statistic[i])).sum()) + 1
        row = {"seed": seed, "marker": gene, "rule": rule, "rank": rank, "T": abs(statistic[i])}
        row[f"T of rank {top}"] = np.sort(np.abs(statistic))[::-1][top - 1]
        for j, (p, o, _) in enumerate(where.cells):
            row[f"rho {p}:{outcomes[o]}"] = cell_z[i, j] / np.sqrt(n - 1)  # signed by pattern
        for p in train:
            cells = [j for j, c in enumerate(where.cells) if c[0] == p]
            row[f"measured {p}"] = bool(np.isfinite(cell_z[i, cells]).all())
            row[f"S {p}"] = cell_z[i, cells].sum() / np.sqrt(len(cells))
        measured = [row[f"S {p}"] for p in train if row[f"measured {p}"]]
        # the rank its measured platforms' mean S would have with no one-platform calibration
        face = abs(np.mean(measured)) if measured else 0.0
        row["rank uncalibrated"] = int((np.abs(statistic) > face).sum()) + 1
        if len(pattern) > 1:  # how collinear the rule's outcomes are in this seed's lines
            first = next(iter(pattern))
            for other in list(pattern)[1:]:
                row[f"corr {first}:{other}"] = frame[first].corr(frame[other])
        row["all_significant"] = _passes_all(tables, gene, pattern)
        rows.append(row)
    return rows


def _passes_all(tables: dict, gene: str, pattern: dict) -> bool:
    signs = []
    for table in tables.values():
        for outcome, sign in pattern.items():
            hit = table[(table["feature"] == gene) & (table["outcome"].astype(str) == outcome)]
            if hit.empty or hit["pvalue"].iloc[0] >= 0.05:
                return False
            signs.append(np.sign(hit["rho"].iloc[0]) * sign)
    return len(set(signs)) == 1


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--genes", type=int, default=15000)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument(
        "--correlation", choices=["spearman", "pearson", "winsorized"], default="spearman"
    )
    parser.add_argument("--agreement", choices=["weakest", "mean"], default="weakest")
    args = parser.parse_args()
    options = {"correlation": args.correlation, "agreement": args.agreement}
    default = args.correlation == "spearman" and args.agreement == "weakest"
    tag = "" if default else f"_{args.correlation}_{args.agreement}"
    tag += f"_seeds{args.first_seed}-{args.first_seed + args.seeds - 1}" if args.first_seed else ""
    mp.settings.verbosity = 0
    rows = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # unannotated probes, constant genes
            rows += one_seed(seed, args.genes, options, args.top)
        print(f"seed {seed} done", flush=True)
    table = pd.DataFrame(rows)
    lines = [
        "# Why are planted markers missed? (harder iPS preset)",
        "",
        f"`python benchmarks/bulk_consensus_diagnose.py --seeds {args.seeds} --first-seed "
        f"{args.first_seed} --genes {args.genes} --top {args.top} --correlation "
        f"{args.correlation} --agreement {args.agreement}`. rho signed by the rule's pattern (the marker's true "
        "direction is +); `S`: the platform's Stouffer score over the rule's outcomes; rank by "
        "the combined `|T|` among all genes (NaN rho: the platform does not measure it).",
        "",
    ]
    for gene, part in table.groupby("marker", sort=False):
        part = part.dropna(axis=1, how="all").drop(columns=["marker"])
        found = int((part["rank"] <= args.top).sum())
        lines += [
            f"## {gene} ({part['rule'].iloc[0]}): in the top {args.top} in {found} of "
            f"{len(part)} seeds; all_significant {int(part['all_significant'].sum())}",
            "",
            part.drop(columns=["rule"]).round(2).to_markdown(index=False),
            "",
        ]
    (RESULTS / f"bulk_consensus_diagnosis{tag}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
