"""Properties of the lot-level kernel and of lot-table parsing, for any input (hypothesis).

- exact p-values equal brute-force enumeration of all n! orderings, ties included;
- Benjamini-Hochberg is monotone in the p-values, never below them, at most 1, NaN-aware;
- the bootstrap interval of rho contains the observed rho;
- a lot table written as CSV/TSV reads back to the same lots, numbers and text.
"""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mscpotency as mp
from mscpotency import _stats

PROPERTIES = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def brute_force_pvalue(x: np.ndarray, y: np.ndarray, alternative: str) -> float:
    """Share of all n! orderings of y whose rho is at least as extreme as the observed one."""
    observed = _stats.spearman_rho(x[:, None], y)[0]
    if not np.isfinite(observed):
        return np.nan
    orderings = np.array(list(itertools.permutations(range(len(y)))))
    null = _stats.spearman_rho(np.asarray(y)[orderings].T, x)  # rho of x with each ordering
    eps = 1e-9
    if alternative == "two-sided":
        return float((np.abs(null) >= abs(observed) - eps).mean())
    if alternative == "greater":
        return float((null >= observed - eps).mean())
    return float((null <= observed + eps).mean())


# few distinct values, so ties in x, in y and in both are frequent
tied_values = st.lists(st.integers(0, 4), min_size=3, max_size=7)


@PROPERTIES
@given(data=st.data(), alternative=st.sampled_from(["two-sided", "greater", "less"]))
def test_exact_pvalue_equals_brute_force_with_ties(data, alternative):
    x = np.array(data.draw(tied_values), dtype=float)
    y = np.array(data.draw(st.lists(st.integers(0, 4), min_size=x.size, max_size=x.size)), float)
    exact = _stats.exact_pvalues(x[:, None], y, alternative=alternative)[0]
    expected = brute_force_pvalue(x, y, alternative)
    if np.isnan(expected):
        assert np.isnan(exact)
    else:
        assert exact == pytest.approx(expected, abs=1e-12)


p_values = st.lists(
    st.one_of(st.floats(0, 1), st.just(np.nan), st.sampled_from([0.0, 1e-12, 0.05, 1.0])),
    min_size=1,
    max_size=40,
)


@PROPERTIES
@given(p=p_values)
def test_fdr_is_monotone_bounded_and_nan_aware(p):
    p = np.array(p, dtype=float)
    q = _stats.benjamini_hochberg(p)
    finite = np.isfinite(p)
    assert np.array_equal(np.isnan(q), ~finite)
    pf, qf = p[finite], q[finite]
    assert np.all(qf >= pf - 1e-15) and np.all(qf <= 1.0)
    order = np.argsort(pf, kind="stable")
    assert np.all(np.diff(qf[order]) >= -1e-15)  # a smaller p never gets a larger FDR
    # the NaN entries do not enlarge the family
    np.testing.assert_array_equal(qf, _stats.benjamini_hochberg(pf))


@PROPERTIES
@given(
    data=st.data(),
    n=st.integers(5, 12),
    level=st.sampled_from([0.8, 0.9, 0.95, 0.99]),
    seed=st.integers(0, 2**32 - 1),
)
def test_bootstrap_interval_contains_rho(data, n, level, seed):
    x = np.array(data.draw(st.lists(st.integers(0, 20), min_size=n, max_size=n)), float)
    y = np.array(data.draw(st.lists(st.integers(0, 20), min_size=n, max_size=n)), float)
    rho = _stats.spearman_rho(x[:, None], y)[0]
    low, high, valid = _stats.bootstrap_ci(
        x[:, None], y, n_bootstrap=400, level=level, random_state=seed
    )
    if not np.isfinite(rho):
        return
    assert valid[0] > 0
    assert low[0] - 1e-12 <= rho <= high[0] + 1e-12, (x, y, rho, low, high)


# -- lot tables ---------------------------------------------------------------------------

#: strings that pandas reads as missing (``read_csv``'s default ``na_values``): a lot or a
#: text value spelled like one of these cannot survive a CSV round trip
NA_SPELLINGS = {
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND",
    "1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
}  # fmt: skip


def _is_number(text: str) -> bool:
    return bool(pd.notna(pd.to_numeric(pd.Series([text]), errors="coerce")[0]))


_text = st.text(
    alphabet=st.characters(
        categories=["L", "N", "P", "S", "Zs"], exclude_characters="\x85\xa0\u2028\u2029"
    ),
    min_size=1,
    max_size=12,
).map(str.strip)
lot_names = st.one_of(
    _text.filter(lambda s: s not in NA_SPELLINGS),
    st.integers(0, 999).map(lambda i: f"{i:03d}"),  # leading zeros must survive
)
words = _text.filter(lambda s: s not in NA_SPELLINGS and not _is_number(s))


@settings(PROPERTIES, max_examples=40)
@given(
    lots=st.lists(lot_names, min_size=1, max_size=8, unique=True),
    data=st.data(),
    sep=st.sampled_from([",", "\t"]),
)
def test_lot_table_round_trips(tmp_path_factory, lots, data, sep):
    n = len(lots)
    numbers = st.floats(0, 1e9, allow_nan=False, allow_infinity=False)
    table = pd.DataFrame(
        {
            "vegf": data.draw(st.lists(numbers, min_size=n, max_size=n)),
            "passage": data.draw(st.lists(st.integers(0, 40), min_size=n, max_size=n)),
            "tissue": data.draw(st.lists(words, min_size=n, max_size=n)),
        },
        index=pd.Index(lots, name="lot"),
    )
    path = tmp_path_factory.mktemp("lots") / ("lots.csv" if sep == "," else "lots.tsv")
    table.to_csv(path, sep=sep)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # non-negative values: no warning either
        back = mp.io.read_lot_table(path)
    assert back.index.tolist() == lots and back.index.name == "lot"
    # pandas' fast number parser (pd.to_numeric) may be 1 ulp off the correctly rounded value
    # (e.g. "90071992.95703125" -> ...124): equal to 2 ulp, far below any assay's precision
    np.testing.assert_allclose(back["vegf"].to_numpy(float), table["vegf"], rtol=5e-16, atol=0)
    np.testing.assert_array_equal(back["passage"].to_numpy(float), table["passage"].to_numpy())
    assert back["tissue"].tolist() == table["tissue"].tolist()
