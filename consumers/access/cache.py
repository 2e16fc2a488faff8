"""An in-process copy of the registry projection that is never behind the registry stage.

How it stays exact and fresh:

* **Load.** One MULTI reads the registry stage's committed position and its state
  hash together (``GET position`` + ``HGETALL state``), so the copy is the state
  exactly as of that position; the pure ``RegistryFold.load`` rebuilds it.
* **Catch up.** The registry stage commits its position, state, outputs and dead
  letters in one Lua call, so its position says precisely which ``events``
  entries its state reflects. To move from position A to B the cache folds the
  ``events`` entries in (A, B] with the same pure fold, skipping those the stage
  dead-lettered: the result is the stage's state at B. Anything unusual (a
  retraction, an entry the fold rejects, a position that went backwards, a
  re-driven dead letter) makes the cache load a fresh snapshot instead.
* **Invalidation.** A follower thread blocks on ``XREAD`` of the ``registry``
  stream: every entry appended there comes from a registry commit, so it wakes up
  and catches up at once (and at least every second, for commits without
  outputs). It also keeps, per node, the block of the ``NodeJoined`` that made it
  live.
* **No stale answer.** Before answering, :meth:`RegistryCache.fresh` reads the
  stage's position (and the id of the last dead letter it re-drove, which changes
  the state without moving the position) in one atomic Lua call, and catches up (or
  reloads) first when the copy is older. So a
  check that starts after the registry stage committed a revoke always sees it,
  whether or not the follower has woken up yet; there is no TTL anywhere.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Final, NamedTuple

import redis

from consumers.access.decide import View
from consumers.registry.fold import FOLD
from consumers.stage import RETRY_FIELD
from shared import health
from shared.errors import DecodeError
from shared.events import LogEntry, NodeJoined, NodeLeft, Retracted, effective, from_fields
from shared.keys import Keys
from shared.logs import log
from shared.redis_log import START, as_str

#: Stage whose projection this caches.
STAGE: Final = "registry"
#: Entries read per XRANGE page when catching up or rebuilding.
PAGE: Final = 1000
#: Milliseconds the follower blocks on the registry stream before checking the position anyway.
FOLLOW_BLOCK_MS: Final = 1000
#: Seconds the follower waits after Redis became unreachable.
FOLLOW_PAUSE: Final = 1.0
#: The stage's :class:`Mark` in one atomic call (one command: cheaper than a MULTI).
#: KEYS: position, state hash, dead-letter stream; ARGV: the re-drive field.
_MARK_LUA: Final = """
local newest = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', 1)[1]
return {redis.call('GET', KEYS[1]) or '', redis.call('HGET', KEYS[2], ARGV[1]) or '',
        newest and newest[1] or ''}
