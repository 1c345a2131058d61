"""The iPS recipe against the simulator's truth: recovery, agreement rules, held-out validation.

These tests are about ``combine="all_significant"`` (the reference work's rule: every cell
significant with the pattern's signs), so every call names it (:func:`all_significant`);
the default combined consensus is tested in ``test_combined.py`` and
``test_hard_consensus.py``. The false-discovery share of a candidate list is the share of its (feature, sign) calls
whose sign is not the feature's true sign for that lineage (0 = no true association).
"""

from __future__ import annotations

import warnings
from functools import partial

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData

import mscpotency as mp

#: ``bulk.tl.consensus`` with the all-significant rule (a call may still name another).
all_significant = partial(mp.bulk.tl.consensus, combine="all_significant")
LINEAGES = ["ectoderm", "mesoderm", "endoderm"]
NEURAL = ["neural_suspension", "neural_adhesion"]
TRUTH = {
    "ectoderm": "true_ectoderm",
    "mesoderm": "true_mesoderm",
    "endoderm": "true_endoderm",
    "neural_suspension": "true_neural",
    "neural_adhesion": "true_neural",
}
#: One question per lineage; neural propensity is asked of both induction methods.
QUESTIONS = {
    "ectoderm": ["ectoderm"],
    "mesoderm": ["mesoderm"],
    "endoderm": ["endoderm"],
    "neural": NEURAL,
}
SALL3_RULE = {"ectoderm": 1, "mesoderm": -1, "endoderm": -1}


def score_panels(panels: dict, reference: dict | None = None) -> pd.DataFrame:
    eb = panels["embryoid_body"]
    for lineage in LINEAGES:
        if reference is None:
            markers = eb.var_names[eb.var["lineage"] == lineage].tolist()
            mp.bulk.tl.fit_propensity(eb, markers=markers, key_added=lineage)
        else:
            mp.bulk.tl.apply_propensity(eb, reference["embryoid_body"], key_added=lineage)
    for method in NEURAL:
        if reference is None:
            mp.bulk.tl.fit_propensity(panels[method], key_added=method)
        else:
            mp.bulk.tl.apply_propensity(panels[method], reference[method], key_added=method)
    return pd.concat([eb.obs[LINEAGES]] + [panels[m].obs[[m]] for m in NEURAL], axis=1)


def run(random_state: int) -> dict:
    """The whole recipe on one simulated study."""
    data = mp.bulk.datasets.ips_lines(random_state=random_state)
    propensity = score_panels(data["panels"]["train"])
    propensity_test = score_panels(data["panels"]["test"], reference=data["panels"]["train"])
    with warnings.catch_warnings():
        # miRNAs undetected in every line are constant; that report is tested elsewhere
        warnings.filterwarnings("ignore", "rank_association: .* could not be ranked", UserWarning)
        for adata in data["train"].values():
            mp.bulk.tl.rank_association(adata, propensity)
    rules = {q: dict.fromkeys(outcomes, 1) for q, outcomes in QUESTIONS.items()}
    consensus = all_significant(
        data["train"], rules=rules, platforms=["mrna", "cage"], match_on="gene"
    )
    return {
        "data": data,
        "propensity": propensity,
        "propensity_test": propensity_test,
        "consensus": consensus,
    }


def false_calls(var: pd.DataFrame, features, signs, truth_column: str) -> int:
    return int((var.loc[list(features), truth_column].to_numpy() != np.asarray(signs)).sum())


def single_platform(result: dict, platform: str) -> tuple[int, int]:
    """Candidates (P < 0.05) and false ones of one platform, one method, pooled over questions."""
    adata = result["data"]["train"][platform]
    n = false = 0
    for outcomes in QUESTIONS.values():
        table = mp.bulk.get.rank_association(adata, outcome=outcomes[0])
        hits = table[table["pvalue"] < 0.05]
        n += len(hits)
        false += false_calls(adata.var, hits.index, hits["direction"], TRUTH[outcomes[0]])
    return n, false


def consensus_and_validation(result: dict) -> dict[str, int]:
    var = result["data"]["train"]["mrna"].var
    test = result["data"]["test"]["mrna"].copy()
    counts = dict.fromkeys(["consensus", "consensus_false", "validated", "validated_false"], 0)
    for question, outcomes in QUESTIONS.items():
        candidates = mp.bulk.get.consensus(result["consensus"], rule=question, outcome=outcomes[0])
        counts["consensus"] += len(candidates)
        counts["consensus_false"] += false_calls(
            var, candidates.index, candidates["sign"], TRUTH[outcomes[0]]
        )
        if len(candidates) == 0:
            continue
        mp.bulk.tl.validate_markers(
            test, candidates, outcome=result["propensity_test"][outcomes[0]], key_added=question
        )
        table = mp.bulk.get.validate_markers(test, key=question)
        kept = table[table["validated"]]
        counts["validated"] += len(kept)
        counts["validated_false"] += false_calls(
            var, kept.index, kept["expected_sign"], TRUTH[outcomes[0]]
        )
    return counts


