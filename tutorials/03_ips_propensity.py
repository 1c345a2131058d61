# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Differentiation-propensity markers of iPS cell lines
#
# iPS cell lines that all look pluripotent differ in how readily they become a given cell
# type. This tutorial mines markers, measured in the *undifferentiated* lines, that predict
# this propensity, following the recipe of the reference work (SALL3 for ectoderm vs
# meso/endoderm, PF4 for mesoderm, ROR2 for neural stem/progenitor cells):
#
# 1. score each line's propensity as PC1 of a qRT-PCR marker panel after differentiation;
# 2. rank-correlate every baseline feature of each platform (mRNA array, miRNA array, CAGE)
#    with each propensity (Spearman, exact p-values at 10 lines);
# 3. keep candidates that agree across platforms, across differentiation methods and, for
#    the SALL3 pattern, in opposite directions between lineages;
# 4. confirm them on held-out lines.
#
# We use the simulator, whose truth lets us count how many candidates are false at each step.

# %%
import warnings

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

import mscpotency as mp

data = mp.bulk.datasets.ips_lines(random_state=0)
train, test = data["train"], data["test"]
panels = data["panels"]
{name: adata.shape for name, adata in train.items()}

# %% [markdown]
# One AnnData per platform, lines x features (`obs_names` are line names). Ten training
# lines, thirteen held-out lines. The differentiation panels are AnnData too: embryoid
# bodies scored by 45/56/27 ectoderm/mesoderm/endoderm genes (plus pluripotency genes), and
# neural induction by two methods scored by PAX6/SOX1/NES.

# %%
eb = panels["train"]["embryoid_body"]
eb.var["lineage"].value_counts()

# %% [markdown]
# ## 1. Propensity per line: PC1 of the marker panel
# PC1 of the standardised lineage genes, oriented so that higher = more differentiated (the
# mean loading of the lineage genes is made positive): `bulk.tl.fit_propensity`. Held-out
# lines are scored with the training loadings (`bulk.tl.apply_propensity`), so both sets
# share one scale.

# %%
LINEAGES = ["ectoderm", "mesoderm", "endoderm"]
NEURAL = ["neural_suspension", "neural_adhesion"]


def fit_panels(sets_panels):
    """Fit every lineage's and method's propensity; return lines x outcomes."""
    eb = sets_panels["embryoid_body"]
    for lineage in LINEAGES:
        markers = eb.var_names[eb.var["lineage"] == lineage].tolist()
        mp.bulk.tl.fit_propensity(eb, markers=markers, key_added=lineage)
    for method in NEURAL:
        mp.bulk.tl.fit_propensity(sets_panels[method], key_added=method)
    return pd.concat([eb.obs[LINEAGES]] + [sets_panels[m].obs[[m]] for m in NEURAL], axis=1)


def apply_panels(sets_panels, reference):
    """Score new lines on the reference panels' scale; return lines x outcomes."""
    eb = sets_panels["embryoid_body"]
    for lineage in LINEAGES:
        mp.bulk.tl.apply_propensity(eb, reference["embryoid_body"], key_added=lineage)
    for method in NEURAL:
        mp.bulk.tl.apply_propensity(sets_panels[method], reference[method], key_added=method)
    return pd.concat([eb.obs[LINEAGES]] + [sets_panels[m].obs[[m]] for m in NEURAL], axis=1)


propensity = fit_panels(panels["train"])
propensity_test = apply_panels(panels["test"], reference=panels["train"])
propensity.round(2)

# %%
fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), layout="constrained")
for lineage, ax in zip(LINEAGES, axes, strict=True):
    mp.bulk.pl.fit_propensity(eb, key=lineage, ax=ax, show=False)
plt.show()

# %% [markdown]
# How well does PC1 recover the simulator's true propensity? (Truth is only known here.)

# %%
truth = data["truth"]["propensity"]
pd.Series(
    {c: np.corrcoef(propensity[c], truth.loc[propensity.index, c])[0, 1] for c in propensity}
).round(3)

