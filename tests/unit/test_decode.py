"""The listener's hand decoder against logs built with eth_abi, and against hostile payloads."""

from __future__ import annotations

from typing import Any

import pytest
from eth_abi.abi import encode
from eth_utils.crypto import keccak
from factories import KEY_A
from hypothesis import given
from hypothesis import strategies as st

from shared.chain import decode
from shared.chain.decode import decode_event, decode_log, header
from shared.errors import DecodeError
from shared.events import (
    LogEntry,
    NodeAccessGranted,
    NodeAccessRevoked,
    NodeAccessTransferred,
    PublicKeyUpdated,
    SubscriptionUpdate,
)

OWNER = "0x70997970c51812dc3a010c7d01b50e0d17dc79c8"
OTHER = "0x3c44cdddb6a900fa2b585dd299e03d12fa4293bc"
BLOCK_HASH = "0x" + "ab" * 32
TX_HASH = "0x" + "cd" * 32
CONTRACT = "0x5FbDB2315678afecb367f032d93F642f64180aa3"


def t_uint(value: int) -> str:
    return "0x" + value.to_bytes(32, "big").hex()


def t_addr(address: str) -> str:
    return "0x" + bytes.fromhex(address[2:]).rjust(32, b"\0").hex()


def hexdata(raw: bytes) -> str:
    return "0x" + raw.hex()


def granted_topics(token_id: int = 7, owner: str = OWNER) -> list[str]:
    return [decode.GRANTED, t_uint(token_id), t_addr(owner)]


def raw_log(topics: list[str], data: str, **over: Any) -> dict[str, Any]:
    raw = {
        "address": CONTRACT,
        "topics": topics,
        "data": data,
        "blockNumber": "0x1a",
        "blockHash": BLOCK_HASH,
        "transactionHash": TX_HASH,
        "logIndex": "0x3",
        "transactionIndex": "0x0",
        "removed": False,
    }
    raw.update(over)
    return raw


@pytest.mark.parametrize(
    ("signature", "topic"),
    [
        ("NodeAccessGranted(uint256,string,address,string)", decode.GRANTED),
        ("NodeAccessRevoked(uint256,string)", decode.REVOKED),
        ("NodeAccessTransferred(uint256,address,address)", decode.TRANSFERRED),
        ("PublicKeyUpdated(address,string)", decode.KEY_UPDATED),
        ("SubscriptionUpdate(uint256,uint64)", decode.SUBSCRIPTION),
    ],
)
def test_topic_hashes_are_the_keccak_of_the_design_signatures(signature: str, topic: str) -> None:
    expected = "0x" + keccak(text=signature).hex()
    assert topic == expected
    assert topic in decode.TOPIC0S


def test_decodes_granted() -> None:
    data = hexdata(encode(["string", "string"], ["node-1", KEY_A]))
    event = decode_event(granted_topics(2**256 - 1), data)
    assert event == NodeAccessGranted(
        token_id=2**256 - 1, node_id="node-1", owner=OWNER, public_key=KEY_A
    )


def test_decodes_revoked() -> None:
    data = hexdata(encode(["string"], ["node-1"]))
    event = decode_event([decode.REVOKED, t_uint(7)], data)
    assert event == NodeAccessRevoked(token_id=7, node_id="node-1")


def test_decodes_transferred_with_checksummed_topics_lowercased() -> None:
    topics = [
        decode.TRANSFERRED.upper().replace("0X", "0x"),
        t_uint(3),
        t_addr(OWNER),
        t_addr(OTHER),
    ]
    event = decode_event(topics, "0x")
    assert event == NodeAccessTransferred(token_id=3, from_address=OWNER, to_address=OTHER)


def test_decodes_key_updated_with_empty_and_long_strings() -> None:
    assert decode_event(
        [decode.KEY_UPDATED, t_addr(OWNER)], hexdata(encode(["string"], [""]))
    ) == PublicKeyUpdated(owner=OWNER, public_key="")
    long = "k" * 10_000 + "\n../etc"
    event = decode_event([decode.KEY_UPDATED, t_addr(OWNER)], hexdata(encode(["string"], [long])))
    assert isinstance(event, PublicKeyUpdated)
    assert event.public_key == long


def test_decode_log_builds_the_entry_without_digest() -> None:
    data = hexdata(encode(["string", "string"], ["n", KEY_A]))
    entry = decode_log(raw_log(granted_topics(), data), chain_id=8453, timestamp=1_700_000_000)
    assert entry == LogEntry(
        chain_id=8453,
        contract=CONTRACT.lower(),
        block_number=26,
        block_hash=BLOCK_HASH,
        tx_hash=TX_HASH,
        log_index=3,
        block_timestamp=1_700_000_000,
        event=NodeAccessGranted(token_id=7, node_id="n", owner=OWNER, public_key=KEY_A),
    )
    assert entry.digest == ""


