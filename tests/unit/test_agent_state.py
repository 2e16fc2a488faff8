"""The state file's format: snapshot plus journal, read back only when it is all sound."""

from __future__ import annotations

import json
import time

import pytest
from factories import wg_key as key

from consumers.agent import hold as hold_module
from consumers.agent.desired import DesiredPeer
from consumers.agent.hold import FREE, HELD, REACHED, Hold
from consumers.agent.state import (
    AppliedState,
    Ident,
    StateProblem,
    decode,
    encode_line,
    encode_snapshot,
)

IDENT = Ident("{31337:0xabc}", "node-a", "wg0")


def peer(node: str, n: int, endpoint: str | None = "192.0.2.1:51820") -> DesiredPeer:
    return DesiredPeer(node, key(n), (f"10.88.0.{n}/32",), endpoint, 25)


def state(*peers: DesiredPeer, position: str = "5-0", block: int = 7) -> AppliedState:
    return AppliedState(position, block, ("10.88.0.1/16",), None, {p.node_id: p for p in peers})


def snapshot(st: AppliedState, ident: Ident = IDENT) -> bytes:
    return b"".join(encode_snapshot(st, ident))


def test_a_snapshot_and_its_journal_read_back_as_the_applied_state() -> None:
    base = state(peer("b", 2), peer("c", 3, None))
    st = AppliedState("6-0", 8, ("10.88.0.1/16",), None)
    journal = encode_line(1, st, {"b": None, "d": peer("d", 4)})
    st2 = AppliedState("7-0", 9, (), "not-live")
    journal += encode_line(2, st2, {"c": None, "d": None})
    assert decode(snapshot(base), b"", IDENT).peers == base.peers
    got = decode(snapshot(base), journal, IDENT)
    assert (got.position, got.block, got.addresses) == ("7-0", 9, ())
    assert (got.fail_closed, got.seq) == ("not-live", 2)
    assert got.peers == {}
    after_one = decode(snapshot(base), journal.split(b"\n", 1)[0] + b"\n", IDENT)
    assert set(after_one.peers) == {"c", "d"}
    assert after_one.peers["d"] == peer("d", 4)


def test_a_torn_last_line_is_ignored_and_compacted_lines_are_skipped() -> None:
    base = state(peer("b", 2))
    line = encode_line(1, base, {"c": peer("c", 3)})
    torn = encode_line(2, base, {"b": None})[:-9]  # the write was cut: no newline
    assert set(decode(snapshot(base), line + torn, IDENT).peers) == {"b", "c"}
    compacted = state(peer("b", 2))
    compacted.seq = 1  # a snapshot that already includes line 1 ...
    stale = encode_line(1, base, {"b": None})  # ... so a leftover line 1 is not applied
    assert set(decode(snapshot(compacted), stale, IDENT).peers) == {"b"}


@pytest.mark.parametrize(
    ("ident", "problem"),
    [
        (Ident("{1:0xother}", "node-a", "wg0"), "another network"),
        (Ident(IDENT.network, "node-z", "wg0"), "another node"),
        (Ident(IDENT.network, "node-a", "wg9"), "another interface"),
    ],
)
def test_a_foreign_state_file_is_refused(ident: Ident, problem: str) -> None:
    with pytest.raises(StateProblem, match=problem):
        decode(snapshot(state(peer("b", 2)), ident), b"", IDENT)


def hostile_snapshots() -> list[bytes]:
    good = json.loads(snapshot(state(peer("b", 2))))

    def variant(**changes: object) -> bytes:
        return json.dumps({**good, **changes}).encode()

    bad_peer = ["b", key(2), ["10.88.0.2/32"], "192.0.2.1:51820", 25]
    return [
        b"not json",
        variant(v=2),
        variant(position="5-0\n[Peer]"),
        variant(block=-1),
        variant(addresses=["10.88.0.1"]),
        variant(fail_closed="Evil\nline"),
        variant(peers=[["../etc", *bad_peer[1:]]]),
        variant(peers=[[bad_peer[0], "not a key", *bad_peer[2:]]]),
        variant(peers=[[*bad_peer[:2], ["10.88.0.2/32\nEndpoint = x"], *bad_peer[3:]]]),
        variant(peers=[[*bad_peer[:2], [], *bad_peer[3:]]]),
        variant(peers=[[*bad_peer[:3], "evil host:1", 25]]),
        variant(peers=[[*bad_peer[:4], 70000]]),
        variant(peers=[bad_peer, ["c", *bad_peer[1:]]]),  # two peers, one key
    ]


@pytest.mark.parametrize("data", hostile_snapshots())
def test_every_value_is_validated_again(data: bytes) -> None:
    with pytest.raises(StateProblem):
        decode(data, b"", IDENT)


def test_a_bad_journal_line_in_the_middle_makes_the_state_unusable() -> None:
    base = state(peer("b", 2))
    good = encode_line(1, base, {"c": peer("c", 3)})
    with pytest.raises(StateProblem, match="journal line 2"):
        decode(snapshot(base), good + b'{"seq": 2, "oops": 1}\n' + good, IDENT)


def test_a_hold_waits_for_the_block_and_an_empty_stream_never_ends_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hold = Hold()
    assert not hold.begin(applied_block=5, table_block=9)  # the snapshot is not behind
    assert hold.begin(applied_block=5, table_block=2)
    assert hold.reason(2) == "the peers stream is at block 2, the applied configuration at block 5"
    assert hold.check(3, last_entries=0.0, ready=False) == (HELD, "")
    assert hold.check(0, last_entries=0.0, ready=True) == (HELD, "")  # nothing refilled yet
    assert hold.check(3, last_entries=time.monotonic(), ready=True) == (HELD, "")
    state, why = hold.check(5, last_entries=0.0, ready=True)
    assert (state, hold.block) == (REACHED, 5)  # the caller decides (removals wait)
    assert "reached block 5" in why
    assert hold.settled(0.0)
    assert not hold.settled(time.monotonic())
    state, why = hold.check(6, last_entries=0.0, ready=True)
    assert (state, hold.block, hold.reason(6)) == (FREE, 0, "")
    assert "passed block 5" in why
    hold.begin(applied_block=5, table_block=1)
    monkeypatch.setattr(hold_module, "HOLD_QUIET_SECONDS", 0.0)
    state, why = hold.check(1, last_entries=0.0, ready=True)  # that block is gone: a reorg
    assert (state, hold.block) == (FREE, 0)
    assert "stopped at block 1" in why
