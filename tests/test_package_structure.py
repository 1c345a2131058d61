"""The public API follows one set of conventions (as scanpy's test_package_structure).

What is checked, for every public function of pp/tl/pl/get/io/datasets and of
``bulk.tl/pl/get/datasets``: AnnData first, at most two positionals, keyword-only options,
``copy`` -> ``AnnData | None``, a return annotation, ``key_added`` defaulting to the
registry's key, the glossary's names (no synonyms), bodies of at most 80 lines; and for the
package: the registry's symmetry (producer -> accessor -> plot share one name), no import
cycle between subpackages, ``get``/``pl``/``io`` importing no tool implementation.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from pathlib import Path

import pytest

import mscpotency as mp
from mscpotency import _docs, _provenance, _registry

SRC = Path(mp.__file__).parent
NAMESPACES = {
    "pp": mp.pp,
    "tl": mp.tl,
    "pl": mp.pl,
    "get": mp.get,
    "io": mp.io,
    "datasets": mp.datasets,
    "bulk.pp": mp.bulk.pp,
    "bulk.tl": mp.bulk.tl,
    "bulk.pl": mp.bulk.pl,
    "bulk.get": mp.bulk.get,
    "bulk.datasets": mp.bulk.datasets,
}


def _public(namespaces):
    return [
        (f"{ns}.{name}", getattr(NAMESPACES[ns], name))
        for ns in namespaces
        for name in NAMESPACES[ns].__all__
        if inspect.isfunction(getattr(NAMESPACES[ns], name))
    ]


FUNCTIONS = _public(NAMESPACES)
TOOLS = _public(["pp", "tl", "bulk.pp", "bulk.tl"])
PLOTS = _public(["pl", "bulk.pl"])
ACCESSORS = _public(["get", "bulk.get"])
# build one result from several AnnData objects (or none), so no single adata comes first
CREATORS = {"pp.pool_lots", "bulk.pp.qpcr_panel", "bulk.tl.consensus"}
#: accessors that read no stored result of one tool (views of the data or the log)
VIEWS = {"get.lot_table", "get.provenance", "bulk.get.marker_counts", "bulk.get.consensus"}
#: plots of no stored result
FREE_PLOTS = {"pl.umap", "bulk.pl.consensus"}
MAX_BODY_LINES = 80


def _ids(items):
    return [name for name, _ in items]


def _unwrapped(func):
    return inspect.unwrap(func)


@pytest.mark.parametrize(("name", "func"), TOOLS, ids=_ids(TOOLS))
def test_tools_follow_the_conventions(name, func):
    params = inspect.signature(func).parameters
    assert func.__doc__ and "Returns" in func.__doc__, f"{name} needs a numpydoc Returns section"
    if name in CREATORS:
        return
    first = next(iter(params.values()))
    assert first.name == "adata", f"{name}: AnnData comes first, as `adata`"
    if "copy" in params:
        assert (
            params["copy"].kind is inspect.Parameter.KEYWORD_ONLY
            and params["copy"].default is False
        )
        annotation = inspect.signature(func).return_annotation
        assert str(annotation).replace(" ", "") == "AnnData|None", (
            f"{name}: copy= returns `AnnData | None`, got {annotation!r}"
        )


@pytest.mark.parametrize(("name", "func"), FUNCTIONS, ids=_ids(FUNCTIONS))
def test_at_most_two_positionals_and_a_return_annotation(name, func):
    signature = inspect.signature(func)
    positional = [
        p
        for p in signature.parameters.values()
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    assert len(positional) <= 2, f"{name}: options after the second must be keyword-only"
    assert signature.return_annotation is not inspect.Signature.empty, f"{name}: annotate it"


@pytest.mark.parametrize(("name", "func"), FUNCTIONS, ids=_ids(FUNCTIONS))
def test_glossary_names(name, func):
    params = inspect.signature(func).parameters
    synonyms = {p: _docs.SYNONYMS[p] for p in params if p in _docs.SYNONYMS}
    assert not synonyms, f"{name}: use the glossary's names {synonyms}"
    if not name.startswith("bulk."):
        assert "outcome" not in params, f"{name}: single-cell tools call it `potency`"


@pytest.mark.parametrize(("name", "func"), FUNCTIONS, ids=_ids(FUNCTIONS))
def test_glossary_parameters_are_documented(name, func):
    doc = func.__doc__ or ""
    for param in inspect.signature(func).parameters:
        if param in _docs.GLOSSARY and param not in ("kwargs",):
            assert f"\n    {param}\n" in doc or f"\n{param}\n" in doc, (
                f"{name}: document `{param}` (write {{{param}}} and decorate with doc_params)"
            )
            assert "{" + param + "}" not in doc, f"{name}: {{{param}}} is not filled in"


def _body_lines(func) -> int:
    source = textwrap.dedent(inspect.getsource(_unwrapped(func)))
    node = ast.parse(source).body[0]
    body = node.body
    if (
        body
        and isinstance(body[0], ast.Expr)
        and isinstance(body[0].value, ast.Constant)
        and isinstance(body[0].value.value, str)
    ):
        body = body[1:]
    if not body:
        return 0
    return body[-1].end_lineno - body[0].lineno + 1


@pytest.mark.parametrize(("name", "func"), FUNCTIONS, ids=_ids(FUNCTIONS))
def test_functions_do_one_job(name, func):
    lines = _body_lines(func)
    assert lines <= MAX_BODY_LINES, f"{name}: {lines} body lines (at most {MAX_BODY_LINES})"


def _resolve(dotted: str):
    namespace, name = dotted.rsplit(".", 1)
    return getattr(NAMESPACES[namespace], name, None)


@pytest.mark.parametrize("result", _registry.RESULTS.values(), ids=list(_registry.RESULTS))
def test_registry_is_symmetric(result):
    for producer in result.producers:
        func = _resolve(producer)
        assert func is not None, f"{producer} is declared but does not exist"
        params = inspect.signature(func).parameters
        assert "key_added" in params, f"{producer} writes a result: it takes key_added"
        assert params["key_added"].default == result.key, (
            f"{producer}: key_added defaults to the registry's {result.key!r}"
        )
    if result.accessor is None:
        assert result.no_accessor, f"{result.producer}: say why there is no accessor"
    else:
        assert result.accessor.rsplit(".", 1)[-1] == result.name
        accessor = _resolve(result.accessor)
        assert accessor is not None, f"{result.accessor} is declared but does not exist"
        params = inspect.signature(accessor).parameters
        if len(result.tables) > 1:
            assert "kind" in params, f"{result.accessor}: choose a table with kind="
            assert params["kind"].default == result.tables[0]
    if not result.plots:
        assert result.no_plot, f"{result.producer}: say why there is no plot"
    else:
        assert result.plots[0].rsplit(".", 1)[-1] == result.name
        for plot in result.plots:
            assert _resolve(plot) is not None, f"{plot} is declared but does not exist"


def test_every_accessor_and_plot_is_declared():
    declared_accessors = {r.accessor for r in _registry.RESULTS.values()} | VIEWS
    declared_plots = {p for r in _registry.RESULTS.values() for p in r.plots} | FREE_PLOTS
    assert not {name for name, _ in ACCESSORS} - declared_accessors
    assert not {name for name, _ in PLOTS} - declared_plots


@pytest.mark.parametrize(("name", "func"), PLOTS, ids=_ids(PLOTS))
def test_plots_take_ax_show_return_fig_and_no_save(name, func):
    params = inspect.signature(func).parameters
    for option in ("ax", "show", "return_fig"):
        assert option in params, f"{name} needs {option}="
    assert "save" not in params


def test_every_tool_is_recorded():
    for name, func in TOOLS:
        recorded = getattr(func, _provenance.RECORDED, None)
        assert recorded == name, f"{name} is not decorated with @record({name!r})"


def test_top_level_modules():
    for module in ("bulk", "datasets", "get", "io", "pl", "pp", "tl"):
        assert hasattr(mp, module)
    assert mp.__version__
    assert (SRC / "py.typed").is_file()


# --- imports ---------------------------------------------------------------------------

SUBPACKAGES = ("pp", "tl", "pl", "get", "io", "datasets", "bulk")


def _subpackage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "mscpotency" else None


def _imports() -> dict[str, set[str]]:
    """module name -> absolute mscpotency modules it imports (at any depth of the file)."""
    found: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        module = ".".join(parts)
        package = parts if is_package else parts[:-1]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package[: len(package) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                targets.add(target)
                targets.update(f"{target}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
        found[module] = {t for t in targets if t.startswith("mscpotency")}
    return found


def test_no_import_cycle_between_subpackages():
    graph: dict[str, set[str]] = {name: set() for name in SUBPACKAGES}
    for module, targets in _imports().items():
        source = _subpackage(module)
        if source not in graph:
            continue
        for target in targets:
            dest = _subpackage(target)
            if dest in graph and dest != source:
                graph[source].add(dest)

    def reaches(start, goal, seen=()):
        return any(
            n == goal or (n not in seen and reaches(n, goal, (*seen, n))) for n in graph[start]
        )

    cycles = sorted(f"{a} <-> {b}" for a in graph for b in graph[a] if reaches(b, a))
    assert not cycles, f"import cycles between subpackages: {cycles}"


@pytest.mark.parametrize("layer", ["get", "pl", "io", "datasets", "pp"])
def test_lower_layers_import_no_tool_implementation(layer):
    offenders = sorted(
        f"{module} imports {target}"
        for module, targets in _imports().items()
        if _subpackage(module) == layer
        for target in targets
        if target.startswith(("mscpotency.tl", "mscpotency.bulk.tl"))
    )
    assert not offenders, offenders
