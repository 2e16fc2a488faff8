"""Reading whole streams for the audit (its only Redis reads of stream entries), through
:mod:`shared.streams` in large pages."""

from __future__ import annotations

from typing import Final

import redis

from consumers.audit.entries import Entry
from shared import streams

#: Entries read per XRANGE page (the audit reads whole streams).
PAGE: Final = 5000


def read_stream(client: redis.Redis, key: str, high: str = "+") -> list[Entry]:
    """Every entry of ``key`` up to ``high`` (inclusive)."""
    return streams.read(client, key, through=high, page=PAGE)


__all__ = ["read_stream"]
