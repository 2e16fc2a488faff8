"""This process's own health: outages of the services it needs, and whether its loops work.

Two kinds of records, both process-wide and thread-safe:

* an :class:`Outage` per service (:data:`REDIS`, :data:`RPC`): retry policies call
  :meth:`Outage.failed` on every failed attempt and :meth:`Outage.ok` on every
  success. It logs one line when the service starts failing, one a minute while it
  lasts, and one when it answers again, however many attempts that took;
* a :class:`Work` per loop (a stage, a listener, the lease supervisor): the loop
  calls :meth:`Work.beat` whenever it made progress or found nothing to do, and
  :meth:`Work.trouble` to name a condition that keeps it from doing its job (the
  chain head below the listener's cursor).

:func:`verdict` turns them into what ``GET /healthz`` answers (``shared.metrics``
serves it on the metrics address): healthy, or the first reason it is not, in one line.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Final

from shared.durations import duration
from shared.logs import brief, log

#: Seconds between two "still unreachable" lines while an outage lasts.
REMIND_EVERY: Final = 60.0
#: Seconds a loop may go without a beat before /healthz reports it stuck (default).
WORK_BOUND: Final = 120.0


class Outage:
    """Failures of one service (see the module docstring); ``name`` as in log lines."""

    def __init__(self, name: str, *, quiet: bool = False) -> None:
        self.name = name
        #: True: record, but log nothing (one-shot commands print their own one line).
        self.quiet = quiet
        self._lock = threading.Lock()
        self._since: float | None = None
        self._reminded = 0.0
        self._attempts = 0
        self._error = ""

    def failed(self, error: object) -> None:
        """One attempt failed with ``error`` (an exception or a reason)."""
        text = _one_line(error)
        now = time.monotonic()
        with self._lock:
            self._attempts += 1
            self._error = text
            if self._since is None:
                self._since = self._reminded = now
                line = f"{self.name} unreachable ({text}); retrying until it answers"
            elif now - self._reminded >= REMIND_EVERY:
                self._reminded = now
                line = f"{self.name} still unreachable after {duration(now - self._since)} ({text})"
            else:
                return
        if not self.quiet:
            log.bind(stage=f"wgchain.{self.name.lower()}").warning(line)

    def ok(self) -> None:
        """A call succeeded: the outage, if any, is over."""
        if self._since is None:  # the common case, without the lock
            return
        with self._lock:
            since, attempts = self._since, self._attempts
            if since is None:
                return
            self._since, self._attempts, self._error = None, 0, ""
        if not self.quiet:
            log.bind(stage=f"wgchain.{self.name.lower()}").warning(
                "{} reachable again after {} ({} failed attempts)",
                self.name,
                duration(time.monotonic() - since),
                attempts,
            )

    def down(self) -> str | None:
        """``"Redis unreachable for 42s: …"`` while failing, else None."""
        with self._lock:
            if self._since is None:
                return None
            lasted = duration(time.monotonic() - self._since)
            return f"{self.name} unreachable for {lasted}: {self._error}"


#: The Redis server of this process (every ``redis_retry`` call reports to it).
REDIS: Final = Outage("Redis")
#: The chain's JSON-RPC endpoints (every ``RpcClient`` call reports to it).
RPC: Final = Outage("RPC")


def _now() -> float:
    return time.monotonic()  # looked up at each call (tests replace the clock)


@dataclass
class Work:
    """One loop of this process: when it last made progress, and what stops it, if anything."""

    name: str
    bound: float = WORK_BOUND
    last: float = field(default_factory=_now)
    problem: str = ""

    def beat(self) -> None:
        """The loop made progress, or had nothing to do."""
        self.last = time.monotonic()

    def trouble(self, problem: str) -> None:
        """Name what keeps the loop from its job ("" when nothing does)."""
        self.problem = problem

    def stuck(self, now: float) -> str:
        """Why this loop is not healthy ("" when it is)."""
        if self.problem:
            return f"{self.name}: {self.problem}"
        if now - self.last > self.bound:
            return f"{self.name}: no progress for {duration(now - self.last)}"
        return ""


_works: list[Work] = []
_works_lock = threading.Lock()


def work(name: str, bound: float = WORK_BOUND) -> Work:
    """Register a loop of this process (retire it with :func:`retire` when it ends)."""
    record = Work(name, bound)
    with _works_lock:
        _works.append(record)
    return record


def retire(record: Work) -> None:
    """The loop ended on purpose (a stop, a hand-over): it no longer counts."""
    with _works_lock:
        if record in _works:
            _works.remove(record)


@dataclass(frozen=True)
class Verdict:
    """What ``/healthz`` answers."""

    healthy: bool
    reason: str = ""


def verdict(outages: tuple[Outage, ...] = (REDIS, RPC)) -> Verdict:
    """Healthy, or the first reason this process is not (outages first, then loops)."""
    for outage in outages:
        down = outage.down()
        if down:
            return Verdict(False, down)
    now = time.monotonic()
    with _works_lock:
        works = list(_works)
    for record in works:
        reason = record.stuck(now)
        if reason:
            return Verdict(False, reason)
    return Verdict(True)


def _one_line(error: object) -> str:
    text = brief(error) if isinstance(error, BaseException) else str(error)
    return " ".join(text.split())[:300]


__all__ = ["REDIS", "RPC", "Outage", "Verdict", "Work", "duration", "retire", "verdict", "work"]
