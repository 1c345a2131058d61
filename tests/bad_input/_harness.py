"""The bad-input harness: each case is a call, the error it must raise, and what the message says.

A module of cases holds a list of :class:`Case` rows and one parametrised test::

    from ._harness import Case, run_case

    CASES = [
        Case(
            "association: misspelt alternative",
            lambda d: mp.tl.potency_association(d.adata, "vegf", alternative="two_sided"),
            ValueError,
            r"alternative.*'two_sided'.*'two-sided'",
            data="tiny_ref",
        ),
    ]


    @pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
    def test_bad_input(case, request):
        run_case(case, request)

A case's ``call`` gets an :class:`Inputs`: ``d.adata`` (the input built from ``data``: a
copy of a fixture's value, or what a builder function returns), ``d.tmp_path`` (a fresh
folder, for files to read or that must not be written) and ``d.request`` (pytest's, for
other fixtures). :func:`run_case` builds the input, snapshots every AnnData in it
(``n_obs``, ``obs``, ``X``; a backed one's X is read back from its file), runs the call
under ``pytest.raises(error, match=match)`` (``re.search`` on ``str(exception)``) and
asserts that each of those AnnData objects is unchanged afterwards: a refused call must not
touch the caller's data. It returns pytest's ``ExceptionInfo`` for further checks.
(Warnings are not bad-input cases: a call that only warns goes on and may write.)
"""

from __future__ import annotations

import copy as _copy
import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from scipy import sparse

#: A case's ``data``: a pytest fixture name (its value is copied, so a session fixture is
#: never touched), a function ``(request) -> object`` that builds the input (an AnnData, a
#: view, a backed AnnData, or a tuple/list/dict of them), or ``None`` (no input object).
Data = str | Callable[[pytest.FixtureRequest], Any] | None


@dataclasses.dataclass(frozen=True)
class Inputs:
    """What a case's call receives."""

    #: the input built from ``Case.data`` (``None`` when the case has none)
    adata: Any
    #: a fresh temporary folder for files the call reads or must not write
    tmp_path: Path
    #: the test's pytest request (``request.getfixturevalue(name)`` for other fixtures)
    request: pytest.FixtureRequest


@dataclasses.dataclass(frozen=True)
class Case:
    """One bad input: ``call(inputs)`` must raise ``error`` with a message matching ``match``.

    ``match`` is a regular expression searched (``re.search``) in ``str(exception)``; make it
    name the problem (the parameter, the value, what is allowed or what to do).
    """

    id: str
    call: Callable[[Inputs], Any]
    error: type[BaseException] | tuple[type[BaseException], ...]
    match: str
    data: Data = "tiny_train"


def build(data: Data, request: pytest.FixtureRequest) -> Any:
    """The input of a case: a copy of a fixture's value, or what ``data(request)`` returns."""
    if data is None:
        return None
    if isinstance(data, str):
        value = request.getfixturevalue(data)
        return value.copy() if isinstance(value, AnnData) else _copy.deepcopy(value)
    return data(request)


def _anndatas(value: Any) -> Iterator[AnnData]:
    if isinstance(value, AnnData):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _anndatas(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _anndatas(v)


def _matrix(adata: AnnData) -> Any:
    X = adata.X
    if X is None:
        return None
    if adata.isbacked:  # read the values back from the file: they must be unchanged there too
        X = X[:]
    if sparse.issparse(X):
        return sparse.csr_matrix(X, copy=True)
    return np.array(X, copy=True)


def snapshot(adata: AnnData) -> tuple[int, pd.DataFrame, Any]:
    """``(n_obs, obs, X)`` of ``adata``, copied."""
    return adata.n_obs, adata.obs.copy(), _matrix(adata)


def assert_unchanged(adata: AnnData, before: tuple[int, pd.DataFrame, Any], case_id: str) -> None:
    """Assert that ``adata`` still has the ``n_obs``, ``obs`` and ``X`` of ``before``."""
    n_obs, obs, X = before
    assert adata.n_obs == n_obs, f"{case_id}: n_obs changed from {n_obs} to {adata.n_obs}"
    pd.testing.assert_frame_equal(adata.obs, obs, obj=f"{case_id}: obs")
    now = _matrix(adata)
    if X is None or now is None:
        assert X is None and now is None, f"{case_id}: X changed"
    elif sparse.issparse(X):
        assert sparse.issparse(now) and now.shape == X.shape, f"{case_id}: X changed"
        assert (now != X).nnz == 0, f"{case_id}: X changed"
    else:
        np.testing.assert_array_equal(now, X, err_msg=f"{case_id}: X changed")


def run_case(case: Case, request: pytest.FixtureRequest) -> pytest.ExceptionInfo:
    """Run one case: build its input, expect the error, check the input is unchanged."""
    value = build(case.data, request)
    tmp_path = request.getfixturevalue("tmp_path")
    objects = list(_anndatas(value))
    before = [snapshot(a) for a in objects]
    with pytest.raises(case.error, match=case.match) as info:
        case.call(Inputs(value, tmp_path, request))
    for a, b in zip(objects, before, strict=True):
        assert_unchanged(a, b, case.id)
    return info
