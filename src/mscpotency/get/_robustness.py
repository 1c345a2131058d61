"""Robustness results (filled by the robustness tools)."""

__all__: list[str] = []