"""


class Mark(NamedTuple):
    """What says whether the registry stage committed since we last looked."""

    #: Its input position (``events`` id of the last entry it committed).
    position: str
    #: Id of the last dead letter it re-drove (changes the state, not the position).
    redriven: str
    #: Id of the newest entry of its dead-letter stream.
    dead: str


def id_key(entry_id: str) -> tuple[int, int]:
    """A stream id as a comparable pair (``0-0`` for the start)."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class RegistryCache:
    """The registry stage's state, mirrored in this process (see the module docstring)."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self._position_key = keys.position(STAGE)
        self._mark_keys = [self._position_key, keys.state(STAGE), keys.dead(STAGE)]
        self._mark_script = client.register_script(_MARK_LUA)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.log = log.bind(stage="access", network=keys.tag)
        #: Times a whole snapshot was loaded (the first load included).
        self.reloads = 0
        #: ``events`` entries folded while catching up.
        self.folded = 0
        #: Input ids the stage dead-lettered that catching up has not reached yet.
        self._skip: set[str] = set()
        self.view, mark = self._snapshot()
        self.position, self.redriven, self._dead_seen = mark
        self._since: dict[str, int] = {}
        self._since_lock = threading.Lock()
        self._registry_seen = START

    # --- reading ----------------------------------------------------------------------

    @contextmanager
    def fresh(self) -> Iterator[View]:
        """The view, at least as new as the stage's last commit when called.

        Holds the cache's lock while the caller reads it: keep the block short.
        """
        mark = self._stage_mark()
        with self._lock:
            if mark.redriven != self.redriven:
                self._reload("a dead letter was re-driven")
            if id_key(mark.position) > id_key(self.position):
                self._catch_up(mark)
            yield self.view

    def since_block(self, node: str) -> int | None:
        """Block of the ``NodeJoined`` that made ``node`` live (None when it is not live)."""
        self._read_registry(None)
        with self._since_lock:
            return self._since.get(node)

    def _stage_mark(self) -> Mark:
        """Where the stage is: one script, so the three parts belong to the same commit."""
        raw_pos, raw_retry, raw_dead = self._mark_script(keys=self._mark_keys, args=[RETRY_FIELD])
        return Mark(
            as_str(raw_pos) if raw_pos else START,
            as_str(raw_retry) if raw_retry else "",
            as_str(raw_dead) if raw_dead else START,
        )

    def _snapshot(self) -> tuple[View, Mark]:
        pipe = self.client.pipeline(transaction=True)
        pipe.get(self._position_key)
        pipe.hgetall(self.keys.state(STAGE))
        pipe.xrevrange(self.keys.dead(STAGE), count=1)
        raw_pos, raw_state, raw_dead = pipe.execute()
        fields = {as_str(k): v for k, v in raw_state.items()}
        mark = Mark(
            as_str(raw_pos) if raw_pos else START,
            as_str(fields.pop(RETRY_FIELD, b"")),
            as_str(raw_dead[0][0]) if raw_dead else START,
        )
        self.reloads += 1
        return View(FOLD.load(fields)), mark

    def _reload(self, why: str) -> None:
        self.log.info("loading a fresh registry snapshot ({})", why)
        self.view, mark = self._snapshot()
        self.position, self.redriven, self._dead_seen = mark
        self._skip.clear()

    def _catch_up(self, mark: Mark) -> None:
        """Fold ``events`` entries after our position up to ``mark`` (lock held).

        Entries the stage dead-lettered meanwhile are skipped, as the stage skipped them.
        """
        if id_key(mark.dead) > id_key(self._dead_seen):
            letters: Any = self.client.xrange(
                self.keys.dead(STAGE), min=f"({self._dead_seen}", max=mark.dead
            )
            self._skip.update(as_str(f[b"id"]) for _, f in letters if b"id" in f)
            self._dead_seen = mark.dead
        state = self.view.state
        target = mark.position
        while id_key(self.position) < id_key(target):
            low = "-" if self.position == START else f"({self.position}"
            page: Any = self.client.xrange(self.keys.events, min=low, max=target, count=PAGE)
            if not page:
                self._reload(f"events up to {target} are missing")
                return
            for raw_id, fields in page:
                entry_id = as_str(raw_id)
                if entry_id in self._skip:
                    self._skip.discard(entry_id)
                    continue
                try:
                    entry = from_fields(fields)
                except DecodeError:
                    continue  # the stage dead-letters it too
                if not isinstance(entry, LogEntry):
                    self._reload(f"{type(entry).__name__} at {entry_id}")
                    return
                try:
                    FOLD.apply(state, entry_id, entry)
                except Exception as exc:  # the stage dead-lettered it and reloaded
                    self._reload(f"cannot apply {entry_id}: {exc!r}")
                    return
                self.folded += 1
            self.position = as_str(page[-1][0])
            self.view.touch(state.dirty_tokens)
            state.dirty_tokens.clear()
            state.dirty_owners.clear()

    def sync(self) -> None:
        """Catch up with the stage now; reload when its position went backwards (a reset)."""
        mark = self._stage_mark()
        with self._lock:
            if mark.redriven != self.redriven:
                self._reload("a dead letter was re-driven")
            elif id_key(mark.position) < id_key(self.position):
                self._reload(f"the stage position went back to {mark.position}")
            if id_key(mark.position) > id_key(self.position):
                self._catch_up(mark)

    # --- following the registry stream --------------------------------------------------

    def start(self) -> RegistryCache:
        """Start the follower thread (idempotent)."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._follow, name="wgchain-access-follower", daemon=True
            )
            self._thread.start()
        return self

    def close(self) -> None:
        """Stop the follower thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=FOLLOW_BLOCK_MS / 1000 * 5)
            self._thread = None

    def __enter__(self) -> RegistryCache:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _follow(self) -> None:
        while not self._stop.is_set():
            try:
                self._read_registry(FOLLOW_BLOCK_MS)
                self.sync()
                health.REDIS.ok()
            except redis.RedisError as exc:  # logged when it starts, once a minute, at the end
                health.REDIS.failed(exc)
                self._stop.wait(FOLLOW_PAUSE)
            except Exception:  # keep following: checks still catch up on their own
                self.log.exception("registry follower failed; retrying")
                self._stop.wait(FOLLOW_PAUSE)

    def _read_registry(self, block_ms: int | None) -> int:
        """Read registry entries after the last one seen; returns how many were new.

        ``block_ms`` None reads everything there is now; else one blocking XREAD.
        """
        new = 0
        while True:
            after = self._registry_seen
            if block_ms is None:
                low = "-" if after == START else f"({after}"
                raw: Any = self.client.xrange(self.keys.registry, min=low, count=PAGE)
            else:
                res: Any = self.client.xread(
                    {self.keys.registry: after}, count=PAGE, block=block_ms
                )
                raw = res[0][1] if res else []
            with self._since_lock:
                for raw_id, fields in raw:
                    entry_id = as_str(raw_id)
                    if id_key(entry_id) <= id_key(self._registry_seen):
                        continue  # the other reader got there first
                    new += 1
                    try:
                        change = from_fields(fields)
                    except DecodeError:
                        change = None
                    if isinstance(change, Retracted):
                        self._rebuild_since(entry_id)
                    else:
                        _track(self._since, change)
                    self._registry_seen = entry_id
            if block_ms is not None or len(raw) < PAGE:
                return new

    def _rebuild_since(self, until: str) -> None:
        """Recompute the join blocks from the effective registry stream up to ``until``."""
        items: list[tuple[str, Any]] = []
        low = "-"
        while True:
            page: Any = self.client.xrange(self.keys.registry, min=low, max=until, count=PAGE)
            for raw_id, fields in page:
                try:
                    items.append((as_str(raw_id), from_fields(fields)))
                except DecodeError:
                    continue
            if len(page) < PAGE:
                break
            low = f"({as_str(page[-1][0])}"
        self._since = {}
        for _, change in effective(items):
            _track(self._since, change)


def _track(since: dict[str, int], change: object) -> None:
    """Update the join blocks with one registry change."""
    if isinstance(change, NodeJoined):
        since[change.node_id] = change.block_number
    elif isinstance(change, NodeLeft):
        since.pop(change.node_id, None)
