"""The typed facts that flow through wgchain's streams.

Pure: msgspec structs and their encoding, no I/O. Every stream entry is an
envelope of three fields, ``v`` (schema version), ``type`` (the struct's tag) and
``data`` (the struct as JSON). Readers look at ``type`` first, so an entry of a
type they do not know is set aside (dead-lettered), never a crash.

New fields must get defaults so that old entries keep decoding;
``tests/unit/test_events_compat.py`` holds kept samples that prove it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any, Final, TypeVar

import msgspec

from shared.errors import DecodeError

#: Schema version written in the ``v`` field of every new entry.
SCHEMA_VERSION: Final = 1
#: The ``prev`` digest of the first entry of an events stream (64 hex zeros).
GENESIS_DIGEST: Final = "0" * 64


class _Event(msgspec.Struct, frozen=True, tag_field="type", forbid_unknown_fields=False):
    """Base of every tagged struct; the tag is the class name."""


# --- chain events (docs/design.md §3.1): the contract's four, and ERC-5643's (§5) ----------


class NodeAccessGranted(_Event, frozen=True, tag=True):
    token_id: int
    node_id: str
    owner: str
    public_key: str


class NodeAccessRevoked(_Event, frozen=True, tag=True):
    token_id: int
    node_id: str


class NodeAccessTransferred(_Event, frozen=True, tag=True):
    token_id: int
    from_address: str
    to_address: str


class PublicKeyUpdated(_Event, frozen=True, tag=True):
    owner: str
    public_key: str


class SubscriptionUpdate(_Event, frozen=True, tag=True):
    """ERC-5643: the token's pass now expires at ``expiration`` (unix seconds; 0: expired).

    Emitted on a mint with a duration, a renewal and a cancellation (expiration 0).
    A token never named by one never expires (docs/design.md §5).
    """

    token_id: int
    expiration: int


ChainEvent = (
    NodeAccessGranted
    | NodeAccessRevoked
    | NodeAccessTransferred
    | PublicKeyUpdated
    | SubscriptionUpdate
)


class LogEntry(_Event, frozen=True, tag=True):
    """One contract log in the ``events`` stream, chained to the entry before it."""

    chain_id: int
    contract: str
    block_number: int
    block_hash: str
    tx_hash: str
    log_index: int
    block_timestamp: int
    event: ChainEvent
    prev: str = GENESIS_DIGEST
    digest: str = ""

    def with_digest(self, prev: str) -> LogEntry:
        """This entry chained after ``prev``: its ``digest`` covers ``prev`` and every field."""
        return _chained(self, prev)

    def digest_ok(self) -> bool:
        """True when ``digest`` matches the entry's content and its ``prev``."""
        return self.with_digest(self.prev).digest == self.digest

    @property
    def position(self) -> tuple[int, int]:
        """Chain order of the log: (block number, log index)."""
        return (self.block_number, self.log_index)


class Retracted(_Event, frozen=True, tag=True):
    """An earlier entry of the same stream is void: its block left the canonical chain.

    After a reorg deeper than its finality margin the listener appends one for each
    orphaned ``events`` entry, newest first, then the canonical entries; each stage
    forwards retractions for the outputs those entries caused (``registry``, then
    ``peers``). Readers fold as if a retracted entry had never been appended
    (:func:`effective`). In ``events`` it is digest-chained like a :class:`LogEntry`.
    """

    #: Id of the void entry, in the same stream.
    entry_id: str
    #: Block of the orphaned log that started the chain of retractions, and its old hash.
    block_number: int
    block_hash: str
    #: registry/peers: id of the input entry (itself a ``Retracted``) that caused this one.
    cause: str = ""
    #: registry/peers: id of the ``events`` retraction at the start of the chain ("" in events).
    origin: str = ""
    prev: str = GENESIS_DIGEST
    digest: str = ""

    def with_digest(self, prev: str) -> Retracted:
        """This entry chained after ``prev`` (events stream only)."""
        return _chained(self, prev)

    def digest_ok(self) -> bool:
        """True when ``digest`` matches the entry's content and its ``prev``."""
        return self.with_digest(self.prev).digest == self.digest


EventsEntry = LogEntry | Retracted

# --- registry changes (docs/design.md §6.4) -------------------------------------------


