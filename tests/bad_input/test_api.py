"""Bad input through the public tl, bulk, CLI and replay APIs: a clear error, nothing changed.

Each row names the call, the error and what its message must say; the harness also checks
that the caller's AnnData keeps its n_obs, obs and X. The options are checked by one
mechanism (:mod:`mscpotency._checks`, applied by ``@record`` and ``@doc_params``); the last
tests check that mechanism itself over the whole public API.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import math
import re
import typing

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData

import mscpotency as mp
from mscpotency import _checks, _provenance
from mscpotency._cli import main

from ._harness import Case, run_case


def _lines(request) -> AnnData:
    """8 lines x 6 features with an outcome (bulk)."""
    rng = np.random.default_rng(0)
    obs = pd.DataFrame({"outcome": np.arange(8.0)}, index=[f"L{i}" for i in range(8)])
    var = pd.DataFrame(index=[f"F{j}" for j in range(6)])
    return AnnData(X=rng.normal(size=(8, 6)), obs=obs, var=var)


def _view(request) -> AnnData:
    ref = request.getfixturevalue("tiny_ref")
    return ref[ref.obs["lot"] != "BM01"]


class UsageExit(Exception):
    """The CLI exited: ``str`` is ``"exit <status>: <what it printed on stderr>"``."""


def _cli(args: list[str]) -> None:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            main(args)
        except SystemExit as stop:
            raise UsageExit(f"exit {stop.code}: {err.getvalue()}") from None
    msg = "the command did not exit"
    raise AssertionError(msg)


def _file(d) -> str:
    path = d.tmp_path / "a_file.txt"
    path.write_text("not a folder")
    return str(path)


def _edited_log(request, **change) -> list[dict]:
    """The tiny reference's log, with its second entry changed."""
    log = _provenance.read_log(request.getfixturevalue("tiny_ref"))
    log[1] = {**log[1], **change}
    return log


#: One line of stderr with the exit status 2, and no traceback.
ONE_LINE = r"[^\n]*\n?\Z"
PA = mp.tl.potency_association

