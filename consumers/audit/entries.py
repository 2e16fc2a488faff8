"""Stream entries for an audit: decoded, ordered by id, and the bound of a run. Pure.

A bound is the id of the last ``events`` entry an audit covers (``START`` for none):
``--until ID`` covers the entries up to that id; ``--until-block B`` covers the
prefix of the log that ends before the first contract log of a block after ``B``
(what the log held once the listener had appended block ``B``; after a deep reorg
the retractions and canonical entries that followed are outside it).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from shared.errors import DecodeError, SettingsError
from shared.events import AnyEntry, LogEntry, Retracted, from_fields
from shared.ids import START, id_key

_ID_RE: Final = re.compile(r"[0-9]{1,20}(-[0-9]{1,20})?")


@dataclass(frozen=True)
class Undecodable:
    """A stream entry that does not decode (a hand edit, or a type from the future)."""

    reason: str


Decoded = tuple[str, AnyEntry | Undecodable]
#: A raw stream entry: (id, fields).
Entry = tuple[str, dict[bytes, bytes]]


def parse_id(text: str, option: str) -> str:
    """A stream id from the command line (``MS-SEQ`` or ``MS``, meaning every id of that ms)."""
    text = text.strip()
    if not _ID_RE.fullmatch(text):
        raise SettingsError(option, f"{text[:40]!r} is not a stream id (MS-SEQ)")
    return text if "-" in text else f"{text}-{(1 << 64) - 1}"


def decode(entries: Iterable[Entry]) -> list[Decoded]:
    """``entries`` decoded; an entry that does not decode becomes :class:`Undecodable`."""
    out: list[Decoded] = []
    for entry_id, fields in entries:
        try:
            out.append((entry_id, from_fields(fields)))
        except DecodeError as exc:
            out.append((entry_id, Undecodable(str(exc))))
    return out


def until_block(events: Iterable[Decoded], block: int) -> str:
    """The bound of ``--until-block``: the last id before the first log of a later block."""
    last = START
    for entry_id, entry in events:
        if isinstance(entry, LogEntry) and entry.block_number > block:
            break
        last = entry_id
    return last


def until_id(events: Iterable[Decoded], bound: str) -> str:
    """The bound of ``--until``: the last entry id at or before ``bound``."""
    last = START
    limit = id_key(bound)
    for entry_id, _ in events:
        if id_key(entry_id) > limit:
            break
        last = entry_id
    return last


def within(events: list[Decoded], bound: str) -> list[Decoded]:
    """The entries of ``events`` up to ``bound`` (a prefix)."""
    limit = id_key(bound)
    return [(i, e) for i, e in events if id_key(i) <= limit]


def void_ids(events: Iterable[Decoded]) -> set[str]:
    """Ids of the entries that a later ``Retracted`` entry voids."""
    return {e.entry_id for _, e in events if isinstance(e, Retracted)}


def utc(timestamp: int) -> str:
    """A block timestamp as UTC ISO 8601 (``2024-05-01T12:00:00Z``); the number if out of range."""
    try:
        return datetime.fromtimestamp(timestamp, tz=UTC).isoformat().replace("+00:00", "Z")
    except (OverflowError, ValueError, OSError):
        return str(timestamp)


__all__ = [
    "START",
    "Decoded",
    "Entry",
    "Undecodable",
    "decode",
    "id_key",
    "parse_id",
    "until_block",
    "until_id",
    "utc",
    "void_ids",
    "within",
]
