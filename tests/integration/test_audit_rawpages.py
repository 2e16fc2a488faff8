"""The replay's fast read of a whole stream (raw ``XRANGE`` pages, decoded a page at a
time) gives exactly what the plain read and ``entries.decode`` give, for usual pages and
for every kind of odd entry, across page boundaries and up to a bound."""

from __future__ import annotations

import redis

from consumers.audit import rawpages
from consumers.audit.entries import Undecodable, decode
from consumers.audit.streams import read_stream
from shared.events import (
    LogEntry,
    NodeAccessGranted,
    NodeLeft,
    to_fields,
)

STREAM = "wgchain:{31337:0xc0}:events"


def _log(n: int) -> LogEntry:
    event = NodeAccessGranted(n, f"node-{n}", "0x" + "a" * 40, "k" * 43 + "=")
    return LogEntry(31337, "0xc0", n, f"0x{n:x}", "0x1", 0, 1_700_000_000 + n, event)


def _add(client: redis.Redis, fields: dict[str, object]) -> str:
    return client.xadd(STREAM, fields).decode()  # type: ignore[arg-type, union-attr]


def test_raw_pages_decode_like_the_plain_read(redis_client: redis.Redis) -> None:
    for n in range(1, 8):  # usual pages first
        _add(redis_client, to_fields(_log(n)))
    good = to_fields(_log(8))
    _add(redis_client, {"data": good["data"], "type": "LogEntry", "v": 1})  # other field order
    _add(redis_client, {**good, "type": "FromTheFuture"})  # unknown type
    _add(redis_client, {**good, "v": 2})  # newer schema
    _add(redis_client, {**good, "data": b"{not json"})  # payload that does not decode
    left = to_fields(NodeLeft("node-1", "revoked", "1-0", 1))
    _add(redis_client, {**good, "data": left["data"]})  # payload of another type
    _add(redis_client, {"v": 1, "type": "LogEntry"})  # no data
    bound = _add(redis_client, to_fields(_log(9)))
    _add(redis_client, to_fields(_log(10)))  # after the bound

    expected = decode(read_stream(redis_client, STREAM, high=bound))
    got = [d for page in rawpages.pages(redis_client, STREAM, bound, page=3)
           for d in rawpages.decode_page(page)]  # fmt: skip
    assert got == expected
    assert len(got) == 14
    assert sum(isinstance(e, Undecodable) for _, e in got) == 5  # only the broken ones
    assert isinstance(got[7][1], LogEntry)  # the other field order decodes as usual
    assert rawpages.read_decoded(redis_client, STREAM) == decode(read_stream(redis_client, STREAM))


def test_a_usual_page_decodes_in_one_pass_to_the_same_entries(redis_client: redis.Redis) -> None:
    ids = [_add(redis_client, to_fields(_log(n))) for n in range(1, 6)]
    (page,) = list(rawpages.pages(redis_client, STREAM))
    assert all(rawpages.usual(entry) for entry in page)
    assert rawpages.decode_page(page) == [(i, _log(n)) for n, i in enumerate(ids, 1)]
    assert list(rawpages.pages(redis_client, STREAM, "0-0")) == []  # START: nothing read
