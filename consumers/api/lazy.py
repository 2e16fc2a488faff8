"""The access checker and the reads built on it, made on first use so that the API
(:mod:`consumers.api.app`) starts, and answers 503, while Redis is down."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import redis

from consumers.access.checker import BOUNDED, AccessChecker
from consumers.api.reads import Reads
from consumers.status.expiring import expiring
from consumers.status.health import Limits
from consumers.status.snapshot import Snapshot
from shared import health
from shared.keys import Keys


@dataclass(eq=False)
class LazyReads:
    """The access checker and the reads built on it, made on first use (they load the
    registry from Redis), so that the API serves while Redis is down."""

    client: redis.Redis
    keys: Keys
    snapshot: Snapshot
    #: The thresholds: the reconcile interval of agents that do not report theirs, and when
    #: a pass counts as expiring and as expired.
    limits: Limits
    following: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _made: tuple[AccessChecker, Reads] | None = None

    def get(self) -> tuple[AccessChecker, Reads]:
        made = self._made
        if made is None:
            with self._lock:
                made = self._made
                if made is None:
                    checker = AccessChecker(
                        self.client,
                        self.keys,
                        consistency=BOUNDED,
                        expiry_grace=self.limits.expiry_grace,
                    )
                    if self.following:
                        checker.cache.start()
                    reads = Reads(
                        self.client,
                        self.keys,
                        checker.cache,
                        reconcile_interval=self.limits.reconcile_interval,
                        expiry_grace=self.limits.expiry_grace,
                    )
                    made = self._made = (checker, reads)
        return made

    @property
    def made(self) -> bool:
        """Whether the checker exists (its follower then reports Redis outages every second)."""
        return self._made is not None

    def start(self) -> None:
        """Follow the registry stream from now on (at once if the checker exists)."""
        self.following = True
        with self._lock:
            if self._made is not None:
                self._made[0].cache.start()
        try:
            self.get()
        except redis.RedisError as exc:  # built on the first request once Redis answers
            health.REDIS.failed(exc)

    def close(self) -> None:
        with self._lock:
            if self._made is not None:
                self._made[0].close()

    def live_count(self) -> int:
        """Live members now (the registry as the access checker holds it)."""
        checker, _ = self.get()
        with checker.cache.fresh() as view:
            return sum(1 for status in view.state.status.values() if status.live)

    def expiring_count(self) -> int:
        """Live members whose pass expires within ``WGCHAIN_EXPIRY_WARNING`` now."""
        checker, _ = self.get()
        limits = self.limits
        with checker.cache.fresh() as view:
            now = time.time()
            return len(expiring(view.state, now, limits.expiry_warning, limits.expiry_grace))


__all__ = ["LazyReads"]
