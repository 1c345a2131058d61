"""Call-time checks of every public function's options, written once.

:func:`checked` wraps a public function so that each call checks, before any work,

- every argument whose annotation holds a ``Literal[...]``: the value must be one of the
  listed options (or match another member of the annotation, as ``int`` in
  ``int | Literal["auto"]``); the message lists the allowed values;
- every argument named in :data:`RULES`, a table keyed by parameter name: its type
  (integer, real number) and range (``alpha`` in (0, 1), ``n_permutations >= 1`` ...);
  the message names the parameter, the value and what is allowed.

``None`` passes wherever the annotation allows it. Only arguments the caller passed are
checked (defaults are trusted). The decorators every public function already has apply it:
:func:`mscpotency._provenance.record` (every ``pp``/``tl``/``bulk.tl`` tool and the readers)
and :func:`mscpotency._docs.doc_params` (every public function documented from the
glossary); a function is wrapped once. The annotations are strings (``from __future__
import annotations``) and are resolved once per function, on its first call.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import numbers
import types
import typing
from collections.abc import Callable
from typing import Any, Literal, TypeVar

import numpy as np

F = TypeVar("F", bound=Callable[..., Any])

#: Attribute set on a wrapper whose arguments are checked (so no function is wrapped twice).
CHECKED = "__mscpotency_checked__"


@dataclasses.dataclass(frozen=True)
class Rule:
    """What a numeric parameter may be: its type, its range, and the words for both."""

    #: ``"int"``: an integer (Python or numpy, not bool); ``"real"``: any real number, not NaN
    kind: Literal["int", "real"]
    #: completes "``{name} must ...``" (e.g. ``"lie between 0 and 1 (exclusive)"``)
    allowed: str
    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False

    def admits_type(self, value: Any) -> bool:
        """True when ``value`` has this rule's type."""
        if isinstance(value, (bool, np.bool_)):
            return False
        if self.kind == "int":
            return isinstance(value, numbers.Integral)
        return isinstance(value, numbers.Real)

    def admits(self, value: Any) -> bool:
        """True when ``value`` has this rule's type and lies in its range (NaN never does)."""
        if not self.admits_type(value):
            return False
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return bool(above and below)


def _at_least(low: int) -> Rule:
    words = "be a non-negative integer" if low == 0 else f"be at least {low} (an integer)"
    return Rule("int", words, low=low)


def _share(*, low_open: bool = False, high_open: bool = False) -> Rule:
    ends = {(False, False): "", (True, True): " (exclusive)"}
    ends |= {(True, False): " (0 excluded)", (False, True): " (1 excluded)"}
    words = f"lie between 0 and 1{ends[low_open, high_open]}"
    return Rule("real", words, low=0, high=1, low_open=low_open, high_open=high_open)


_POSITIVE = Rule("real", "be greater than 0", low=0, low_open=True)

#: Parameter name -> what it may be, for every public function that takes it.
RULES: dict[str, Rule] = {
    # the glossary's statistical options
    "alpha": _share(low_open=True, high_open=True),
    "level": Rule(
        "real",
        "be a number between 0 and 1 (exclusive), e.g. 0.95 for 95% intervals",
        low=0,
        high=1,
        low_open=True,
        high_open=True,
    ),
    "coverage": _share(low_open=True, high_open=True),
    "n_permutations": _at_least(1),
    "n_bootstrap": _at_least(0),
    "exact_max_n": _at_least(0),
    "random_state": _at_least(0),
    "min_cells_per_lot": _at_least(0),
    # counts of things
    "n_clusters": _at_least(1),
    "n_neighbors": _at_least(1),
    "n_comps": _at_least(1),
    "n_comps_own": _at_least(1),
    "n_top_genes": _at_least(1),
    "n_genes": _at_least(1),
    "n_simulations": _at_least(1),
    "n_subsamples": _at_least(0),
    "n_flips": _at_least(1),
    "n_labels": _at_least(0),
    "n_iterations": Rule("int", "be an integer (-1: until stable)", low=-1),
    "max_search_steps": _at_least(1),
    "chunk_cells": _at_least(1),
    "ncols": _at_least(1),
    "min_cells": _at_least(0),
    "min_cells_per_gene": _at_least(0),
    "min_genes": _at_least(0),
    "min_counts": _at_least(0),
    "min_lots": _at_least(0),
    "min_significant": _at_least(0),
    # shares
    "min_shared_genes": _share(),
    "min_score": _share(),
    "min_mapping_score": _share(),
    "min_jaccard": _share(),
    "min_lots_expressed": _share(),
    "min_share": _share(),
    "novelty_alpha": _share(low_open=True, high_open=True),
    "set_alpha": _share(low_open=True, high_open=True),
    "subsample_fraction": _share(low_open=True),
    "prop": _share(low_open=True),
    # other magnitudes
    "max_pct_mito": Rule("real", "lie between 0 and 100 (a percentage)", low=0, high=100),
    "target_sum": _POSITIVE,
    "pseudocount": _POSITIVE,
    "resolution": _POSITIVE,
    "mad_counts": _POSITIVE,
    "n_mads": _POSITIVE,
    "max_removed_share": _share(),
    "size": _POSITIVE,
    "z_threshold": _POSITIVE,
    "min_shift": Rule("real", "be a non-negative number", low=0),
    "max_top_share": _share(low_open=True),
    "min_entropy": _share(),
    "theta": Rule("real", "be a non-negative number", low=0),
    "max_iter": _at_least(1),
    "n_latent": _at_least(1),
    "max_epochs": _at_least(1),
}


