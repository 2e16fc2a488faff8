"""The one stream reader (``shared/streams.py``) against a real Redis: the same entries
whatever the page size, read-ahead or raw form, bounds and limits kept, and a reader
that stops early stops its read-ahead thread."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from shared import streams

STREAM = "wgchain:{31337:0xc0}:streams-test"


@pytest.fixture
def ids(redis_client: redis.Redis) -> list[str]:
    return [
        redis_client.xadd(STREAM, {"n": str(n), "v": "x" * n}).decode()  # type: ignore[union-attr]
        for n in range(10)
    ]


def _flat(chunks: list[list[streams.Entry]]) -> list[streams.Entry]:
    return [entry for chunk in chunks for entry in chunk]


@pytest.mark.parametrize("ahead", [0, 1, 2])
def test_pages_are_the_same_entries_with_or_without_read_ahead(
    redis_client: redis.Redis, ids: list[str], ahead: int
) -> None:
    chunks = list(streams.pages(redis_client, STREAM, page=3, ahead=ahead))
    assert [len(c) for c in chunks] == [3, 3, 3, 1]
    assert [entry_id for entry_id, _ in _flat(chunks)] == ids
    bounded = _flat(list(streams.pages(redis_client, STREAM, after=ids[1], through=ids[6],
                                       page=2, limit=4, ahead=ahead)))  # fmt: skip
    assert [entry_id for entry_id, _ in bounded] == ids[2:6]
    assert list(streams.pages(redis_client, STREAM, through=streams.START, ahead=ahead)) == []


def test_raw_pages_hold_what_pages_hold_unparsed(redis_client: redis.Redis, ids: list[str]) -> None:
    raw = [e for chunk in streams.raw_pages(redis_client, STREAM, page=4, ahead=2) for e in chunk]
    parsed = streams.read(redis_client, STREAM)
    assert [entry_id for entry_id, _ in raw] == [i.encode() for i in ids]
    assert all(isinstance(flat, list) for _, flat in raw)
    assert [dict(zip(f[::2], f[1::2], strict=True)) for _, f in raw] == [f for _, f in parsed]


def test_a_reader_that_stops_early_stops_the_read_ahead(
    redis_client: redis.Redis, ids: list[str]
) -> None:
    reader = streams.pages(redis_client, STREAM, page=1, ahead=1)
    first = next(reader)
    assert first[0][0] == ids[0]
    assert any(t.name == f"xrange {STREAM}" for t in threading.enumerate())
    reader.close()  # type: ignore[attr-defined]
    deadline = time.monotonic() + 5
    while any(t.name == f"xrange {STREAM}" for t in threading.enumerate()):
        assert time.monotonic() < deadline, "the read-ahead thread outlived its reader"
        time.sleep(0.01)


@pytest.mark.parametrize("ahead", [0, 2])
def test_newest_first_walks_the_same_range_backwards(
    redis_client: redis.Redis, ids: list[str], ahead: int
) -> None:
    back = _flat(list(streams.pages(redis_client, STREAM, page=3, newest_first=True, ahead=ahead)))
    assert [entry_id for entry_id, _ in back] == ids[::-1]
    bounded = _flat(list(streams.pages(redis_client, STREAM, after=ids[1], through=ids[6],
                                       page=2, newest_first=True)))  # fmt: skip
    assert [entry_id for entry_id, _ in bounded] == ids[6:1:-1]
    raw = [e for c in streams.raw_pages(redis_client, STREAM, page=4, newest_first=True) for e in c]
    assert [entry_id for entry_id, _ in raw] == [i.encode() for i in ids[::-1]]
