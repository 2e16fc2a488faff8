"""The listener's atomic append: entries, dead letters and the cursor in one Lua call.

The cursor hash holds ``block`` (last block fully appended), ``hash`` (its block
hash), ``digest`` (digest of the last entry, for the chain) and ``last_id`` (the
stream id of the last entry). A commit names the cursor block it started from;
if another writer moved the cursor meanwhile the script refuses the whole batch
(:class:`CommitConflict`), so a listener killed at any instant and restarted
appends every log exactly once.

Fencing: when a lease key is given, the script also checks that the key holds
the caller's token, so a listener that lost its lease cannot append.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Final, NamedTuple

import msgspec
import redis

from shared import lua, streams
from shared.errors import CommitConflict, Fenced
from shared.events import SCHEMA_VERSION, LogEntry, Retracted, from_fields
from shared.keys import Keys
from shared.redis_log import as_str, pack_dead, pack_entries, redis_retry

#: Block-hash checkpoints the cursor keeps (enough to find a common ancestor after a reorg).
CHECKPOINTS: Final = 256
#: Entries per page when scanning the events stream backwards.
PAGE: Final = 1000
_RECENT: Final = msgspec.json.Decoder(list[tuple[int, str]])

_APPEND_LUA: Final = lua.source("listener_append")


class Cursor(NamedTuple):
    """The last block the listener appended completely, its hash, and the last digest.

    ``recent`` holds (block, hash) checkpoints of blocks already appended (range
    ends and blocks with logs, the newest :data:`CHECKPOINTS`): after a reorg the
    newest one still on the chain is the common ancestor to walk back to. An
    empty ``hash`` means unknown (the cursor was rewound past every checkpoint).
    """

    block: int
    hash: str
    digest: str
    recent: tuple[tuple[int, str], ...] = ()

    def advanced(
        self, block: int, block_hash: str, digest: str, seen: Iterable[tuple[int, str]]
    ) -> Cursor:
        """The cursor after appending up to ``block``; ``seen``: (block, hash) of its logs."""
        points = dict(self.recent)
        points.update(seen)
        points[block] = block_hash
        recent = tuple(sorted(points.items())[-CHECKPOINTS:])
        return Cursor(block, block_hash, digest, recent)


class DeadLetter(NamedTuple):
    """A log the listener could not decode: its position, why, and the raw JSON."""

    ident: str
    reason: str
    raw: bytes


class ListenerStore:
    """The listener's cursor hash, ``events`` stream and dead-letter stream."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self._keys = [keys.cursor, keys.events, keys.dead("listener")]
        self._append = client.register_script(_APPEND_LUA)

    def load_cursor(self) -> Cursor | None:
        """The committed cursor, or None before the first commit."""
        raw = redis_retry(self.client.hgetall, self.keys.cursor)
        if not raw or b"block" not in raw:
            return None
        recent = _RECENT.decode(raw[b"recent"]) if raw.get(b"recent") else ()
        return Cursor(
            int(raw[b"block"]),
            as_str(raw[b"hash"]),
            as_str(raw[b"digest"]),
            tuple((int(b), str(h)) for b, h in recent),
        )

    def live_after(self, block: int) -> list[tuple[str, LogEntry]]:
        """Entries of logs above ``block`` that no retraction voided yet, newest first."""
        found: list[tuple[str, LogEntry]] = []
        void: set[str] = set()
        for chunk in streams.pages(self.client, self.keys.events, page=PAGE, newest_first=True):
            for entry_id, fields in chunk:
                entry = from_fields(fields)
                if isinstance(entry, Retracted):
                    void.add(entry.entry_id)
                elif isinstance(entry, LogEntry) and entry_id not in void:
                    if entry.block_number <= block:
                        return found
                    found.append((entry_id, entry))
        return found

    def commit(
        self,
        expected: Cursor | None,
        cursor: Cursor,
        entries: Sequence[LogEntry | Retracted],
        dead: Sequence[DeadLetter] = (),
        *,
        fence: tuple[str, str] | None = None,
        payloads: Sequence[bytes] | None = None,
    ) -> str | None:
        """Append ``entries`` and ``dead`` and move the cursor from ``expected`` to ``cursor``.

        All or nothing. ``cursor.digest`` must be the digest of the last entry (or
        the previous digest when ``entries`` is empty). ``fence`` is an optional
        (lease key, token) pair checked in the same call. ``payloads``, when given, are the
        entries' JSON already encoded (:func:`shared.events.sealed`). Returns the id of the last
        appended entry (None if none); raises :class:`CommitConflict` when the stored
        cursor is not ``expected`` (or the lease is not held).
        """
        keys = list(self._keys)
        token = ""
        if fence is not None:
            keys.append(fence[0])
            token = fence[1]
        args: list[bytes | str | int] = [
            "" if expected is None else str(expected.block),
            str(cursor.block),
            cursor.hash,
            cursor.digest,
            token,
            msgspec.json.encode(cursor.recent),
            *(pack_entries(entries) if payloads is None else _packed(entries, payloads)),
            *pack_dead(dead),
        ]
        try:
            last = redis_retry(self._append, keys=keys, args=args)
        except redis.ResponseError as exc:
            # The script's error replies are the only text read here (the `fenced` reply
            # becomes its own type, so callers never look at messages).
            text = str(exc)
            if "CONFLICT fenced" in text:
                raise Fenced(text) from exc
            if "CONFLICT" in text:
                raise CommitConflict(text) from exc
            raise
        return last.decode() if isinstance(last, bytes) else last


def _packed(entries: Sequence[LogEntry | Retracted], payloads: Sequence[bytes]) -> list[Any]:
    """:func:`pack_entries` of ``entries`` whose JSON is ``payloads`` (encoded once, by the
    caller)."""
    args: list[Any] = [len(entries)]
    for entry, payload in zip(entries, payloads, strict=True):
        args += (SCHEMA_VERSION, type(entry).__name__, payload)
    return args


__all__ = ["Cursor", "DeadLetter", "ListenerStore"]