def test_invalid_utf8_is_replaced_not_fatal() -> None:
    # A string whose bytes are not UTF-8: hand-encoded (length 3, bytes ff fe 41).
    payload = (32).to_bytes(32, "big") + (3).to_bytes(32, "big") + b"\xff\xfeA".ljust(32, b"\0")
    event = decode_event([decode.REVOKED, t_uint(1)], hexdata(payload))
    assert isinstance(event, NodeAccessRevoked)
    assert event.node_id == "\ufffd\ufffdA"


def _word(value: int) -> bytes:
    return value.to_bytes(32, "big")


GOOD = encode(["string", "string"], ["node-1", KEY_A])


@pytest.mark.parametrize(
    ("topics", "data", "message"),
    [
        pytest.param(granted_topics(), hexdata(GOOD[:40]), "too short", id="truncated-head"),
        pytest.param(granted_topics(), hexdata(GOOD[:-32]), "past the end", id="truncated-tail"),
        pytest.param(
            granted_topics(), hexdata(_word(2**255) + GOOD[32:]), "offset", id="offset-huge"
        ),
        pytest.param(
            granted_topics(), hexdata(_word(len(GOOD)) + GOOD[32:]), "offset", id="offset-at-end"
        ),
        pytest.param(
            [decode.REVOKED, t_uint(1)],
            hexdata(_word(32) + _word(2**256 - 1)),
            "length",
            id="length-huge",
        ),
        pytest.param(
            [decode.REVOKED, t_uint(1)],
            hexdata(_word(32) + _word(33) + b"x" * 32),
            "length",
            id="length-one-past",
        ),
        pytest.param(granted_topics()[:2], hexdata(GOOD), "needs 3 topics", id="too-few-topics"),
        pytest.param(
            [*granted_topics(), t_uint(1)], hexdata(GOOD), "needs 3 topics", id="too-many-topics"
        ),
        pytest.param(["0x" + "11" * 32, t_uint(1)], "0x", "unknown topic0", id="unknown-topic0"),
        pytest.param([], "0x", "no topics", id="no-topics"),
        pytest.param(None, "0x", "no topics", id="topics-null"),
        pytest.param([12345], "0x", "unknown topic0", id="topic0-not-string"),
        pytest.param(
            [decode.REVOKED, "0x" + "00" * 31], hexdata(GOOD), "topic 1", id="short-topic"
        ),
        pytest.param([decode.REVOKED, "0xzz" + "00" * 31], hexdata(GOOD), "hex", id="bad-topic"),
        pytest.param([decode.REVOKED, t_uint(1)], "0x123", "hex", id="odd-data"),
        pytest.param([decode.REVOKED, t_uint(1)], "abcd", "hex", id="data-no-prefix"),
        pytest.param([decode.REVOKED, t_uint(1)], None, "hex", id="data-null"),
        pytest.param(
            [decode.KEY_UPDATED, "0x" + "ff" * 32],
            hexdata(encode(["string"], [KEY_A])),
            "not an address",
            id="address-high-bytes",
        ),
    ],
)
def test_hostile_logs_raise_decode_error(topics: Any, data: Any, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        decode_event(topics, data)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("blockNumber", None),
        ("blockNumber", "12"),
        ("blockNumber", "0x"),
        ("logIndex", "0xg"),
        ("blockHash", "0x1234"),
        ("transactionHash", 5),
        ("address", "0x1"),
    ],
)
def test_malformed_log_envelope_raises_decode_error(field: str, value: Any) -> None:
    raw = raw_log([decode.REVOKED, t_uint(1)], hexdata(encode(["string"], ["n"])), **{field: value})
    with pytest.raises(DecodeError):
        decode_log(raw, 1, 0)


def test_header_parses_and_rejects() -> None:
    raw = {"number": "0x10", "hash": BLOCK_HASH, "parentHash": TX_HASH, "timestamp": "0x5"}
    head = header(raw)
    assert (head.number, head.hash, head.parent_hash, head.timestamp) == (
        16,
        BLOCK_HASH,
        TX_HASH,
        5,
    )
    with pytest.raises(DecodeError):
        header({**raw, "hash": None})
    with pytest.raises(DecodeError):
        header(None)


@given(
    topic0=st.sampled_from(list(decode.TOPIC0S)),
    words=st.lists(st.binary(min_size=32, max_size=32), min_size=0, max_size=4),
    data=st.binary(max_size=512),
)
def test_random_data_never_raises_anything_but_decode_error(
    topic0: str, words: list[bytes], data: bytes
) -> None:
    topics = [topic0, *("0x" + w.hex() for w in words)]
    try:
        event = decode_event(topics, hexdata(data))
    except DecodeError:
        return
    assert type(event).__name__ in {
        "NodeAccessGranted",
        "NodeAccessRevoked",
        "NodeAccessTransferred",
        "PublicKeyUpdated",
        "SubscriptionUpdate",
    }


