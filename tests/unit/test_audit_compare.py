"""The replay's digests: one encode of a whole list gives the digest of the content
item by item, and equal digests mean equal contents."""

from __future__ import annotations

import msgspec
import pytest

from consumers.audit import compare
from consumers.audit.entries import Decoded, Undecodable
from shared.events import NodeJoined, NodeLeft, PeerUpsert, Retracted

KEY = "k" * 43 + "="


def _registry() -> list[Decoded]:
    return [
        ("5-0", NodeJoined("node-a", 1, "0x" + "a" * 40, KEY, "1-0", 1)),
        ("6-0", NodeLeft("node-a", "revoked", "2-0", 2)),
    ]


@pytest.mark.parametrize("chunk", [1, 2, 10_000])
def test_outputs_digest_is_the_content_digest(monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    monkeypatch.setattr(compare, "DIGEST_CHUNK", chunk)  # encoded in pieces or at once
    outputs = [*_registry(), *_registry()[:1]]
    assert compare.outputs_digest(outputs) == compare.content_digest(compare.content(outputs))
    assert compare.outputs_digest(outputs) != compare.outputs_digest(outputs[:2])
    assert compare.outputs_digest([]) == compare.content_digest([])


def test_content_digest_of_replaces_causes_and_keeps_retractions_and_undecodable() -> None:
    peers: list[Decoded] = [
        ("9-0", PeerUpsert("node-a", KEY, "10.0.0.1", "5-0", "1-0", 1)),
        ("9-1", PeerUpsert("node-b", KEY, "10.0.0.2", "7-0", "1-0", 1)),  # unknown cause
        ("9-2", Undecodable("bad")),
        ("9-3", PeerUpsert("node-c", KEY, "10.0.0.3", "6-0", "2-0", 2)),
        ("9-4", Retracted("9-3", 2, "0x2")),
    ]
    causes = compare.ordinals(_registry())
    content = compare.content(peers, causes)
    assert len(content) == 3
    assert b'"cause":"#0"' in content[0]
    assert b'"cause":"?7-0"' in content[1]
    assert compare.content_digest_of(peers, causes) == compare.content_digest(content)
    assert compare.content_digest_of(peers, causes) != compare.content_digest_of(peers)


def test_state_digest_ignores_order_and_bookkeeping_but_not_values() -> None:
    state = {"t:10": b'{"a":1}', "t:9": b'{"a":2}', "k:0x1": b'"key"'}
    shuffled = dict(reversed(state.items()))
    assert compare.state_digest(state) == compare.state_digest({**shuffled, "~retry": b"1-0"})
    assert compare.state_digest(state) != compare.state_digest({**state, "t:9": b'{"a":3}'})
    assert compare.state_digest(state) != compare.state_digest({**state, "t:11": b"{}"})


def test_state_digests_digest_an_equal_state_once(monkeypatch: pytest.MonkeyPatch) -> None:
    state = {"t:10": b'{"a":1}', "t:9": b'{"a":2}'}
    expected = compare.state_digest(state)
    calls: list[int] = []
    digest = compare.state_digest
    monkeypatch.setattr(compare, "state_digest", lambda f: calls.append(len(f)) or digest(f))
    # the same fold state (bookkeeping aside): one digest serves both sides
    assert compare.state_digests({**state, "~retry": b"1-0"}, dict(state)) == (expected, expected)
    assert calls == [2]
    assert compare.state_digests(state, state, "given") == ("given", "given")
    assert calls == [2]
    # a different state: both digested, and they differ
    changed = {**state, "t:9": b'{"a":3}'}
    live, replay = compare.state_digests(changed, state)
    assert (live, replay) == (digest(changed), expected)
    assert live != replay
    assert not compare.same_state(changed, state)


def test_numbered_is_the_content_with_positions_for_causes() -> None:
    hostile = 'x","cause":"5-0'  # a string value that looks like the key: escaped, kept
    peers: list[Decoded] = [
        ("9-0", PeerUpsert("node-a", KEY, "10.0.0.1", "5-0", "1-0", 1)),
        ("9-1", PeerUpsert(hostile, KEY, "10.0.0.2", "6-0", "1-0", 1)),
        ("9-2", PeerUpsert("cause", KEY, "10.0.0.3", "5-0", "2-0", 2)),
        ("9-3", PeerUpsert("node-b", KEY, "10.0.0.4", "7-0", "2-0", 2)),  # unknown cause
    ]
    causes = compare.ordinals(_registry())
    encoded = [msgspec.json.encode(entry) for _, entry in peers]
    content = compare.content(peers, causes)
    assert compare.numbered(encoded[:3], peers[:3], causes) == b",".join(content[:3])
    assert b'"cause":"#1"' in content[1]
    assert hostile.replace('"', '\\"').encode() in content[1]
    # an unknown cause: encoded again, as the content shows it
    assert compare.numbered(encoded, peers, causes) == b",".join(content)
    assert b'"cause":"?7-0"' in content[3]
    # given a batch at a time, the digest of the whole content
    digest = compare.ContentHash()
    digest.update_joined(compare.numbered(encoded[:3], peers[:3], causes))
    digest.update([])
    digest.update(content[3:])
    assert digest.hexdigest() == compare.content_digest_of(peers, causes)
    assert compare.ContentHash().hexdigest() == compare.content_digest([])
