"""The process around a pure fold: read a batch, apply, commit atomically, repeat.

The fold itself (``registry/fold.py``, ``ipam/allocate.py``) does no I/O. This
loop owns Redis: it loads the committed position and state, reads entries after
the position, applies them, and commits position + state changes + outputs +
dead letters in one Lua call (``StageStore.commit``). Killing it at any instant
and restarting gives the same result as never killing it.

A batch is folded and committed in chunks, the commit of one chunk running (on a writer
thread) while the next is folded; after a full batch, the next is read (on a reader thread)
while this one folds. Beside this loop: ``stage_retract.py`` (deep reorgs),
``stage_redrive.py`` (re-driven dead letters), ``stage_reads.py`` (the scans they need).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Final, Generic, TypeVar

import msgspec
import redis
from redis.cluster import RedisCluster

from consumers import stage_reads as reads
from consumers.fold import Fold
from consumers.stage_redrive import RETRY_FIELD, Poison, raw_fields, redrive
from consumers.stage_retract import retract
from shared import health, metrics
from shared.collector import collector_paused
from shared.errors import CommitConflict, DecodeError
from shared.events import Retracted, envelope_decoders, from_fields
from shared.keys import Keys
from shared.logs import brief, log
from shared.redis_log import (
    START,
    Batch,
    StageStore,
    as_str,
    keep_going,
    read_after,
    redis_retry,
)

#: Entries read per batch (one XRANGE / XREAD).
BATCH_SIZE: Final = 2000
#: Entries per commit: a batch is folded and committed in chunks of this size, the commit
#: of one chunk running in Redis while the next chunk is folded.
COMMIT_EVERY: Final = 500
#: Milliseconds one XREAD blocks waiting for new entries.
BLOCK_MS: Final = 1000
#: Output entries between two snapshots (fewer with a smaller retention; never fewer than
#: the snapshot has peers, so writing snapshots costs O(1) per output entry).
SNAPSHOT_EVERY: Final = 1000

S = TypeVar("S")
#: A stream entry's fields: a dict, or (an XRANGE read, :func:`read_entries`) the flat list of
#: names and values the reply holds.
Fields = dict[bytes, bytes] | list[bytes]
#: A stream entry as the stage reads it: (id, fields).
Entry = tuple[str, Fields]


class Stage(Generic[S]):
    """Runs ``fold`` over its input stream with exactly-once effects."""

    def __init__(
        self, client: redis.Redis, keys: Keys, fold: Fold[S], *, retention: int = 0
    ) -> None:
        self.fold = fold
        #: Entry types this stage reads: the fold's, and retractions.
        self._reads = (*fold.accepts, Retracted)
        #: (v, type) of an envelope of those types -> its payload's decoder (the fast path).
        self._decoders = envelope_decoders(self._reads)
        self.client = client
        #: The client that reads ranges of the input as they arrive (:func:`raw_reader`).
        self._raw = raw_reader(client)
        self.input = keys.input(fold.name)
        #: The fold's ``snapshot(state) -> bytes`` when it writes snapshots of its output.
        self.snapshot_of: Callable[[S], bytes] | None = getattr(fold, "snapshot", None)
        #: And its ``snapshot_size(state) -> int``, the entries such a snapshot holds (the
        #: snapshots' cadence; counting them in the snapshot's bytes took some 13 ms at 100,000
        #: peers): a fold that writes snapshots has both.
        self.snapshot_size_of: Callable[[S], int] | None = (
            fold.snapshot_size if self.snapshot_of is not None else None  # type: ignore[attr-defined]
        )
        self.snapshot_key = keys.snapshot if self.snapshot_of else None
        #: Output entries kept when trimming (0: never trim); needs snapshots.
        self.retention = retention if self.snapshot_of else 0
        self.store = StageStore(
            client,
            position=keys.position(fold.name),
            state=keys.state(fold.name),
            output=keys.output(fold.name),
            dead=keys.dead(fold.name),
            snapshot=self.snapshot_key,
        )
        self._since_snapshot = 0
        self._snapshot_size = 0
        if self.snapshot_key:
            self._since_snapshot = self._outputs_since_snapshot()
        self.log = log.bind(stage=fold.name, network=keys.tag)
        self.retry = keys.retry(fold.name)
        self.retry_position = START
        #: The thread commits run on (made at the first commit).
        self._writer: ThreadPoolExecutor | None = None
        #: The thread that reads the next batch while this one folds (made at the first).
        self._reader: ThreadPoolExecutor | None = None
        #: The read of the next batch under way: (the position it reads after, count, entries).
        self._ahead: tuple[str, int, Future[list[Entry]]] | None = None
        #: Called with the state after each step of :meth:`run` (e.g. a clock-driven warning).
        self.after_step: Callable[[S], object] | None = None
        self.position, self.state = self._load()

    def _load(self) -> tuple[str, S]:
        """The committed position and state, the state hash read in chunks as it is built."""
        retry: list[bytes] = []

        def build(pairs: Iterator[tuple[str, bytes]]) -> S:
            retry.clear()

            def fold_fields() -> Iterator[tuple[str, bytes]]:
                for name, value in pairs:
                    if name == RETRY_FIELD:
                        retry.append(value)
                    else:
                        yield name, value

            return self.fold.load(fold_fields())

        self._ahead = None  # read after a position this state may not be at
        position, state = self.store.load_with(build)
        self.retry_position = as_str(retry[-1]) if retry else START
        return position, state

    def _check_position(self) -> None:
        """Reload when the stored position is not ours (checked while idle).

        Redis lost data (restarted empty, or from older data): input we had passed
        may be there again, under ids at or before our position, and would never be
        read. A commit would notice too (its position check fails), but only once
        new input arrives.
        """
        raw: Any = redis_retry(self.client.get, self.store.position)
        stored = as_str(raw) if raw else START
        if stored == self.position:
            return
        self.log.warning(
            "stored position is {}, not {} (Redis lost data?); reloading state",
            stored,
            self.position,
        )
        self.position, self.state = self._load()

    def step(self, block_ms: int | None = BLOCK_MS, count: int = BATCH_SIZE) -> int:
        """Process at most one batch; returns the number of input entries consumed.

        The batch is folded and committed in chunks of :data:`COMMIT_EVERY` entries, each
        chunk one atomic commit from the position the chunk before it ends at. A chunk's
        commit runs on the writer thread while the next chunk is folded; every commit has
        landed (or failed) when this returns. A commit that fails with a conflict reloads
        the state from Redis (what was folded after it is dropped, and read again).
        """
        self.redrive()
        # No cyclic collection during a batch: a fold allocates a few objects per entry and
        # frees them by reference counting, yet the collector would run every few hundred
        # entries and, every few dozen runs, walk the whole state (a fifth to a third of a
        # stage's CPU at 100,000 nodes). A batch is bounded; the next run collects after it.
        with collector_paused():
            return self._step(block_ms, count)

    def _read(self, block_ms: int | None, count: int) -> list[Entry]:
        """The entries after the position: the read ahead's if it read from there, and then the
        read of the batch after them starts (when this one is full, more input is waiting)."""
        ahead, self._ahead = self._ahead, None
        entries: list[Entry] = []
        if ahead is not None and ahead[:2] == (self.position, count):
            entries = ahead[2].result()
        if not entries:
            entries = redis_retry(
                read_entries,
                self.client,
                self._raw,
                self.input,
                self.position,
                count,
                block_ms=block_ms,
            )
        if len(entries) == count:
            if self._reader is None:
                self._reader = ThreadPoolExecutor(1, thread_name_prefix=f"{self.fold.name}-read")
            after = entries[-1][0]
            future = self._reader.submit(
                redis_retry, read_entries, self.client, self._raw, self.input, after, count
            )
            self._ahead = (after, count, future)
        return entries

    def _step(self, block_ms: int | None, count: int) -> int:
        entries = self._read(block_ms, count)
        if not entries:
            self._check_position()
            return 0
        started = time.monotonic()
        inflight: list[tuple[Future[int], Batch, int]] = []
        outputs: list[Any] = []
        dead = consumed = 0

        def settle() -> bool:
            """Wait for the commit in flight; False (state reloaded) when it conflicted."""
            nonlocal consumed, dead
            if not inflight:
                return True
            future, batch, size = inflight.pop()
            try:
                future.result()
            except CommitConflict as exc:
                self.log.warning("commit conflict ({}); reloading state", exc)
                self.position, self.state = self._load()
                return False
            if batch.snapshot is not None and self.retention:
                self._trim()
            consumed += size
            dead += len(batch.dead)
            outputs.extend(batch.outputs)
            return True

        try:
            for low in range(0, len(entries), COMMIT_EVERY):
                chunk = entries[low : low + COMMIT_EVERY]
                batch = self._apply_chunk(chunk, settle)
                if batch is None or not settle():
                    break
                inflight.append((self._submit(self.position, batch), batch, len(chunk)))
                self._counted(batch)
                self.position = batch.position  # the next chunk's expected position
            settle()
        finally:
            if inflight:  # an exception left a commit in flight: let it land (or fail)
                inflight[0][0].exception()
        metrics.stage_committed(
            self.fold.name,
            self.client,
            self.input,
            self.position,
            entries=consumed,
            full=len(entries) == count,
            outputs=outputs,
            dead=dead,
            started=started,
            state=self.state,
        )
        return consumed

    def _apply_chunk(self, chunk: list[Entry], settle: Callable[[], bool]) -> Batch | None:
        """:meth:`_apply` ``chunk``, poisoned entries set aside; None when the commit in
        flight conflicted (the state was reloaded)."""
        poison: dict[str, str] = {}
        while True:
            try:
                return self._apply(chunk, poison, settle)
            except Poison as exc:  # state may be half-applied: reload and skip the entry
                poison[exc.entry_id] = exc.reason
                if not settle():
                    return None
                self.position, self.state = self._load()
            except _Conflicted:
                return None

    def close(self) -> None:
        """Stop the writer and reader threads (each :meth:`step` has waited for its commits
        already; a read ahead is dropped, not waited for: it may be retrying an outage)."""
        self._ahead = None
        if self._writer is not None:
            self._writer.shutdown(wait=True)
        if self._reader is not None:
            self._reader.shutdown(wait=False, cancel_futures=True)
        self._writer = self._reader = None

    def _submit(self, expected: str, batch: Batch) -> Future[int]:
        """Start committing ``batch`` (from position ``expected``) on the writer thread."""
        if self._writer is None:
            self._writer = ThreadPoolExecutor(1, thread_name_prefix=f"{self.fold.name}-commit")
        batch.packed = self.store.pack(batch)  # here: the writer thread only waits for Redis
        return self._writer.submit(redis_retry, self.store.commit, expected, batch)

    def _apply(
        self,
        entries: Sequence[Entry],
        poison: dict[str, str],
        settle: Callable[[], bool] | None = None,
    ) -> Batch:
        """Fold ``entries`` into a batch to commit (``settle``: waits for the commit in
        flight, which a retraction must see; raises :class:`_Conflicted` when it conflicted)."""
        batch = Batch(position=entries[-1][0])
        decoded: list[tuple[str, Any]] = []
        add = decoded.append
        decoders = self._decoders
        retractions = False
        for entry_id, fields in entries:
            if poison and entry_id in poison:
                batch.dead.append((entry_id, poison[entry_id], raw_fields(as_dict(fields))))
                continue
            # the common envelope of an input type: its payload's decoder, nothing else
            if isinstance(fields, dict):
                key, data = (fields.get(b"v"), fields.get(b"type")), fields.get(b"data")
            elif len(fields) == 6 and fields[0] == b"v" and fields[2] == b"type":
                key, data = (fields[1], fields[3]), fields[5] if fields[4] == b"data" else None
            else:
                key, data = (None, None), None
            decoder = decoders.get(key)  # type: ignore[arg-type]
            if decoder is not None and data is not None:
                try:
                    entry = decoder.decode(data)
                except msgspec.DecodeError:
                    pass  # the full path names what is wrong
                else:
                    if type(entry) is Retracted:
                        retractions = True
                    add((entry_id, entry))
                    continue
            entry_fields = as_dict(fields)
            try:
                entry = from_fields(entry_fields)
                if not isinstance(entry, self._reads):
                    raise DecodeError(f"{type(entry).__name__} is not an input of {self.fold.name}")
            except DecodeError as exc:
                self.log.warning("dead-lettering {}: {}", entry_id, exc)
                batch.dead.append((entry_id, str(exc), raw_fields(entry_fields)))
                continue
            if type(entry) is Retracted:
                retractions = True
            add((entry_id, entry))
        if not retractions:  # the common case: one fold call per entry, nothing else
            self._fold_all(decoded, batch)
        else:
            self._fold_retracting(decoded, batch, poison, settle)
        changes = self.fold.take_changes(self.state)
        if batch.replace:
            batch.state_set, batch.state_del = self.fold.dump(self.state), set()
        else:
            batch.state_set, batch.state_del = changes
        every = min(SNAPSHOT_EVERY, self.retention) if self.retention else SNAPSHOT_EVERY
        if self.snapshot_of is not None and (
            batch.replace
            or self._since_snapshot + len(batch.outputs) >= max(every, self._snapshot_size)
        ):
            assert self.snapshot_size_of is not None  # (a fold that writes snapshots has both)
            batch.snapshot = self.snapshot_of(self.state)
            batch.snapshot_entries = self.snapshot_size_of(self.state)
        return batch

    def _fold_all(self, decoded: list[tuple[str, Any]], batch: Batch) -> None:
        """Apply ``decoded`` (no retraction among them), the outputs into ``batch``."""
        apply, state, out = self.fold.apply, self.state, batch.outputs
        entry_id = ""
        try:
            for entry_id, entry in decoded:
                state, outputs = apply(state, entry_id, entry)
                out += outputs
        except Exception as exc:  # a bug or an unforeseen input must not block the log
            self.log.exception("cannot apply {}", entry_id)
            raise Poison(entry_id, f"apply failed: {brief(exc)}") from exc
        finally:
            self.state = state

    def _fold_retracting(
        self,
        decoded: list[tuple[str, Any]],
        batch: Batch,
        poison: dict[str, str],
        settle: Callable[[], bool] | None,
    ) -> None:
        """Apply ``decoded``, retractions among them, the outputs into ``batch``."""
        links: list[str] = []  # input id of each output in batch.outputs
        i = 0
        while i < len(decoded):
            entry_id, entry = decoded[i]
            if isinstance(entry, Retracted):
                if settle is not None and not settle():
                    raise _Conflicted
                run = [(entry_id, entry)]
                while i + 1 < len(decoded) and isinstance(decoded[i + 1][1], Retracted):
                    i += 1
                    run.append(decoded[i])
                retract(self, run, batch, links, poison)
                i += 1
                continue
            try:
                self.state, outputs = self.fold.apply(self.state, entry_id, entry)
            except Exception as exc:  # a bug or an unforeseen input must not block the log
                self.log.exception("cannot apply {}", entry_id)
                raise Poison(entry_id, f"apply failed: {brief(exc)}") from exc
            batch.outputs.extend(outputs)
            links.extend(entry_id for _ in outputs)
            i += 1

    # --- snapshots and retention -----------------------------------------------------

    def _committed(self, batch: Batch) -> None:
        """Bookkeeping after a commit: snapshot cadence, then trimming."""
        if self._counted(batch) and self.retention:
            self._trim()

    def _counted(self, batch: Batch) -> bool:
        """The snapshot cadence counts ``batch`` (a commit under way); True when it wrote a
        snapshot (trim once it has landed)."""
        if batch.snapshot is None:
            self._since_snapshot += len(batch.outputs)
            return False
        self._since_snapshot = 0
        self._snapshot_size = batch.snapshot_entries
        return True

    def _outputs_since_snapshot(self) -> int:
        """Output entries after the latest snapshot (a restart keeps the cadence going)."""
        assert self.snapshot_key is not None
        return reads.outputs_since_snapshot(
            self.client, self.snapshot_key, self.store.output, SNAPSHOT_EVERY
        )

    def _trim(self) -> None:
        """Drop output entries beyond ``retention``, never past the latest snapshot."""
        assert self.snapshot_key is not None
        output = self.store.output
        dropped, keep_from = reads.trim(self.client, output, self.snapshot_key, self.retention)
        if dropped:
            self.log.info("trimmed {} entries of {} (kept from {})", dropped, output, keep_from)

    # --- re-driven dead letters (``wgchain deadletters retry``) ------------------------

    def redrive(self) -> int:
        """Apply the dead letters an operator queued in the retry stream; returns how many
        (:func:`consumers.stage_redrive.redrive`)."""
        return redrive(self)

    def run(self, stop: threading.Event) -> None:
        """Loop until ``stop`` is set; finishes and commits the current batch first.

        Redis calls are retried (``redis_retry``); an outage that outlasts those retries
        restarts the loop from what Redis holds (:func:`keep_going`: capped backoff, one
        log line when it starts, one a minute, one when Redis answers), however long it
        lasts. Each loop reports its progress to this process's ``/healthz``.
        """
        self.log.info("started at position {}", self.position)
        work = health.work(f"{self.fold.name} stage")
        resumed = False

        def loop() -> None:
            nonlocal resumed
            if resumed:  # the attempt before stopped anywhere: start from what Redis holds
                self.position, self.state = self._load()
                self.log.info("resuming at position {}", self.position)
            resumed = True
            while not stop.is_set():
                self.step()
                if self.after_step is not None:
                    self.after_step(self.state)
                work.beat()

        try:
            keep_going(loop, stop)
        finally:
            health.retire(work)
            self.close()
        self.log.info("stopped at position {}", self.position)


def run_stage(
    client: redis.Redis,
    keys: Keys,
    fold: Fold[Any],
    stop: threading.Event,
    retention: int = 0,
    *,
    after_step: Callable[[Any], object] | None = None,
) -> None:
    """Load the stage (waiting for Redis if need be), then :meth:`Stage.run` it until ``stop``
    (``after_step``: see :attr:`Stage.after_step`)."""
    stage = keep_going(lambda: Stage(client, keys, fold, retention=retention), stop)
    if stage is not None:
        stage.after_step = after_step
        stage.run(stop)


def raw_reader(client: redis.Redis) -> redis.Redis | None:
    """A client on ``client``'s connections that returns an XRANGE or XREAD reply as the parser
    gives it: (id, [name, value, ...]) per entry, no dict built (:func:`read_entries`). None for
    a Redis Cluster client: it has no one pool to share, and its reads are parsed as usual."""
    if isinstance(client, RedisCluster):
        return None
    raw = redis.Redis(connection_pool=client.connection_pool)
    raw.set_response_callback("XRANGE", _as_given)
    raw.set_response_callback("XREAD", _as_given)
    return raw


def _as_given(reply: Any, **_: Any) -> Any:
    return reply


def read_entries(
    client: redis.Redis,
    raw: redis.Redis | None,
    stream: str,
    after: str,
    count: int,
    *,
    block_ms: int | None = None,
) -> list[Entry]:
    """:func:`~shared.redis_log.read_after` through ``raw`` (:func:`raw_reader`): each entry's
    fields the flat list of the reply, which the loop reads without a dict per entry (a client
    that decodes replies to text, or no ``raw`` on a Redis Cluster: through ``read_after``)."""
    if raw is None or client.connection_pool.connection_kwargs.get("decode_responses"):
        return list(read_after(client, stream, after, count, block_ms))
    reply: Any
    if block_ms is None:
        reply = raw.xrange(stream, min=START if after == START else f"({after}", count=count)
    else:  # {stream: entries} (RESP3) or [[stream, entries]] (RESP2); nothing: timed out
        reply = raw.xread({stream: after}, count=count, block=block_ms)
        if not reply:
            reply = ()
        elif isinstance(reply, dict):
            (reply,) = reply.values()
        else:
            reply = reply[0][1]
    return [(ident.decode(), fields) for ident, fields in reply]


def as_dict(fields: Fields) -> dict[bytes, bytes]:
    """``fields`` as a dict (from a flat list: names and values in turn, the last of a name
    kept, as the client's own parse does)."""
    if isinstance(fields, dict):
        return fields
    return dict(zip(fields[::2], fields[1::2], strict=True))


class _Conflicted(Exception):
    """The commit in flight conflicted while a chunk was folded (the state was reloaded)."""


__all__ = ["BATCH_SIZE", "RETRY_FIELD", "Fold", "Stage", "run_stage"]