class _Member(_Event, frozen=True):
    """A live member as the registry stage decided it (the fields of both events about one)."""

    node_id: str
    token_id: int
    owner: str
    public_key: str
    cause: str
    block_number: int
    #: Unix time its pass expires (ERC-5643; None: never). A fact of the log: whether it is
    #: past is judged where a decision is made (an agent applying, a check answering).
    expires: int | None = None


class NodeJoined(_Member, frozen=True, tag=True):
    """A node became a live member (it now gets a peer)."""


class NodeChanged(_Member, frozen=True, tag=True):
    """A live member's key, owner, deciding token or expiration changed; it stays live."""


class NodeLeft(_Event, frozen=True, tag=True):
    """A node stopped being a live member; ``reason`` says why."""

    node_id: str
    reason: str
    cause: str
    block_number: int


class Conflict(_Event, frozen=True, tag=True):
    """Two tokens compete (same node, or same key); the lowest token id keeps the peer."""

    kind: str
    node_id: str
    token_id: int
    winner_token_id: int
    cause: str
    block_number: int


class Anomaly(_Event, frozen=True, tag=True):
    """An event that the fold recorded but could not use: unknown token, hostile string."""

    kind: str
    detail: str
    cause: str
    block_number: int
    token_id: int | None = None


RegistryChange = NodeJoined | NodeChanged | NodeLeft | Conflict | Anomaly

# --- peers changes (docs/design.md §6.4) ----------------------------------------------


class PeerUpsert(_Event, frozen=True, tag=True):
    """A live member with its address: the peer every other host should have."""

    node_id: str
    public_key: str
    ipv4: str
    cause: str
    origin: str
    block_number: int
    ipv6: str | None = None
    #: Unix time the member's pass expires (None: never); agents drop the peer from then on.
    expires: int | None = None


class _NodeFact(_Event, frozen=True):
    """A ``peers`` entry that names a node and nothing more of it."""

    node_id: str
    cause: str
    origin: str
    block_number: int


class PeerRemove(_NodeFact, frozen=True, tag=True):
    """A node no host should peer with any more."""


class AllocationPending(_NodeFact, frozen=True, tag=True):
    """A live member that the pool has no address for yet (retried when space frees)."""


PeersChange = PeerUpsert | PeerRemove | AllocationPending

AnyEntry = LogEntry | RegistryChange | PeersChange | Retracted


class PeersSnapshot(msgspec.Struct, frozen=True):
    """The full peer set as of one ``peers`` stream id (written by the ipam stage).

    Not a stream entry: it lives in its own hash (``Keys.snapshot``) next to the id
    it covers through, so a new or long-offline agent starts from it and tails.
    """

    peers: list[PeerUpsert]


_ENCODER: Final = msgspec.json.Encoder()
_TYPES: Final[dict[str, type[_Event]]] = {
    cls.__name__: cls
    for cls in (
        LogEntry,
        NodeJoined,
        NodeChanged,
        NodeLeft,
        Conflict,
        Anomaly,
        PeerUpsert,
        PeerRemove,
        AllocationPending,
        Retracted,
    )
}
_DECODERS: Final[dict[str, msgspec.json.Decoder[Any]]] = {
    name: msgspec.json.Decoder(cls) for name, cls in _TYPES.items()
}
_CHAIN_DECODER: Final = msgspec.json.Decoder(ChainEvent)
#: (version, type) of an envelope as written today -> its decoder (the fast path).
_FAST: Final[dict[tuple[bytes, bytes], msgspec.json.Decoder[Any]]] = {
    (str(SCHEMA_VERSION).encode(), name.encode()): decoder for name, decoder in _DECODERS.items()
}

_Chained = TypeVar("_Chained", LogEntry, Retracted)


def _chained(item: _Chained, prev: str) -> _Chained:
    """``item`` chained after ``prev``: its ``digest`` covers ``prev`` and every field."""
    unsigned = msgspec.structs.replace(item, prev=prev, digest="")
    digest = hashlib.sha256(prev.encode() + _ENCODER.encode(unsigned)).hexdigest()
    return msgspec.structs.replace(unsigned, digest=digest)


#: How an unchained entry's JSON ends: ``digest`` is the last field, empty.
_UNSIGNED_END: Final = b'"digest":""}'


