"""The public API follows one set of conventions (as scanpy's test_package_structure)."""

from __future__ import annotations

import inspect

import pytest

import mscpotency as mp

TOOLS = [
    (name, getattr(module, name))
    for module in (mp.pp, mp.tl)
    for name in module.__all__
    if inspect.isfunction(getattr(module, name))
]
PLOTS = [
    (name, getattr(mp.pl, name))
    for name in mp.pl.__all__
    if inspect.isfunction(getattr(mp.pl, name))
]
# build a result from several AnnData objects, so no single adata comes first
CREATORS = {"pool_lots", "consensus"}


@pytest.mark.parametrize(("name", "func"), TOOLS, ids=[n for n, _ in TOOLS])
def test_tools_follow_the_conventions(name, func):
    params = inspect.signature(func).parameters
    assert func.__doc__ and "Returns" in func.__doc__, f"{name} needs a numpydoc Returns section"
    if name in CREATORS:
        return
    first = next(iter(params.values()))
    assert first.name in {"adata", "query", "panel", "data"}, f"{name}: AnnData comes first"
    if "copy" in params:
        assert (
            params["copy"].kind is inspect.Parameter.KEYWORD_ONLY
            and params["copy"].default is False
        )
    for param in list(params.values())[2:]:
        assert param.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.VAR_KEYWORD), (
            f"{name}: option {param.name!r} must be keyword-only"
        )


@pytest.mark.parametrize(("name", "func"), PLOTS, ids=[n for n, _ in PLOTS])
def test_plots_take_ax_show_return_fig_and_no_save(name, func):
    params = inspect.signature(func).parameters
    for option in ("ax", "show", "return_fig"):
        assert option in params, f"pl.{name} needs {option}="
    assert "save" not in params


def test_every_tool_is_recorded():
    for name, func in TOOLS:
        assert hasattr(func, "__wrapped__"), f"{name} is not decorated with @record"


def test_top_level_modules():
    for module in ("datasets", "get", "io", "pl", "pp", "tl"):
        assert hasattr(mp, module)
    assert mp.__version__
