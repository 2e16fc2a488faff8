"""Durations as people read them in status lines and log lines. Pure."""

from __future__ import annotations


def duration(seconds: float) -> str:
    """``seconds`` as ``"42s"``, ``"3m05s"`` or ``"2h04m"``."""
    whole = int(max(0.0, seconds))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


__all__ = ["duration"]