def sealed(entry: LogEntry) -> tuple[LogEntry, bytes]:
    """``entry`` (its ``prev`` set, no digest) chained, and its JSON as :func:`encode` gives it.

    The same as ``chained = entry.with_digest(entry.prev)`` and ``encode(chained)``, with one
    encoding for both: the digest covers the JSON with an empty ``digest``, and the stored
    JSON is those bytes with the digest written in (``digest`` is the last field).
    """
    unsigned = _ENCODER.encode(entry)
    if entry.digest or not unsigned.endswith(_UNSIGNED_END):
        raise ValueError("sealed() takes an entry without digest")
    digest = hashlib.sha256(entry.prev.encode() + unsigned).hexdigest()
    payload = b"".join((unsigned[:-2], digest.encode(), b'"}'))
    return msgspec.structs.replace(entry, digest=digest), payload


E = TypeVar("E")


def effective(entries: Iterable[tuple[str, E]]) -> list[tuple[str, E]]:
    """The entries a reader folds: without retractions and the entries they retract.

    ``entries`` are (id, entry) in stream order. Pure; linear in the number of
    entries (a retraction normally names an entry near the end).
    """
    kept: list[tuple[str, E]] = []
    void: set[str] = set()
    for entry_id, entry in entries:
        if isinstance(entry, Retracted):
            void.add(entry.entry_id)
            while kept and kept[-1][0] in void:
                kept.pop()
            continue
        kept.append((entry_id, entry))
    if void:
        kept = [(i, e) for i, e in kept if i not in void]
    return kept


def encode(item: msgspec.Struct) -> bytes:
    """JSON bytes of a struct (deterministic: fields in declaration order)."""
    return _ENCODER.encode(item)


def to_fields(item: _Event) -> dict[str, bytes | str | int]:
    """The stream-entry fields (envelope) for ``item``."""
    return {"v": SCHEMA_VERSION, "type": type(item).__name__, "data": _ENCODER.encode(item)}


def from_fields(fields: dict[bytes, bytes]) -> AnyEntry:
    """Decode a stream entry's envelope and then its payload.

    Raises :class:`DecodeError` for a missing field, an unknown type, a version from
    the future or a payload that does not match its type.
    """
    decoder = _FAST.get((fields.get(b"v"), fields.get(b"type")))  # type: ignore[arg-type]
    if decoder is not None:  # the common envelope: no checks left but the payload's
        try:
            fast: AnyEntry = decoder.decode(fields[b"data"])
            return fast
        except (KeyError, msgspec.DecodeError):
            pass  # the full path names what is wrong
    missing = [name for name in ("v", "type", "data") if name.encode() not in fields]
    if missing:
        raise DecodeError(f"not a wgchain envelope: no field {', '.join(missing)}")
    try:
        version = int(fields[b"v"])
    except ValueError:
        shown = fields[b"v"][:20].decode("latin-1").encode("unicode_escape").decode("ascii")
        raise DecodeError(f"not a wgchain envelope: version {shown!r} is not a number") from None
    try:
        kind = fields[b"type"].decode("ascii")
    except UnicodeDecodeError:
        raise DecodeError("not a wgchain envelope: its type is not ASCII") from None
    data = fields[b"data"]
    if version > SCHEMA_VERSION:
        raise DecodeError(f"schema version {version} is newer than this reader ({SCHEMA_VERSION})")
    decoder = _DECODERS.get(kind)
    if decoder is None:
        raise DecodeError(f"unknown entry type {kind[:40]!r}")
    try:
        entry: AnyEntry = decoder.decode(data)
        return entry
    except msgspec.DecodeError as exc:
        raise DecodeError(f"bad {kind} payload: {exc}") from exc


def envelope_decoders(
    types: Iterable[type],
) -> dict[tuple[bytes, bytes], msgspec.json.Decoder[Any]]:
    """(``v``, ``type``) of an envelope as written today -> the decoder of its payload, for
    the entry ``types`` among these (a reader's fast path: an entry it finds here decodes to
    an instance of ``types`` or fails; anything else goes through :func:`from_fields`)."""
    wanted = tuple(types)
    return {
        key: decoder
        for key, decoder in _FAST.items()
        if issubclass(_TYPES[key[1].decode()], wanted)
    }


def decode_chain_event(data: bytes) -> ChainEvent:
    """Decode a bare chain event from JSON (used by tests and tools)."""
    try:
        event: ChainEvent = _CHAIN_DECODER.decode(data)
        return event
    except msgspec.DecodeError as exc:
        raise DecodeError(str(exc)) from exc
