"""Does one outlying line make false consensus markers? Pearson against its winsorised form.

iPS lines carry line-specific aberrations (aberrant imprinting, X erosion, a subclone with a
copy-number gain): a gene far out in one line, on every platform. For every seed of
``bulk.datasets.ips_lines_hard`` (15,000 genes) the script takes the training platforms of
``benchmarks/bulk_consensus.py`` (up to ``tl.rank_association``), picks 3% of the genes
without any true association (simulator truth), and for each of them one line at random,
where it shifts the gene by ``--shift`` of the gene's own SDs on both platforms. Then, with
the package's kernels (``bulk.tl._combined``, ``agreement="mean"``), the 40 largest ``|T|``
per rule under each ``correlation``, with and without the shift: true calls and the shifted
genes among them (by chance, 3% of the null genes: about 1 in 30 false calls).

The winsorisation bound (2 robust SDs) was chosen on seeds 0-4 of this scenario and 0-9 of
``bulk_consensus_options.py`` (keep >= 95% of Pearson's top-40 true calls on the clean
preset, let the fewest shifted genes in; candidates 2 and 3 robust SDs and the classic
10% winsorisation, which kept 76%) and confirmed on seeds 10-14 and 10-19.

Usage: ``python benchmarks/bulk_consensus_outliers.py [--seeds 0-4] [--shift 4]``
writes ``benchmarks/results/bulk_consensus_outliers_seeds<first>-<last>.md``.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

import mscpotency as mp
from mscpotency.bulk._lines import dense_matrix, line_rows
from mscpotency.bulk.tl import _combined as C

sys.path.insert(0, str(Path(__file__).parent))
import bulk_consensus as bc
from bulk_consensus_fdr import training_platforms

RESULTS = Path(__file__).parent / "results"
CORRELATIONS = ("pearson", "winsorized")
TRUE_SIGNS = [f"true_{o}" for o in ("ectoderm", "mesoderm", "endoderm")] + [
    f"true_{m}" for m in bc.METHODS
]


def shifted(train: dict, lines: list[str], genes: dict[str, int], shift: float) -> dict:
    """Copies of the platforms with each gene of ``genes`` moved ``shift`` SDs in its line."""
    out = {}
    for platform, adata in train.items():
        copy = adata.copy()
        X = dense_matrix(copy, None).copy()
        rows = line_rows(copy, lines)
        names = copy.var_names.astype(str)
        columns = np.flatnonzero(names.isin(list(genes)))
        which = np.array([genes[g] for g in names[columns]], dtype=int)
        sd = np.nanstd(X[rows][:, columns], axis=0)
        X[rows[which], columns] += shift * np.maximum(sd, 1e-3)
        copy.X = X
        out[platform] = copy
    return out


def one_seed(seed: int, n_genes: int, shift: float) -> list[dict]:
    data, train, _, outcomes, frame, _ = training_platforms(seed, n_genes)
    truth, n = data["truth"]["genes"], len(frame)
    lines = frame.index.astype(str).tolist()
    rng = np.random.default_rng(seed + 77)
    null = truth.index[(truth[TRUE_SIGNS] == 0).all(axis=1).to_numpy()]
    picked = sorted(rng.choice(null, size=int(0.03 * len(truth)), replace=False))
    genes = dict(zip(picked, rng.integers(0, n, len(picked)).tolist(), strict=True))
    rows = []
    for amount in (0.0, shift):
        platforms = shifted(train, lines, genes, amount)
        for correlation in CORRELATIONS:
            data_ = {
                p: C.platform_data(a, lines, "rank_association", _identity(a), correlation)
                for p, a in platforms.items()
            }
            Y = C.standardized(frame.to_numpy(dtype=float), correlation)
            scores = C.all_scores(data_, Y, n)
            for rule, pattern in bc.RULES.items():
                where = C.rule_cells(pattern, list(platforms), data_, outcomes, "mean")
                statistic, _ = C.rule_statistic(scores, where)
                top = np.argsort(-np.abs(statistic), kind="stable")[:40]
                ok = bc.true_calls(where.entities[top], np.sign(statistic[top]), rule, truth)
                rows.append(
                    {
                        "seed": seed,
                        "shift (SDs)": amount,
                        "correlation": correlation,
                        "rule": rule,
                        "true in top 40": int(ok.sum()),
                        "shifted in top 40": int(where.entities[top].isin(picked).sum()),
                    }
                )
    return rows


def _identity(adata) -> pd.Series:
    names = adata.var_names.astype(str)
    return pd.Series(names, index=names)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", default="0-4", help="first-last")
    parser.add_argument("--genes", type=int, default=15000)
    parser.add_argument("--shift", type=float, default=4.0)
    args = parser.parse_args()
    first, last = (int(x) for x in args.seeds.split("-"))
    mp.settings.verbosity = 0
    rows = []
    for seed in range(first, last + 1):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            rows += one_seed(seed, args.genes, args.shift)
        print(f"seed {seed} done", flush=True)
    table = pd.DataFrame(rows)
    summary = table.groupby(["shift (SDs)", "correlation"])[
        ["true in top 40", "shifted in top 40"]
    ].sum()
    lists = table.groupby(["shift (SDs)", "correlation"]).size().iloc[0]
    lines = [
        "# Does one outlying line make false consensus markers? (harder iPS preset)",
        "",
        f"`python benchmarks/bulk_consensus_outliers.py --seeds {args.seeds} --genes "
        f"{args.genes} --shift {args.shift:g}`: 3% of the genes without a true association "
        f"moved {args.shift:g} SDs in one random line each, on both platforms; the 40 "
        f"largest `|T|` per rule (`agreement='mean'`), summed over {lists} lists (5 rules x "
        "seeds).",
        "",
        summary.to_markdown(),
    ]
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"bulk_consensus_outliers_seeds{args.seeds}.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
