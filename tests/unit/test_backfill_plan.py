"""Backfill planning: ranges cover [start, end] exactly, in order; staged ranges round-trip."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.chain.plan import (
    Plan,
    Span,
    Staged,
    StagedDead,
    decode_staged,
    encode_staged,
    split,
)
from shared.events import LogEntry, NodeAccessGranted

blocks = st.integers(min_value=0, max_value=10**7)
sizes = st.integers(min_value=1, max_value=5000)


@given(start=blocks, length=st.integers(min_value=1, max_value=20000), size=sizes)
def test_split_covers_the_range_exactly_without_gaps_or_overlaps(
    start: int, length: int, size: int
) -> None:
    end = start + length - 1
    spans = split(start, end, size)
    assert spans[0].start == start
    assert spans[-1].end == end
    for before, after in itertools.pairwise(spans):
        assert after.start == before.end + 1
    assert all(1 <= s.blocks <= size for s in spans)
    assert all(s.blocks == size for s in spans[:-1])
    assert sum(s.blocks for s in spans) == length


@given(start=blocks, length=st.integers(min_value=1, max_value=20000), size=sizes, data=st.data())
def test_span_at_finds_the_plan_range_holding_a_block(
    start: int, length: int, size: int, data: st.DataObject
) -> None:
    plan = Plan("p", start, start + length - 1, size)
    block = data.draw(st.integers(min_value=start, max_value=plan.end))
    span = plan.span_at(block)
    assert span in plan.spans
    assert span is not None
    assert span.start <= block <= span.end
    assert plan.span_at(start - 1) is None
    assert plan.span_at(plan.end + 1) is None


def test_split_single_block_and_exact_multiple() -> None:
    assert split(7, 7, 100) == [Span(7, 7)]
    assert split(0, 5, 3) == [Span(0, 2), Span(3, 5)]
    assert Span(10, 19).name == "10-19"


@pytest.mark.parametrize(("start", "end", "size"), [(5, 4, 1), (-1, 3, 2), (0, 3, 0)])
def test_split_refuses_nonsense(start: int, end: int, size: int) -> None:
    with pytest.raises(ValueError):
        split(start, end, size)


def _entry(block: int, index: int) -> LogEntry:
    return LogEntry(
        chain_id=1,
        contract="0x" + "ab" * 20,
        block_number=block,
        block_hash="0x" + "11" * 32,
        tx_hash="0x" + "22" * 32,
        log_index=index,
        block_timestamp=1700000000,
        event=NodeAccessGranted(token_id=1, node_id="n1", owner="0x" + "cd" * 20, public_key=""),
    )


def test_staged_round_trips_and_encodes_deterministically() -> None:
    staged = Staged(
        start=10,
        end=19,
        parent_hash="0x" + "33" * 32,
        end_hash="0x" + "44" * 32,
        entries=[_entry(12, 0), _entry(12, 1)],
        dead=[StagedDead(15, "15:0", "bad offset", b'{"x":1}')],
    )
    raw = encode_staged(staged)
    assert decode_staged(raw) == staged
    assert encode_staged(decode_staged(raw)) == raw
    assert staged.span == Span(10, 19)
    assert all(e.digest == "" for e in decode_staged(raw).entries)
