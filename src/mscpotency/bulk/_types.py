"""Typed values of the bulk analysis: a sign rule, and the consensus of several platforms."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd


@dataclass(frozen=True)
class SignRule:
    """A sign pattern a feature must follow to be a consensus marker.

    Parameters
    ----------
    pattern
        outcome -> +1 or -1: the relative direction of the feature's association with each
        outcome. ``{"neural_suspension": 1, "neural_adhesion": 1}`` asks for the same sign
        under both induction methods; ``{"ectoderm": 1, "mesoderm": -1, "endoderm": -1}`` for
        opposite signs between ectoderm and meso/endoderm (the SALL3 pattern). A feature
        passes in either overall direction (all signs as given, or all flipped).
    platforms
        Platforms on which the pattern must hold (default: those given to
        :func:`mscpotency.bulk.tl.consensus`).
    min_significant
        How many of the platform x outcome cells must be significant (default: all of
        them); the signs must agree in every cell regardless.
    """

    pattern: Mapping[str, int]
    platforms: Sequence[str] | None = None
    min_significant: int | None = None


@dataclass(frozen=True, eq=False)
class Consensus:
    """What :func:`mscpotency.bulk.tl.consensus` found, with the rules and the record of the call.

    Read it with :func:`mscpotency.bulk.get.consensus` (the markers of one rule, ready to
    validate) and draw it with :func:`mscpotency.bulk.pl.consensus`.

    Attributes
    ----------
    table
        One row per rule and consensus feature (columns in :func:`mscpotency.bulk.tl.consensus`).
    rules
        rule name -> the :class:`SignRule` applied, its platforms and ``min_significant``
        resolved.
    n_tested
        rule name -> how many features were measured in every platform x outcome cell.
    n_lines
        ``'<platform>:<outcome>'`` -> the lines behind that rank association (different
        where a line was not profiled on every platform).
    associations
        platform -> its rank-association table with a ``match`` column (the entity matched
        across platforms): what the rules were applied to.
    params
        ``alpha``, ``use``, ``match_on``, ``key`` and ``min_significant`` of the call.
    provenance
        The record of the call: function, parameters (each input AnnData as its
        fingerprint and shape), package versions, time; empty when called from inside
        another recorded call.
    summary
        With ``combine="stouffer"``, per rule: n_tested, n_called, expected_false (false
        calls expected by chance in the list, from the joint permutations), fdr, fdr_level
        (NaN for a list of a chosen size), n_top, n_lines, n_permutations (empty otherwise).
    """

    table: pd.DataFrame
    rules: dict[str, SignRule]
    n_tested: dict[str, int]
    n_lines: dict[str, int]
    associations: dict[str, pd.DataFrame]
    params: dict[str, Any]
    provenance: dict[str, Any] = field(default_factory=dict)
    summary: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def input_fingerprints(self) -> dict[str, str]:
        """The fingerprint of each input AnnData, by platform (from :attr:`provenance`)."""
        inputs = self.provenance.get("params", {}).get("results", {})
        return {
            str(name): value["__anndata__"]
            for name, value in inputs.items()
            if isinstance(value, Mapping) and "__anndata__" in value
        }

    def with_provenance(self, entry: dict[str, Any]) -> Consensus:
        """The same result carrying ``entry`` as its record (used by ``_provenance.record``)."""
        return dataclasses.replace(self, provenance=dict(entry))
