"""``envelope_decoders``: a reader's table of the envelopes it reads (the stage's fast path; the
stage's loop is compared with ``from_fields`` in ``tests/integration/test_stages.py``)."""

from __future__ import annotations

import msgspec
from factories import wg_key as key

from shared.events import (
    LogEntry,
    NodeAccessGranted,
    Retracted,
    _Member,
    envelope_decoders,
    to_fields,
)

ENTRY = LogEntry(
    1, "0xc0", 7, "0x07", "0x01", 0, 14, NodeAccessGranted(1, "node-a", "0xab", key(1))
)
ITEMS = [
    ENTRY,
    Retracted("3-0", 7, "0x07"),
]


def envelope(item: msgspec.Struct) -> dict[bytes, bytes]:
    """The fields of ``item`` as a Redis client reads them back (bytes)."""
    return {k.encode(): v if isinstance(v, bytes) else str(v).encode() for k, v in to_fields(item).items()}  # type: ignore[arg-type]  # fmt: skip


def test_the_table_holds_the_given_types_and_their_subclasses_only() -> None:
    table = envelope_decoders((LogEntry, Retracted))
    assert set(table) == {(b"1", b"LogEntry"), (b"1", b"Retracted")}
    assert {name for _, name in envelope_decoders((_Member,))} == {b"NodeJoined", b"NodeChanged"}
    assert envelope_decoders((NodeAccessGranted,)) == {}  # not an entry type
    for item in ITEMS:
        fields = envelope(item)
        assert table[(fields[b"v"], fields[b"type"])].decode(fields[b"data"]) == item
