"""iPS propensity markers on the harder lines preset: naive, all-significant and combined consensus.

Over seeds of ``bulk.datasets.ips_lines_hard`` (15,000 genes, probe-level array, CAGE
counts, Ct/ΔCt tables), with only package calls between the lab's inputs and the lists:
``pp.qpcr_panel`` -> ``tl.fit_propensity`` (training) / ``apply_propensity`` (test),
``pp.collapse_probes`` and ``pp.normalize_cage`` -> ``tl.rank_association`` ->
``tl.consensus`` (``combine="all_significant"`` with its defaults, and ``"stouffer"``: the
``--top`` genes with the largest combined statistic per rule, and its lists at q = 0.1,
0.2 and 0.5) -> ``tl.validate_markers`` on the 13 held-out lines (array, genes via the
annotation), one-sided, BH FDR <= 0.1 among the candidates.

A call is true when the gene's true sign (simulator truth, ``true_<outcome>``) follows the
rule's pattern in the called direction for every outcome of the rule; recall is over the
genes whose truth follows the pattern. ``found`` counts seeds where the named planted
marker is in the list of its rule (SALL3: SALL3 pattern; PF4: mesoderm; ROR2: neural).

The FDR check: the mean FDP of the ``q <= alpha`` lists over every rule x seed (an empty
list counts 0, so the mean is the FDR) against the nominal ``alpha``, with its Monte-Carlo
standard error (SD / sqrt(lists)); at 15,000 genes most lists hold 0-2 genes, so each
list's FDP is 0 or 1 and ten seeds (50 lists) leave an error of about 0.05.

Usage: ``python benchmarks/bulk_consensus.py [--seeds 5] [--first-seed 0] [--genes 15000]
[--permutations 500] [--top 40] [--correlation spearman|pearson|winsorized] [--agreement weakest|mean]``
writes ``benchmarks/results/bulk_consensus.md`` and ``.csv`` (with other ``consensus``
options for the Stouffer lists: ``bulk_consensus_<correlation>_<agreement>.md``/``.csv``).
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

import mscpotency as mp

B = mp.bulk
LINEAGES = ("ectoderm", "mesoderm", "endoderm")
METHODS = ("neural_suspension", "neural_adhesion")
RULES = {
    "ectoderm": {"ectoderm": 1},
    "mesoderm": {"mesoderm": 1},
    "endoderm": {"endoderm": 1},
    "neural (both methods)": {"neural_suspension": 1, "neural_adhesion": 1},
    "SALL3 pattern": {"ectoderm": 1, "mesoderm": -1, "endoderm": -1},
}
FLAGSHIPS = {"SALL3": "SALL3 pattern", "PF4": "mesoderm", "ROR2": "neural (both methods)"}
RESULTS = Path(__file__).parent / "results"


def propensity(data: dict, part: str, reference: dict | None = None):
    """Lines x outcomes from the lab's qRT-PCR tables (EB: Ct with GAPDH; neural: ΔCt)."""
    eb = B.pp.qpcr_panel(
        data["qpcr"][part]["embryoid_body"], values="ct", reference_genes=["GAPDH"]
    )
    genes = data["panel_genes"]
    panels, out = {"eb": eb}, {}
    for lineage in LINEAGES:
        markers = [g for g in genes.index[genes["lineage"] == lineage] if g in eb.var_names]
        if reference is None:
            B.tl.fit_propensity(eb, markers=markers, key_added=lineage)
        else:
            B.tl.apply_propensity(eb, reference["eb"], key_added=lineage)
        out[lineage] = eb.obs[lineage]
    for method in METHODS:
        panel = B.pp.qpcr_panel(data["qpcr"][part][method], values="delta_ct")
        if reference is None:
            B.tl.fit_propensity(panel, key_added=method)
        else:
            B.tl.apply_propensity(panel, reference[method], key_added=method)
        panels[method], out[method] = panel, panel.obs[method]
    return pd.DataFrame(out), panels


def true_calls(genes, direction, rule: str, truth: pd.DataFrame) -> np.ndarray:
    t = truth.reindex(genes)
    ok = np.ones(len(genes), dtype=bool)
    for outcome, sign in RULES[rule].items():
        ok &= (t[f"true_{outcome}"].to_numpy() * sign * np.asarray(direction)) == 1
    return ok