@pytest.fixture(scope="module")
def study() -> dict:
    return run(0)


def test_planted_markers_are_recovered_on_each_platform(study):
    """Planted markers with a strong true correlation are found (P < 0.05, right sign)."""
    for platform in ("mrna", "cage"):
        adata = study["data"]["train"][platform]
        recovered = total = 0
        for outcome in LINEAGES + NEURAL:
            truth = adata.var[f"true_corr_{outcome}"]
            strong = truth.index[(truth.abs() >= 0.7) & adata.var["true_factor"].ne("technical")]
            table = mp.bulk.get.rank_association(adata, outcome=outcome).loc[strong]
            recovered += int(
                ((table["pvalue"] < 0.05) & (table["direction"] == np.sign(truth[strong]))).sum()
            )
            total += len(strong)
        assert total > 60
        assert recovered / total > 0.6, (platform, recovered, total)


def test_flagship_markers(study):
    mrna = study["data"]["train"]["mrna"]
    sall3 = mp.bulk.get.rank_association(mrna, sort=False).set_index(["outcome", "feature"])["rho"]
    assert (
        sall3["ectoderm", "SALL3"] > 0.6
        and sall3["mesoderm", "SALL3"] < -0.6
        and sall3["endoderm", "SALL3"] < -0.6
    )
    opposite = all_significant(
        study["data"]["train"],
        rules={"SALL3": SALL3_RULE},
        platforms=["mrna", "cage"],
        match_on="gene",
    ).table
    assert "SALL3" in set(opposite["feature"])
    row = opposite.set_index("feature").loc["SALL3"]
    assert (row["direction"], row["sign:ectoderm"], row["sign:mesoderm"]) == (1, 1, -1)
    mesoderm = mp.bulk.get.consensus(study["consensus"], rule="mesoderm", outcome="mesoderm")
    assert mesoderm.loc["PF4", "sign"] == 1
    ror2 = mp.bulk.get.rank_association(mrna, outcome="neural_suspension").loc["ROR2"]
    assert ror2["rho"] > 0.8 and ror2["pvalue"] < 0.01


def test_opposite_direction_rule_keeps_true_pattern_markers(study):
    var = study["data"]["train"]["mrna"].var
    table = all_significant(
        study["data"]["train"],
        rules={"SALL3": SALL3_RULE},
        platforms=["mrna", "cage"],
        match_on="gene",
    ).table
    calls = table[[f"sign:{o}" for o in SALL3_RULE]].to_numpy()
    truth = var.loc[table["feature"], [TRUTH[o] for o in SALL3_RULE]].to_numpy()
    right = (calls == truth).all(axis=1)
    assert len(table) >= 10 and right.mean() >= 0.7
    assert (var.loc[table["feature"][right], "true_factor"] == "bias").sum() >= 5


@pytest.mark.parametrize("random_state", [0, 1, 2])
def test_agreement_lowers_the_false_share_and_held_out_lines_remove_most_of_the_rest(
    random_state, study
):
    result = study if random_state == 0 else run(random_state)
    single = {p: single_platform(result, p) for p in ("mrna", "cage")}
    single_share = {p: false / n for p, (n, false) in single.items()}
    counts = consensus_and_validation(result)
    consensus_share = counts["consensus_false"] / counts["consensus"]
    validated_share = counts["validated_false"] / counts["validated"]
    # measured (seed 0): mRNA 0.81, CAGE 0.82 -> consensus 0.41 -> validated 0.06
    assert consensus_share < 0.75 * min(single_share.values()), (single_share, consensus_share)
    assert counts["validated_false"] <= 0.2 * counts["consensus_false"], counts
    assert validated_share < 0.2, counts
    true_kept = counts["validated"] - counts["validated_false"]
    assert true_kept >= 0.6 * (counts["consensus"] - counts["consensus_false"]), counts


