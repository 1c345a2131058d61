"""qRT-PCR tables as labs export them (Ct or ΔCt, "Undetermined", blanks) to -ΔCt panels.

The propensity (:func:`mscpotency.bulk.tl.fit_propensity`) wants higher = more expressed,
i.e. -ΔCt. A Ct table is turned into ΔCt with the reference gene(s) of each line, then
negated; a ΔCt table is negated. The stated rules for wells without a number:

- ``"Undetermined"`` (no amplification before the cycle cut-off): ``undetermined="cutoff"``
  sets a Ct table's well to ``ct_cutoff`` and a ΔCt table's well to the gene's largest
  determined ΔCt (the least expression measured, tied at the bottom of the ranks);
  ``"drop"`` drops the genes with any undetermined well (listed); ``"error"`` refuses.
- A blank well (no measurement) is an error naming it, unless ``missing="drop"`` drops the
  gene (listed): a blank is not an undetected transcript.
- Any other text is an error naming the well.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
from anndata import AnnData

from ..._docs import doc_params
from ..._provenance import record

logger = logging.getLogger("mscpotency")

QpcrValues = Literal["ct", "delta_ct", "neg_delta_ct"]
Undetermined = Literal["cutoff", "drop", "error"]
#: Where the reading's rules are recorded (read by ``fit_propensity``'s orientation check).
QPCR_KEY = "qpcr"
_UNDETERMINED = {"undetermined", "undet", "undet.", "no ct", "n/a ct"}


def _parse(table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Numbers, the undetermined mask and the blank mask; other text is an error."""
    text = table.astype(object).map(lambda v: v.strip().lower() if isinstance(v, str) else v)
    undetermined = text.isin(_UNDETERMINED).to_numpy()
    blank = (text.isna() | (text == "")).to_numpy()
    numbers = pd.DataFrame(
        {
            c: pd.to_numeric(
                text[c].where(~text[c].isin(_UNDETERMINED) & (text[c] != "")), errors="coerce"
            )
            for c in text.columns
        },
        index=text.index,
    ).to_numpy(dtype=float)
    bad = np.isnan(numbers) & ~undetermined & ~blank
    if bad.any():
        wells = [
            (str(table.index[i]), str(table.columns[j]), table.iat[i, j])
            for i, j in np.argwhere(bad)[:5]
        ]
        msg = (
            f"{int(bad.sum())} qRT-PCR wells are neither a number, 'Undetermined' nor blank "
            f"(line, gene, value: {wells}); correct them in the table"
        )
        raise ValueError(msg)
    if np.isinf(numbers).any():
        msg = "the qRT-PCR table has infinite values"
        raise ValueError(msg)
    return numbers, undetermined, blank


def _drop_genes(mask: np.ndarray, genes: pd.Index, what: str, rule: str) -> list[str]:
    dropped = genes[mask.any(axis=0)].tolist()
    if dropped:
        warnings.warn(
            f"qpcr_panel: genes {dropped} have {what} wells and were dropped ({rule}); they are "
            "listed in uns['qpcr']['dropped'].",
            UserWarning,
            stacklevel=3,
        )
    return dropped


def _reference(numbers, undetermined, blank, genes: pd.Index, reference_genes, lines) -> np.ndarray:
    """Per line, the mean Ct of the reference gene(s); every well must be a number."""
    absent = [g for g in reference_genes if g not in genes]
    if absent:
        msg = f"reference genes {absent} are not columns of the table (genes: {genes[:10].tolist()} ...)"
        raise KeyError(msg)
    columns = genes.get_indexer(reference_genes)
    unusable = (undetermined | blank)[:, columns]
    if unusable.any():
        wells = [(str(lines[i]), reference_genes[j]) for i, j in np.argwhere(unusable)[:5]]
        msg = f"reference-gene wells without a Ct ({wells}): a line needs its reference Ct to compute ΔCt"
        raise ValueError(msg)
    return numbers[:, columns].mean(axis=1)


def _fill_undetermined(numbers, undetermined, values: str, ct_cutoff: float) -> np.ndarray:
    """The stated 'cutoff' rule: Ct -> ``ct_cutoff``; ΔCt -> the gene's largest determined ΔCt."""
    out = numbers.copy()
    if values == "ct":
        out[undetermined] = ct_cutoff
        return out
    determined = np.where(undetermined, np.nan, numbers)
    allnan = np.isnan(determined).all(axis=0)
    if allnan.any():
        msg = (
            "genes undetermined in every line have no ΔCt to fall back on; use undetermined='drop'"
        )
        raise ValueError(msg)
    worst = np.nanmax(determined, axis=0) if values == "delta_ct" else np.nanmin(determined, axis=0)
    rows, cols = np.nonzero(undetermined)
    out[rows, cols] = worst[cols]
    return out


#: Above this share of positive -ΔCt values a panel is taken for ΔCt or Ct (lineage genes
#: are less abundant than the reference gene, so their -ΔCt are mostly negative).
POSITIVE_SHARE = 0.75