def true_set(rule: str, truth: pd.DataFrame) -> int:
    hits = np.zeros(len(truth), dtype=bool)
    for flip in (1, -1):
        m = np.ones(len(truth), dtype=bool)
        for outcome, sign in RULES[rule].items():
            m &= truth[f"true_{outcome}"].to_numpy() == sign * flip
        hits |= m
    return int(hits.sum())


def one_seed(
    seed: int, n_genes: int, n_permutations: int, n_top: int, options: dict | None = None
) -> list[dict]:
    data = B.datasets.ips_lines_hard(n_genes=n_genes, random_state=seed)
    truth = data["truth"]["genes"]
    prop, panels = propensity(data, "train")
    prop_test, _ = propensity(data, "test", reference=panels)
    train = {
        "array": B.pp.collapse_probes(data["train"]["array"], data["annotation"]["array"]),
        "cage": B.pp.normalize_cage(data["train"]["cage"], data["annotation"]["cage"]),
    }
    for adata in train.values():
        B.tl.rank_association(adata, prop, random_state=seed)
    lists = {"all_significant": B.tl.consensus(train, rules=RULES, combine="all_significant")}
    start = time.perf_counter()
    stouffer = B.tl.consensus(
        train,
        rules=RULES,
        combine="stouffer",
        n_top=n_top,
        n_permutations=n_permutations,
        random_state=seed,
        **(options or {}),
    )
    seconds = time.perf_counter() - start
    rows = []
    for rule, pattern in RULES.items():
        outcome = next(iter(pattern))
        n_true = true_set(rule, truth)
        naive = B.get.rank_association(train["array"], outcome=outcome)
        naive = naive[naive["pvalue"] < 0.05]
        ok = true_calls(naive.index, np.sign(naive["rho"]) * pattern[outcome], rule, truth)
        rows.append(_row(seed, rule, "naive (array, P<0.05)", naive.index, ok, n_true, None))
        candidates = {
            "all_significant": B.get.consensus(lists["all_significant"], rule=rule, outcome=outcome)
        }
        full = B.get.consensus(stouffer, rule=rule, outcome=outcome)
        candidates[f"stouffer top {n_top}"] = full
        for q in (0.1, 0.2, 0.5):  # q falls with |T|: a q list is the top of the n_top list
            if (full["qvalue"] <= q).all() and len(full):
                print(f"seed {seed}, {rule}: every top-{n_top} gene has q <= {q}; widen --top")
            candidates[f"stouffer q<={q}"] = full[full["qvalue"] <= q]
        for name, cands in candidates.items():
            direction = cands["sign"].to_numpy() * pattern[outcome]
            ok = true_calls(cands.index, direction, rule, truth)
            row = _row(
                seed, rule, name, cands.index, ok, n_true, seconds if "stouffer" in name else None
            )
            if name.startswith("stouffer"):
                row["expected_false"] = float(cands["expected_false"].max()) if len(cands) else 0.0
            rows.append(row)
            rows.append(
                _validated(
                    seed,
                    rule,
                    name,
                    cands,
                    data,
                    prop_test[outcome],
                    truth,
                    pattern[outcome],
                    n_true,
                )
            )
    return rows


def _row(seed, rule, stage, genes, ok, n_true, seconds) -> dict:
    genes = list(genes)
    return {
        "seed": seed,
        "rule": rule,
        "stage": stage,
        "candidates": len(genes),
        "true": int(ok.sum()),
        "false": int((~ok).sum()),
        "precision": float(ok.mean()) if len(genes) else np.nan,
        "fdp": float((~ok).mean()) if len(genes) else 0.0,
        "recall": ok.sum() / n_true if n_true else np.nan,
        **{f"found {g}": g in genes for g, r in FLAGSHIPS.items() if r == rule},
        "seconds": seconds,
    }