def test_cross_method_rule_on_one_platform(study):
    """Both induction methods must agree: fewer candidates, a lower false share, no method-specific ones."""
    mrna = study["data"]["train"]["mrna"]
    single = {}
    for method in NEURAL:
        table = mp.bulk.get.rank_association(mrna, outcome=method)
        hits = table[table["pvalue"] < 0.05]
        single[method] = (
            len(hits),
            false_calls(mrna.var, hits.index, hits["direction"], "true_neural"),
        )
    both = all_significant(
        study["data"]["train"], rules={"neural": dict.fromkeys(NEURAL, 1)}, platforms=["mrna"]
    )
    both = mp.bulk.get.consensus(both, rule="neural", outcome="neural_suspension")
    both_false = false_calls(mrna.var, both.index, both["sign"], "true_neural")
    # measured (seed 0): suspension 118/124 false, adhesion 72/74, both methods 21/23
    assert len(both) < 0.35 * min(n for n, _ in single.values())
    assert both_false / len(both) < min(false / n for n, false in single.values())
    assert not mrna.var.loc[both.index, "true_factor"].isin(["suspension", "adhesion"]).any()
    on_both_platforms = mp.bulk.get.consensus(
        study["consensus"], rule="neural", outcome="neural_suspension"
    )
    assert len(on_both_platforms) < len(both)


def test_platform_artefacts_do_not_survive_validation(study):
    """The technical factor follows a propensity in training lines only."""
    train, test = study["data"]["train"]["cage"], study["data"]["test"]["cage"].copy()
    table = mp.bulk.get.rank_association(train, outcome="ectoderm")
    technical = table.index[
        (table["pvalue"] < 0.05) & train.var.loc[table.index, "true_factor"].eq("technical")
    ]
    assert len(technical) >= 20  # a platform artefact shows as a block of candidates
    mp.bulk.tl.validate_markers(
        test, table.loc[technical, "direction"], outcome=study["propensity_test"]["ectoderm"]
    )
    assert mp.bulk.get.validate_markers(test)["validated"].mean() < 0.15


def test_marker_counts_is_the_deck_summary(study):
    counts = mp.bulk.get.marker_counts(study["data"]["train"])
    assert counts.index.names == ["platform", "outcome"]
    assert len(counts) == 15
    assert list(counts.columns) == [
        "n_lines",
        "n_features",
        "P<0.05 positive",
        "P<0.05 negative",
        "P<0.01 positive",
        "P<0.01 negative",
    ]
    table = mp.bulk.get.rank_association(study["data"]["train"]["cage"], outcome="mesoderm")
    row = counts.loc[("cage", "mesoderm")]
    assert row["P<0.05 positive"] == ((table["pvalue"] < 0.05) & (table["rho"] > 0)).sum()
    assert row["P<0.01 negative"] == ((table["pvalue"] < 0.01) & (table["rho"] < 0)).sum()
    assert (counts["P<0.01 positive"] <= counts["P<0.05 positive"]).all()
    assert counts.loc[("mirna", "ectoderm"), "n_features"] == 300 - 5  # 5 constant miRNAs left out
    fdr = mp.bulk.get.marker_counts(study["data"]["train"], thresholds=[0.1], use="fdr")
    assert list(fdr.columns[-2:]) == ["FDR<0.1 positive", "FDR<0.1 negative"]
    with pytest.raises(ValueError, match="thresholds must be levels between 0 and 1"):
        mp.bulk.get.marker_counts(study["data"]["train"], thresholds=[5])


# --- consensus semantics on small hand-made results -------------------------------------


def platform(
    values: dict[str, np.ndarray], outcomes: pd.DataFrame, genes: dict[str, str] | None = None
) -> AnnData:
    X = np.column_stack(list(values.values()))
    var = pd.DataFrame(index=list(values))
    if genes is not None:
        var["gene"] = [genes[f] for f in values]
    adata = AnnData(X=X, obs=pd.DataFrame(index=outcomes.index), var=var)
    mp.bulk.tl.rank_association(adata, outcomes)
    return adata


@pytest.fixture(scope="module")
def toy():
    rng = np.random.default_rng(0)
    n = 8
    lines = [f"L{i}" for i in range(n)]
    a = np.arange(n, dtype=float)
    outcomes = pd.DataFrame(
        {"up": a, "down": -a + 0.01 * rng.normal(size=n), "other": rng.permutation(a)}, index=lines
    )
    noise = rng.normal(size=n)
    one = platform({"X": a, "Y": -a, "Z": noise, "W": a}, outcomes)
    two = platform(
        {"p1@X": a, "p2@X": noise, "p1@Y": -a, "p1@Z": noise, "p1@W": -a},
        outcomes,
        genes={"p1@X": "X", "p2@X": "X", "p1@Y": "Y", "p1@Z": "Z", "p1@W": "W"},
    )
    return {"one": one, "two": two}


