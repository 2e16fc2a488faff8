"""Horizontal listeners: one Redis lease per network, fencing tokens, leases spread.

Any number of ``wgchain listen`` processes may run for the same networks; per
network exactly one appends: the holder of the network's lease (:attr:`Keys.lease`,
a string with a TTL). Taking a free lease increments the network's fencing counter
(:attr:`Keys.fence`) in the same Lua call and stores the token
``<fence number>:<listener id>``. The holder renews the TTL every third of it, only
while the key still holds its token, and deletes it on a clean shutdown (again only
if it is its own). Every append carries ``fence=(lease key, token)`` and the append
script refuses it unless the lease holds that very token: a leader paused past its
TTL (SIGSTOP, a long GC, a frozen VM) that resumes after another took over cannot
append anything; its renewal fails, it steps down, forgets its cursor and waits for
a lease again. A new holder always reloads the cursor from Redis.

Spreading: every process heartbeats its listener id into a registry, a sorted set
scored by expiry time (the Redis clock), one per *set of networks*
(``wgchain:listeners:{<digest of the sorted network tags>}``), so processes started
with the same networks count each other. A process holds at most its fair share,
``ceil(networks / live processes)``: it takes a free lease only below its share, and
hands one over (stops that listener, then releases the lease) when above it.
Processes given different sets of networks do not count each other: they still
never append twice (the leases decide), they may just not spread evenly.
"""

from __future__ import annotations

import hashlib
import math
import os
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

import redis

from producers.listener.listener import Listener
from shared import health, lua, metrics
from shared.errors import Fenced
from shared.keys import Keys
from shared.logs import log
from shared.redis_log import as_str, keep_going, redis_retry
from shared.validate import excerpt

#: Seconds a stopping process waits for each of its listener threads to finish.
STOP_TIMEOUT: Final = 30.0
#: Seconds a tick waits for the listener thread of a lost lease to end (a lease lost in a
#: Redis outage is then taken again in the same tick, not one tick later).
STEP_DOWN_WAIT: Final = 1.0

_ACQUIRE_LUA: Final = lua.source("lease_acquire")

_RENEW_LUA: Final = lua.source("lease_renew")

_RELEASE_LUA: Final = lua.source("lease_release")

_BEAT_LUA: Final = lua.source("lease_beat")


def listener_id(configured: str = "") -> str:
    """This process's name in leases and the registry: ``configured``, else ``host:pid``."""
    return configured or f"{socket.gethostname()}:{os.getpid()}"


def fair_share(networks: int, live: int) -> int:
    """Leases one of ``live`` processes may hold among ``networks``: ``ceil(networks / live)``."""
    return math.ceil(networks / max(1, live))


def registry_key(networks: Sequence[Keys]) -> str:
    """The registry of the listeners serving exactly ``networks`` (order does not matter)."""
    tags = ",".join(sorted({k.tag for k in networks}))
    digest = hashlib.sha256(tags.encode()).hexdigest()[:16]
    return f"{networks[0].prefix}:listeners:{{{digest}}}"