@given(
    offsets=st.lists(st.integers(min_value=0, max_value=2**256 - 1), min_size=2, max_size=2),
    length=st.integers(min_value=0, max_value=2**256 - 1),
    tail=st.binary(max_size=200),
)
def test_random_offsets_and_lengths_never_crash(
    offsets: list[int], length: int, tail: bytes
) -> None:
    data = _word(offsets[0]) + _word(offsets[1]) + _word(length) + tail
    try:
        event = decode_event(granted_topics(), hexdata(data))
    except DecodeError:
        return
    assert isinstance(event, NodeAccessGranted)


def _outcome(decoder: Any, topics: Any, data: Any) -> object:
    """What ``decoder`` answers: an event, None, or the class DecodeError when it raises it."""
    try:
        return decoder(topics, data)
    except DecodeError:
        return DecodeError


@given(
    topic0=st.sampled_from(list(decode.TOPIC0S)),
    words=st.lists(st.binary(min_size=32, max_size=32), min_size=0, max_size=4),
    data=st.one_of(
        st.binary(max_size=256),
        st.lists(st.text(max_size=40), min_size=1, max_size=2).map(
            lambda texts: encode(["string"] * len(texts), texts)
        ),
    ),
    address=st.booleans(),
)
def test_the_fast_path_decodes_what_the_careful_path_decodes(
    topic0: str, words: list[bytes], data: bytes, address: bool
) -> None:
    """The fast path declines (None) or gives the careful path's answer, never another."""
    if address and words:  # an address topic (zero high bytes), as contracts emit them
        words[-1] = bytes(12) + words[-1][12:]
    topics = [topic0, *("0x" + w.hex() for w in words)]
    fast = _outcome(decode._decode_well_formed, topics, hexdata(data))
    careful = _outcome(decode._decode_careful, topics, hexdata(data))
    assert fast is None or fast == careful
    assert _outcome(decode_event, topics, hexdata(data)) == careful


def test_the_fast_path_takes_well_formed_logs() -> None:
    data = hexdata(encode(["string", "string"], ["node-1", KEY_A]))
    event = decode._decode_well_formed(granted_topics(), data)
    assert event == NodeAccessGranted(token_id=7, node_id="node-1", owner=OWNER, public_key=KEY_A)


# --- ERC-5643 SubscriptionUpdate(uint256 indexed tokenId, uint64 expiration) ---------------


@pytest.mark.parametrize("expiration", [0, 1, 1_700_000_000, 2**63, 2**64 - 1])
def test_decodes_subscription_update_over_the_whole_uint64_range(expiration: int) -> None:
    data = hexdata(encode(["uint64"], [expiration]))
    event = decode_event([decode.SUBSCRIPTION, t_uint(2**256 - 1)], data)
    assert event == SubscriptionUpdate(token_id=2**256 - 1, expiration=expiration)


def test_subscription_update_log_decodes_into_an_entry() -> None:
    data = hexdata(encode(["uint64"], [1_800_000_000]))
    entry = decode_log(raw_log([decode.SUBSCRIPTION, t_uint(4)], data), 1, 1_700_000_000)
    assert entry.event == SubscriptionUpdate(token_id=4, expiration=1_800_000_000)


@pytest.mark.parametrize(
    ("topics", "data", "message"),
    [
        pytest.param(
            [decode.SUBSCRIPTION, t_uint(1)], hexdata(_word(2**64)), "uint64", id="just-over-u64"
        ),
        pytest.param(
            [decode.SUBSCRIPTION, t_uint(1)],
            hexdata(_word(2**256 - 1)),
            "uint64",
            id="max-word",
        ),
        pytest.param([decode.SUBSCRIPTION, t_uint(1)], "0x", "0 bytes", id="no-data"),
        pytest.param(
            [decode.SUBSCRIPTION, t_uint(1)], hexdata(_word(5)[:31]), "31 bytes", id="short-data"
        ),
        pytest.param(
            [decode.SUBSCRIPTION, t_uint(1)],
            hexdata(_word(5) + _word(6)),
            "64 bytes",
            id="two-words",
        ),
        pytest.param([decode.SUBSCRIPTION], hexdata(_word(5)), "needs 2 topics", id="no-token"),
        pytest.param(
            [decode.SUBSCRIPTION, t_uint(1), t_uint(2)],
            hexdata(_word(5)),
            "needs 2 topics",
            id="extra-topic",
        ),
        pytest.param([decode.SUBSCRIPTION, t_uint(1)], None, "hex", id="data-null"),
    ],
)
def test_hostile_subscription_updates_raise_decode_error(
    topics: Any, data: Any, message: str
) -> None:
    with pytest.raises(DecodeError, match=message):
        decode_event(topics, data)


@given(word=st.binary(min_size=32, max_size=32), token=st.binary(min_size=32, max_size=32))
def test_random_subscription_words_decode_within_uint64_or_raise(word: bytes, token: bytes) -> None:
    try:
        event = decode_event([decode.SUBSCRIPTION, "0x" + token.hex()], hexdata(word))
    except DecodeError:
        assert int.from_bytes(word, "big") >= 2**64
        return
    assert isinstance(event, SubscriptionUpdate)
    assert 0 <= event.expiration < 2**64
    assert event.token_id == int.from_bytes(token, "big")