def test_consensus_signs_directions_and_matching(toy):
    table = all_significant(
        toy,
        rules={"same": {"up": 1}, "opposite": {"up": 1, "down": -1}},
        match_on=None,
        platforms=["one"],
    ).table
    assert set(table.query("rule == 'same'")["feature"]) == {"X", "Y", "W"}
    opposite = table.query("rule == 'opposite'").set_index("feature")
    assert opposite.loc["X", "direction"] == 1 and opposite.loc["Y", "direction"] == -1
    assert opposite.loc["Y", "sign:up"] == -1 and opposite.loc["Y", "sign:down"] == 1
    with pytest.raises(KeyError, match=r"results\['one'\].var has no column 'gene'"):
        all_significant(toy, rules={"same": {"up": 1}}, match_on="gene")
    toy["one"].var["gene"] = toy["one"].var_names
    result = all_significant(toy, rules={"same": {"up": 1}}, match_on="gene")
    across = result.table.set_index("feature")
    assert set(across.index) == {"X", "Y"}  # W flips sign between platforms
    assert across.loc["X", "feature:two:up"] == "p1@X"  # the better promoter speaks for the gene
    assert result.n_tested == {"same": 4}
    assert result.n_lines["two:up"] == 8


def test_consensus_reports_lines_per_platform_when_one_is_missing(toy):
    """A line missing on one platform: rank_association intersects, consensus says how many lines each used."""
    one = toy["one"][toy["one"].obs_names != "L7"].copy()
    outcomes = toy["two"].uns["rank_association"]["outcomes"]
    with pytest.raises(ValueError, match=r"lines \['L7'\] have an outcome value but no profile"):
        mp.bulk.tl.rank_association(one, outcomes)
    mp.bulk.tl.rank_association(one, outcomes, on_missing="intersect")
    result = all_significant({"one": one, "two": toy["two"]}, rules={"same": {"up": 1}})
    assert result.n_lines["one:up"] == 7 and result.n_lines["two:up"] == 8


def test_min_significant(toy):
    toy["one"].var["gene"] = toy["one"].var_names
    strict = all_significant(toy, rules={"r": {"up": 1, "other": 1}}, match_on="gene").table
    loose = all_significant(
        toy,
        rules={"r": mp.bulk.tl.SignRule({"up": 1, "other": 1}, min_significant=2)},
        match_on="gene",
    ).table
    assert len(strict) <= len(loose)
    assert (loose["n_significant"] >= 2).all() and (loose["n_cells"] == 4).all()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"rules": {}}, ValueError, "rules must be a non-empty mapping"),
        ({"rules": {"r": {"up": 2}}}, ValueError, r"signs must be \+1 or -1"),
        ({"rules": {"r": {"nope": 1}}}, KeyError, "has no rank association for outcome 'nope'"),
        (
            {"rules": {"r": {"up": 1}}, "platforms": ["three"]},
            KeyError,
            r"platforms \['three'\] are not among",
        ),
        (
            {"rules": {"r": mp.bulk.tl.SignRule({"up": 1}, min_significant=3)}},
            ValueError,
            "min_significant must be between 1 and 2",
        ),
        ({"rules": {"r": {"up": 1}}, "use": "q"}, ValueError, "use must be 'pvalue' or 'fdr'"),
        ({"rules": {"r": [1]}}, TypeError, "must be an outcome -> sign mapping or a SignRule"),
    ],
)
def test_consensus_bad_input(toy, kwargs, error, match):
    with pytest.raises(error, match=match):
        all_significant(toy, **kwargs)


def test_consensus_needs_rank_association_results(toy):
    with pytest.raises(KeyError, match="Run `bulk.tl.rank_association` first"):
        all_significant({"bare": AnnData(np.zeros((3, 2)))}, rules={"r": {"up": 1}})


def test_consensus_accessor(toy):
    table = all_significant(
        toy, rules={"empty": {"other": 1}, "same": {"up": 1}}, platforms=["one"]
    )
    empty = mp.bulk.get.consensus(table, rule="empty", outcome="other")
    assert empty.empty and list(empty.columns) == ["sign", "rho"]
    same = mp.bulk.get.consensus(table, rule="same", outcome="up")
    assert same.loc["Y", "sign"] == -1 and same.loc["Y", "rho"] == pytest.approx(-1)
    with pytest.raises(KeyError, match="has no rule 'nope'"):
        mp.bulk.get.consensus(table, rule="nope", outcome="up")
    with pytest.raises(KeyError, match="rule 'same' has no outcome 'down'"):
        mp.bulk.get.consensus(table, rule="same", outcome="down")


