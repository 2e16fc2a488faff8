"""Reading whole streams in pages (the audit's only Redis reads of stream entries)."""

from __future__ import annotations

from typing import Any, Final

import redis

from consumers.audit.entries import Entry
from shared.redis_log import as_str, redis_retry

#: Entries read per XRANGE page.
PAGE: Final = 5000


def read_stream(client: redis.Redis, key: str, low: str = "-", high: str = "+") -> list[Entry]:
    """Every entry of ``key`` between ``low`` and ``high`` (inclusive), in pages."""
    out: list[Entry] = []
    while True:
        page: Any = redis_retry(client.xrange, key, min=low, max=high, count=PAGE)
        out += [(as_str(i), f) for i, f in page]
        if len(page) < PAGE:
            return out
        low = f"({as_str(page[-1][0])}"


__all__ = ["read_stream"]
