"""Redis stream ids, the one definition (pure: the folds and the audit use it too).

An id is ``<ms>-<seq>``; ids order by the pair, not as text (``9-0`` < ``10-0``).
"""

from __future__ import annotations

from typing import Final

__all__ = ["START", "exclusive", "id_key"]

#: Stream id before the first entry.
START: Final = "0-0"


def id_key(entry_id: str) -> tuple[int, int]:
    """A stream id as a sortable pair (anything that is not an id sorts first)."""
    ms, _, seq = entry_id.partition("-")
    return (int(ms), int(seq or 0)) if ms.isdigit() and (not seq or seq.isdigit()) else (-1, -1)


def exclusive(after: str) -> str:
    """The ``XRANGE`` lower bound that starts right after stream id ``after``."""
    return "-" if after in (START, "", "-") else f"({after}"