def test_consensus_is_a_typed_result_with_its_provenance(toy):
    result = all_significant(toy, rules={"same": {"up": 1}}, alpha=0.1)
    assert isinstance(result, mp.bulk.tl.Consensus) and not result.table.attrs
    assert result.rules["same"] == mp.bulk.tl.SignRule({"up": 1}, ["one", "two"], 2)
    assert result.params["alpha"] == 0.1 and set(result.associations) == {"one", "two"}
    record = result.provenance
    assert record["function"] == "bulk.tl.consensus" and record["params"]["alpha"] == 0.1
    assert record["params"]["rules"] == {"same": {"up": 1}}
    assert record["versions"]["mscpotency"] and record["seconds"] >= 0
    assert result.input_fingerprints == {
        name: mp._provenance.fingerprint(adata) for name, adata in toy.items()
    }
    rule = mp.bulk.tl.SignRule({"up": 1}, platforms=["one"])
    again = all_significant(toy, rules={"r": rule})
    assert again.provenance["params"]["rules"] == {
        "r": {"pattern": {"up": 1}, "platforms": ["one"], "min_significant": None}
    }


# --- validate_markers -------------------------------------------------------------------


@pytest.fixture
def held_out() -> AnnData:
    rng = np.random.default_rng(1)
    n = 13
    y = rng.normal(size=n)
    X = np.column_stack(
        [
            y + 0.2 * rng.normal(size=n),
            -y + 0.2 * rng.normal(size=n),
            rng.normal(size=n),
            np.ones(n),
        ]
    )
    obs = pd.DataFrame({"ectoderm": y}, index=[f"T{i:02d}" for i in range(n)])
    return AnnData(X=X, obs=obs, var=pd.DataFrame(index=["up", "down", "noise", "flat"]))


def test_validate_markers_sign_and_significance(held_out):
    candidates = pd.DataFrame(
        {"sign": [1, 1, 1, 1], "rho": [0.9, 0.8, 0.7, 0.75]}, index=["up", "down", "noise", "flat"]
    )
    mp.bulk.tl.validate_markers(held_out, candidates, outcome="ectoderm", method="exact")
    table = mp.bulk.get.validate_markers(held_out)
    assert table["validated"].tolist() == [True, False, False, False]
    assert not table.loc["down", "same_sign"]  # expected +, observed -: one-sided p is large
    assert table.loc["down", "pvalue"] > 0.99
    assert table.loc["flat", "pvalue_method"].startswith("untestable")
    assert table["rho_train"].tolist() == [0.9, 0.8, 0.7, 0.75]
    assert held_out.uns["marker_validation"]["summary"]["validated"].item() == 1
    two_sided = mp.bulk.tl.validate_markers(
        held_out, {"up": 1}, outcome="ectoderm", alternative="two-sided", method="exact", copy=True
    )
    p2 = mp.bulk.get.validate_markers(two_sided).loc["up", "pvalue"]
    assert p2 == pytest.approx(2 * table.loc["up", "pvalue"])


@pytest.mark.parametrize(
    ("candidates", "error", "match"),
    [
        (
            {"up": 1, "gone": -1},
            KeyError,
            r"1 candidates are not features of the held-out data: \['gone'\]",
        ),
        ({"up": 0}, ValueError, r"expected signs must be \+1 or -1"),
        ({}, ValueError, "no candidates to validate"),
        (pd.DataFrame({"rho": [0.5]}, index=["up"]), KeyError, "needs a 'sign' column"),
        (["up"], TypeError, "candidates must map each feature to its expected sign"),
    ],
)
def test_validate_markers_bad_candidates(held_out, candidates, error, match):
    with pytest.raises(error, match=match):
        mp.bulk.tl.validate_markers(held_out, candidates, outcome="ectoderm")


def test_validate_markers_missing_lines_and_outcomes(held_out):
    outcome = held_out.obs["ectoderm"].iloc[:11]
    with pytest.raises(
        ValueError, match=r"lines \['T11', 'T12'\] are profiled but have no 'ectoderm' value"
    ):
        mp.bulk.tl.validate_markers(held_out, {"up": 1}, outcome=outcome)
    mp.bulk.tl.validate_markers(held_out, {"up": 1}, outcome=outcome, on_missing="intersect")
    assert mp.bulk.get.validate_markers(held_out)["n_lines"].item() == 11
    with pytest.raises(ValueError, match="takes one outcome"):
        mp.bulk.tl.validate_markers(
            held_out, {"up": 1}, outcome=pd.DataFrame({"a": held_out.obs["ectoderm"], "b": 1.0})
        )
