"""One way to read a Redis stream: paging, retries, decoding, retractions.

Every reader that walks a stream (audit and its replay, the completeness check, access
checks at a block, dead letters, the API's events page, the access cache's catch-up, a
stage's retraction and rebuild reads, the listener's look back over its own entries, the
agent's rebuild after a retraction) goes through :func:`pages` (or :func:`raw_pages`);
what differed between them is now a parameter:

* ``after`` / ``through``: where to start (exclusive; :data:`START` for the beginning)
  and where to stop (inclusive; ``+`` for the end);
* ``page``: entries per ``XRANGE``; ``limit``: stop after that many entries in all;
* ``retry``: ride out a Redis outage (:func:`redis_retry`, for commands and loops) or
  fail at once (a request handler that answers 503 instead of hanging);
* ``newest_first``: walk from ``through`` down to ``after`` (``XREVRANGE``);
* ``ahead``: pages a thread fetches ahead of the caller (Redis builds the next page
  while the caller works on this one; the audit replay reads millions of entries);
* :func:`raw_pages` instead of :func:`pages`: entries as Redis sent them, ``(id bytes,
  [field, value, ...])``, without redis-py turning each into a dict (the replay decodes
  whole pages at once);
* :func:`decoded` turns raw entries into events: an entry that does not decode is
  skipped, raised, or handed to a callback; :func:`~shared.events.effective` then
  applies retractions.

The stages' own read (:func:`shared.redis_log.read_after`, one page with an optional
blocking ``XREAD``) and the agent's pipelined read with its continuity check
(``consumers/agent/follow.py``) are the two reads that are not whole-range walks.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final, NamedTuple, TypedDict, TypeVar, Unpack

import redis

from shared.errors import DecodeError
from shared.events import AnyEntry, from_fields
from shared.ids import START, exclusive, id_key
from shared.redis_log import Entry, as_str, redis_retry

__all__ = [
    "PAGE",
    "START",
    "RawEntry",
    "Where",
    "decoded",
    "exclusive",
    "id_key",
    "pages",
    "raw_pages",
    "read",
]

#: Entries per XRANGE call.
PAGE: Final = 1000


class Where(TypedDict, total=False):
    """Which part of a stream to read, and how (see the module docstring)."""

    after: str
    through: str
    page: int
    limit: int | None
    retry: bool
    ahead: int
    newest_first: bool


#: A raw entry (:func:`raw_pages`): (id, [field, value, field, value, ...]) as Redis sends it.
RawEntry = tuple[bytes, list[bytes]]
E = TypeVar("E", Entry, RawEntry)


def pages(client: redis.Redis, key: str, **where: Unpack[Where]) -> Iterator[list[Entry]]:
    """The entries of ``key`` after ``after`` up to ``through``, one page at a time."""
    return _pages(_parsed_fetch(client, where.get("newest_first", False)), key, where)


def raw_pages(client: redis.Redis, key: str, **where: Unpack[Where]) -> Iterator[list[RawEntry]]:
    """:func:`pages`, each entry as Redis sent it (no dict per entry)."""
    return _pages(_raw_fetch(client, where.get("newest_first", False)), key, where)


def _pages(
    fetch: Callable[[str, str, str, int], list[E]], key: str, where: Where
) -> Iterator[list[E]]:
    through = where.get("through", "+")
    if through == START:
        return iter(())  # nothing is after the start and at or before it
    span = _Span(
        exclusive(where.get("after", START)),
        through,
        where.get("page", PAGE),
        where.get("limit"),
        where.get("retry", True),
        where.get("newest_first", False),
    )
    chunks = _walk(fetch, key, span)
    ahead = where.get("ahead", 0)
    return _fetched_ahead(chunks, ahead, key) if ahead > 0 else chunks


class _Span(NamedTuple):
    low: str
    through: str
    page: int
    limit: int | None
    retry: bool
    newest_first: bool


def _walk(
    fetch: Callable[[str, str, str, int], list[E]], key: str, span: _Span
) -> Iterator[list[E]]:
    low, through, page, left, retry, newest_first = span
    while left is None or left > 0:
        count = page if left is None else min(page, left)
        chunk = (
            redis_retry(fetch, key, low, through, count)
            if retry
            else fetch(key, low, through, count)
        )
        if not chunk:
            return
        yield chunk
        if len(chunk) < count:
            return
        if left is not None:
            left -= len(chunk)
        if newest_first:
            through = "(" + as_str(chunk[-1][0])
        else:
            low = "(" + as_str(chunk[-1][0])


def _parsed_fetch(
    client: redis.Redis, newest_first: bool
) -> Callable[[str, str, str, int], list[Entry]]:
    command = client.xrevrange if newest_first else client.xrange

    def fetch(key: str, low: str, high: str, count: int) -> list[Entry]:
        reply: Any = command(key, min=low, max=high, count=count)
        return [(as_str(i), f) for i, f in reply]

    return fetch


def _raw_fetch(
    client: redis.Redis, newest_first: bool
) -> Callable[[str, str, str, int], list[RawEntry]]:
    """XRANGE (XREVRANGE) replies unparsed, through a client on ``client``'s pool without
    redis-py's callback for them (a cluster client: parsed, then flattened back)."""
    if type(client) is not redis.Redis:
        parsed = client.xrevrange if newest_first else client.xrange

        def flattened(key: str, low: str, high: str, count: int) -> list[RawEntry]:
            reply: Any = parsed(key, min=low, max=high, count=count)
            return [(i, [x for kv in (f or {}).items() for x in kv]) for i, f in reply]

        return flattened
    unparsed = redis.Redis(connection_pool=client.connection_pool)
    unparsed.set_response_callback("XRANGE", lambda response, **_: response)
    unparsed.set_response_callback("XREVRANGE", lambda response, **_: response)
    command = unparsed.xrevrange if newest_first else unparsed.xrange

    def fetch(key: str, low: str, high: str, count: int) -> list[RawEntry]:
        reply: Any = command(key, min=low, max=high, count=count)
        return [(entry_id, fields or []) for entry_id, fields in reply]

    return fetch


def _fetched_ahead(chunks: Iterator[list[E]], ahead: int, key: str) -> Iterator[list[E]]:
    """``chunks`` advanced by a thread, up to ``ahead`` pages before the caller; an error
    there is raised here, and a caller that stops early stops the thread."""
    waiting: queue.Queue[list[E] | BaseException | None] = queue.Queue(ahead)
    stop = threading.Event()

    def fetch_all() -> None:
        try:
            for chunk in chunks:
                if stop.is_set():
                    return
                waiting.put(chunk)
            waiting.put(None)
        except BaseException as exc:  # handed to the reader, raised there
            waiting.put(exc)

    thread = threading.Thread(target=fetch_all, name=f"xrange {key}", daemon=True)
    thread.start()
    try:
        while (chunk := waiting.get()) is not None:
            if isinstance(chunk, BaseException):
                raise chunk
            yield chunk
    finally:
        stop.set()
        while thread.is_alive():  # unblock a put, then let it end
            with contextlib.suppress(queue.Empty):
                waiting.get(timeout=0.05)


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