class Lease:
    """One network's lease, as seen by one listener process."""

    def __init__(self, client: redis.Redis, keys: Keys, owner: str, ttl: float) -> None:
        self.key = keys.lease
        self.fence_key = keys.fence
        self.owner = owner
        self.ttl_ms = max(1, int(ttl * 1000))
        #: Our token while we believe we hold the lease, else None.
        self.token: str | None = None
        self._client = client
        self._acquire = client.register_script(_ACQUIRE_LUA)
        self._renew = client.register_script(_RENEW_LUA)
        self._release = client.register_script(_RELEASE_LUA)

    def acquire(self) -> bool:
        """Take the lease if it is free (a new fencing number); True when we got it."""
        token = redis_retry(
            self._acquire, keys=[self.key, self.fence_key], args=[self.owner, self.ttl_ms]
        )
        self.token = as_str(token) if token else None
        return self.token is not None

    def renew(self) -> bool:
        """Extend the TTL if the lease still holds our token; False (and forget it) otherwise."""
        if self.token is None:
            return False
        if redis_retry(self._renew, keys=[self.key], args=[self.token, self.ttl_ms]):
            return True
        self.token = None
        return False

    def release(self) -> None:
        """Delete the lease if it still holds our token (a clean hand-over)."""
        if self.token is not None:
            redis_retry(self._release, keys=[self.key], args=[self.token])
            self.token = None

    def holder(self) -> str:
        """The token now in the lease (escaped for logs), or ``nobody``."""
        raw = redis_retry(self._client.get, self.key)
        return excerpt(as_str(raw)) if raw else "nobody"

    @property
    def fence(self) -> tuple[str, str]:
        """``(lease key, token)`` for :meth:`ListenerStore.commit` (only while held)."""
        assert self.token is not None, "fence of a lease we do not hold"
        return (self.key, self.token)


class Registry:
    """The live listener processes of one set of networks (heartbeats with expiry)."""

    def __init__(self, client: redis.Redis, key: str, owner: str, ttl: float) -> None:
        self.key = key
        self.owner = owner
        self.ttl_ms = max(1, int(ttl * 1000))
        self._beat = client.register_script(_BEAT_LUA)

    def beat(self) -> int:
        """Say we are alive for one more TTL; returns how many processes are (us included)."""
        return int(redis_retry(self._beat, keys=[self.key], args=[self.owner, self.ttl_ms, "0"]))

    def leave(self) -> None:
        """Remove ourselves at once (a clean shutdown), so others rebalance without waiting."""
        redis_retry(self._beat, keys=[self.key], args=[self.owner, self.ttl_ms, "1"])


@dataclass
class _Seat:
    """One network of this process: its listener, lease, and current term (if leading)."""

    listener: Listener
    lease: Lease
    wake: threading.Event = field(default_factory=threading.Event)
    term: threading.Event | None = None
    thread: threading.Thread | None = None
    error: Exception | None = None
    handing_over: bool = False

    @property
    def leading(self) -> bool:
        """True while a term runs that nobody asked to end."""
        return self.term is not None and not self.term.is_set()

    def end_term(self) -> None:
        if self.term is not None:
            self.term.set()
        self.wake.set()