# %% [markdown]
# ## 2. Every baseline feature against every propensity
# One call per platform; all five outcomes at once. p-values are exact (all 10! orderings).
# The miRNA array floors weak signals at its detection limit: miRNAs undetected in every
# line are constant, cannot be ranked, and are reported (warning + `uns[...]['excluded']`).

# %%
for platform, adata in train.items():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mp.bulk.tl.rank_association(adata, propensity)
    for w in caught:
        print(f"{platform}: {w.message}")
train["mirna"].uns["rank_association"]["excluded"]

# %% [markdown]
# The deck's summary table: positive and negative candidates per platform and lineage.

# %%
mp.bulk.get.marker_counts(train)

# %%
fig, axes = plt.subplots(1, 3, figsize=(14, 4.2), layout="constrained")
highlights = {"mrna": ["SALL3"], "mirna": None, "cage": ["p1@SALL3"]}
for (platform, adata), ax in zip(train.items(), axes, strict=True):
    mp.bulk.pl.rank_association(
        adata, outcome="ectoderm", highlight=highlights[platform], ax=ax, show=False
    )
plt.show()

# %% [markdown]
# Hundreds of candidates per platform and lineage at P < 0.05: with ~2,000 features and 10
# lines, most of them are chance. How many, we can count against the truth:


# %%
TRUTH_OF = {
    "ectoderm": "true_ectoderm",
    "mesoderm": "true_mesoderm",
    "endoderm": "true_endoderm",
    "neural_suspension": "true_neural",
    "neural_adhesion": "true_neural",
}


def false_share(features, signs, truth_column, var):
    """Share of (feature, sign) calls whose sign is not the true one."""
    if len(features) == 0:
        return np.nan
    return float(np.mean(var.loc[list(features), truth_column].to_numpy() != np.asarray(signs)))


rows = []
for platform in ("mrna", "cage"):
    adata = train[platform]
    for outcome in LINEAGES + NEURAL:
        table = mp.bulk.get.rank_association(adata, outcome=outcome)
        hits = table[table["pvalue"] < 0.05]
        rows.append(
            {
                "list": platform,
                "outcome": outcome,
                "candidates": len(hits),
                "false": false_share(hits.index, hits["direction"], TRUTH_OF[outcome], adata.var),
            }
        )
single = pd.DataFrame(rows)
single.pivot(index="outcome", columns="list", values=["candidates", "false"]).round(2)

# %% [markdown]
# ## 3. Agreement: platforms, methods, lineages
# Rules are sign patterns over outcomes; a feature passes when its sign follows the pattern
# and it is significant in every platform x outcome cell. mRNA probes and CAGE promoters are
# matched by gene (`match_on="gene"`); where a gene has two promoters, the better one speaks.
# `bulk.tl.consensus` returns a `Consensus`: the table of markers (`.table`), the rules
# applied, the lines behind each platform x outcome, and the record of the call.

# %%
rules = {
    "ectoderm": {"ectoderm": 1},
    "mesoderm": {"mesoderm": 1},
    "endoderm": {"endoderm": 1},
    "neural (both methods)": {"neural_suspension": 1, "neural_adhesion": 1},
    "SALL3 pattern": {"ectoderm": 1, "mesoderm": -1, "endoderm": -1},
}
consensus = mp.bulk.tl.consensus(
    train, rules=rules, platforms=["mrna", "cage"], match_on="gene", combine="all_significant"
)
consensus.table.groupby("rule", sort=False).size()

# %%
consensus.table[consensus.table["rule"] == "SALL3 pattern"].head(8)[
    [
        "feature",
        "direction",
        "sign:ectoderm",
        "sign:mesoderm",
        "sign:endoderm",
        "max_pvalue",
        "min_abs_rho",
    ]
]

# %%
fig, axes = plt.subplots(1, 2, figsize=(13, 5), layout="constrained")
mp.bulk.pl.consensus(consensus, "neural (both methods)", ax=axes[0], show=False)
mp.bulk.pl.consensus(consensus, "SALL3 pattern", ax=axes[1], show=False)
plt.show()

