"""The process around a pure fold: read a batch, apply, commit atomically, repeat.

The fold itself (``registry/fold.py``, ``ipam/allocate.py``) does no I/O. This
loop owns Redis: it loads the committed position and state, reads entries after
the position, applies them, and commits position + state changes + outputs +
dead letters in one Lua call (``StageStore.commit``). Killing it at any instant
and restarting gives the same result as never killing it.
"""

from __future__ import annotations

import threading
from typing import Any, Final, Generic, Protocol, TypeVar

import msgspec
import redis

from shared.errors import CommitConflict, DecodeError
from shared.events import from_fields
from shared.keys import Keys
from shared.logs import log
from shared.redis_log import Batch, StageStore, read_after, redis_retry

#: Entries read and committed per batch.
BATCH_SIZE: Final = 500
#: Milliseconds one XREAD blocks waiting for new entries.
BLOCK_MS: Final = 1000

S = TypeVar("S")


class Fold(Protocol[S]):
    """A pure projection: the rules of one stage, with no I/O."""

    #: Stage name: "registry" or "ipam" (names its keys).
    name: str
    #: Entry types this stage consumes; anything else in its input is dead-lettered.
    accepts: tuple[type, ...]

    def load(self, fields: dict[str, bytes]) -> S:
        """Rebuild the state from its persisted fields (empty dict: initial state)."""

    def apply(self, state: S, entry_id: str, entry: Any) -> tuple[S, list[Any]]:
        """Apply one input entry; returns the state and the output entries."""

    def take_changes(self, state: S) -> tuple[dict[str, bytes], set[str]]:
        """Persisted fields changed since the last call: (fields to set, fields to delete)."""


class Stage(Generic[S]):
    """Runs ``fold`` over its input stream with exactly-once effects."""

    def __init__(self, client: redis.Redis, keys: Keys, fold: Fold[S]) -> None:
        self.fold = fold
        self.client = client
        self.input = keys.input(fold.name)
        self.store = StageStore(
            client,
            position=keys.position(fold.name),
            state=keys.state(fold.name),
            output=keys.output(fold.name),
            dead=keys.dead(fold.name),
        )
        self.log = log.bind(stage=fold.name, network=keys.tag)
        self.position, self.state = self._load()

    def _load(self) -> tuple[str, S]:
        position, fields = self.store.load()
        return position, self.fold.load(fields)

    def step(self, block_ms: int | None = BLOCK_MS, count: int = BATCH_SIZE) -> int:
        """Process at most one batch; returns the number of input entries consumed."""
        entries = redis_retry(read_after, self.client, self.input, self.position, count, block_ms)
        if not entries:
            return 0
        poison: dict[str, str] = {}
        while True:
            try:
                batch = self._apply(entries, poison)
                break
            except _Poison as exc:  # state may be half-applied: reload and skip the entry
                poison[exc.entry_id] = exc.reason
                self.position, self.state = self._load()
        try:
            redis_retry(self.store.commit, self.position, batch)
        except CommitConflict as exc:
            self.log.warning("commit conflict ({}); reloading state", exc)
            self.position, self.state = self._load()
            return 0
        self.position = batch.position
        return len(entries)

    def _apply(
        self, entries: list[tuple[str, dict[bytes, bytes]]], poison: dict[str, str]
    ) -> Batch:
        batch = Batch(position=entries[-1][0])
        for entry_id, fields in entries:
            if entry_id in poison:
                batch.dead.append((entry_id, poison[entry_id], _raw(fields)))
                continue
            try:
                entry = from_fields(fields)
                if not isinstance(entry, self.fold.accepts):
                    raise DecodeError(f"{type(entry).__name__} is not an input of {self.fold.name}")
            except DecodeError as exc:
                self.log.warning("dead-lettering {}: {}", entry_id, exc)
                batch.dead.append((entry_id, str(exc), _raw(fields)))
                continue
            try:
                self.state, outputs = self.fold.apply(self.state, entry_id, entry)
            except Exception as exc:  # a bug or an unforeseen input must not block the log
                self.log.exception("cannot apply {}", entry_id)
                raise _Poison(entry_id, f"apply failed: {exc!r}") from exc
            batch.outputs.extend(outputs)
        batch.state_set, batch.state_del = self.fold.take_changes(self.state)
        return batch

    def run(self, stop: threading.Event) -> None:
        """Loop until ``stop`` is set; finishes and commits the current batch first."""
        self.log.info("started at position {}", self.position)
        while not stop.is_set():
            try:
                self.step()
            except redis.RedisError:
                if not stop.is_set():
                    raise
                self.log.warning("Redis unreachable while stopping; nothing half-committed")
        self.log.info("stopped at position {}", self.position)


class _Poison(Exception):
    def __init__(self, entry_id: str, reason: str) -> None:
        super().__init__(reason)
        self.entry_id = entry_id
        self.reason = reason


def _raw(fields: dict[bytes, bytes]) -> bytes:
    return msgspec.json.encode(
        {k.decode("latin-1"): v.decode("latin-1") for k, v in fields.items()}
    )