class LeasedListeners:
    """Runs one listener thread per network whose lease this process holds.

    A supervisor loop (:meth:`run`) beats the registry, renews held leases, steps
    down from lost ones, hands over leases above the fair share and takes free ones
    below it, every third of the lease TTL.
    """

    def __init__(
        self, client: redis.Redis, listeners: Sequence[Listener], owner: str, ttl: float
    ) -> None:
        self.owner = owner
        self.interval = ttl / 3
        self.seats = [_Seat(lst, Lease(client, lst.store.keys, owner, ttl)) for lst in listeners]
        networks = [lst.store.keys for lst in listeners]
        self.registry = Registry(client, registry_key(networks), owner, ttl)
        self.log = log.bind(stage="listener", listener=owner)

    @property
    def wakes(self) -> list[threading.Event]:
        """The events that wake each network's listener at the tip (for new heads)."""
        return [seat.wake for seat in self.seats]

    def run(self, stop: threading.Event) -> None:
        """Lead what this process may until ``stop`` is set; then hand every lease back.

        A Redis outage beyond ``redis_retry`` is waited out (:func:`keep_going`); the
        next tick then finds which leases it still holds (the others expired meanwhile:
        their terms end, their appends being fenced off anyway, and are taken again).
        """
        self.log.info(
            "listener {} serving {} network(s); lease TTL {}s",
            self.owner,
            len(self.seats),
            self.interval * 3,
        )
        work = health.work("listener leases")

        def loop() -> None:
            while not stop.is_set():
                self._tick()
                work.beat()
                stop.wait(self.interval)

        try:
            keep_going(loop, stop)
        finally:
            health.retire(work)
            self._shutdown()

    def _tick(self) -> None:
        share = fair_share(len(self.seats), self.registry.beat())
        for seat in self.seats:
            self._reap(seat)
            if seat.lease.token is not None and not seat.lease.renew():  # leading or handing over
                self._step_down(seat)
                if seat.thread is not None:  # usually ends at once: take a lease again this tick
                    seat.thread.join(min(STEP_DOWN_WAIT, self.interval))
                    self._reap(seat)
        leading = [s for s in self.seats if s.leading]
        for seat in leading[share:]:
            self.log.info(
                "{}: more than a fair share ({}) held; handing this lease over",
                seat.listener.store.keys.tag,
                share,
            )
            seat.handing_over = True
            seat.end_term()
        held = sum(1 for s in self.seats if s.lease.token is not None)
        for seat in self.seats:
            if held >= share:
                break
            if seat.thread is None and seat.lease.acquire():
                self._start(seat)
                held += 1

    def _start(self, seat: _Seat) -> None:
        """Begin a term: fence every commit with the new token; the cursor comes from Redis."""
        listener = seat.listener
        listener.fence = seat.lease.fence
        listener.cursor = listener.store.load_cursor()
        term = seat.term = threading.Event()
        seat.wake.clear()
        metrics.set_lease_holder(listener.store.keys.tag, True)
        self.log.info(
            "{}: took the lease (token {}); appending from block {}",
            listener.store.keys.tag,
            seat.lease.token,
            listener.next_block,
        )
        seat.thread = threading.Thread(
            target=self._lead,
            args=(seat, term),
            name=f"wgchain-listener-{listener.store.keys.tag}",
            daemon=True,
        )
        seat.thread.start()

    @staticmethod
    def _lead(seat: _Seat, term: threading.Event) -> None:
        try:
            seat.listener.run(term, seat.wake)
        except Fenced:
            pass  # an append was fenced off, so the lease is lost; the supervisor steps down
        except Exception as exc:  # re-raised by the supervisor (it stops everything)
            seat.error = exc

    def _step_down(self, seat: _Seat) -> None:
        """Our lease is gone (expired, taken over): end the term; nothing more is appended."""
        seat.lease.token = None
        metrics.set_lease_holder(seat.listener.store.keys.tag, False)
        self.log.warning(
            "{}: lost the lease (now held by {}); stepping down, appends are fenced off",
            seat.listener.store.keys.tag,
            seat.lease.holder(),
        )
        seat.end_term()

    def _reap(self, seat: _Seat) -> None:
        """After a term's thread ended: re-raise its failure, finish a hand-over, forget state."""
        if seat.thread is None or seat.thread.is_alive():
            return
        if seat.error is not None:
            raise seat.error
        if seat.leading:  # it ended on its own: the listener reported a fenced append
            self._step_down(seat)
        seat.thread = seat.term = None
        seat.listener.fence = None
        metrics.set_lease_holder(seat.listener.store.keys.tag, False)
        seat.listener.cursor = None  # never trusted: the next term reloads it from Redis
        if seat.handing_over:
            seat.lease.release()
            seat.handing_over = False

    def _shutdown(self) -> None:
        """Stop every listener thread, then release our leases and leave the registry."""
        for seat in self.seats:
            seat.end_term()
        for seat in self.seats:
            if seat.thread is not None:
                seat.thread.join(STOP_TIMEOUT)
        try:
            for seat in self.seats:
                seat.lease.release()  # fenced appends make this safe even if a thread lingers
            self.registry.leave()
        except redis.RedisError as exc:
            self.log.warning("could not release the leases ({}); they expire by themselves", exc)
        self.log.info("listener {} stopped; leases released", self.owner)


__all__ = [
    "Lease",
    "LeasedListeners",
    "Registry",
    "fair_share",
    "listener_id",
    "registry_key",
]
