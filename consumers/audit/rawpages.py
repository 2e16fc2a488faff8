"""Whole streams read fast for the audit replay: raw ``XRANGE`` pages, decoded a page at a time.

The replay reads millions of entries. redis-py turns each ``XRANGE`` reply into
(id, dict) pairs in Python; here hiredis' raw reply is kept instead, and the next
page is fetched by a thread while the caller works on the current one (Redis builds
a page meanwhile): :func:`shared.streams.raw_pages` with ``ahead``.

Each entry is decoded as :func:`shared.events.from_fields` decodes it (the same
decoder for a current envelope, ``from_fields`` itself for anything else), so the
result is the one of :func:`consumers.audit.entries.decode`, only faster.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Final, get_args

import msgspec
import redis

from consumers.audit.entries import Decoded, Undecodable
from shared import streams
from shared.errors import DecodeError
from shared.events import SCHEMA_VERSION, AnyEntry, from_fields
from shared.redis_log import as_str
from shared.streams import RawEntry

#: Entries per ``XRANGE`` page.
PAGE: Final = 10_000
#: Pages fetched ahead of the caller.
AHEAD: Final = 2

_VERSION: Final = str(SCHEMA_VERSION).encode()
#: The ``type`` of a current envelope -> the decoder of its ``data`` (``from_fields``' own).
_DECODERS: Final[dict[bytes, msgspec.json.Decoder[Any]]] = {
    cls.__name__.encode(): msgspec.json.Decoder(cls) for cls in get_args(AnyEntry)
}


def pages(
    client: redis.Redis, key: str, high: str = "+", page: int = PAGE
) -> Iterator[list[RawEntry]]:
    """The raw entries of ``key`` up to ``high`` (inclusive), a page at a time, fetched ahead
    (the one stream reader, :func:`shared.streams.raw_pages`, with the replay's parameters)."""
    return streams.raw_pages(client, key, through=high, page=page, ahead=AHEAD)


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
