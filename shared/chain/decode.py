"""Decoding the contract's logs by hand: the listener's fast path. Pure, no I/O.

A topic table maps topic0 (the keccak of an event signature, docs/design.md §3.1) to a
decoder. Indexed arguments come from the topics, strings from the ABI-encoded
data. Everything here is hostile input: an offset or a length out of range, a
wrong number of topics or an unknown topic0 raise :class:`DecodeError` (the
listener dead-letters the log and moves on); invalid UTF-8 is replaced, never a
crash. Nothing loops over a length taken from the data.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import msgspec

from shared.errors import DecodeError
from shared.events import (
    GENESIS_DIGEST,
    ChainEvent,
    LogEntry,
    NodeAccessGranted,
    NodeAccessRevoked,
    NodeAccessTransferred,
    PublicKeyUpdated,
    SubscriptionUpdate,
)

#: Bytes in one ABI word.
WORD: Final = 32
#: Hex characters of a topic, a block hash or a transaction hash (after ``0x``).
HASH_HEX: Final = 64
#: A 32-byte hash: ``0x`` and exactly :data:`HASH_HEX` ASCII hex digits.
_HASH_RE: Final = re.compile(rf"0[xX][0-9a-fA-F]{{{HASH_HEX}}}")
#: Valid hashes remembered (the logs of a block share its hash, those of a transaction its hash).
HASHES_KEPT: Final = 4096
_HASHES: dict[str, str] = {}


#: The four event signatures of IDstackAccessNFT (docs/design.md §3.1), exactly, and ERC-5643's
#: SubscriptionUpdate (§5).
GRANTED_SIG: Final = "NodeAccessGranted(uint256,string,address,string)"
REVOKED_SIG: Final = "NodeAccessRevoked(uint256,string)"
TRANSFERRED_SIG: Final = "NodeAccessTransferred(uint256,address,address)"
KEY_UPDATED_SIG: Final = "PublicKeyUpdated(address,string)"
SUBSCRIPTION_SIG: Final = "SubscriptionUpdate(uint256,uint64)"

# topic0 = keccak-256 of each signature, spelled out so this module stays free of crypto
# backends (which import subprocess); tests/unit/test_decode.py recomputes them.
GRANTED: Final = "0x9a71852b5ff3e6dcfff28eaeb177387d7be860dcf63f02bc0c74d796d373a22c"
REVOKED: Final = "0xf77547477629bf8d4b78aaa6babeeb3306e56da1ca9b54caceabf24cbc922020"
TRANSFERRED: Final = "0x692842951e9a8bdcf099c908e8dd428dedcb5c44056d3b636cd82870c5fd12b2"
KEY_UPDATED: Final = "0xa850082d2fb101274de37494dc864e9277de33c04415c7ad9db57592c60511a5"
SUBSCRIPTION: Final = "0x2ec2be2c4b90c2cf13ecb6751a24daed6bb741ae5ed3f7371aabf9402f6d62e8"
#: ``expiration`` is a ``uint64``: a larger word is not what a conforming contract emits.
UINT64_LIMIT: Final = 1 << 64


class BlockHeader(msgspec.Struct, frozen=True):
    """The parts of a block header the listener uses."""

    number: int
    hash: str
    parent_hash: str
    timestamp: int


class LogRef(msgspec.Struct, frozen=True):
    """Where a raw log sits on chain; parsed before its event, so a bad event can be set aside."""

    block_number: int
    log_index: int
    block_hash: str
    tx_hash: str
    address: str
    removed: bool = False

    @property
    def position(self) -> tuple[int, int]:
        return (self.block_number, self.log_index)


# --- words and topics -----------------------------------------------------------------


def _hex_bytes(value: object, what: str) -> bytes:
    if not isinstance(value, str) or not value.startswith(("0x", "0X")):
        raise DecodeError(f"{what} is not a 0x hex string")
    try:
        return bytes.fromhex(value[2:])
    except ValueError as exc:
        raise DecodeError(f"{what} is not valid hex") from exc


def _topic_word(topic: object, index: int) -> bytes:
    raw = _hex_bytes(topic, f"topic {index}")
    if len(raw) != WORD:
        raise DecodeError(f"topic {index} has {len(raw)} bytes, expected {WORD}")
    return raw


def _uint(word: bytes) -> int:
    return int.from_bytes(word, "big")


def _address(word: bytes, what: str) -> str:
    if any(word[:12]):
        raise DecodeError(f"{what} is not an address (high bytes set)")
    return "0x" + word[12:].hex()


def _strings(data: bytes, count: int) -> list[str]:
    """The ``count`` ABI-encoded ``string`` values of ``data`` (each behind an offset word)."""
    size = len(data)
    if size < count * WORD:
        raise DecodeError(f"data has {size} bytes, too short for {count} offsets")
    out: list[str] = []
    for i in range(count):
        offset = _uint(data[i * WORD : (i + 1) * WORD])
        if offset > size - WORD:
            raise DecodeError(f"string {i}: offset {offset} is past the end ({size} bytes)")
        length = _uint(data[offset : offset + WORD])
        start = offset + WORD
        if length > size - start:
            raise DecodeError(f"string {i}: length {length} runs past the end ({size} bytes)")
        out.append(data[start : start + length].decode("utf-8", errors="replace"))
    return out


# --- the events --------------------------------------------------------------------------


def _granted(topics: Sequence[bytes], data: bytes) -> ChainEvent:
    node_id, key = _strings(data, 2)
    return NodeAccessGranted(
        token_id=_uint(topics[1]),
        node_id=node_id,
        owner=_address(topics[2], "owner"),
        public_key=key,
    )


def _revoked(topics: Sequence[bytes], data: bytes) -> ChainEvent:
    (node_id,) = _strings(data, 1)
    return NodeAccessRevoked(token_id=_uint(topics[1]), node_id=node_id)


def _transferred(topics: Sequence[bytes], data: bytes) -> ChainEvent:
    return NodeAccessTransferred(
        token_id=_uint(topics[1]),
        from_address=_address(topics[2], "from"),
        to_address=_address(topics[3], "to"),
    )


def _key_updated(topics: Sequence[bytes], data: bytes) -> ChainEvent:
    (key,) = _strings(data, 1)
    return PublicKeyUpdated(owner=_address(topics[1], "owner"), public_key=key)


def _subscription(topics: Sequence[bytes], data: bytes) -> ChainEvent:
    # exactly one word: a uint64, ABI-encoded (left-padded with zeros)
    if len(data) != WORD:
        raise DecodeError(f"SubscriptionUpdate data has {len(data)} bytes, expected {WORD}")
    expiration = _uint(data)
    if expiration >= UINT64_LIMIT:
        raise DecodeError("SubscriptionUpdate expiration does not fit in a uint64")
    return SubscriptionUpdate(token_id=_uint(topics[1]), expiration=expiration)


_Decoder = Callable[[Sequence[bytes], bytes], ChainEvent]

#: topic0 -> (event name, number of topics including topic0, decoder).
TOPICS: Final[Mapping[str, tuple[str, int, _Decoder]]] = {
    GRANTED: ("NodeAccessGranted", 3, _granted),
    REVOKED: ("NodeAccessRevoked", 2, _revoked),
    TRANSFERRED: ("NodeAccessTransferred", 4, _transferred),
    KEY_UPDATED: ("PublicKeyUpdated", 2, _key_updated),
    SUBSCRIPTION: ("SubscriptionUpdate", 2, _subscription),
}
#: The topic0 values the listener asks ``eth_getLogs`` for.
TOPIC0S: Final = tuple(TOPICS)
_TOPIC0_WORDS: Final = {topic: bytes.fromhex(topic[2:]) for topic in TOPICS}
_ZERO12: Final = bytes(12)
_fromhex: Final = bytes.fromhex
_from_bytes: Final = int.from_bytes


def decode_event(topics: object, data: object) -> ChainEvent:
    """The chain event of a log's ``topics`` (list of 0x hex) and ``data`` (0x hex).

    Raises :class:`DecodeError` (and nothing else) for anything that is not one of
    the known events, well formed.
    """
    fast = _decode_well_formed(topics, data)
    return fast if fast is not None else _decode_careful(topics, data)


def _decode_careful(topics: object, data: object) -> ChainEvent:
    """:func:`decode_event` checking every part in turn and naming the first that is wrong."""
    if not isinstance(topics, list | tuple) or not topics:
        raise DecodeError("log has no topics")
    topic0 = topics[0].lower() if isinstance(topics[0], str) else topics[0]
    entry = TOPICS.get(topic0) if isinstance(topic0, str) else None
    if entry is None:
        shown = topic0[:66] if isinstance(topic0, str) else type(topic0).__name__
        raise DecodeError(f"unknown topic0 {shown!r}")
    name, n_topics, decoder = entry
    if len(topics) != n_topics:
        raise DecodeError(f"{name} needs {n_topics} topics, log has {len(topics)}")
    # topic0 is one of the known constants (valid hex): only the other topics are parsed
    words = [_TOPIC0_WORDS[topic0]]
    words += [_topic_word(topics[i], i) for i in range(1, n_topics)]
    return decoder(words, _hex_bytes(data, "data"))


def _decode_well_formed(topics: object, data: object) -> ChainEvent | None:
    """The event of a log whose topics and data are well-formed hex, or None.

    The fast path of :func:`decode_event`: it only parses, in straight-line code per
    event; anything unusual (a topic that is not 66 characters of ``0x`` hex, an offset
    or a length out of range, an address with high bytes) returns None and
    :func:`_decode_careful` says what is wrong. Both paths give the same events.
    """
    if type(topics) is not list or not topics or type(data) is not str or data[:2] != "0x":
        return None
    topic0 = topics[0]
    entry = _FAST.get(topic0) if type(topic0) is str else None
    if entry is None or len(topics) != entry[0]:
        return None
    words = [_TOPIC0_WORDS[topic0]]
    try:
        for topic in topics[1:]:
            if type(topic) is not str or len(topic) != 2 + HASH_HEX or topic[:2] != "0x":
                return None
            word = _fromhex(topic[2:])
            if len(word) != WORD:  # fromhex skips spaces
                return None
            words.append(word)
        raw = _fromhex(data[2:])
    except ValueError:
        return None
    return entry[1](words, raw)


def _fast_string(raw: bytes, slot: int) -> str | None:
    """The ABI ``string`` behind offset word ``slot`` of ``raw``; None when out of range."""
    size = len(raw)
    if size < (slot + 1) * WORD:
        return None
    offset = _from_bytes(raw[slot * WORD : (slot + 1) * WORD], "big")
    if offset > size - WORD:
        return None
    length = _from_bytes(raw[offset : offset + WORD], "big")
    offset += WORD
    if length > size - offset:
        return None
    return raw[offset : offset + length].decode("utf-8", errors="replace")


def _fast_address(word: bytes) -> str | None:
    return "0x" + word[12:].hex() if word[:12] == _ZERO12 else None


def _fast_granted(topics: Sequence[bytes], data: bytes) -> ChainEvent | None:
    node_id = _fast_string(data, 0)
    key = _fast_string(data, 1)
    owner = _fast_address(topics[2])
    if node_id is None or key is None or owner is None:
        return None
    token_id = _from_bytes(topics[1], "big")
    return NodeAccessGranted(token_id=token_id, node_id=node_id, owner=owner, public_key=key)


def _fast_revoked(topics: Sequence[bytes], data: bytes) -> ChainEvent | None:
    node_id = _fast_string(data, 0)
    if node_id is None:
        return None
    return NodeAccessRevoked(token_id=_from_bytes(topics[1], "big"), node_id=node_id)


def _fast_key_updated(topics: Sequence[bytes], data: bytes) -> ChainEvent | None:
    key = _fast_string(data, 0)
    owner = _fast_address(topics[1])
    if key is None or owner is None:
        return None
    return PublicKeyUpdated(owner=owner, public_key=key)


_FastDecoder = Callable[[Sequence[bytes], bytes], ChainEvent | None]

#: topic0 (lowercase, as nodes send it) -> (number of topics, fast decoder); the events
#: without strings use their careful decoder (it only raises what the careful path would).
_FAST: Final[Mapping[str, tuple[int, _FastDecoder]]] = {
    GRANTED: (3, _fast_granted),
    REVOKED: (2, _fast_revoked),
    TRANSFERRED: (4, _transferred),
    KEY_UPDATED: (2, _fast_key_updated),
    SUBSCRIPTION: (2, _subscription),
}


# --- raw JSON-RPC objects ------------------------------------------------------------------


def quantity(value: object, what: str) -> int:
    """A JSON-RPC quantity (``0x`` hex, or an int) as an int."""
    if type(value) is str and value[:2] == "0x" and len(value) > 2:  # the usual case, first
        try:
            return int(value[2:], 16)
        except ValueError:
            pass
    elif isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and value.startswith(("0x", "0X")) and len(value) > 2:
        try:
            return int(value[2:], 16)
        except ValueError:
            pass
    raise DecodeError(f"{what} is not a hex quantity: {str(value)[:40]!r}")


def hash32(value: object, what: str) -> str:
    """A 32-byte hash as lowercase ``0x`` hex."""
    if type(value) is str:
        known = _HASHES.get(value)
        if known is not None:
            return known
    if isinstance(value, str) and _HASH_RE.fullmatch(value):
        if len(_HASHES) >= HASHES_KEPT:
            _HASHES.clear()
        known = _HASHES[value] = value.lower()
        return known
    raise DecodeError(f"{what} is not a 32-byte hash: {str(value)[:70]!r}")


def log_ref(raw: Mapping[str, Any]) -> LogRef:
    """Where ``raw`` (a JSON-RPC log object) sits on chain; DecodeError if malformed."""
    if type(raw) is not dict and not isinstance(raw, Mapping):
        raise DecodeError("log is not an object")
    address = raw.get("address")
    if not isinstance(address, str) or len(address) != 42:
        raise DecodeError(f"log address is not an address: {str(address)[:50]!r}")
    return LogRef(
        block_number=quantity(raw.get("blockNumber"), "blockNumber"),
        log_index=quantity(raw.get("logIndex"), "logIndex"),
        block_hash=hash32(raw.get("blockHash"), "blockHash"),
        tx_hash=hash32(raw.get("transactionHash"), "transactionHash"),
        address=address.lower(),
        removed=raw.get("removed") is True,
    )


def decode_log(
    raw: Mapping[str, Any],
    chain_id: int,
    timestamp: int,
    ref: LogRef | None = None,
    prev: str = GENESIS_DIGEST,
) -> LogEntry:
    """The :class:`LogEntry` (without digest, after ``prev``) of a JSON-RPC log object.

    ``timestamp`` is the block's timestamp (from its header); ``ref`` is
    ``log_ref(raw)`` when the caller has it already. Raises :class:`DecodeError` for
    a malformed log or an event that does not decode.
    """
    if ref is None:
        ref = log_ref(raw)
    return LogEntry(
        chain_id=chain_id,
        contract=ref.address,
        block_number=ref.block_number,
        block_hash=ref.block_hash,
        tx_hash=ref.tx_hash,
        log_index=ref.log_index,
        block_timestamp=timestamp,
        event=decode_event(raw.get("topics"), raw.get("data")),
        prev=prev,
    )


def header(raw: object) -> BlockHeader:
    """A :class:`BlockHeader` from a JSON-RPC block object; DecodeError if malformed."""
    if not isinstance(raw, Mapping):
        raise DecodeError("block is not an object")
    return BlockHeader(
        number=quantity(raw.get("number"), "number"),
        hash=hash32(raw.get("hash"), "hash"),
        parent_hash=hash32(raw.get("parentHash"), "parentHash"),
        timestamp=quantity(raw.get("timestamp"), "timestamp"),
    )


__all__ = [
    "GRANTED",
    "KEY_UPDATED",
    "REVOKED",
    "SUBSCRIPTION",
    "TOPIC0S",
    "TOPICS",
    "TRANSFERRED",
    "BlockHeader",
    "LogRef",
    "decode_event",
    "decode_log",
    "header",
    "log_ref",
    "quantity",
]
