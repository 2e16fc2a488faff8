"""Following one network's ``peers`` stream (I/O): the peer table, its position, its block.

The table starts from the latest snapshot (or from scratch) and folds the entries
after it; it notes which nodes each batch changed (for
:class:`~consumers.agent.peerset.DesiredPeers`) or that it was replaced whole (a
snapshot, a retraction, a reset: then everything is recomputed).

Continuity, in one round trip: each read is pipelined with ``XRANGE P P`` (P: our
position before the read). Redis runs a pipeline in order, so that XRANGE sees the
stream as it is after the read: P still there means nothing after P was lost, as the
pipeline only trims from the head (``XTRIM``; it never ``XDEL``s), and a trim that
removed anything after P removed P too. A reset (Redis lost its data) removes P as
well, whether it happened before the read's answer (the batch may then hold entries
of the new stream: it is dropped) or after it (a needless re-check). Only when P is
gone does :meth:`Follower.read` ask ``XINFO STREAM`` whether the stream was trimmed
(start again from the snapshot) or reset (from scratch), as it logs either way.

The same ``XREAD`` can watch a second stream (``…:announcements``, see announce.py).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Collection, Mapping
from typing import Any, Final

import hiredis
import msgspec
import redis

from consumers.agent.desired import PeerRecord, PeerTable
from shared import streams
from shared.errors import DecodeError
from shared.events import SCHEMA_VERSION, PeerUpsert, Retracted, effective, from_fields
from shared.keys import Keys
from shared.redis_log import START, Entry, as_str, id_key, read_after, read_replies
from shared.validate import excerpt

#: Entries of the peers stream read per batch.
BATCH_SIZE: Final = 500
#: Entries per read while catching up (bootstrap, or after a full batch).
CATCH_UP_SIZE: Final = 2000
#: Entries per page when a retraction makes the agent re-read the peers stream.
REBUILD_PAGE: Final = 5000


class _Snapshot(msgspec.Struct, frozen=True):
    peers: list[msgspec.Raw]


class _Who(msgspec.Struct, frozen=True):
    """The two fields of a peers change a table that keeps some nodes only looks at first."""

    node_id: str = ""
    block_number: int = 0


_SNAPSHOT: Final = msgspec.json.Decoder(_Snapshot)
_UPSERT: Final = msgspec.json.Decoder(PeerUpsert)
_WHO: Final = msgspec.json.Decoder(_Who)
#: Entry types about one node (the others, retractions, are always decoded whole).
_PEER_TYPES: Final = frozenset({b"PeerUpsert", b"PeerRemove", b"AllocationPending"})
_VERSION: Final = str(SCHEMA_VERSION).encode()
#: Held while a snapshot is read and decoded (one at a time per process).
_SNAPSHOT_LOCK: Final = threading.Lock()


def before(entry_id: str) -> str:
    """The stream id just before ``entry_id``."""
    ms, seq = id_key(entry_id)
    return f"{ms}-{seq - 1}" if seq else f"{ms - 1}-{2**64 - 1}"


def block_of(entry: object) -> int:
    """The chain block a peers entry stems from (0 when it names none)."""
    block = getattr(entry, "block_number", 0)
    return block if isinstance(block, int) else 0


def _deleted_after(info: object) -> str:
    """The newest id XDEL (or, from Redis 7.2, XTRIM) removed from a stream (``0-0``: none)."""
    if not isinstance(info, dict):
        return START
    return as_str(info.get("max-deleted-entry-id") or START)


def trimmed_past(info: object, position: str) -> bool:
    """Whether XINFO STREAM ``info`` shows the stream trimmed past ``position``.

    Redis 7.0's XTRIM leaves ``max-deleted-entry-id`` alone, so a trim shows as a
    first entry after ``position`` in a stream that has lost entries (more added
    than it holds). A stream refilled after a reset lost none: it was reset.
    """
    if not isinstance(info, dict):
        return False
    added, length = info.get("entries-added"), info.get("length")
    if isinstance(added, int) and isinstance(length, int):
        if added <= length:
            return False
        if length == 0:
            return True  # trimmed to nothing
    first = info.get("recorded-first-entry-id")
    if not first:
        entry = info.get("first-entry")
        first = entry[0] if isinstance(entry, list | tuple) and entry else None
    return first is not None and id_key(as_str(first)) > id_key(position)


class Follower:
    """The peer table of one network, folded from its ``peers`` stream."""

    def __init__(
        self, client: redis.Redis, keys: Keys, keep: Collection[str] | None, log: Any
    ) -> None:
        self.client = client
        self.keys = keys
        #: The peers stream's key (``keys.peers`` builds it at every look).
        self.peers_key = keys.peers
        self.keep = keep
        self.log = log
        self.table = PeerTable(keep)
        self.position = START
        #: Block of the newest peers entry the table covers.
        self.block = 0
        #: When an entry last arrived (monotonic seconds).
        self.last_entries = 0.0
        #: True when the last read returned less than a full batch (nothing more to read).
        self.caught_up = False
        #: Whether the table was replaced since :meth:`take` (everything must be recomputed).
        self.replaced = True
        #: Called after the stream was found trimmed past us or reset (the table restarted).
        self.on_reset: Callable[[], None] = lambda: None
        #: The connection of :meth:`read` (kept: one round trip per wake, nothing else).
        self._conn: Any = None

    # --- reading -----------------------------------------------------------------------

    def read(
        self,
        block_ms: int | None,
        count: int = BATCH_SIZE,
        status: tuple[str, Mapping[str, Any]] | None = None,
        also: tuple[str, str] | None = None,
    ) -> tuple[list[Entry], list[Any]]:
        """The next batch of ``peers`` entries after our position, and the entries of
        ``also`` (stream, position), watched by the same blocking read; ``status`` (key,
        fields) is written first, in the same round trip. Blocks up to ``block_ms``
        (None: not at all, and ``also`` is not read)."""
        position = self.position
        peers = self.peers_key
        commands: list[tuple[Any, ...]] = []
        if status is not None:
            commands.append(("HSET", status[0], *(x for kv in status[1].items() for x in kv)))
        if block_ms is None:
            low = START if position == START else f"({position}"
            commands.append(("XRANGE", peers, low, "+", "COUNT", count))
        else:
            streams = {peers: position}
            if also is not None:
                streams[also[0]] = also[1]
            commands.append(
                ("XREAD", "COUNT", count, "BLOCK", block_ms, "STREAMS", *streams, *streams.values())
            )
        if position != START:
            commands.append(("XRANGE", peers, position, position))
        replies = self._round_trip(commands)
        if status is not None:
            _raise_if_error(replies.pop(0))
        got = replies[0]
        _raise_if_error(got)  # NoPermissionError: ``also`` may not be read
        entries, others = self._entries(got, block_ms is None)
        self.caught_up = len(entries) < count
        if position != START:
            ours = replies[1]
            _raise_if_error(ours)
            if not ours:  # our position is gone: trimmed past it, or Redis was reset
                self._restart()
                entries = read_after(self.client, self.keys.peers, self.position, count, None)
                self.caught_up = len(entries) < count
        return entries, others

    def _round_trip(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """``commands`` in one write on this follower's own connection; their raw replies
        (an error reply as its exception). A redis-py pipeline per wake costs several
        times more CPU, which a fleet of agents in one process pays on every change.
        A Redis Cluster client has no single connection pool: a pipeline there (every key
        shares the network's hash tag, so one node answers)."""
        if not hasattr(self.client, "connection_pool"):
            pipe = self.client.pipeline(transaction=False)
            for command in commands:
                pipe.execute_command(*command)  # type: ignore[no-untyped-call]
            return list(pipe.execute(raise_on_error=False))
        pool = self.client.connection_pool
        conn = self._conn
        if conn is None:
            conn = self._conn = pool.get_connection()
        try:
            try:  # hiredis packs in C (redis-py's packer loops in Python over every argument)
                packed: Any = [b"".join([hiredis.pack_command(c) for c in commands])]
            except TypeError:  # not a str, bytes, int or float: redis-py's own error
                packed = conn.pack_commands(commands)
            if len(packed) == 1 and _plain(conn):
                packed = _send_at_once(conn, packed[0])
            if packed:
                conn.send_packed_command(packed)
            replies = read_replies(conn, len(commands))
        except BaseException:
            self._conn = None  # in an unknown state: a new one next time
            conn.disconnect()
            pool.release(conn)
            raise
        return replies

    def close(self) -> None:
        """Give this follower's connection back to the client's pool."""
        conn, self._conn = self._conn, None
        if conn is not None:
            self.client.connection_pool.release(conn)

    def _entries(self, got: Any, ranged: bool) -> tuple[list[Entry], list[Any]]:
        """The raw reply of XRANGE (``ranged``) or XREAD (RESP2 or RESP3) as entries."""
        if ranged:
            return _stream(got), []
        entries: list[Entry] = []
        others: list[Any] = []
        pairs = got.items() if isinstance(got, dict) else (got or ())
        for name, items in pairs:
            if as_str(name) == self.peers_key:
                entries = _stream(items)
            else:
                others = _stream(items)
        return entries, others

    def _restart(self) -> None:
        """The stream no longer holds our position: start again from the snapshot (if the
        stream was trimmed past us) or from scratch (if Redis was reset)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.xinfo_stream(self.keys.peers)
        info = pipe.execute(raise_on_error=False)[0]
        if id_key(_deleted_after(info)) > id_key(self.position) or trimmed_past(
            info, self.position
        ):
            self.log.warning(
                "peers entries after {} were trimmed before we read them: using the snapshot",
                self.position,
            )
        else:
            self.log.warning(
                "our position {} is not in the peers stream (Redis was reset?): reading again",
                self.position,
            )
        self._replace(PeerTable(self.keep), START)
        self.block = 0
        self.load_snapshot()
        self.last_entries = time.monotonic()
        self.on_reset()

    def load_snapshot(self, newer_than: str = START) -> bool:
        """Replace the table with the latest snapshot if it is newer than ``newer_than``.

        One agent of a process at a time: a snapshot of 100,000 members is some 20 MB to
        hold and decode, and the fleet benchmark starts 125 agents in one process.
        """
        with _SNAPSHOT_LOCK:
            return self._load_snapshot(newer_than)

    def _load_snapshot(self, newer_than: str) -> bool:
        raw: Any = self.client.hmget(self.keys.snapshot, "id", "data")
        if raw[0] is None or raw[1] is None:
            return False
        through = as_str(raw[0])
        if id_key(through) <= id_key(newer_than):
            return False
        try:
            snapshot = _SNAPSHOT.decode(raw[1])
            del raw
            table = PeerTable(self.keep)
            blocks = [self.block]
            for item in snapshot.peers:  # one at a time: a spoke keeps few of 100,000
                if self.keep is not None:
                    who = _WHO.decode(item)
                    blocks.append(who.block_number)
                    if who.node_id not in self.keep:
                        continue
                peer = _UPSERT.decode(item)
                table.apply(peer)
                blocks.append(peer.block_number)
        except msgspec.DecodeError as exc:
            self.log.error("snapshot unreadable ({}); ignoring it", excerpt(str(exc)))
            return False
        del snapshot
        self._replace(table, through)
        last: Any = self.client.xrange(self.keys.peers, through, through)
        with contextlib.suppress(DecodeError):  # the entry the snapshot covers through
            blocks += [block_of(from_fields(fields)) for _, fields in last]
        self.block = max(blocks)
        self.log.info("peer table from the snapshot at {} ({} peers)", through, len(table.records))
        return True

    def _replace(self, table: PeerTable, position: str) -> None:
        self.table, self.position = table, position
        self.replaced = True

    # --- folding -----------------------------------------------------------------------

    def fold(self, entries: list[Entry]) -> int:
        """Fold entries into the peer table; returns how many were consumed.

        A ``Retracted`` entry (deep reorg upstream) rebuilds the table from the
        effective stream up to the last retraction of its run, so the table equals
        a clean fold of the canonical history.
        """
        retract_until = ""
        # Entries come in stream order: once one is past the position, so are the rest,
        # until a retraction moves the position (a snapshot may cover entries ahead).
        covered: tuple[int, int] | None = id_key(self.position)
        elsewhere_of = self._elsewhere if self.keep is not None else None
        block = self.block
        for entry_id, fields in entries:
            if covered is not None:
                if id_key(entry_id) <= covered:
                    continue  # already covered by a snapshot loaded in this batch
                covered = None
            elsewhere = elsewhere_of(fields) if elsewhere_of is not None else None
            if elsewhere is not None:  # about a node this table does not keep: its block only
                if retract_until:
                    block, retract_until = self._retract_at(block, retract_until), ""
                    if id_key(entry_id) <= id_key(self.position):
                        covered = id_key(self.position)
                        continue
                block = max(block, elsewhere)
                self.position = entry_id
                continue
            try:
                entry = from_fields(fields)
            except DecodeError as exc:
                self.log.bind(entry=entry_id).warning("peers entry ignored: {}", exc)
                self.position = entry_id
                continue
            entry_block = getattr(entry, "block_number", 0)  # (block_of, inline: per entry)
            if isinstance(entry_block, int) and entry_block > block:
                block = entry_block
            if isinstance(entry, Retracted):
                retract_until = entry_id
                self.position = entry_id
                continue
            if retract_until:
                block, retract_until = self._retract_at(block, retract_until), ""
                if id_key(entry_id) <= id_key(self.position):
                    covered = id_key(self.position)
                    continue
            problem = self.table.apply(entry)
            if problem:
                self.log.bind(entry=entry_id).warning("peers entry ignored: {}", problem)
            self.position = entry_id
        self.block = block
        if retract_until:
            self._retract(retract_until)
        if entries:
            self.last_entries = time.monotonic()
        return len(entries)

    def _elsewhere(self, fields: dict[bytes, bytes]) -> int | None:
        """The block of an entry about a node this table does not keep (None: decode it
        whole). Such an entry could change nothing here: a spoke of 100,000 members
        looks at two fields of each and folds the hubs' only."""
        if self.keep is None or fields.get(b"type") not in _PEER_TYPES:
            return None
        if fields.get(b"v") != _VERSION:
            return None
        try:
            who = _WHO.decode(fields[b"data"])
        except (msgspec.DecodeError, KeyError):
            return None
        return None if who.node_id in self.keep else who.block_number

    def take(self) -> dict[str, PeerRecord | None] | None:
        """The nodes changed since the last call, with their records before (None: the
        table was replaced: recompute everything)."""
        if self.replaced:
            self.replaced = False
            self.table.changes = {}
            return None
        changes = self.table.changes
        self.table.changes = {}
        return changes if changes is not None else None

    def _retract_at(self, block: int, until: str) -> int:
        """:meth:`_retract` with the batch's block so far; the block after it."""
        self.block = block
        self._retract(until)
        return self.block

    def _retract(self, until: str) -> None:
        """Make the table a clean fold of the effective stream up to ``until``.

        The ipam stage writes a snapshot in the same commit as any retraction, so
        the snapshot (which may be newer still) is the quick and exact way; without
        one, the stream is folded again from its start.
        """
        self.log.warning("peers retracted upstream (reorg) at {}", until)
        if not self.load_snapshot(newer_than=before(until)):
            self._replace(self._rebuild(until), until)

    def _rebuild(self, until: str) -> PeerTable:
        """The peer table folded from the effective ``peers`` stream up to ``until``."""
        # retry=False: an outage is the agent loop's to ride out
        pages = streams.pages(
            self.client, self.keys.peers, through=until, page=REBUILD_PAGE, retry=False
        )
        items = [item for page in pages for item in streams.decoded(page)]
        table = PeerTable(self.keep)
        for _, entry in effective(items):
            table.apply(entry)
        self.log.info("peer table folded again up to {}", until)
        return table


def _plain(conn: Any) -> bool:
    """Whether ``conn`` is connected over a plain TCP or Unix socket (not TLS)."""
    return conn._sock is not None and not isinstance(conn, redis.SSLConnection)


def _send_at_once(conn: Any, data: bytes) -> list[bytes]:
    """Write ``data`` on ``conn``'s socket in one ``write``; what is left to send the usual
    way (``[]``: all of it went). A socket with a timeout sends with a ``poll`` before each
    ``sendto``, each its own hand-over of the interpreter lock; a process of a hundred
    agents, all woken by the same entry, pays that hand-over per agent per change, and
    a request of one wake fits the socket's buffer (docs/design.md §11: one round trip
    per wake)."""
    try:
        sent = os.write(conn._sock.fileno(), data)
    except (BlockingIOError, InterruptedError):
        sent = 0
    except OSError:
        return [data]  # the usual way says it as redis-py does (ConnectionError)
    return [data[sent:]] if sent < len(data) else []


def _stream(items: Any) -> list[Entry]:
    """Raw stream entries ``[id, [field, value, ...]]`` as (id, fields)."""
    out: list[Entry] = []
    for entry_id, flat in items or ():
        name = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
        if isinstance(flat, dict):  # parsed already (a cluster pipeline's reply)
            out.append((name, flat))
        elif flat is not None and len(flat) == 6:  # v, type, data: every wgchain entry
            out.append((name, {flat[0]: flat[1], flat[2]: flat[3], flat[4]: flat[5]}))
        else:
            it = iter(flat or ())
            out.append((name, dict(zip(it, it, strict=False))))
    return out


def _raise_if_error(reply: object) -> None:
    if isinstance(reply, Exception):
        raise reply