# %% [markdown]
# Agreement removes the false candidates of one platform (its noise, its artefacts) and of
# one method. False share before and after:

# %%
var = train["mrna"].var
RULE_TRUTH = {
    "ectoderm": "ectoderm",
    "mesoderm": "mesoderm",
    "endoderm": "endoderm",
    "neural (both methods)": "neural_suspension",
}
summary = []
for rule, outcome in RULE_TRUTH.items():
    cands = mp.bulk.get.consensus(consensus, rule=rule, outcome=outcome)
    summary.append(
        {
            "rule": rule,
            "consensus": len(cands),
            "false (consensus)": false_share(cands.index, cands["sign"], TRUTH_OF[outcome], var),
            "false (mRNA alone)": single.query("list == 'mrna' and outcome == @outcome")[
                "false"
            ].item(),
            "false (CAGE alone)": single.query("list == 'cage' and outcome == @outcome")[
                "false"
            ].item(),
        }
    )
pd.DataFrame(summary).round(2)

# %% [markdown]
# Many false candidates remain: chance correlations of real biological variation among only
# 10 lines are shared by every platform. Only new lines remove them.
#
# ## 4. Held-out lines
# Each consensus candidate is tested on the 13 held-out lines (mRNA array), one-sided in its
# expected direction (13 lines: 9,999 permutations).

# %%
validated = []
for rule, outcome in RULE_TRUTH.items():
    cands = mp.bulk.get.consensus(consensus, rule=rule, outcome=outcome)
    key = f"validation_{outcome}"
    mp.bulk.tl.validate_markers(
        test["mrna"], cands, outcome=propensity_test[outcome], key_added=key
    )
    table = mp.bulk.get.validate_markers(test["mrna"], key=key)
    kept = table[table["validated"]]
    validated.append(
        {
            "rule": rule,
            "consensus": len(table),
            "validated": len(kept),
            "false (consensus)": false_share(
                table.index, table["expected_sign"], TRUTH_OF[outcome], var
            ),
            "false (validated)": false_share(
                kept.index, kept["expected_sign"], TRUTH_OF[outcome], var
            ),
        }
    )
pd.DataFrame(validated).round(2)

# %%
fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), layout="constrained")
mp.bulk.pl.validate_markers(
    test["mrna"], key="validation_mesoderm", ax=axes[0], show=False, label=False
)
mp.bulk.pl.validation_scatter(
    test["mrna"], "PF4", key="validation_mesoderm", ax=axes[1], show=False
)
mp.bulk.tl.validate_markers(
    test["mrna"], {"SALL3": 1}, outcome=propensity_test["ectoderm"], key_added="validation_SALL3"
)
mp.bulk.pl.validation_scatter(test["mrna"], "SALL3", key="validation_SALL3", ax=axes[2], show=False)
plt.show()

# %% [markdown]
# ROR2 is strongly associated with neural propensity by suspension culture on both
# platforms, with the same sign but not P < 0.05 under adhesion culture in these ten lines,
# so the strict two-method rule drops it. The held-out lines settle it:

# %%
mp.bulk.tl.validate_markers(
    test["mrna"],
    {"ROR2": 1},
    outcome=propensity_test["neural_adhesion"],
    key_added="validation_ROR2",
)
mp.bulk.get.validate_markers(test["mrna"], key="validation_ROR2")

# %% [markdown]
# ## Lines missing on one platform
# When a line was not profiled on a platform, the default is an error naming it; with
# `on_missing="intersect"` the lines present in both are used and the others reported.

# %%
cage_9 = train["cage"][train["cage"].obs_names != "iPS04"].copy()
try:
    mp.bulk.tl.rank_association(cage_9, propensity)
except ValueError as error:
    print(error)
mp.bulk.tl.rank_association(cage_9, propensity, on_missing="intersect")
cage_9.uns["rank_association"]["missing_lines"].head()

# %% [markdown]
# ## The lab's own files: probes, CAGE counts, Ct tables
# `bulk.datasets.ips_lines_hard` gives the inputs as instruments write them: a probe-level
# array with an annotation table, CAGE tag counts per promoter, the embryoid-body panel as
# raw Ct with GAPDH and "Undetermined" wells, the neural panels as ΔCt. `bulk.pp` turns them
# into what the tools take, each by a stated rule that it records; no mapping code.