@dataclasses.dataclass(frozen=True)
class _Check:
    """How one parameter of one function is checked."""

    name: str
    allows_none: bool
    options: tuple[Any, ...]  # the Literal values, if any
    others: tuple[Any, ...]  # the annotation's other members (types), besides None
    rule: Rule | None


def _members(hint: Any) -> list[Any]:
    """The members of a (possibly nested) union, ``Optional`` included."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return [m for arg in typing.get_args(hint) for m in _members(arg)]
    return [hint]


def _plan(func: Callable[..., Any]) -> tuple[inspect.Signature, tuple[_Check, ...]]:
    signature = inspect.signature(func)
    try:
        hints = typing.get_type_hints(func)
    except Exception:  # unresolvable annotations: the table of RULES still applies
        hints = {}
    checks = []
    for name in signature.parameters:
        members = _members(hints.get(name, Any))
        options = tuple(
            v for m in members if typing.get_origin(m) is Literal for v in typing.get_args(m)
        )
        others = tuple(m for m in members if typing.get_origin(m) is not Literal)
        allows_none = type(None) in others or Any in others or hints.get(name) is None
        others = tuple(m for m in others if m is not type(None))
        rule = RULES.get(name)
        if options or rule is not None:
            checks.append(_Check(name, allows_none, options, others, rule))
    return signature, tuple(checks)


def _matches(value: Any, hint: Any) -> bool:
    """Whether ``value`` may be an instance of ``hint`` (lenient where the type is generic)."""
    if hint is Any:
        return True
    if hint is bool:
        return isinstance(value, (bool, np.bool_))
    if hint is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))
    if hint is float:
        return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
    origin = typing.get_origin(hint) or hint
    if isinstance(origin, type):
        try:
            return isinstance(value, origin)
        except TypeError:  # pragma: no cover - exotic typing constructs
            return True
    return True


def _in(value: Any, options: tuple[Any, ...]) -> bool:
    try:
        return any(isinstance(value, type(o)) and value == o for o in options)
    except (TypeError, ValueError):  # arrays and other values without a plain ==
        return False


def _type_words(hint: Any) -> str:
    words = {int: "an integer", float: "a number", str: "a string", bool: "True or False"}
    return words.get(hint, f"a {getattr(hint, '__name__', str(hint))}")


def _options_text(check: _Check) -> str:
    allowed = [repr(o) for o in check.options]
    allowed += [_type_words(h) for h in check.others]
    allowed += ["None"] if check.allows_none else []
    if len(allowed) == 1:
        return allowed[0]
    if len(allowed) == 2:
        return f"{allowed[0]} or {allowed[1]}"
    return "one of " + ", ".join(allowed)


def _check(qualname: str, check: _Check, value: Any) -> None:
    if value is None and check.allows_none:
        return
    if check.options:
        if _in(value, check.options):
            return
        if not any(_matches(value, h) for h in check.others):
            msg = f"{qualname}: {check.name} must be {_options_text(check)}, got {value!r}."
            raise ValueError(msg)
    rule = check.rule
    if rule is None or rule.admits(value):
        return
    none = " or be None" if check.allows_none else ""
    msg = f"{qualname}: {check.name} must {rule.allowed}{none}, got {value!r}"
    if not rule.admits_type(value):
        msg += f" ({type(value).__name__})"
        raise TypeError(msg + ".")
    raise ValueError(msg + ".")


def check_arguments(func: Callable[..., Any], args: tuple, kwargs: dict[str, Any]) -> None:
    """Check the arguments of one call of ``func`` (see the module's docstring)."""
    signature, checks = _cached_plan(func)
    if not checks:
        return
    try:
        bound = signature.bind_partial(*args, **kwargs)
    except TypeError:  # unknown or repeated arguments: the call raises Python's own message
        return
    passed = bound.arguments
    public = public_name(func)
    for check in checks:
        if check.name in passed:
            _check(public, check, passed[check.name])


def public_name(func: Callable[..., Any]) -> str:
    """``func``'s name as users call it: ``"tl.cluster"`` for ``mscpotency.tl._population...``."""
    given = getattr(func, "__mscpotency_name__", None)
    if given:
        return given
    parts = [p for p in func.__module__.split(".")[1:] if not p.startswith("_")]
    return ".".join([*parts, func.__name__])


@functools.cache
def _cached_plan(func: Callable[..., Any]) -> tuple[inspect.Signature, tuple[_Check, ...]]:
    return _plan(func)


def checked(func: F) -> F:
    """Wrap ``func`` so that its arguments are checked at every call (once: idempotent).

    Every message starts with the function's public name (:func:`public_name`).
    """
    if getattr(func, CHECKED, False):
        return func

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        check_arguments(func, args, kwargs)
        return func(*args, **kwargs)

    setattr(wrapper, CHECKED, True)
    return wrapper  # type: ignore[return-value]
