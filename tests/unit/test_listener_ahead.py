"""``ReadAhead``: which read ahead a step may take, and how ranges are sized."""

from __future__ import annotations

import threading

import pytest

from producers.listener.ahead import AHEAD_FROM, FIRST_BLOCKS, PIECE_LOGS, ReadAhead
from shared.chain.ranges import RangeSizer
from shared.chain.read import Read
from shared.errors import ChainError, LogRangeError


class Reads:
    """A fake range reader: records what it was asked, fails when told to."""

    def __init__(self, error: Exception | None = None) -> None:
        self.asked: list[tuple[int, int]] = []
        self.error = error
        self.thread = ""

    def __call__(self, start: int, end: int) -> Read:
        self.asked.append((start, end))
        self.thread = threading.current_thread().name
        if self.error is not None:
            raise self.error
        return Read([], {})


def test_a_read_ahead_is_taken_only_where_the_next_step_starts() -> None:
    reads = Reads()
    ahead = ReadAhead(reads, RangeSizer(2000))
    ahead.learn(1, 10, PIECE_LOGS * 10)  # dense: one block per range
    ahead.start(11, 100, AHEAD_FROM)
    assert ahead.take(11, 100) == (11, Read([], {}))
    assert reads.asked == [(11, 11)]
    assert reads.thread.startswith("wgchain-listener-read"), "read on the thread"
    ahead.start(12, 100, AHEAD_FROM)
    assert ahead.take(13, 100) is None, "the cursor moved elsewhere (a rewind, a lost race)"
    assert ahead.take(12, 100) is None, "used at most once"
    ahead.start(12, 100, AHEAD_FROM)
    assert ahead.take(12, 11) is None, "past the final block the node now reports"


def test_nothing_is_read_ahead_after_a_sparse_range_or_at_the_target() -> None:
    reads = Reads()
    ahead = ReadAhead(reads, RangeSizer(2000))
    ahead.start(11, 100, AHEAD_FROM - 1)
    ahead.start(101, 100, AHEAD_FROM)
    ahead.settle()
    assert reads.asked == []


def test_a_failed_read_ahead_is_dropped_and_a_refused_one_shrinks_the_sizer() -> None:
    sizer = RangeSizer(2000, initial=64)
    ahead = ReadAhead(Reads(ChainError("node down")), sizer)
    ahead.learn(1, 64, 0)
    ahead.start(65, 10_000, AHEAD_FROM)
    assert ahead.take(65, 10_000) is None
    refusing = ReadAhead(Reads(LogRangeError("too many logs", None)), sizer)
    refusing.learn(1, 64, 0)
    refusing.start(65, 10_000, AHEAD_FROM)
    assert refusing.take(65, 10_000) is None
    assert sizer.size == 32


@pytest.mark.parametrize(
    ("blocks", "logs", "expected"),
    [
        (10, 5000, 10),  # the density it is sized for
        (10, 50_000, 1),  # denser: fewer blocks, at least one
        (10, 0, 80),  # quiet: grows by GROWTH at most
        (1000, 0, 2000),  # never past the sizer's maximum
    ],
)
def test_ranges_are_sized_from_the_density(blocks: int, logs: int, expected: int) -> None:
    ahead = ReadAhead(Reads(), RangeSizer(2000))
    assert ahead.last(1, 10_000) == FIRST_BLOCKS
    ahead.learn(1, blocks, logs)
    assert ahead.blocks == expected
