"""Whole streams read fast for the audit replay: raw ``XRANGE`` pages, decoded a page at a time.

The replay reads millions of entries. redis-py turns each ``XRANGE`` reply into
(id, dict) pairs in Python; here hiredis' raw reply is kept instead (a client of
the same connection pool without that callback), and the next page is fetched by a
thread while the caller works on the current one (Redis builds a page meanwhile).

Each entry is decoded as :func:`shared.events.from_fields` decodes it (the same
decoder for a current envelope, ``from_fields`` itself for anything else), so the
result is the one of :func:`consumers.audit.entries.decode`, only faster.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator
from typing import Any, Final, get_args

import msgspec
import redis

from consumers.audit.entries import Decoded, Undecodable
from shared.errors import DecodeError
from shared.events import SCHEMA_VERSION, AnyEntry, from_fields
from shared.ids import START, exclusive
from shared.redis_log import as_str, redis_retry

#: Entries per ``XRANGE`` page.
PAGE: Final = 10_000
#: Pages fetched ahead of the caller.
AHEAD: Final = 2
#: A raw entry: (id, [field, value, field, value, ...]) as Redis sends it.
RawEntry = tuple[bytes, list[bytes]]

_VERSION: Final = str(SCHEMA_VERSION).encode()
#: The ``type`` of a current envelope -> the decoder of its ``data`` (``from_fields``' own).
_DECODERS: Final[dict[bytes, msgspec.json.Decoder[Any]]] = {
    cls.__name__.encode(): msgspec.json.Decoder(cls) for cls in get_args(AnyEntry)
}


def _raw_client(client: redis.Redis) -> redis.Redis | None:
    """A client on ``client``'s pool that returns ``XRANGE`` replies unparsed (None: a
    cluster client, read the parsed way)."""
    if type(client) is not redis.Redis:
        return None
    raw = redis.Redis(connection_pool=client.connection_pool)
    raw.set_response_callback("XRANGE", lambda response, **_: response)
    return raw


def _fetch(
    client: redis.Redis, raw: redis.Redis | None, key: str, span: tuple[str, str, int]
) -> list[RawEntry]:
    """One page: the entries of ``key`` in ``span`` (low, high, count)."""
    low, high, count = span
    if raw is not None:
        reply: Any = redis_retry(raw.xrange, key, min=low, max=high, count=count)
        return [(entry_id, fields or []) for entry_id, fields in reply]
    parsed: Any = redis_retry(client.xrange, key, min=low, max=high, count=count)
    return [(i, [x for kv in (f or {}).items() for x in kv]) for i, f in parsed]


def pages(
    client: redis.Redis, key: str, high: str = "+", page: int = PAGE
) -> Iterator[list[RawEntry]]:
    """The raw entries of ``key`` up to ``high`` (inclusive), a page at a time, fetched ahead."""
    if high == START:
        return
    raw = _raw_client(client)
    ahead: queue.Queue[list[RawEntry] | BaseException | None] = queue.Queue(AHEAD)
    stop = threading.Event()

    def fetch_all() -> None:
        low = exclusive(START)
        try:
            while not stop.is_set():
                chunk = _fetch(client, raw, key, (low, high, page))
                if chunk:
                    ahead.put(chunk)
                if len(chunk) < page:
                    break
                low = "(" + as_str(chunk[-1][0])
            ahead.put(None)
        except BaseException as exc:  # handed to the reader, raised there
            ahead.put(exc)

    thread = threading.Thread(target=fetch_all, name=f"xrange {key}", daemon=True)
    thread.start()
    try:
        while (chunk := ahead.get()) is not None:
            if isinstance(chunk, BaseException):
                raise chunk
            yield chunk
    finally:
        stop.set()
        while thread.is_alive():  # unblock a put, then let it end
            with contextlib.suppress(queue.Empty):
                ahead.get(timeout=0.05)


def fields_of(entry: RawEntry) -> dict[bytes, bytes]:
    """The fields of a raw entry as a dict (as redis-py would have returned them)."""
    flat = entry[1]
    return dict(zip(flat[::2], flat[1::2], strict=False))


def usual(entry: RawEntry) -> bool:
    """True when the entry is a current envelope with its three fields in the usual order."""
    f = entry[1]
    return len(f) == 6 and f[0] == b"v" and f[1] == _VERSION and f[2] == b"type" and f[4] == b"data"


def decode_page(chunk: list[RawEntry]) -> list[Decoded]:
    """The page decoded, each entry as :func:`~shared.events.from_fields` decodes it (an entry
    that does not decode becomes :class:`~consumers.audit.entries.Undecodable`): in one pass
    when every entry is a usual envelope of a known type that decodes, else entry by entry."""
    decoders = _DECODERS
    try:
        if chunk and all(map(usual, chunk)):
            ids = b"\n".join([entry_id for entry_id, _ in chunk]).decode().split("\n")
            items = [decoders[f[3]].decode(f[5]) for _, f in chunk]
            return list(zip(ids, items, strict=True))
    except (KeyError, TypeError, ValueError, msgspec.DecodeError):
        pass  # an unknown type, str ids, a payload that does not decode: one by one
    out: list[Decoded] = []
    for entry_id, f in chunk:
        decoder = decoders.get(f[3]) if usual((entry_id, f)) else None
        if decoder is not None:
            try:
                out.append((as_str(entry_id), decoder.decode(f[5])))
                continue
            except msgspec.DecodeError:
                pass  # from_fields names what is wrong
        try:
            out.append((as_str(entry_id), from_fields(fields_of((entry_id, f)))))
        except DecodeError as exc:
            out.append((as_str(entry_id), Undecodable(str(exc))))
    return out


def read_decoded(client: redis.Redis, key: str, high: str = "+") -> list[Decoded]:
    """Every entry of ``key`` up to ``high``, decoded (as ``entries.decode`` would)."""
    out: list[Decoded] = []
    for chunk in pages(client, key, high):
        out += decode_page(chunk)
    return out


__all__ = ["PAGE", "RawEntry", "decode_page", "fields_of", "pages", "read_decoded", "usual"]