CASES = [
    # item 1: misspelt options are refused, naming the allowed values
    *[
        Case(
            f"potency_association: alternative={bad!r}",
            lambda d, bad=bad: PA(d.adata, "vegf", alternative=bad),
            ValueError,
            rf"alternative must be one of 'two-sided', 'greater', 'less', got '{bad}'",
            data="tiny_ref",
        )
        for bad in ("two_sided", "bigger", "Greater")
    ],
    Case(
        "potency_association: alternative not a string",
        lambda d: PA(d.adata, "vegf", alternative=1),
        ValueError,
        r"alternative must be one of 'two-sided'.*got 1",
        data="tiny_ref",
    ),
    Case(
        "potency_association: alpha=5",
        lambda d: PA(d.adata, "vegf", alpha=5),
        ValueError,
        r"tl\.potency_association: alpha must lie between 0 and 1 \(exclusive\), got 5",
        data="tiny_ref",
    ),
    Case(
        "potency_association: alpha=0",
        lambda d: PA(d.adata, "vegf", alpha=0),
        ValueError,
        r"alpha must lie between 0 and 1 \(exclusive\), got 0",
        data="tiny_ref",
    ),
    Case(
        "potency_association: alpha=nan",
        lambda d: PA(d.adata, "vegf", alpha=math.nan),
        ValueError,
        r"alpha must lie between 0 and 1 \(exclusive\), got nan",
        data="tiny_ref",
    ),
    Case(
        "potency_association: alpha='0.05'",
        lambda d: PA(d.adata, "vegf", alpha="0.05"),
        TypeError,
        r"alpha must lie between 0 and 1 \(exclusive\), got '0\.05' \(str\)",
        data="tiny_ref",
    ),
    Case(
        "potency_association: n_permutations=-5",
        lambda d: PA(d.adata, "vegf", n_permutations=-5),
        ValueError,
        r"n_permutations must be at least 1 \(an integer\), got -5",
        data="tiny_ref",
    ),
    Case(
        "potency_association: n_permutations=99.5",
        lambda d: PA(d.adata, "vegf", n_permutations=99.5),
        TypeError,
        r"n_permutations must be at least 1 \(an integer\), got 99\.5 \(float\)",
        data="tiny_ref",
    ),
    Case(
        "potency_association: n_bootstrap=-1",
        lambda d: PA(d.adata, "vegf", n_bootstrap=-1),
        ValueError,
        r"n_bootstrap must be a non-negative integer, got -1",
        data="tiny_ref",
    ),
    Case(
        "potency_association: level=95 (a percentage)",
        lambda d: PA(d.adata, "vegf", level=95),
        ValueError,
        r"level must be a number between 0 and 1 \(exclusive\), e\.g\. 0\.95.*got 95",
        data="tiny_ref",
    ),
    Case(
        "potency_association: transform='log'",
        lambda d: PA(d.adata, "vegf", transform="log"),
        ValueError,
        r"transform must be 'fraction' or 'clr', got 'log'",
        data="tiny_ref",
    ),
    Case(
        "potency_association: method='asymptotic'",
        lambda d: PA(d.adata, "vegf", method="asymptotic"),
        ValueError,
        r"method must be one of 'auto', 'exact', 'permutation', got 'asymptotic'",
        data="tiny_ref",
    ),
    Case(
        "potency_association: exact_max_n=-1",
        lambda d: PA(d.adata, "vegf", exact_max_n=-1),
        ValueError,
        r"exact_max_n must be a non-negative integer, got -1",
        data="tiny_ref",
    ),
    Case(
        "cluster: n_clusters='8'",
        lambda d: mp.tl.cluster(d.adata, n_clusters="8"),
        TypeError,
        r"tl\.cluster: n_clusters must be at least 1 \(an integer\) or be None, got '8' \(str\)",
        data="tiny_ref",
    ),
    Case(
        "cluster: n_clusters=0",
        lambda d: mp.tl.cluster(d.adata, n_clusters=0),
        ValueError,
        r"n_clusters must be at least 1 .*got 0",
        data="tiny_ref",
    ),
    Case(
        "cluster: random_state='a'",
        lambda d: mp.tl.cluster(d.adata, random_state="a"),
        TypeError,
        r"random_state must be a non-negative integer, got 'a' \(str\)",
        data="tiny_ref",
    ),
    Case(
        "cluster: random_state=True",
        lambda d: mp.tl.cluster(d.adata, random_state=True),
        TypeError,
        r"random_state must be a non-negative integer, got True \(bool\)",
        data="tiny_ref",
    ),
    Case(
        "cluster: resolution=-1",
        lambda d: mp.tl.cluster(d.adata, resolution=-1.0),
        ValueError,
        r"resolution must be greater than 0, got -1\.0",
        data="tiny_ref",
    ),
    Case(
        "cluster: flavor='louvain'",
        lambda d: mp.tl.cluster(d.adata, flavor="louvain"),
        ValueError,
        r"flavor must be 'igraph' or 'leidenalg', got 'louvain'",
        data="tiny_ref",
    ),
    Case(
        "cluster: scanpy_neighbors='yes'",
        lambda d: mp.tl.cluster(d.adata, scanpy_neighbors="yes"),
        ValueError,
        r"scanpy_neighbors must be True, False or None, got 'yes'",
        data="tiny_ref",
    ),
    Case(
        "cluster: scanpy_neighbors=1",
        lambda d: mp.tl.cluster(d.adata, scanpy_neighbors=1),
        ValueError,
        r"scanpy_neighbors must be True, False or None, got 1",
        data="tiny_ref",
    ),
    Case(
        "validate_potency: level=95 (the issue's ci_level=95)",
        lambda d: mp.tl.validate_potency(d.adata, "vegf", level=95),
        ValueError,
        r"tl\.validate_potency: level must be a number between 0 and 1",
        data="tiny_ref",
    ),
    Case(
        "fit_potency_model: interval='bootstrap'",
        lambda d: mp.tl.fit_potency_model(d.adata, interval="bootstrap"),
        ValueError,
        r"interval must be 'jackknife\+' or 't', got 'bootstrap'",
        data="tiny_ref",
    ),
    Case(
        "lot_fractions: min_cells_per_lot=-1",
        lambda d: mp.tl.lot_fractions(d.adata, min_cells_per_lot=-1),
        ValueError,
        r"min_cells_per_lot must be a non-negative integer, got -1",
        data="tiny_ref",
    ),
    Case(
        "composition_deviation: n_simulations=0",
        lambda d: mp.tl.composition_deviation(d.adata, n_simulations=0),
        ValueError,
        r"n_simulations must be at least 1 \(an integer\), got 0",
        data="tiny_ref",
    ),
    Case(
        "potency_markers: method='logreg'",
        lambda d: mp.tl.potency_markers(d.adata, method="logreg"),
        ValueError,
        r"method must be one of 'wilcoxon', 't-test', 't-test_overestim_var', got 'logreg'",
        data="tiny_ref",
    ),
    Case(
        "potency_markers: rank_by='pvalue'",
        lambda d: mp.tl.potency_markers(d.adata, rank_by="pvalue"),
        ValueError,
        r"tl\.potency_markers: rank_by must be 'score' or 'logfoldchange', got 'pvalue'",
        data="tiny_ref",
    ),
    Case(
        "potency_population: boundary_quantile=0.4",
        lambda d: mp.tl.potency_population(d.adata, boundary_quantile=0.4),
        ValueError,
        r"boundary_quantile must be None or in \(0\.5, 1\), got 0\.4",
        data="tiny_ref",
    ),
    Case(
        "map_to_reference: method='seurat'",
        lambda d: mp.tl.map_to_reference(d.adata, d.adata, method="seurat"),
        ValueError,
        r"method must be one of 'fast', 'anchors', 'scvi', got 'seurat'",
        data="tiny_ref",
    ),
    Case(
        "map_to_reference: min_shared_genes=1.5",
        lambda d: mp.tl.map_to_reference(d.adata, d.adata, min_shared_genes=1.5),
        ValueError,
        r"min_shared_genes must lie between 0 and 1, got 1\.5",
        data="tiny_ref",
    ),
    Case(
        "association_stability: subsample_fraction=0",
        lambda d: mp.tl.association_stability(d.adata, subsample_fraction=0),
        ValueError,
        r"subsample_fraction must lie between 0 and 1 \(0 excluded\), got 0",
        data="tiny_ref",
    ),
    Case(
        "gene_association: within='set'",
        lambda d: mp.tl.gene_association(d.adata, within="set"),
        ValueError,
        r"within must be 'cluster' or 'lot', got 'set'",
        data="tiny_ref",
    ),
    Case(
        "neighbourhood_association: n_neighbors='many'",
        lambda d: mp.tl.neighbourhood_association(d.adata, n_neighbors="many"),
        ValueError,
        r"n_neighbors must be one of 'auto', 'graph', an integer, got 'many'",
        data="tiny_ref",
    ),
    Case(
        "comparability: coverage=95",
        lambda d: mp.tl.comparability(d.adata, ["BM01"], coverage=95),
        ValueError,
        r"coverage must lie between 0 and 1 \(exclusive\), got 95",
        data="tiny_ref",
    ),
    Case(
        "influential_lots: z_threshold=-1",
        lambda d: mp.tl.influential_lots(d.adata, z_threshold=-1),
        ValueError,
        r"z_threshold must be greater than 0, got -1",
        data="tiny_ref",
    ),
    Case(
        "pl.potency_markers: standard_scale='obs' (plots are checked too)",
        lambda d: mp.pl.potency_markers(d.adata, standard_scale="obs", show=False),
        ValueError,
        r"pl\.potency_markers: standard_scale must be 'var' or None, got 'obs'",
        data="tiny_ref",
    ),
    Case(
        "get.lot_fractions: kind='percent' (accessors are checked too)",
        lambda d: mp.get.lot_fractions(d.adata, kind="percent"),
        ValueError,
        r"kind must be one of 'fractions', 'counts', 'n_cells', got 'percent'",
        data="tiny_ref",
    ),
    # items 2 and 3: views and backed AnnData (every tool: tests/test_provenance.py)
    Case(
        "lot_fractions on a view, in place",
        lambda d: mp.tl.lot_fractions(d.adata),
        ValueError,
        r"tl\.lot_fractions: adata is a view .*adata\[mask\]\.copy\(\).*copy=True",
        data=_view,
    ),
    # bulk
    Case(
        "bulk rank_association: alternative='two_sided'",
        lambda d: mp.bulk.tl.rank_association(d.adata, "outcome", alternative="two_sided"),
        ValueError,
        r"bulk\.tl\.rank_association: alternative must be one of 'two-sided'.*'two_sided'",
        data=_lines,
    ),
    Case(
        "bulk rank_association: n_permutations=0",
        lambda d: mp.bulk.tl.rank_association(d.adata, "outcome", n_permutations=0),
        ValueError,
        r"n_permutations must be at least 1 \(an integer\), got 0",
        data=_lines,
    ),
    Case(
        "bulk rank_association: on_missing='drop'",
        lambda d: mp.bulk.tl.rank_association(d.adata, "outcome", on_missing="drop"),
        ValueError,
        r"on_missing must be 'error' or 'intersect', got 'drop'",
        data=_lines,
    ),
    Case(
        "bulk validate_markers: alternative='greater'",
        lambda d: mp.bulk.tl.validate_markers(
            d.adata, {"F0": 1}, outcome="outcome", alternative="greater"
        ),
        ValueError,
        r"alternative must be 'directional' or 'two-sided', got 'greater'",
        data=_lines,
    ),
    Case(
        "bulk validate_markers: alpha=1",
        lambda d: mp.bulk.tl.validate_markers(d.adata, {"F0": 1}, outcome="outcome", alpha=1),
        ValueError,
        r"alpha must lie between 0 and 1 \(exclusive\), got 1",
        data=_lines,
    ),
    Case(
        "bulk consensus: use='q'",
        lambda d: mp.bulk.tl.consensus({"mrna": d.adata}, rules={"up": {"mrna": 1}}, use="q"),
        ValueError,
        r"bulk\.tl\.consensus: use must be 'pvalue' or 'fdr', got 'q'",
        data=_lines,
    ),
    Case(
        "bulk consensus: combine='sum'",
        lambda d: mp.bulk.tl.consensus({"mrna": d.adata}, rules={"up": {"mrna": 1}}, combine="sum"),
        ValueError,
        r"bulk\.tl\.consensus: combine must be 'all_significant' or 'stouffer', got 'sum'",
        data=_lines,
    ),
    Case(
        "bulk consensus: n_permutations=0",
        lambda d: mp.bulk.tl.consensus(
            {"mrna": d.adata}, rules={"up": {"mrna": 1}}, combine="stouffer", n_permutations=0
        ),
        ValueError,
        r"n_permutations must be at least 1 \(an integer\), got 0",
        data=_lines,
    ),
    Case(
        "bulk qpcr_panel: values='cq'",
        lambda d: mp.bulk.pp.qpcr_panel(pd.DataFrame({"PAX6": [25.0, 26.0]}), values="cq"),
        ValueError,
        r"bulk\.pp\.qpcr_panel: values must be one of 'ct', 'delta_ct'.*got 'cq'",
        data=None,
    ),
    # item 9 (CLI): validated before any work, exit 2, one line, no traceback
    Case(
        "CLI: --out is a file",
        lambda d: _cli(["reproduce", "--preset", "tiny", "--out", _file(d)]),
        UsageExit,
        r"^exit 2: mscpotency reproduce: error: --out '.*a_file\.txt' is a file" + ONE_LINE,
        data=None,
    ),
    Case(
        "CLI: --out under a file",
        lambda d: _cli(["reproduce", "--preset", "tiny", "--out", _file(d) + "/sub"]),
        UsageExit,
        r"^exit 2: .*--out '.*' lies under the file '.*a_file\.txt'" + ONE_LINE,
        data=None,
    ),
    Case(
        "CLI: --clusters 0",
        lambda d: _cli(["reproduce", "--clusters", "0", "--out", str(d.tmp_path / "o")]),
        UsageExit,
        r"^exit 2: mscpotency reproduce: error: --clusters must be at least 2.*got 0" + ONE_LINE,
        data=None,
    ),
    Case(
        "CLI: --clusters eight",
        lambda d: _cli(["reproduce", "--clusters", "eight"]),
        UsageExit,
        r"^exit 2: .*argument --clusters: invalid int value: 'eight'" + ONE_LINE,
        data=None,
    ),
    Case(
        "CLI: --seed -1",
        lambda d: _cli(["reproduce", "--seed", "-1", "--out", str(d.tmp_path / "o")]),
        UsageExit,
        r"^exit 2: .*--seed must be a non-negative integer, got -1" + ONE_LINE,
        data=None,
    ),
    Case(
        "CLI: --preset big",
        lambda d: _cli(["reproduce", "--preset", "big"]),
        UsageExit,
        r"^exit 2: .*invalid choice: 'big' \(choose from 'study', 'tiny'\)" + ONE_LINE,
        data=None,
    ),
    Case(
        "CLI: unknown command",
        lambda d: _cli(["analyze"]),
        UsageExit,
        r"^exit 2: mscpotency: error: argument command: invalid choice: 'analyze'" + ONE_LINE,
        data=None,
    ),
    # item 8: replay runs only the package's own tools
    Case(
        "replay: a log naming io.write_reference",
        lambda d: mp.replay(
            d.adata,
            _edited_log(
                d.request,
                function="io.write_reference",
                params={"path": str(d.tmp_path / "x.h5ad")},
            ),
            copy=False,
        ),
        ValueError,
        r"replay runs only the package's own tools \(pp\.\*, tl\.\*, bulk\.tl\.\*\); the log "
        r"names 'io\.write_reference'",
        data="tiny_train",
    ),
    *[
        Case(
            f"replay: a log naming {name!r}",
            lambda d, name=name: mp.replay(d.adata, _edited_log(d.request, function=name)),
            ValueError,
            rf"replay runs only the package's own tools.*names {re.escape(repr(name))}",
            data="tiny_train",
        )
        for name in ("os.system", "tl._population.np.save", "tl.lot_fractions.__globals__", 42)
    ],
    Case(
        "integrate: misspelt method",
        lambda d: mp.pp.integrate(d.adata, method="harmonypy"),
        ValueError,
        r"method must be 'harmony' or 'scvi', got 'harmonypy'",
        data="tiny_ref",
    ),
    Case(
        "integrate: negative theta",
        lambda d: mp.pp.integrate(d.adata, theta=-1.0),
        ValueError,
        r"theta must be a non-negative number.*-1",
        data="tiny_ref",
    ),
    Case(
        "integrate: no such lot column",
        lambda d: mp.pp.integrate(d.adata, batch_key="donor"),
        KeyError,
        r"obs has no column 'donor'",
        data="tiny_ref",
    ),
    Case(
        "integrate: no such basis",
        lambda d: mp.pp.integrate(d.adata, basis="X_umap"),
        KeyError,
        r"obsm has no 'X_umap'.*pp\.preprocess",
        data="tiny_ref",
    ),
    Case(
        "lot_specificity: max_top_share=0",
        lambda d: mp.tl.lot_specificity(d.adata, max_top_share=0.0),
        ValueError,
        r"max_top_share must lie between 0 and 1 \(0 excluded\)",
        data="tiny_ref",
    ),
    Case(
        "lot_specificity: before lot_fractions",
        lambda d: mp.tl.lot_specificity(d.adata),
        KeyError,
        r"Run `tl\.lot_fractions` first",
        data="tiny_train",
    ),
    Case(
        "replay: other data",
        lambda d: mp.replay(d.adata[:-1].copy(), d.request.getfixturevalue("tiny_ref")),
        ValueError,
        r"fingerprint .* differs from the logged input",
        data="tiny_train",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input(case, request):
    run_case(case, request)


def test_replay_refuses_before_running_anything(tiny_train, tiny_ref, tmp_path):
    """A hand-edited log runs nothing: not its valid entries before, nor the writer."""
    target = tmp_path / "written.h5ad"
    log = _provenance.read_log(tiny_ref)
    log[1] = {**log[1], "function": "io.write_reference", "params": {"path": str(target)}}
    adata = tiny_train.copy()
    with pytest.raises(ValueError, match="io.write_reference"):
        mp.replay(adata, log, copy=False)
    assert not target.exists()
    assert "mscpotency" not in adata.uns  # pp.qc (the first entry) did not run


# -- the mechanism itself, over the whole public API -------------------------------------

NAMESPACES = [mp.pp, mp.tl, mp.pl, mp.get, mp.io, mp.datasets]
NAMESPACES += [mp.bulk.tl, mp.bulk.pl, mp.bulk.get, mp.bulk.datasets, mp.bulk.pp]
PUBLIC = [
    (f"{ns.__name__.removeprefix('mscpotency.')}.{name}", getattr(ns, name))
    for ns in NAMESPACES
    for name in ns.__all__
    if inspect.isfunction(getattr(ns, name))
]
#: Public functions without ``@doc_params`` or ``@record`` (so unchecked): the simulators'
#: settings and raw generators, and an accessor of a typed result.
NOT_DECORATED: set[str] = set()


@pytest.mark.parametrize(("name", "func"), PUBLIC, ids=[n for n, _ in PUBLIC])
def test_every_public_function_is_checked(name, func):
    """Annotations resolve, defaults obey the checks, and the wrapper is in place."""
    hints = typing.get_type_hints(inspect.unwrap(func))  # raises if an annotation does not resolve
    assert set(inspect.signature(func).parameters) <= set(hints) | {"kwargs", "overrides"}
    defaults = {
        p.name: p.default
        for p in inspect.signature(func).parameters.values()
        if p.default is not inspect.Parameter.empty
    }
    _checks.check_arguments(inspect.unwrap(func), (), defaults)  # the defaults pass
    if name in NOT_DECORATED:
        return
    assert getattr(func, _checks.CHECKED, False), f"{name}: decorate with @doc_params"


def test_every_rule_names_a_public_parameter():
    names = {p for _, f in PUBLIC for p in inspect.signature(f).parameters}
    assert set(_checks.RULES) <= names, set(_checks.RULES) - names


def test_checks_pass_numpy_scalars_and_allowed_values(tiny_ref):
    adata = tiny_ref.copy()
    mp.tl.lot_fractions(adata, min_cells_per_lot=np.int64(5))
    mp.tl.cluster(adata, n_clusters=np.int32(4), random_state=np.uint8(3), copy=True)
    assert json.loads(adata.uns["mscpotency"]["log"][-1])["params"]["min_cells_per_lot"] == 5
    mp.tl.potency_association(adata, "vegf", alternative=np.str_("greater"), n_bootstrap=0)
    assert mp.get.potency_association(adata).shape[0] > 0
