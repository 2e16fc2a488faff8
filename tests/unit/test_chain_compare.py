"""The one comparison of stream entries with chain logs (shared/chain/compare.py)."""

from __future__ import annotations

import msgspec
from factories import wg_key

from shared.chain.compare import (
    DUPLICATE,
    EXTRA,
    MISMATCH,
    MISSING,
    UNDECODABLE,
    compare_logs,
)
from shared.events import GENESIS_DIGEST, LogEntry, NodeAccessGranted

OWNER = "0x" + "11" * 20


def log(block: int, index: int = 0, key: int = 1) -> LogEntry:
    """The chain's decoded log (undigested, as a range read gives it)."""
    event = NodeAccessGranted(block, f"n{block}", OWNER, wg_key(key))
    return LogEntry(31337, "0x" + "ab" * 20, block, f"0x{block:064x}", "0x01", index, 1000, event)


def entry(chain_log: LogEntry) -> LogEntry:
    """The same log as the listener appends it (digest-chained)."""
    return chain_log.with_digest(GENESIS_DIGEST)


def test_identical_logs_and_entries_differ_in_nothing() -> None:
    logs = [log(1), log(2, 3)]
    assert compare_logs([(f"{i}-0", entry(x)) for i, x in enumerate(logs)], logs) == []


def test_each_kind_of_difference_is_named_at_its_position() -> None:
    chain = [log(1), log(2), log(3), log(5)]
    forged = entry(log(4))
    changed = entry(log(3, key=9))
    diffs = compare_logs(
        [("1-0", entry(log(1))), ("1-1", entry(log(1))), ("3-0", changed), ("4-0", forged)],
        chain,
    )
    got = [(d.kind, d.block, d.entry_id) for d in diffs]
    assert got == [
        (DUPLICATE, 1, "1-1"),
        (MISSING, 2, ""),
        (MISMATCH, 3, "3-0"),
        (EXTRA, 4, "4-0"),
        (MISSING, 5, ""),
    ]
    assert diffs[0].first_id == "1-0"
    assert diffs[2].fields == ("event.public_key",)
    assert not diffs[2].edited


def test_an_edited_entry_is_a_mismatch_even_when_its_fields_agree() -> None:
    chain = log(1)
    edited = msgspec.structs.replace(entry(chain), digest="0x" + "00" * 32)
    (diff,) = compare_logs([("1-0", edited)], [chain])
    assert (diff.kind, diff.fields, diff.edited) == (MISMATCH, (), True)


def test_an_entry_for_a_log_that_does_not_decode_is_named_as_such() -> None:
    diffs = compare_logs([("7-0", entry(log(7, 2)))], [], undecodable={"7:2"})
    assert [(d.kind, d.block, d.log_index) for d in diffs] == [(UNDECODABLE, 7, 2)]
    assert [d.kind for d in compare_logs([("7-0", entry(log(7, 2)))], [])] == [EXTRA]
