"""Durations as people read them in status lines and log lines, and as they type them. Pure."""

from __future__ import annotations

import re
from typing import Final

#: Seconds in each unit of :func:`parse_duration`.
UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
_PART_RE: Final = re.compile(r"([0-9]{1,20})([smhdw])")
_MAX_TEXT: Final = 64


def duration(seconds: float) -> str:
    """``seconds`` as ``"42s"``, ``"3m05s"`` or ``"2h04m"``."""
    whole = int(max(0.0, seconds))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def parse_duration(text: str, maximum: int | None = None) -> int:
    """Whole seconds of ``text``: ``"3600"``, ``"45s"``, ``"90m"``, ``"12h"``, ``"30d"``,
    ``"2w"`` or a sum of them (``"1d12h"``).

    Raises :class:`ValueError` with a message fit for the user when ``text`` is not a
    duration, is zero, or exceeds ``maximum``.
    """
    raw = text.strip().lower()
    shown = text[:_MAX_TEXT].encode("unicode_escape").decode("ascii")
    if not raw:
        raise ValueError("empty duration (e.g. 30d, 12h, 90m, 45s, 1d12h, or seconds)")
    if len(raw) > _MAX_TEXT:
        raise ValueError(f"{shown!r}... is too long for a duration")
    if raw.isdigit():
        seconds = int(raw)
    else:
        seconds, at = 0, 0
        for match in _PART_RE.finditer(raw):
            if match.start() != at:
                break
            seconds += int(match.group(1)) * UNITS[match.group(2)]
            at = match.end()
        if at != len(raw) or at == 0:
            raise ValueError(
                f"{shown!r} is not a duration (a number with a unit s, m, h, d or w, "
                "e.g. 30d or 1d12h; a bare number is seconds)"
            )
    if seconds == 0:
        raise ValueError(f"{shown!r} is zero: a duration is at least 1 second")
    if maximum is not None and seconds > maximum:
        raise ValueError(f"{shown!r} is {seconds} seconds, over the largest {maximum}")
    return seconds


__all__ = ["UNITS", "duration", "parse_duration"]
