"""Bulk inputs as labs have them: array probes, CAGE promoter counts, qRT-PCR Ct/ΔCt tables."""

from ._features import collapse_probes, normalize_cage
from ._qpcr import qpcr_panel

__all__ = ["collapse_probes", "normalize_cage", "qpcr_panel"]