def _check_sign(neg_delta: np.ndarray, values: str) -> None:
    """Warn when -ΔCt values are mostly positive (the table was probably not what was declared)."""
    positive = float(np.mean(neg_delta > 0))
    if positive > POSITIVE_SHARE:
        warnings.warn(
            f"qpcr_panel: {positive:.0%} of the -ΔCt values are positive (genes more abundant than "
            f"the reference); with values={values!r} this usually means the table holds the other "
            "sign (ΔCt vs -ΔCt). Check values=; a flipped sign flips the propensity.",
            UserWarning,
            stacklevel=3,
        )


@doc_params
@record("bulk.pp.qpcr_panel")
def qpcr_panel(
    ct_table: pd.DataFrame,
    *,
    values: QpcrValues,
    reference_genes: Sequence[str] | None = None,
    undetermined: Undetermined = "cutoff",
    ct_cutoff: float = 40.0,
    missing: Literal["error", "drop"] = "error",
) -> AnnData:
    """A qRT-PCR table (lines x genes of Ct or ΔCt) as a lines x genes panel of -ΔCt.

    Parameters
    ----------
    ct_table
        Lines (index) x genes (columns) as exported: numbers, ``"Undetermined"`` and blanks.
    values
        What the numbers are, stated (there is no safe guess): ``"ct"`` (raw cycles, with
        ``reference_genes`` among the columns), ``"delta_ct"`` (Ct(gene) - Ct(reference):
        higher = *less* expressed) or ``"neg_delta_ct"`` (already -ΔCt).
    reference_genes
        With ``values="ct"``: the reference (housekeeping) gene column(s); their mean Ct per
        line is subtracted and they leave the panel.
    undetermined
        ``"cutoff"``: a Ct well becomes ``ct_cutoff``, a ΔCt well the gene's least
        expression measured (ties at the bottom); ``"drop"``: drop those genes (listed);
        ``"error"``: refuse.
    ct_cutoff
        The assay's cycle cut-off (used by ``undetermined="cutoff"`` on Ct tables).
    missing
        Blank wells: ``"error"`` (default, naming them) or ``"drop"`` the gene (listed).

    Returns
    -------
    AnnData, lines x genes of -ΔCt (higher = more expressed) with ``uns['qpcr']``: values
    (as given), ``'unit'`` ``'-dct'``, reference_genes, undetermined, ct_cutoff, missing,
    ``'n_undetermined'`` and ``'dropped'`` (genes dropped, with the reason).
    """
    if not isinstance(ct_table, pd.DataFrame) or ct_table.empty:
        msg = "ct_table must be a non-empty DataFrame: lines (index) x genes (columns)"
        raise TypeError(msg)
    genes, lines = ct_table.columns.astype(str), ct_table.index.astype(str)
    numbers, undet, blank = _parse(ct_table)
    keep = np.ones(len(genes), dtype=bool)
    reference = list(reference_genes or [])
    if values == "ct":
        if not reference:
            msg = "values='ct' needs reference_genes= (the housekeeping gene column(s)) to compute ΔCt"
            raise ValueError(msg)
        ref_ct = _reference(numbers, undet, blank, genes, reference, lines)
        keep &= ~genes.isin(reference)
    elif reference:
        msg = f"reference_genes are only used with values='ct' (ΔCt tables are already relative), got {reference}"
        raise ValueError(msg)
    dropped = []
    if blank[:, keep].any():
        if missing == "error":
            wells = [(lines[i], genes[j]) for i, j in np.argwhere(blank & keep)[:5]]
            msg = f"{int((blank & keep).sum())} blank wells (line, gene: {wells}); fill them or pass missing='drop'"
            raise ValueError(msg)
        drop = _drop_genes(blank & keep, genes, "blank", "missing='drop'")
        dropped += [(g, "blank") for g in drop]
        keep &= ~genes.isin(drop)
    if (undet & keep).any() and undetermined != "cutoff":
        if undetermined == "error":
            wells = [(lines[i], genes[j]) for i, j in np.argwhere(undet & keep)[:5]]
            msg = f"{int((undet & keep).sum())} 'Undetermined' wells (line, gene: {wells}); pass undetermined='cutoff' or 'drop'"
            raise ValueError(msg)
        drop = _drop_genes(undet & keep, genes, "'Undetermined'", "undetermined='drop'")
        dropped += [(g, "undetermined") for g in drop]
        keep &= ~genes.isin(drop)
    filled = _fill_undetermined(numbers[:, keep], undet[:, keep], values, ct_cutoff)
    neg_delta = {"ct": lambda v: ref_ct[:, None] - v, "delta_ct": lambda v: -v}.get(
        values, lambda v: v
    )(filled)
    _check_sign(neg_delta, values)
    adata = AnnData(
        X=neg_delta.astype(np.float64),
        obs=pd.DataFrame(index=pd.Index(lines, name="line")),
        var=pd.DataFrame(index=pd.Index(genes[keep], name="gene")),
    )
    adata.uns[QPCR_KEY] = {
        "values": values,
        "unit": "-dct",
        "reference_genes": reference,
        "undetermined": undetermined,
        "ct_cutoff": ct_cutoff,
        "missing": missing,
        "n_undetermined": int((undet & keep).sum()),
        "dropped": pd.DataFrame(dropped, columns=["gene", "reason"]),
    }
    logger.info("qpcr_panel: %d lines x %d genes as -ΔCt (%s)", *adata.shape, values)
    return adata