def _validated(seed, rule, name, cands, data, outcome, truth, sign, n_true) -> dict:
    # the held-out lines are read on the array: a candidate without an annotated probe
    # (called on CAGE alone) cannot be tested there and counts as not validated
    annotation = data["annotation"]["array"]
    cands = cands[cands.index.isin(annotation["gene_symbol"])]
    if not len(cands):
        return _row(seed, rule, f"{name} + validation", [], np.zeros(0, bool), n_true, None)
    test = data["test"]["array"].copy()
    B.tl.validate_markers(test, cands[["sign", "rho"]], outcome=outcome, annotation=annotation)
    table = B.get.validate_markers(test)
    kept = table.index[table["validated"] & (table["fdr"] <= 0.1)]
    ok = true_calls(kept, cands.loc[kept, "sign"].to_numpy() * sign, rule, truth)
    return _row(seed, rule, f"{name} + validation", kept, ok, n_true, None)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--genes", type=int, default=15000)
    parser.add_argument("--permutations", type=int, default=500)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument(
        "--correlation", choices=["spearman", "pearson", "winsorized"], default="spearman"
    )
    parser.add_argument("--agreement", choices=["weakest", "mean"], default="weakest")
    args = parser.parse_args()
    options = {"correlation": args.correlation, "agreement": args.agreement}
    default = args.correlation == "spearman" and args.agreement == "weakest"
    args.tag = "" if default else f"_{args.correlation}_{args.agreement}"
    if args.first_seed:  # other seeds than the quoted 0-(n-1): their own files
        args.tag += f"_seeds{args.first_seed}-{args.first_seed + args.seeds - 1}"
    mp.settings.verbosity = 0
    rows = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # unannotated probes, constant genes
            rows += one_seed(seed, args.genes, args.permutations, args.top, options)
        print(f"seed {seed} done", flush=True)
    table = pd.DataFrame(rows)
    RESULTS.mkdir(exist_ok=True)
    table.to_csv(RESULTS / f"bulk_consensus{args.tag}.csv", index=False)
    write_markdown(table, args)


def write_markdown(table: pd.DataFrame, args) -> None:
    order = list(dict.fromkeys(table["stage"]))
    pooled = table.groupby("stage", sort=False).agg(
        candidates=("candidates", "mean"),
        true=("true", "mean"),
        false=("false", "sum"),
        called=("candidates", "sum"),
        mean_fdp=("fdp", "mean"),
        recall=("recall", "mean"),
        fdp_se=("fdp", "sem"),
    )
    pooled["precision (pooled)"] = 1 - pooled["false"] / pooled["called"].clip(lower=1)
    pooled = pooled.loc[
        order, ["candidates", "true", "precision (pooled)", "recall", "mean_fdp", "fdp_se"]
    ]
    found = table.filter(like="found").columns
    flags = table.groupby("stage", sort=False)[list(found)].sum().loc[order].astype(int)
    per_rule = table.pivot_table(index="rule", columns="stage", values="fdp", aggfunc="mean")[order]
    nominal = pooled.loc[[f"stouffer q<={q}" for q in (0.1, 0.2, 0.5)], ["mean_fdp", "fdp_se"]]
    nominal.insert(0, "nominal q", [0.1, 0.2, 0.5])
    nominal["lists"] = table.groupby("stage").size().loc[nominal.index]
    nominal["honest (FDP <= q + 2 SE)"] = (
        nominal["mean_fdp"] <= nominal["nominal q"] + 2 * (nominal["fdp_se"])
    )
    seeds = f"{args.first_seed}-{args.first_seed + args.seeds - 1}"
    lines = [
        "# bulk consensus on the harder iPS preset",
        "",
        f"`python benchmarks/bulk_consensus.py --seeds {args.seeds} --first-seed {args.first_seed} "
        f"--genes {args.genes} --permutations {args.permutations} --top {args.top} "
        f"--correlation {args.correlation} --agreement {args.agreement}` (seeds "
        f"{seeds}; 5 rules; {args.genes} genes; `stouffer top {args.top}`: the {args.top} "
        "genes with the largest combined statistic per rule, a list of a chosen size).",
        "",
        "Per list (rule x seed), averaged: candidates, true calls, pooled precision, recall, "
        "mean false discovery proportion (FDP; an empty list counts 0) and its Monte-Carlo "
        "standard error.",
        "",
        pooled.round(3).to_markdown(),
        "",
        "Is the combined consensus FDR honest? Mean FDP of the `q <= alpha` lists over every "
        "rule x seed against the nominal level:",
        "",
        nominal.round(3).to_markdown(),
        "",
        f"Seeds (of {args.seeds}) where the planted marker is in its rule's list:",
        "",
        flags.to_markdown(),
        "",
        "Mean FDP per rule:",
        "",
        per_rule.round(3).to_markdown(),
        "",
        f"Stouffer consensus time per seed (all rules, {args.permutations} joint permutations): "
        f"{table['seconds'].dropna().mean():.1f} s.",
    ]
    (RESULTS / f"bulk_consensus{args.tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
