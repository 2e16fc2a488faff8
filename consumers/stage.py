"""The process around a pure fold: read a batch, apply, commit atomically, repeat.

The fold itself (``registry/fold.py``, ``ipam/allocate.py``) does no I/O. This
loop owns Redis: it loads the committed position and state, reads entries after
the position, applies them, and commits position + state changes + outputs +
dead letters in one Lua call (``StageStore.commit``). Killing it at any instant
and restarting gives the same result as never killing it.
"""

from __future__ import annotations

import contextlib
import gc
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Final, Generic, Protocol, TypeVar

import msgspec
import redis

from shared import health, metrics
from shared.errors import CommitConflict, DecodeError
from shared.events import Retracted, effective, from_fields
from shared.keys import Keys
from shared.logs import brief, log
from shared.redis_log import (
    START,
    Batch,
    StageStore,
    as_str,
    id_key,
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
#: Entries per page when a retraction scans the input or output stream.
SCAN_PAGE: Final = 5000
#: Output entries between two snapshots (fewer with a smaller retention; never fewer than
#: the snapshot has peers, so writing snapshots costs O(1) per output entry).
SNAPSHOT_EVERY: Final = 1000
#: State-hash field holding the id of the last re-drive request applied (not fold state).
RETRY_FIELD: Final = "~retry"
_STREAM_ID: Final = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")

S = TypeVar("S")


class Fold(Protocol[S]):
    """A pure projection: the rules of one stage, with no I/O."""

    #: Stage name: "registry" or "ipam" (names its keys).
    name: str
    #: Entry types this stage consumes; anything else in its input is dead-lettered.
    accepts: tuple[type, ...]

    def load(self, fields: Mapping[str, bytes] | Iterable[tuple[str, bytes]]) -> S:
        """Rebuild the state from its persisted fields, a mapping or (name, value) pairs in
        any order (empty: initial state)."""

    def apply(self, state: S, entry_id: str, entry: Any) -> tuple[S, list[Any]]:
        """Apply one input entry; returns the state and the output entries."""

    def take_changes(self, state: S) -> tuple[dict[str, bytes], set[str]]:
        """Persisted fields changed since the last call: (fields to set, fields to delete)."""

    def dump(self, state: S) -> dict[str, bytes]:
        """Every persisted field of ``state`` (what the state hash holds after all commits)."""


class Stage(Generic[S]):
    """Runs ``fold`` over its input stream with exactly-once effects."""

    def __init__(
        self, client: redis.Redis, keys: Keys, fold: Fold[S], *, retention: int = 0
    ) -> None:
        self.fold = fold
        #: Entry types this stage reads: the fold's, and retractions.
        self._reads = (*fold.accepts, Retracted)
        self.client = client
        self.input = keys.input(fold.name)
        #: The fold's ``snapshot(state) -> bytes`` when it writes snapshots of its output.
        self.snapshot_of: Callable[[S], bytes] | None = getattr(fold, "snapshot", None)
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
        with _gc_paused():
            return self._step(block_ms, count)

    def _step(self, block_ms: int | None, count: int) -> int:
        entries = redis_retry(read_after, self.client, self.input, self.position, count, block_ms)
        if not entries:
            self._check_position()
            return 0
        started = time.monotonic()
        inflight: list[tuple[Future[list[str]], Batch, int]] = []
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

    def _apply_chunk(
        self, chunk: list[tuple[str, dict[bytes, bytes]]], settle: Callable[[], bool]
    ) -> Batch | None:
        """:meth:`_apply` ``chunk``, poisoned entries set aside; None when the commit in
        flight conflicted (the state was reloaded)."""
        poison: dict[str, str] = {}
        while True:
            try:
                return self._apply(chunk, poison, settle)
            except _Poison as exc:  # state may be half-applied: reload and skip the entry
                poison[exc.entry_id] = exc.reason
                if not settle():
                    return None
                self.position, self.state = self._load()
            except _Conflicted:
                return None

    def close(self) -> None:
        """Stop the writer thread (each :meth:`step` has waited for its commits already)."""
        if self._writer is not None:
            self._writer.shutdown(wait=True)
            self._writer = None

    def _submit(self, expected: str, batch: Batch) -> Future[list[str]]:
        """Start committing ``batch`` (from position ``expected``) on the writer thread."""
        if self._writer is None:
            self._writer = ThreadPoolExecutor(1, thread_name_prefix=f"{self.fold.name}-commit")
        batch.packed = self.store.pack(batch)  # here: the writer thread only waits for Redis
        return self._writer.submit(redis_retry, self.store.commit, expected, batch)

    def _apply(
        self,
        entries: list[tuple[str, dict[bytes, bytes]]],
        poison: dict[str, str],
        settle: Callable[[], bool] | None = None,
    ) -> Batch:
        """Fold ``entries`` into a batch to commit (``settle``: waits for the commit in
        flight, which a retraction must see; raises :class:`_Conflicted` when it conflicted)."""
        batch = Batch(position=entries[-1][0])
        decoded: list[tuple[str, Any]] = []
        reads = self._reads
        retractions = False
        for entry_id, fields in entries:
            if poison and entry_id in poison:
                batch.dead.append((entry_id, poison[entry_id], _raw(fields)))
                continue
            try:
                entry = from_fields(fields)
                if not isinstance(entry, reads):
                    raise DecodeError(f"{type(entry).__name__} is not an input of {self.fold.name}")
            except DecodeError as exc:
                self.log.warning("dead-lettering {}: {}", entry_id, exc)
                batch.dead.append((entry_id, str(exc), _raw(fields)))
                continue
            if type(entry) is Retracted:
                retractions = True
            decoded.append((entry_id, entry))
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
            batch.snapshot = self.snapshot_of(self.state)
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
            raise _Poison(entry_id, f"apply failed: {brief(exc)}") from exc
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
                self._retract(run, batch, links, poison)
                i += 1
                continue
            try:
                self.state, outputs = self.fold.apply(self.state, entry_id, entry)
            except Exception as exc:  # a bug or an unforeseen input must not block the log
                self.log.exception("cannot apply {}", entry_id)
                raise _Poison(entry_id, f"apply failed: {brief(exc)}") from exc
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
        self._snapshot_size = batch.snapshot.count(b'"node_id"')
        return True

    def _outputs_since_snapshot(self) -> int:
        """Output entries after the latest snapshot (a restart keeps the cadence going).

        Counted up to :data:`SNAPSHOT_EVERY`; with no snapshot at all, that many (so
        the next batch writes one).
        """
        through: Any = redis_retry(self.client.hget, self.snapshot_key, "id")
        if through is None:
            return SNAPSHOT_EVERY
        after: Any = redis_retry(
            self.client.xrange,
            self.store.output,
            min=f"({as_str(through)}",
            count=SNAPSHOT_EVERY,
        )
        return len(after)

    def _trim(self) -> None:
        """Drop output entries beyond ``retention``, never past the latest snapshot.

        A reader whose position is older than what was dropped starts again from
        the snapshot, so nothing it needs is lost.
        """
        output = self.store.output
        newest: Any = redis_retry(self.client.xrevrange, output, "+", "-", count=self.retention)
        through: Any = redis_retry(self.client.hget, self.snapshot_key, "id")
        if len(newest) < self.retention or through is None:
            return
        keep_from = min(as_str(newest[-1][0]), as_str(through), key=id_key)
        dropped = redis_retry(self.client.xtrim, output, minid=keep_from, approximate=False)
        if dropped:
            self.log.info("trimmed {} entries of {} (kept from {})", dropped, output, keep_from)

    # --- retractions (deep reorgs) ---------------------------------------------------

    def _retract(
        self,
        run: list[tuple[str, Retracted]],
        batch: Batch,
        links: list[str],
        poison: dict[str, str],
    ) -> None:
        """Undo the input entries that ``run`` retracts, and retract their outputs.

        The state becomes a clean fold of the effective input up to the end of
        ``run`` (rebuilt from the start of the input: deep reorgs are rare and
        this is exact whatever the fold). Outputs of retracted inputs that are
        still in this batch are dropped; committed ones get ``Retracted``
        entries of their own, newest first, so the next stage does the same.
        """
        void = {r.entry_id: (rid, r) for rid, r in run}
        kept = [(o, link) for o, link in zip(batch.outputs, links, strict=True) if link not in void]
        dropped = len(batch.outputs) - len(kept)
        batch.outputs[:] = [o for o, _ in kept]
        links[:] = [link for _, link in kept]
        retractions = [
            Retracted(
                entry_id=out_id,
                block_number=void[cause][1].block_number,
                block_hash=void[cause][1].block_hash,
                cause=void[cause][0],
                origin=void[cause][1].origin or void[cause][0],
            )
            for out_id, cause in self._committed_outputs(set(void))
        ]
        batch.outputs.extend(retractions)
        links.extend(r.cause for r in retractions)
        self.state = self._rebuild(run[-1][0], poison)
        batch.replace = True
        self.log.warning(
            "retracted {} input entries (from block {}): {} outputs retracted, {} unpublished",
            len(run),
            min(r.block_number for _, r in run),
            len(retractions),
            dropped,
        )

    def _committed_outputs(self, inputs: set[str]) -> list[tuple[str, str]]:
        """(output id, input id) of committed outputs caused by ``inputs``, newest first."""
        first = min(inputs, key=id_key)
        found: list[tuple[str, str]] = []
        already: set[str] = set()
        last = "+"
        while True:
            page: Any = redis_retry(
                self.client.xrevrange, self.store.output, max=last, count=SCAN_PAGE
            )
            for raw_id, fields in page:
                out_id = as_str(raw_id)
                try:
                    out = from_fields(fields)
                except DecodeError:
                    continue
                if isinstance(out, Retracted):
                    already.add(out.entry_id)
                    continue
                link = getattr(out, "cause", "")
                if id_key(link) < id_key(first):
                    return found
                if link in inputs and out_id not in already:
                    found.append((out_id, link))
            if len(page) < SCAN_PAGE:
                return found
            last = f"({as_str(page[-1][0])}"

    def _rebuild(self, until: str, poison: dict[str, str]) -> S:
        """A clean fold of the effective input up to ``until`` (dead letters skipped)."""
        skip = set(poison) | self._dead_ids()
        items: list[tuple[str, Any]] = []
        low = "-"
        while True:
            page: Any = redis_retry(
                self.client.xrange, self.input, min=low, max=until, count=SCAN_PAGE
            )
            for raw_id, fields in page:
                entry_id = as_str(raw_id)
                if entry_id in skip:
                    continue
                try:
                    entry = from_fields(fields)
                except DecodeError:
                    continue
                if isinstance(entry, self._reads):
                    items.append((entry_id, entry))
            if len(page) < SCAN_PAGE:
                break
            low = f"({as_str(page[-1][0])}"
        state = self.fold.load({})
        for entry_id, entry in effective(items):
            try:
                state, _ = self.fold.apply(state, entry_id, entry)
            except Exception:  # dead-lettered when it was first seen; skip it again
                self.log.exception("rebuild: cannot apply {}; skipped", entry_id)
        self.fold.take_changes(state)
        return state

    def _dead_ids(self) -> set[str]:
        """Input ids this stage dead-lettered (they stay out of a rebuild too)."""
        raw: Any = redis_retry(self.client.xrange, self.store.dead)
        return {as_str(f[b"id"]) for _, f in raw if b"id" in f}

    # --- re-driven dead letters (``wgchain deadletters retry``) ------------------------

    def redrive(self) -> int:
        """Apply the dead letters an operator queued in the retry stream; returns how many.

        A request names a dead letter. Its original entry goes through :meth:`_apply`
        like an input entry (same entry id), in a commit of its own that also stores
        the request id in the state hash (:data:`RETRY_FIELD`): a request takes effect
        exactly once. The dead letter and the request are deleted only after that
        commit (a stage killed in between deletes them when it restarts); an entry
        that fails again is dead-lettered anew, with the new reason, in the commit.
        """
        requests: Any = redis_retry(self.client.xrange, self.retry, count=BATCH_SIZE)
        for raw_id, fields in requests:
            request, dead_id = as_str(raw_id), as_str(fields.get(b"dead", b""))
            pending = id_key(request) > id_key(self.retry_position)
            if pending and not self._redrive_one(request, dead_id):
                return 0
            pipe = self.client.pipeline(transaction=True)
            if _STREAM_ID.fullmatch(dead_id):
                pipe.xdel(self.store.dead, dead_id)
            pipe.xdel(self.retry, request)
            redis_retry(pipe.execute)
        return len(requests)

    def _redrive_one(self, request: str, dead_id: str) -> bool:
        """Apply one request's dead letter (gone already: nothing); False on a conflict."""
        letter: Any = []
        if _STREAM_ID.fullmatch(dead_id):
            letter = redis_retry(self.client.xrange, self.store.dead, dead_id, dead_id)
        if not letter:
            return True
        fields = letter[0][1]
        original = [(as_str(fields.get(b"id", b"?")), _unraw(fields.get(b"raw", b"")))]
        if original[0][1].get(b"type") == b"Retracted":  # only meaningful in stream order
            why = "a retraction is not re-driven (replay the stage instead)"
            batch = Batch(self.position, dead=[(original[0][0], why, fields.get(b"raw", b""))])
        else:
            try:
                batch = self._apply(original, {})
            except _Poison as exc:
                self.position, self.state = self._load()
                batch = self._apply(original, {exc.entry_id: exc.reason})
        batch.position = self.position
        batch.state_set[RETRY_FIELD] = request.encode()
        try:
            redis_retry(self.store.commit, self.position, batch)
        except CommitConflict as exc:
            self.log.warning("commit conflict ({}); reloading state", exc)
            self.position, self.state = self._load()
            return False
        self.retry_position = request
        self._committed(batch)
        outcome = "dead-lettered again" if batch.dead else "applied"
        self.log.info("re-drove dead letter {} (entry {}): {}", dead_id, original[0][0], outcome)
        return True

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


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic garbage collection during one step (it resumes after it).

    A fold allocates a few objects per entry and frees them by reference counting; the
    collector would otherwise run every few hundred entries and, every few dozen runs,
    walk the whole state (a third of a stage's time at 100,000 nodes). A step is bounded
    (one batch), so the cycles it may leave are collected by the next run after it.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


class _Conflicted(Exception):
    """The commit in flight conflicted while a chunk was folded (the state was reloaded)."""


class _Poison(Exception):
    def __init__(self, entry_id: str, reason: str) -> None:
        super().__init__(reason)
        self.entry_id = entry_id
        self.reason = reason


def _raw(fields: dict[bytes, bytes]) -> bytes:
    return msgspec.json.encode(
        {k.decode("latin-1"): v.decode("latin-1") for k, v in fields.items()}
    )


def _unraw(raw: bytes) -> dict[bytes, bytes]:
    """The entry fields ``_raw`` encoded (empty when ``raw`` is not such an encoding)."""
    try:
        decoded = msgspec.json.decode(raw, type=dict[str, str])
        return {k.encode("latin-1"): v.encode("latin-1") for k, v in decoded.items()}
    except (msgspec.DecodeError, UnicodeEncodeError):
        return {}