# %%
lab = mp.bulk.datasets.ips_lines_hard(n_genes=3000, random_state=2)
eb = mp.bulk.pp.qpcr_panel(
    lab["qpcr"]["train"]["embryoid_body"], values="ct", reference_genes=["GAPDH"]
)
lineage_of = lab["panel_genes"]["lineage"]
outcomes = {}
for lineage in ("ectoderm", "mesoderm", "endoderm"):
    markers = [g for g in lineage_of.index[lineage_of == lineage] if g in eb.var_names]
    mp.bulk.tl.fit_propensity(eb, markers=markers, key_added=lineage)
    outcomes[lineage] = eb.obs[lineage]
neural = {}
for method in ("neural_suspension", "neural_adhesion"):
    neural[method] = mp.bulk.pp.qpcr_panel(lab["qpcr"]["train"][method], values="delta_ct")
    mp.bulk.tl.fit_propensity(neural[method], key_added=method)
    outcomes[method] = neural[method].obs[method]
outcomes = pd.DataFrame(outcomes)
genes = {
    "array": mp.bulk.pp.collapse_probes(lab["train"]["array"], lab["annotation"]["array"]),
    "cage": mp.bulk.pp.normalize_cage(lab["train"]["cage"], lab["annotation"]["cage"]),
}
eb.uns["qpcr"]["n_undetermined"], genes["array"].uns["feature_mapping"]["method"]

# %% [markdown]
# Handing the ΔCt table over as if it were -ΔCt would flip every propensity; it warns:

# %%
flipped = neural["neural_suspension"].copy()
flipped.X = lab["qpcr"]["train"]["neural_suspension"].to_numpy(dtype=float)
del flipped.uns["qpcr"]
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    mp.bulk.tl.fit_propensity(flipped)
print(caught[0].message)

# %% [markdown]
# ## A consensus with its own FDR
# `combine="stouffer"` (the default) scores each gene by its agreement with the rule on
# every platform (Stouffer over the rule's outcomes within a platform on winsorised
# Pearson correlations; the platforms must each pass a bar, then their mean counts)
# and estimates the FDR of every list by permuting the lines jointly across platforms and
# outcomes. `summary` says how many calls chance alone would give. A gene one platform does
# not measure (an unannotated probe) is judged by the others, which must then be stronger
# (`n_platforms` says on how many it stands). `n_top=40` instead of `alpha` gives a list of a
# chosen size (for a follow-up budget, or to compare rules at the same recall) with its FDR.

# %%
for adata in genes.values():
    mp.bulk.tl.rank_association(adata, outcomes)
combined = mp.bulk.tl.consensus(
    genes,
    rules=rules | {"neural (both methods)": {"neural_suspension": 1, "neural_adhesion": 1}},
    combine="stouffer",
    alpha=0.2,
)
combined.summary.round(2)

# %%
mp.bulk.get.consensus(combined, rule="SALL3 pattern").head()

# %% [markdown]
# The held-out lines' array is probe-level: `annotation=` collapses it by the same rule, so
# gene candidates are tested as they are, one-sided in their predicted direction; a candidate
# the array does not measure (called on CAGE alone) is listed untested (`on_absent`).

# %%
eb_test = mp.bulk.pp.qpcr_panel(
    lab["qpcr"]["test"]["embryoid_body"], values="ct", reference_genes=["GAPDH"]
)
mp.bulk.tl.apply_propensity(eb_test, eb, key_added="mesoderm")
candidates = mp.bulk.get.consensus(combined, rule="mesoderm", outcome="mesoderm")
held_out = lab["test"]["array"]
mp.bulk.tl.validate_markers(
    held_out,
    candidates,
    outcome=eb_test.obs["mesoderm"],
    annotation=lab["annotation"]["array"],
    on_absent="untested",
)
mp.bulk.get.validate_markers(held_out, kind="summary")
