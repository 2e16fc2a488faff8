"""``audit export``: one row per ``events`` entry, as JSON lines or CSV, for external tools."""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from typing import IO, Any, Final

import msgspec

from consumers.audit.entries import Decoded, Undecodable, utc, void_ids
from shared.events import LogEntry, Retracted

#: Columns, in order (CSV header; keys of every JSON line).
COLUMNS: Final = (
    "id",
    "block",
    "time",
    "tx",
    "log_index",
    "event",
    "fields",
    "retracted",
    "block_hash",
    "digest",
)


def rows(events: Sequence[Decoded]) -> Iterator[dict[str, Any]]:
    """One row per entry; ``retracted`` is True for an entry a later retraction voids."""
    void = void_ids(events)
    for entry_id, entry in events:
        row: dict[str, Any] = dict.fromkeys(COLUMNS)
        row["id"] = entry_id
        row["retracted"] = entry_id in void
        if isinstance(entry, LogEntry):
            fields: dict[str, Any] = msgspec.to_builtins(entry.event)
            fields.pop("type", None)
            row.update(
                block=entry.block_number,
                time=utc(entry.block_timestamp),
                tx=entry.tx_hash,
                log_index=entry.log_index,
                event=type(entry.event).__name__,
                fields=fields,
                block_hash=entry.block_hash,
                digest=entry.digest,
            )
        elif isinstance(entry, Retracted):
            row.update(
                block=entry.block_number,
                event="Retracted",
                fields={"entry_id": entry.entry_id},
                block_hash=entry.block_hash,
                digest=entry.digest,
            )
        elif isinstance(entry, Undecodable):
            row.update(event="Undecodable", fields={"reason": entry.reason})
        else:
            row.update(event=type(entry).__name__, fields=msgspec.to_builtins(entry))
        yield row


def write_jsonl(out: IO[str], events: Sequence[Decoded]) -> int:
    """Write the rows as JSON lines; returns the number of rows."""
    count = 0
    for row in rows(events):
        out.write(msgspec.json.encode(row).decode() + "\n")
        count += 1
    return count


def write_csv(out: IO[str], events: Sequence[Decoded]) -> int:
    """Write the rows as CSV (``fields`` as a JSON object); returns the number of rows."""
    writer = csv.writer(out)
    writer.writerow(COLUMNS)
    count = 0
    for row in rows(events):
        row["fields"] = msgspec.json.encode(row["fields"]).decode()
        writer.writerow(["" if row[c] is None else row[c] for c in COLUMNS])
        count += 1
    return count


__all__ = ["COLUMNS", "rows", "write_csv", "write_jsonl"]
