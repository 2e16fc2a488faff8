"""Kept samples: entries written by earlier versions must keep decoding."""

from __future__ import annotations

import msgspec
import pytest

from shared.errors import DecodeError
from shared.events import (
    GENESIS_DIGEST,
    LogEntry,
    NodeAccessGranted,
    NodeAccessTransferred,
    PeerUpsert,
    SubscriptionUpdate,
    decode_chain_event,
    encode,
    from_fields,
    to_fields,
)

#: An events-stream entry as schema v1 wrote it (do not edit: it is the point of the test).
V1_LOG_ENTRY = {
    b"v": b"1",
    b"type": b"LogEntry",
    b"data": (
        b'{"type":"LogEntry","chain_id":31337,"contract":"0x5fbdb2315678afecb367f032d93f642f64180aa3",'
        b'"block_number":3,"block_hash":"0x11","tx_hash":"0x22","log_index":0,"block_timestamp":1700000000,'
        b'"event":{"type":"NodeAccessGranted","token_id":1,"node_id":"node-a",'
        b'"owner":"0x70997970c51812dc3a010c7d01b50e0d17dc79c8",'
        b'"public_key":"xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="},'
        b'"prev":"0000000000000000000000000000000000000000000000000000000000000000",'
        b'"digest":"3f5c0c9f0d4a6d7a7a1e0d2c4a3c5f0e1d2c3b4a59687766554433221100ffee"}'
    ),
}
V1_PEER_UPSERT = {
    b"v": b"1",
    b"type": b"PeerUpsert",
    b"data": b'{"type":"PeerUpsert","node_id":"node-a","public_key":"xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=",'
    b'"ipv4":"10.88.0.7","cause":"5-0","origin":"3-0","block_number":3}',
}


def _bytes(fields: dict[str, object]) -> dict[bytes, bytes]:
    return {k.encode(): v if isinstance(v, bytes) else str(v).encode() for k, v in fields.items()}


def test_v1_samples_decode():
    entry = from_fields(V1_LOG_ENTRY)
    assert isinstance(entry, LogEntry)
    assert isinstance(entry.event, NodeAccessGranted)
    assert entry.event.node_id == "node-a"
    peer = from_fields(V1_PEER_UPSERT)
    assert isinstance(peer, PeerUpsert)
    assert peer.ipv6 is None  # a later field, defaulted


def test_subscription_update_roundtrips_in_a_log_entry():
    entry = LogEntry(
        chain_id=1, contract="0xc", block_number=1, block_hash="0xb", tx_hash="0xt",
        log_index=0, block_timestamp=0,
        event=SubscriptionUpdate(token_id=2**256 - 1, expiration=2**64 - 1),
    ).with_digest(GENESIS_DIGEST)  # fmt: skip
    back = from_fields(_bytes(to_fields(entry)))
    assert back == entry
    assert isinstance(back, LogEntry)
    assert back.digest_ok()
    event = SubscriptionUpdate(token_id=3, expiration=0)
    assert decode_chain_event(encode(event)) == event


def test_roundtrip_and_digest_chain():
    first = LogEntry(
        chain_id=1, contract="0xc", block_number=1, block_hash="0xb", tx_hash="0xt",
        log_index=0, block_timestamp=0,
        event=NodeAccessTransferred(token_id=1, from_address="0x1", to_address="0x2"),
    ).with_digest(GENESIS_DIGEST)  # fmt: skip
    second = LogEntry(
        chain_id=1, contract="0xc", block_number=2, block_hash="0xb2", tx_hash="0xt2",
        log_index=3, block_timestamp=0,
        event=NodeAccessTransferred(token_id=1, from_address="0x2", to_address="0x3"),
    ).with_digest(first.digest)  # fmt: skip
    assert from_fields(_bytes(to_fields(second))) == second
    assert first.digest_ok()
    assert second.digest_ok()
    assert second.prev == first.digest
    tampered = msgspec.structs.replace(second, log_index=4)
    assert not tampered.digest_ok()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({b"type": b"LogEntry", b"data": b"{}"}, "envelope"),
        ({b"v": b"9", b"type": b"LogEntry", b"data": b"{}"}, "newer"),
        ({b"v": b"1", b"type": b"Bogus", b"data": b"{}"}, "unknown entry type"),
        ({b"v": b"1", b"type": b"LogEntry", b"data": b"{not json"}, "bad LogEntry"),
        ({b"v": b"1", b"type": b"PeerUpsert", b"data": b'{"node_id": 5}'}, "bad PeerUpsert"),
    ],
)
def test_garbage_is_a_decode_error(fields, message):
    with pytest.raises(DecodeError, match=message):
        from_fields(fields)
