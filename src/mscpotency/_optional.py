"""Optional heavy dependencies, imported on first use with an install hint when missing."""

from __future__ import annotations


def require_scvi():
    """The ``scvi`` module (scvi-tools), or an ImportError saying how to install it."""
    try:
        import scvi
    except ImportError as error:  # pragma: no cover - exercised only without the extra
        msg = (
            "method='scvi' needs scvi-tools: pip install 'mscpotency[scvi]' (without a GPU, first "
            "pip install torch==2.13.0 for the CPU build, so that pip does not fetch a CUDA one)."
        )
        raise ImportError(msg) from error
    return scvi
