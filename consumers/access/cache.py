"""An in-process copy of the registry projection, never more than a stated bound behind it.

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
  re-driven dead letter) makes the cache load a fresh snapshot instead. Pages are
  read outside the view's lock and folded under it, so readers wait for a fold,
  never for Redis.
* **Position reads** (:meth:`RegistryCache.refresh`) read the stage's position (and
  the id of the last dead letter it re-drove, which changes the state without
  moving the position) in one atomic Lua call, then catch up (or reload). They are
  single-flight: a caller waits for a read that *began after it was called* and
  shares it with every other caller waiting at the time, so 16 concurrent strict
  checks cost one round trip, not 16, and none is answered from an older read.
  ``verified_at`` is when the last completed read began: the copy then reflects
  every commit made before that instant.
* **Follower and ticker.** A thread blocks on ``XREAD`` of the ``registry``
  stream: every entry appended there comes from a registry commit, so it wakes
  up at once, raises :attr:`news` (the next bounded check then reads the position
  itself: a thread that runs checks flat out holds the interpreter lock, which the
  follower would wait for after each round trip) and reads the position
  :data:`NEWS_GRACE` later unless a check did. A second thread reads the position
  every :data:`REFRESH_MS` (commits without outputs; and it keeps bounded checks
  from ever finding the copy older than their bound). The follower also keeps,
  per node, the block of the ``NodeJoined`` that made it live
  (:class:`consumers.access.joins.JoinBlocks`).

Two ways to read it (README "Reads"; docs/design.md §12.1):

* **strict** (:meth:`RegistryCache.fresh`): a position read first (shared, see above),
  so a check that starts after the registry stage committed a revoke always sees it;
* **bounded** (:meth:`RegistryCache.within`): answered from the copy, with no round
  trip, while ``verified_at`` is at most ``max_age`` seconds old (the follower keeps
  it so); an older copy is first refreshed as in strict mode. An answer therefore
  reflects every registry commit made ``max_age`` seconds or more before it, even
  with the follower stalled or Redis away (then it fails like a strict check, never
  answers stale). There is no TTL anywhere.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Final, NamedTuple

import redis

from consumers.access.decide import View
from consumers.access.joins import JoinBlocks
from consumers.registry.fold import FOLD
from consumers.stage import RETRY_FIELD
from shared import health, lua, streams
from shared.errors import DecodeError
from shared.events import LogEntry, from_fields
from shared.ids import id_key
from shared.keys import Keys
from shared.logs import log
from shared.redis_log import START, as_str

#: Stage whose projection this caches.
STAGE: Final = "registry"
#: Entries read per XRANGE page when catching up or rebuilding.
PAGE: Final = 1000
#: Milliseconds between two position reads of the ticker thread (at most; any read resets it).
REFRESH_MS: Final = 10
#: Milliseconds the follower blocks on the registry stream per ``XREAD``.
FOLLOW_BLOCK_MS: Final = 1000
#: Seconds: how old the copy may be for a bounded answer (a bounded answer reflects every
#: registry commit made at least this long before it).
MAX_AGE: Final = 0.05
#: Seconds the follower leaves a busy checking thread, after a registry commit, to read the
#: position itself (without waiting for the interpreter lock) before it reads it.
NEWS_GRACE: Final = 0.002
#: Seconds :meth:`RegistryCache.close` waits for the follower thread.
CLOSE_WAIT: Final = 5.0
#: Seconds the follower waits after Redis became unreachable.
FOLLOW_PAUSE: Final = 1.0
#: The stage's :class:`Mark` in one atomic call (one command: cheaper than a MULTI), and
#: the first page of ``events`` entries after our position up to the stage's, so that
#: catching up usually costs no second round trip.
_MARK_LUA: Final = lua.source("access_mark")


class Mark(NamedTuple):
    """What says whether the registry stage committed since we last looked."""

    #: Its input position (``events`` id of the last entry it committed).
    position: str
    #: Id of the last dead letter it re-drove (changes the state, not the position).
    redriven: str
    #: Id of the newest entry of its dead-letter stream.
    dead: str


class RegistryCache:
    """The registry stage's state, mirrored in this process (see the module docstring)."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self._position_key = keys.position(STAGE)
        self._mark_keys = [self._position_key, keys.state(STAGE), keys.dead(STAGE), keys.events]
        self._mark_script = client.register_script(_MARK_LUA)
        #: Held by readers of the view and by the fold while it changes the view.
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.log = log.bind(stage="access", network=keys.tag)
        #: Times a whole snapshot was loaded (the first load included).
        self.reloads = 0
        #: ``events`` entries folded while catching up.
        self.folded = 0
        #: Position reads made (each shared by every caller waiting for it).
        self.reads = 0
        #: Input ids the stage dead-lettered that catching up has not reached yet.
        self._skip: set[str] = set()
        # single-flight position reads: numbered; one in flight at a time
        self._flight = threading.Condition(threading.Lock())
        self._started = 0
        self._done = 0
        self._reading = False
        self._failure: BaseException | None = None
        began = time.monotonic()
        self.view, mark = self._snapshot()
        self.position, self.redriven, self._dead_seen = mark
        #: ``time.monotonic()`` when the last completed position read began.
        self.verified_at = began
        #: Bumped (under the lock) whenever the view changes: answers computed from the
        #: view may be reused while it stays the same.
        self.generation = 0
        #: Set by the follower when the registry stream says the stage committed: the next
        #: bounded check reads the position itself instead of waiting for the follower
        #: (which would wait for the interpreter lock after each of its round trips).
        self.news = False
        #: The join block of each live node, read from the ``registry`` stream.
        self.joins = JoinBlocks(client, keys)

    # --- reading ----------------------------------------------------------------------

    @contextmanager
    def fresh(self) -> Iterator[View]:
        """Strict: the view, at least as new as the stage's last commit when called.

        Holds the cache's lock while the caller reads it: keep the block short.
        """
        self.refresh()
        with self.lock:
            yield self.view

    @contextmanager
    def recent(self, max_age: float = MAX_AGE) -> Iterator[View]:
        """Bounded: the view, reflecting every commit made ``max_age`` seconds before the call."""
        self.within(max_age)
        with self.lock:
            yield self.view

    def within(self, max_age: float) -> None:
        """Refresh first unless the last position read began at most ``max_age`` seconds ago
        (or the follower saw a commit it has not read yet)."""
        if self.news or time.monotonic() - self.verified_at > max_age:
            self.refresh()

    def age(self) -> float:
        """Seconds since the last completed position read began."""
        return time.monotonic() - self.verified_at

    def refresh(self) -> None:
        """Catch up with a position read that began after this call (single-flight).

        Concurrent callers share one read: whoever finds none in flight makes it; the
        others wait for the next one to begin and end (a read already in flight when
        they came may predate a commit they must see). A failed read raises in every
        caller that waited for it.
        """
        with self._flight:
            need = self._started + 1
            while self._done < need:
                if not self._reading:  # then started == done: the read we need is ours
                    self._reading = True
                    break
                self._flight.wait()
            else:
                if self._failure is not None:
                    raise self._failure
                return
        # Let the threads that are about to ask run first: until the read is marked begun
        # they ask for this same read (``_started + 1``), so one read serves them all.
        time.sleep(0)
        with self._flight:
            self._started = need
        failure: BaseException | None = None
        try:
            self._sync()
        except BaseException as exc:
            failure = exc
            raise
        finally:
            with self._flight:
                self._reading = False
                self._done = need
                self._failure = failure
                self._flight.notify_all()

    def since_block(self, node: str) -> int | None:
        """Block of the ``NodeJoined`` that made ``node`` live (None when it is not live)."""
        return self.joins.get(node)

    def _stage_mark(self) -> tuple[Mark, Any]:
        """Where the stage is (one script, so the parts belong to the same commit), and the
        first page of ``events`` entries after our position up to it (raw, as XRANGE)."""
        after = "-" if self.position == START else self.position
        raw_pos, raw_retry, raw_dead, page = self._mark_script(
            keys=self._mark_keys, args=[RETRY_FIELD, after, PAGE]
        )
        self.reads += 1
        mark = Mark(
            as_str(raw_pos) if raw_pos else START,
            as_str(raw_retry) if raw_retry else "",
            as_str(raw_dead) if raw_dead else START,
        )
        return mark, [(raw_id, _pairs(fields)) for raw_id, fields in page]

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
        """Load a fresh snapshot (read outside the view's lock, swapped in under it)."""
        self.log.info("loading a fresh registry snapshot ({})", why)
        view, mark = self._snapshot()
        with self.lock:
            self._swap(view, mark)

    def _swap(self, view: View, mark: Mark) -> None:
        """Put a loaded snapshot in place (lock held)."""
        self.view = view
        self.position, self.redriven, self._dead_seen = mark
        self.generation += 1
        self._skip.clear()

    def _sync(self) -> None:
        """One position read, then catch up; reload when the stage was reset or re-drove.

        Only the single flight of :meth:`refresh` calls it: one at a time.
        """
        began = time.monotonic()
        self.news = False
        mark, page = self._stage_mark()
        if mark.redriven != self.redriven:
            self._reload("a dead letter was re-driven")
            page = None
        elif id_key(mark.position) < id_key(self.position):
            self._reload(f"the stage position went back to {mark.position}")
            page = None
        if id_key(mark.position) > id_key(self.position):
            self._catch_up(mark, page)
        self.verified_at = began

    def sync(self) -> None:
        """Catch up with the stage now (a position read shared with concurrent callers)."""
        self.refresh()

    def _catch_up(self, mark: Mark, first: Any = None) -> None:
        """Fold ``events`` entries after our position up to ``mark``.

        ``first``: the first page, read with the mark. Pages are read without the view's
        lock and folded under it. Entries the stage dead-lettered meanwhile are skipped,
        as the stage skipped them.
        """
        if id_key(mark.dead) > id_key(self._dead_seen):
            letters = streams.read(
                self.client, self.keys.dead(STAGE), after=self._dead_seen, through=mark.dead,
                retry=False,
            )  # fmt: skip
            self._skip.update(as_str(f[b"id"]) for _, f in letters if b"id" in f)
            self._dead_seen = mark.dead
        target = mark.position
        while id_key(self.position) < id_key(target):
            if first:
                page, first = first, None
            else:
                page = streams.read(
                    self.client, self.keys.events, after=self.position, through=target,
                    limit=PAGE, retry=False,
                )  # fmt: skip
            if not page:
                self._reload(f"events up to {target} are missing")
                return
            with self.lock:
                why = self._fold_page(page)
                if why:  # half-folded: no reader may see it, so load under the lock
                    self.log.info("loading a fresh registry snapshot ({})", why)
                    self._swap(*self._snapshot())
                    return

    def _fold_page(self, page: Any) -> str:
        """Fold one page into the view (lock held); why a reload is needed instead, or ''.

        After a failure mid-page the view is half-folded: the caller reloads at once.
        """
        state = self.view.state
        try:
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
                    return f"{type(entry).__name__} at {entry_id}"
                try:
                    FOLD.apply(state, entry_id, entry)
                except Exception as exc:  # the stage dead-lettered it and reloaded
                    return f"cannot apply {entry_id}: {exc!r}"
                self.folded += 1
            self.position = as_str(page[-1][0])
        finally:
            self.generation += 1
            self.view.touch(state.dirty_tokens)
            state.dirty_tokens.clear()
            state.dirty_owners.clear()
        return ""

    # --- following the registry stream --------------------------------------------------

    def start(self) -> RegistryCache:
        """Start the follower and the ticker threads (idempotent)."""
        if not self._threads:
            self._stop.clear()
            self._threads = [
                threading.Thread(target=self._follow, name="wgchain-access-follower", daemon=True),
                threading.Thread(target=self._tick, name="wgchain-access-ticker", daemon=True),
            ]
            for thread in self._threads:
                thread.start()
        return self

    def close(self) -> None:
        """Stop the threads."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=CLOSE_WAIT)
        self._threads = []

    def __enter__(self) -> RegistryCache:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _follow(self) -> None:
        """Wake on every registry commit (an entry of the ``registry`` stream)."""
        while not self._stop.is_set():
            try:
                if self.joins.read(FOLLOW_BLOCK_MS):
                    woke = time.monotonic()
                    self.news = True  # a busy checking thread reads the position itself ...
                    self._stop.wait(NEWS_GRACE)
                    if self.verified_at < woke:  # ... unless none did
                        self.refresh()
                health.REDIS.ok()
            except redis.RedisError as exc:  # logged when it starts, once a minute, at the end
                health.REDIS.failed(exc)
                self._stop.wait(FOLLOW_PAUSE)
            except Exception:  # keep following: checks still catch up on their own
                self.log.exception("registry follower failed; retrying")
                self._stop.wait(FOLLOW_PAUSE)

    def _tick(self) -> None:
        """Read the position every :data:`REFRESH_MS` (commits without registry entries).

        A timer of its own: Redis ends a blocking ``XREAD`` only on its own clock
        (``hz``, 10 times a second by default), far too late for a 50 ms bound.
        """
        period = REFRESH_MS / 1000
        while not self._stop.wait(period):
            try:
                if self.age() >= period:
                    self.refresh()
            except redis.RedisError as exc:
                health.REDIS.failed(exc)
                self._stop.wait(FOLLOW_PAUSE)
            except Exception:
                self.log.exception("registry position ticker failed; retrying")
                self._stop.wait(FOLLOW_PAUSE)


def _pairs(flat: list[bytes]) -> dict[bytes, bytes]:
    """A stream entry's fields as a script returns them (a flat list) as XRANGE gives them."""
    return dict(zip(flat[0::2], flat[1::2], strict=True))
