"""The one comparison of a stream's log entries with the chain's logs. Pure.

Both completeness checks use it: ``wgchain listen --verify-range`` and the logs part of
``wgchain audit verify``. The entries are the stream's effective ones (retractions
applied) of the compared blocks, with their stream ids; the logs are what
:func:`shared.chain.read.read_range` read and decoded for the same blocks, and the
positions (``block:index``) of the logs that did not decode. Entries and logs meet by
chain position (block, log index); every difference is a :class:`LogDiff`, and each
command words them its own way.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from shared.events import GENESIS_DIGEST, LogEntry

__all__ = ["DUPLICATE", "EXTRA", "MISMATCH", "MISSING", "UNDECODABLE", "LogDiff", "compare_logs"]

#: A log on chain with no entry.
MISSING: Final = "missing"
#: An entry with no log on chain (and whose log was not set aside as undecodable).
EXTRA: Final = "extra"
#: A second entry for one log.
DUPLICATE: Final = "duplicate"
#: An entry that differs from its log (``fields``), or whose digest does not cover it.
MISMATCH: Final = "mismatch"
#: An entry whose log on chain does not decode (the listener should have set it aside).
UNDECODABLE: Final = "undecodable"


@dataclass(frozen=True)
class LogDiff:
    """One difference at chain position ``(block, log_index)``."""

    kind: str
    block: int
    log_index: int
    #: Stream id of the entry ("" for a missing log).
    entry_id: str = ""
    #: The stream's entry and the chain's log, when there is one.
    entry: LogEntry | None = None
    log: LogEntry | None = None
    #: MISMATCH: the dotted paths that differ (``block_hash``, ``event.public_key``, ...).
    fields: tuple[str, ...] = ()
    #: MISMATCH: the entry's digest does not cover its content (edited in Redis).
    edited: bool = False
    #: DUPLICATE: the id of the first entry for the same log.
    first_id: str = ""


def _leaves(a: Any, b: Any, path: str) -> list[str]:
    """Dotted paths where two JSON-like values differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for key in sorted(set(a) | set(b)):
            sub = f"{path}.{key}" if path else str(key)
            out += _leaves(a.get(key), b.get(key), sub)
        return out
    return [] if a == b else [path]


def _content(entry: LogEntry) -> Any:
    """What a log says, without the stream's digest chain (and the contract in lower case)."""
    plain = msgspec.structs.replace(
        entry, prev=GENESIS_DIGEST, digest="", contract=entry.contract.lower()
    )
    return msgspec.to_builtins(plain)


def compare_logs(
    entries: Iterable[tuple[str, LogEntry]],
    logs: Iterable[LogEntry],
    undecodable: Collection[str] = (),
) -> list[LogDiff]:
    """The differences between ``entries`` and ``logs``, in chain order.

    ``undecodable``: ``block:index`` of the logs that did not decode; an entry at such a
    position is :data:`UNDECODABLE`, and no entry there is as it should be.
    """
    diffs: list[LogDiff] = []
    ours: dict[tuple[int, int], tuple[str, LogEntry]] = {}
    for entry_id, entry in entries:
        first = ours.get(entry.position)
        if first is not None:
            diffs.append(LogDiff(DUPLICATE, *entry.position, entry_id, entry, first_id=first[0]))
        else:
            ours[entry.position] = (entry_id, entry)
    for log in logs:
        found = ours.pop(log.position, None)
        if found is None:
            diffs.append(LogDiff(MISSING, *log.position, log=log))
            continue
        entry_id, entry = found
        fields = tuple(_leaves(_content(entry), _content(log), ""))
        edited = not entry.digest_ok()
        if fields or edited:
            diffs.append(LogDiff(MISMATCH, *entry.position, entry_id, entry, log, fields, edited))
    set_aside = set(undecodable)
    for entry_id, entry in ours.values():
        kind = UNDECODABLE if f"{entry.block_number}:{entry.log_index}" in set_aside else EXTRA
        diffs.append(LogDiff(kind, *entry.position, entry_id, entry))
    diffs.sort(key=lambda d: (d.block, d.log_index, d.kind))
    return diffs
