"""Real agents in the benchmarks, and the moment each one applied each ``peers`` entry.

B4 and B6 time the agent's whole path (an entry appended to ``peers`` -> the agent
has applied it) through the agent's stable surface only: ``AgentConfig``,
``Agent(config, client, wireguard)``, ``Agent.run(stop)`` and ``applied_position``
(the stream id of the newest ``peers`` entry the applied state covers). Nothing
here reaches into the agent's internals, so the benchmarks run unchanged whatever
the agent does inside.

When an agent applied an entry is noted in-process, never by polling Redis:

- a subclass of ``Agent`` notes every assignment of ``applied_position`` with its
  wall-clock time (exact: the moment the agent itself declares it applied);
- a sampler thread reads ``applied_position`` every :data:`SAMPLE_SECONDS` and notes
  a value the hook did not see (an agent whose position is not a plain attribute):
  then the time is late by at most the sample interval, and :attr:`AppliedLog.sampled`
  says so.

Bytes an agent reads from Redis are counted on the client side: its connections'
sockets are wrapped (:func:`counting_client`).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Final

import redis

from shared.redis_log import as_str, id_key

#: Seconds between two reads of every agent's ``applied_position`` by the sampler.
SAMPLE_SECONDS: Final = 0.01

Position = tuple[int, int]


class AppliedLog:
    """Every value ``applied_position`` took, with the wall-clock time it took it."""

    def __init__(self) -> None:
        #: (time.time(), id_key(position)) in the order they were noted.
        self.marks: list[tuple[float, Position]] = []
        #: Marks that only the sampler saw (their time is late by up to SAMPLE_SECONDS).
        self.sampled = 0
        self.changed = threading.Event()

    def note(self, position: object, *, sampled: bool = False) -> None:
        """Note that the applied position is now ``position``."""
        key = _key(position)
        if self.marks and self.marks[-1][1] == key:
            return
        self.marks.append((time.time(), key))
        if sampled:
            self.sampled += 1
        self.changed.set()

    @property
    def last(self) -> Position:
        """The newest applied position noted ((0, 0) before any)."""
        return self.marks[-1][1] if self.marks else (0, 0)

    def first_at(self, target: str | Position) -> float | None:
        """When the applied position first reached ``target`` (None: not yet)."""
        goal = _key(target)
        times = [t for t, key in self.marks if key >= goal]
        return min(times) if times else None


def _key(position: object) -> Position:
    if isinstance(position, tuple):
        return (int(position[0]), int(position[1]))
    if isinstance(position, bytes | str):
        return id_key(as_str(position))
    return (-1, -1)


def agent_class() -> type[Any]:
    """``Agent`` with a hook that notes every assignment of ``applied_position``."""
    from consumers.agent.agent import Agent

    class WatchedAgent(Agent):  # type: ignore[misc]
        """The real agent; only noting when it declares an entry applied."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            object.__setattr__(self, "bench_log", AppliedLog())
            super().__init__(*args, **kwargs)

        def __setattr__(self, name: str, value: Any) -> None:
            super().__setattr__(name, value)
            if name == "applied_position":
                self.bench_log.note(value)

    return WatchedAgent


def position_of(agent: Any) -> object:
    """The agent's ``applied_position`` (None when it has none yet)."""
    return getattr(agent, "applied_position", None)


class Sampler(threading.Thread):
    """Reads every agent's ``applied_position`` every :data:`SAMPLE_SECONDS` (the fallback)."""

    def __init__(
        self, agents: Iterable[Any], stop: threading.Event, interval: float = SAMPLE_SECONDS
    ) -> None:
        super().__init__(name="bench-sampler", daemon=True)
        self.agents = list(agents)
        self.stop = stop
        self.interval = interval

    def run(self) -> None:
        last: list[object] = [None] * len(self.agents)
        while not self.stop.wait(self.interval):
            for i, agent in enumerate(self.agents):
                position = position_of(agent)
                if position is not None and position != last[i]:  # cheap: parse on change only
                    last[i] = position
                    agent.bench_log.note(position, sampled=True)


def wait_applied(
    agent: Any, target: str, timeout: float, alive: Callable[[], bool] | None = None
) -> float:
    """Block until ``agent`` has applied ``target``; when it did (time.time()).

    Raises TimeoutError after ``timeout`` seconds, RuntimeError when ``alive()`` turns
    False (the agent's thread ended).
    """
    log: AppliedLog = agent.bench_log
    deadline = time.monotonic() + timeout
    while True:
        log.changed.clear()
        position = position_of(agent)
        if position is not None:
            log.note(position, sampled=True)
        at = log.first_at(target)
        if at is not None:
            return at
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"the agent did not apply {target} within {timeout:g} s")
        if alive is not None and not alive():
            raise RuntimeError(f"the agent stopped before it applied {target}")
        log.changed.wait(min(left, SAMPLE_SECONDS))


# --- bytes read from Redis, counted on the client side ---------------------------------


class CountingSocket:
    """A socket that adds the bytes it receives to ``box[0]`` (peeks not counted)."""

    def __init__(self, sock: socket.socket, box: list[int]) -> None:
        self._sock = sock
        self._box = box

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        data = self._sock.recv(bufsize, flags)
        if not flags & socket.MSG_PEEK:
            self._box[0] += len(data)
        return data

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        n = self._sock.recv_into(buffer, nbytes, flags)
        if not flags & socket.MSG_PEEK:
            self._box[0] += n
        return n

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def counting_client(url: str, box: list[int], **kwargs: Any) -> redis.Redis:
    """A Redis client whose connections count the bytes they read into ``box[0]``."""
    pool = redis.ConnectionPool.from_url(url, **kwargs)
    base: type[Any] = pool.connection_class

    def _connect(self: Any) -> Any:
        return CountingSocket(base._connect(self), box)

    pool.connection_class = type(f"Counting{base.__name__}", (base,), {"_connect": _connect})
    return redis.Redis(connection_pool=pool)
