"""One way to read a Redis stream: paging, retries, decoding, retractions.

Every reader that walks a stream (audit, the completeness check, access checks at a
block, dead letters, the API's events page, the access cache's catch-up) goes through
:func:`pages`; what differed between them is now a parameter:

* ``after`` / ``through``: where to start (exclusive; :data:`START` for the beginning)
  and where to stop (inclusive; ``+`` for the end);
* ``page``: entries per ``XRANGE``; ``limit``: stop after that many entries in all;
* ``retry``: ride out a Redis outage (:func:`redis_retry`, for commands and loops) or
  fail at once (a request handler that answers 503 instead of hanging);
* :func:`decoded` turns raw entries into events: an entry that does not decode is
  skipped, raised, or handed to a callback; :func:`~shared.events.effective` then
  applies retractions.

The stages' own read (:func:`shared.redis_log.read_after`, one page with an optional
blocking ``XREAD``) and the agent's pipelined read with its continuity check
(``consumers/agent/follow.py``) are the two reads that are not whole-range walks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final, TypedDict, Unpack

import redis

from shared.errors import DecodeError
from shared.events import AnyEntry, from_fields
from shared.ids import START, exclusive, id_key
from shared.redis_log import Entry, as_str, redis_retry

__all__ = ["PAGE", "START", "Where", "decoded", "exclusive", "id_key", "pages", "read"]

#: Entries per XRANGE call.
PAGE: Final = 1000


class Where(TypedDict, total=False):
    """Which part of a stream to read, and how (see the module docstring)."""

    after: str
    through: str
    page: int
    limit: int | None
    retry: bool


def pages(
    client: redis.Redis,
    key: str,
    *,
    after: str = START,
    through: str = "+",
    page: int = PAGE,
    limit: int | None = None,
    retry: bool = True,
) -> Iterator[list[Entry]]:
    """The entries of ``key`` after ``after`` up to ``through``, one page at a time."""
    low = exclusive(after)
    left = limit
    while left is None or left > 0:
        count = page if left is None else min(page, left)
        raw: Any = (
            redis_retry(client.xrange, key, min=low, max=through, count=count)
            if retry
            else client.xrange(key, min=low, max=through, count=count)
        )
        if not raw:
            return
        chunk: list[Entry] = [(as_str(i), f) for i, f in raw]
        yield chunk
        if len(raw) < count:
            return
        if left is not None:
            left -= len(raw)
        low = f"({chunk[-1][0]}"


def read(client: redis.Redis, key: str, **where: Unpack[Where]) -> list[Entry]:
    """Every entry :func:`pages` yields, in one list."""
    return [entry for chunk in pages(client, key, **where) for entry in chunk]


def decoded(
    entries: Iterable[Entry],
    *,
    bad: Callable[[str, DecodeError], None] | None = None,
) -> list[tuple[str, AnyEntry]]:
    """``(id, event)`` of each entry; one that does not decode goes to ``bad`` (skipped
    when ``bad`` is None; ``bad`` may raise to stop the read)."""
    out: list[tuple[str, AnyEntry]] = []
    for entry_id, fields in entries:
        try:
            out.append((entry_id, from_fields(fields)))
        except DecodeError as exc:
            if bad is not None:
                bad(entry_id, exc)
    return out
