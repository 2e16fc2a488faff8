"""The chain listener: contract logs from final-enough blocks, appended in chain order.

One :meth:`Listener.step` reads one block range after the cursor (sized by a
:class:`RangeSizer` kept across steps, at most ``max_block_range`` blocks, never
past the last final-enough block: ``head - confirmations`` or the ``safe`` /
``finalized`` block), fetches the logs and the headers of the blocks that hold
them, checks that every log's block hash is the hash of the header it read (a
reorg during the read means: read again), decodes the logs into digest-chained
:class:`LogEntry` objects, and commits them with the new cursor in one Lua call.
A log that does not decode is dead-lettered with its reason in the same commit,
never dropped silently. After a range full of logs the next one is read on a thread
while this one is appended (:mod:`producers.listener.ahead`).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final

import msgspec
import redis

from producers.backfill.append import append_staged
from producers.listener.ahead import ReadAhead
from producers.listener.store import Cursor, DeadLetter, ListenerStore
from producers.listener.tip import Look, Watch, look
from shared import health, metrics
from shared.chain.decode import TOPIC0S, BlockHeader, LogRef, decode_log
from shared.chain.ranges import RangeSizer
from shared.chain.read import Read, read_logs
from shared.chain.rpc import RpcClient, refused
from shared.cmdline import with_chain_id
from shared.collector import collector_paused
from shared.errors import (
    CommitConflict,
    DecodeError,
    Fenced,
    LogRangeError,
    ServiceUnavailable,
)
from shared.events import GENESIS_DIGEST, LogEntry, Retracted, sealed
from shared.keys import Keys
from shared.logs import log
from shared.redis_log import keep_going
from shared.settings import DEFAULTS, Settings

#: Seconds the loop waits after the RPC endpoints all failed, before trying again.
OUTAGE_WAIT: Final = 5.0
#: Logs per commit of a large read (whole blocks: a part may hold more); each part's commit
#: overlaps the decoding of the next (a dense range, ``ahead.PIECE_LOGS``, is two parts).
COMMIT_PART: Final = 2500


@dataclass(frozen=True)
class ListenerConfig:
    """What the loop needs from the settings (``chain_id`` already checked against the RPC)."""

    chain_id: int
    contract: str
    start_block: int = DEFAULTS.start_block
    confirmations: int = DEFAULTS.confirmations
    max_block_range: int = DEFAULTS.max_block_range
    poll_interval: float = DEFAULTS.poll_interval
    #: Block tag (``safe``, ``finalized``) followed instead of ``head - confirmations``.
    finality_tag: str = ""

    @property
    def finality(self) -> str:
        """What counts as final, for logs: ``"3 confirmations"`` or ``"the safe block"``."""
        if self.finality_tag:
            return f"the {self.finality_tag} block"
        return f"{self.confirmations} confirmations"


class Listener:
    """Appends the contract's logs to the ``events`` stream, one block range per step."""

    def __init__(self, rpc: RpcClient, store: ListenerStore, cfg: ListenerConfig) -> None:
        self.rpc = rpc
        self.store = store
        self.cfg = cfg
        self.contract = cfg.contract.lower()
        self.log = log.bind(stage="listener", network=store.keys.tag)
        self.cursor = store.load_cursor()
        self._target = -1
        #: Size of the next eth_getLogs range, learned from the provider across steps.
        self.sizer = RangeSizer(cfg.max_block_range)
        #: (lease key, fencing token) every commit checks; set while holding the lease.
        self.fence: tuple[str, str] | None = None
        #: What the last poll at the tip saw, and what it says (``tip.py``).
        self.seen: Look | None = None
        self.watch = Watch(store.client, store.keys)
        self._pool: ThreadPoolExecutor | None = None
        #: The next range, read on a thread while this one is appended (``ahead.py``).
        self.ahead = ReadAhead(self._read, self.sizer)

    @property
    def next_block(self) -> int:
        """The first block not yet appended."""
        return self.cursor.block + 1 if self.cursor else self.cfg.start_block

    def target(self, refresh: bool = False) -> int:
        """The last block final enough to append (``head - confirmations``, or the tag's).

        Asked again at the tip (one batch, :func:`tip.look`, that also reads the block
        the node now has at the cursor's height). Below the cursor when the node is
        behind (its head, or its safe/finalized block, is lower than what was already
        appended): the loop then waits, and :class:`tip.Watch` reports it.
        """
        if refresh or self._target < self.next_block:
            cursor = self.cursor
            block = cursor.block if cursor is not None and cursor.block >= 0 else None
            seen = look(self.rpc, self.cfg.finality_tag, self.cfg.confirmations, block)
            self.seen, self._target = seen, seen.final
            self.watch.saw(seen, block)
            if block is not None:
                metrics.head_distance(self.store.keys.tag, seen.head, block)
        return self._target

    def step(self) -> int:
        """Append one block range; returns the number of blocks it covered (0 at the tip).

        The cyclic collector is paused meanwhile (:func:`collector_paused`): a large range
        holds tens of thousands of raw logs and entries, and every collection would walk
        them all again (about half the listener's CPU); a step makes no reference cycles.
        """
        with collector_paused():
            return self._step()

    def _step(self) -> int:
        self.ahead.settle()  # the read ahead is done before the node is asked anything else
        self.watch.record({})  # "still at work", for status (throttled: at most once a second)
        staged = append_staged(self)  # a running backfill's next range, strictly in order
        if staged is not None:
            return staged
        start = self.next_block
        target = self.target()
        if start > target:
            metrics.listener_progress(self.store.keys.tag, start - 1, target)
            return self._replaced_at_tip(target)
        end, read = self.ahead.take(start, target) or self._read_sized(start, target)
        self.ahead.learn(start, end, len(read.logs))
        batch_log = self.log.bind(blocks=f"{start}-{end}")
        if self._reorged(start, read.headers):
            return self._rewind()
        self.ahead.start(end + 1, target, len(read.logs))  # read on while this one is appended
        appended = self._append(start, end, read)
        if appended is None:
            return 0
        entries, dead = appended
        metrics.appended(
            self.store.keys.tag,
            entries=len(entries),
            dead=len(dead),
            end=end,
            final_block=target,
            end_time=read.headers[end].timestamp,
        )
        (batch_log.info if entries or dead else batch_log.debug)(  # quiet blocks: DEBUG
            "blocks {}-{}: appended {} entries, {} dead-lettered",
            start,
            end,
            len(entries),
            len(dead),
        )
        return end - start + 1

    def commit(
        self,
        expected: Cursor | None,
        cursor: Cursor,
        entries: Sequence[LogEntry | Retracted],
        dead: Sequence[DeadLetter] = (),
        payloads: Sequence[bytes] | None = None,
    ) -> bool:
        """Append under our fence and move the cursor; False when another writer moved it.

        The cursor is then reloaded from Redis. A fenced commit (the lease is lost)
        raises :class:`CommitConflict`, so the lease supervisor steps down at once.
        ``payloads``: the entries' JSON when already encoded (:func:`sealed`).
        """
        try:
            self.store.commit(expected, cursor, entries, dead, fence=self.fence, payloads=payloads)
        except Fenced:
            raise
        except CommitConflict as exc:
            self.log.warning("cursor moved under the listener ({}); reloading it", exc)
            self.cursor = self.store.load_cursor()
            return False
        self.cursor = cursor
        return True

    @property
    def _prev(self) -> str:
        return self.cursor.digest if self.cursor else GENESIS_DIGEST

    def _read_sized(self, start: int, target: int) -> tuple[int, Read]:
        """The largest range from ``start`` the provider accepts now, and its read."""
        while True:
            end = self.ahead.last(start, target)
            try:
                read = self._read(start, end)
            except LogRangeError as exc:
                refused(self.sizer, start, end, exc)  # raises for a refused single block
                continue
            self.sizer.on_success(start, end)
            return end, read

    def _read(self, start: int, end: int) -> Read:
        """Logs and headers of ``[start, end]`` that agree on every block hash (asked at
        once: a refused range raises :class:`LogRangeError`, for the sizer)."""

        def fetch(lo: int, hi: int) -> Sequence[Mapping[str, Any]]:
            return self.rpc.get_logs_once(self.contract, TOPIC0S, lo, hi)

        return read_logs(self.rpc, self.contract, start, end, fetch, who="listener")

    def _reorged(self, start: int, headers: dict[int, BlockHeader]) -> bool:
        """True when the first block's parent is not the block the cursor recorded."""
        cursor = self.cursor
        if cursor is None or not cursor.hash or cursor.block != start - 1:
            return False
        parent = headers[start].parent_hash
        if parent == cursor.hash:
            return False
        self.log.error(
            "reorg deeper than {}: block {} was {}, the chain now has {}",
            self.cfg.finality,
            cursor.block,
            cursor.hash,
            parent,
        )
        return True

    def _replaced_at_tip(self, target: int) -> int:
        """Rewind when the block at the cursor's height was replaced (a same-height reorg).

        Noticed on the poll after it happens, with no newer block needed; only a
        different hash counts (a node that does not serve the block says nothing).
        """
        cursor, seen = self.cursor, self.seen
        if cursor is None or seen is None or not cursor.hash or seen.cursor_hash is None:
            return 0
        if seen.cursor_hash == cursor.hash or target < cursor.block:
            return 0
        self.log.error(
            "reorg at the tip: block {} was {}, the chain now has {} at that height",
            cursor.block,
            cursor.hash,
            seen.cursor_hash,
        )
        self._target = -1  # look again after the rewind
        return self._rewind()

    def _rewind(self) -> int:
        """Walk back to the common ancestor and retract every entry above it.

        The ancestor is the newest checkpoint whose hash the chain still has (all
        blocks below a matching hash are canonical). A checkpoint block the node
        does not serve (a lagging node) raises from the RPC layer and the loop
        waits: only a different hash counts as a reorg. The retractions (newest
        first, digest-chained) and the rewound cursor are one atomic commit; the
        canonical logs are then read again as new entries by the next steps.
        """
        cursor = self.cursor
        assert cursor is not None
        points = sorted({*cursor.recent, (cursor.block, cursor.hash)}, reverse=True)
        chain = self.rpc.get_blocks(b for b, _ in points)
        ancestor = next(((b, h) for b, h in points if chain[b].hash == h), None)
        if ancestor == (cursor.block, cursor.hash):
            self.log.warning("block {} is still {}: no reorg after all", cursor.block, cursor.hash)
            return 0
        if ancestor is None:  # deeper than every checkpoint: start over
            ancestor = (self.cfg.start_block - 1, "")
        block, block_hash = ancestor
        prev = self._prev
        retractions: list[Retracted] = []
        for entry_id, orphan in self.store.live_after(block):
            retraction = Retracted(
                entry_id=entry_id,
                block_number=orphan.block_number,
                block_hash=orphan.block_hash,
            ).with_digest(prev)
            retractions.append(retraction)
            prev = retraction.digest
        recent = tuple(p for p in cursor.recent if p[0] <= block)
        rewound = Cursor(block, block_hash, prev, recent)
        if not self.commit(cursor, rewound, retractions):
            return 0
        self.log.warning(
            "reorg: walked back from block {} to common ancestor {}; retracted {} entries",
            cursor.block,
            block,
            len(retractions),
        )
        return 1

    def _append(
        self, start: int, end: int, read: Read
    ) -> tuple[list[LogEntry], list[DeadLetter]] | None:
        """Decode and commit the logs of ``[start, end]``; what was appended, or None when a
        commit lost a race (the cursor is then reloaded).

        A large read is committed in parts of whole blocks (about :data:`COMMIT_PART` logs
        each, the last one up to ``end``), every part one atomic commit that moves the
        cursor to its last block: while one part is being committed (Redis works, this
        thread waits) the next one is decoded. Small reads are one commit, as before.
        """
        parts = read.parts(COMMIT_PART)
        entries: list[LogEntry] = []
        dead: list[DeadLetter] = []
        expected = self.cursor
        base = expected or Cursor(start - 1, "", GENESIS_DIGEST)
        prev = self._prev
        pending: Future[bool] | None = None
        for n, logs in enumerate(parts, 1):
            part, payloads, part_dead = self._entries(logs, read.headers, prev)
            prev = part[-1].digest if part else prev
            last = n == len(parts)
            block = end if last else logs[-1][0].block_number
            cursor = base.advanced(
                block,
                read.headers[block].hash,
                prev,
                ((ref.block_number, ref.block_hash) for ref, _ in logs),
            )
            if pending is not None and not pending.result():
                return None
            if last:
                if not self.commit(expected, cursor, part, part_dead, payloads):
                    return None
            else:
                pending = self._committer().submit(
                    self.commit, expected, cursor, part, part_dead, payloads
                )
            entries += part
            dead += part_dead
            expected = base = cursor
        return entries, dead

    def _committer(self) -> ThreadPoolExecutor:
        """The thread that commits one part of a large read while the next is decoded."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="wgchain-listener-commit")
        return self._pool

    def _entries(
        self,
        logs: Sequence[tuple[LogRef, Mapping[str, Any]]],
        headers: Mapping[int, BlockHeader],
        prev: str,
    ) -> tuple[list[LogEntry], list[bytes], list[DeadLetter]]:
        """Decode and chain ``logs`` after digest ``prev``: the entries, their JSON (encoded
        once, :func:`sealed`), and the dead letters of the logs that do not decode."""
        entries: list[LogEntry] = []
        payloads: list[bytes] = []
        dead: list[DeadLetter] = []
        chain_id = self.cfg.chain_id
        for ref, raw in logs:
            timestamp = headers[ref.block_number].timestamp
            try:
                entry = decode_log(raw, chain_id, timestamp, ref, prev)
            except DecodeError as exc:
                ident = f"{ref.block_number}:{ref.log_index}"
                self.log.warning("dead-lettering log {} (tx {}): {}", ident, ref.tx_hash, exc)
                dead.append(DeadLetter(ident, str(exc), msgspec.json.encode(raw)))
                continue
            entry, payload = sealed(entry)
            entries.append(entry)
            payloads.append(payload)
            prev = entry.digest
        return entries, payloads, dead

    def run(self, stop: threading.Event, wake: threading.Event | None = None) -> None:
        """Append until ``stop`` is set; at the tip, poll every ``poll_interval`` seconds.

        ``wake`` (set on every new head, and by whoever sets ``stop``) ends the wait
        at the tip early; polling stays the fallback. An RPC outage beyond the RPC
        client's retries is waited out here (its problem recorded for ``status``), a
        Redis outage beyond ``redis_retry`` by :func:`keep_going`, which reloads the
        cursor before going on: an outage of any length ends nothing.
        """
        self.log.info(
            "started at block {} (final: {}; ranges of {} to {} blocks)",
            self.next_block,
            self.cfg.finality,
            self.sizer.size,
            self.cfg.max_block_range,
        )
        work = health.work("listener")
        self.watch.work = work
        resumed = False

        def loop() -> None:
            nonlocal resumed
            if resumed:  # the attempt before stopped anywhere: Redis holds the truth
                self.cursor = self.store.load_cursor()
                self._target = -1
            resumed = True
            while not stop.is_set():
                try:
                    covered = self.step()
                except ServiceUnavailable as exc:  # the RPC, after its own retries
                    self.watch.trouble(f"RPC unreachable: {exc}")
                    work.beat()  # waiting out an outage is this loop's job
                    stop.wait(OUTAGE_WAIT)
                    continue
                if self.watch.problem.startswith("RPC unreachable"):
                    self.watch.trouble("")
                work.beat()
                if covered == 0:
                    (wake or stop).wait(self.cfg.poll_interval)
                    if wake is not None:
                        wake.clear()

        try:
            keep_going(loop, stop)
        finally:
            self.watch.work = None
            health.retire(work)
        self.log.info("stopped at block {}", self.next_block - 1)


def open_listener(cfg: Settings, client: redis.Redis, rpc: RpcClient | None = None) -> Listener:
    """A listener for ``cfg``; checks that the RPC serves ``cfg.chain_id`` (0: take the RPC's)."""
    rpc = rpc or RpcClient(cfg.rpc_urls)
    cfg = with_chain_id(cfg, served=rpc.chain_id)  # the one place the chain id is decided
    actual = cfg.chain_id
    keys = Keys(actual, cfg.contract.lower())
    rule = cfg.finality_rule()
    config = ListenerConfig(
        chain_id=actual,
        contract=cfg.contract,
        start_block=cfg.start_block,
        confirmations=rule if isinstance(rule, int) else 0,
        finality_tag=rule if isinstance(rule, str) else "",
        max_block_range=cfg.max_block_range,
        poll_interval=cfg.poll_interval,
    )
    return Listener(rpc, ListenerStore(client, keys), config)


__all__ = ["Listener", "ListenerConfig", "open_listener"]
