"""Prometheus metrics of every wgchain process, defined once (all named ``wgchain_*``).

Long-running processes (``listen``, ``registry``, ``ipam``, ``agent``, ``run``,
``worker``) serve them on ``WGCHAIN_METRICS_LISTEN:WGCHAIN_METRICS_PORT``
(:func:`serve`, loopback by default), next to ``GET /healthz``: 200 ``{"status":
"ok"}`` while the process's own work goes on, 503 with a one-line JSON reason
otherwise (``shared.health``). The API serves :func:`render` from its own app. The
code that does the work calls the one-line helpers below. ``network`` labels are
``<chain id>:<contract>`` (a :attr:`Keys.tag` is accepted and its braces dropped).
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Final, Protocol, runtime_checkable
from wsgiref.simple_server import WSGIRequestHandler, make_server

import redis
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    make_wsgi_app,
)
from prometheus_client.exposition import ThreadingWSGIServer

from shared import health, lua
from shared.errors import WgchainError
from shared.events import Conflict

#: Most input entries counted when measuring a stage's lag; more shows as this number.
LAG_CAP: Final = 10_000
#: Seconds between two lag counts of one stage while it reads full batches (a count reads
#: up to :data:`LAG_CAP` entries inside Redis: doing it after every batch slowed the fold).
LAG_EVERY: Final = 5.0
#: Histogram buckets (seconds) for batch and apply latencies.
BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

EVENTS_APPENDED = Counter(
    "wgchain_events_appended", "Contract logs appended to the events stream.", ["network"]
)
CURSOR_BLOCK = Gauge(
    "wgchain_listener_cursor_block", "Last block the listener appended.", ["network"]
)
FINAL_BLOCK = Gauge(
    "wgchain_chain_final_block",
    "Last block final enough to append (head - confirmations, or the safe/finalized block).",
    ["network"],
)
LAG_BLOCKS = Gauge(
    "wgchain_listener_lag_blocks",
    "Final-enough blocks not appended yet (final block - cursor block).",
    ["network"],
)
LAG_SECONDS = Gauge(
    "wgchain_listener_lag_seconds",
    "Age of the cursor block while final blocks wait to be appended (0 when caught up).",
    ["network"],
)
STAGE_LAG = Gauge(
    "wgchain_stage_lag_entries",
    f"Input entries a stage has not committed yet (capped at {LAG_CAP}).",
    ["network", "stage"],
)
STAGE_BATCH = Histogram(
    "wgchain_stage_batch_seconds",
    "Seconds from reading a batch to committing it.",
    ["network", "stage"],
    buckets=BUCKETS,
)
STAGE_ENTRIES = Counter(
    "wgchain_stage_entries", "Input entries a stage committed.", ["network", "stage"]
)
DEAD_LETTERS = Counter(
    "wgchain_dead_letters", "Entries moved to a dead-letter stream.", ["network", "stage"]
)
CONFLICTS = Counter(
    "wgchain_conflicts", "Conflicts the registry published (duplicate node or key).", ["network"]
)
PENDING = Gauge(
    "wgchain_pending_allocations", "Members waiting for a free address in the pool.", ["network"]
)
AGENT_APPLY = Histogram(
    "wgchain_agent_apply_seconds",
    "Seconds one agent reconcile takes (read, apply the difference, verify, write the file).",
    ["network"],
    buckets=BUCKETS,
)
AGENT_ERRORS = Counter("wgchain_agent_errors", "Errors an agent reported.", ["network"])
LEASE_HOLDER = Gauge(
    "wgchain_lease_holder", "1 while this process holds the listener lease.", ["network"]
)
HEAD_DISTANCE = Gauge(
    "wgchain_listener_head_distance_blocks",
    "The chain's head minus the listener's cursor block (negative: the head is below the "
    "cursor, e.g. an RPC node of another chain or a devnet restarted without its state).",
    ["network"],
)

_TAG_RE: Final = re.compile(r"\{([^{}]*)\}")
#: (network, stage) -> monotonic time of its last lag count.
_LAG_COUNTED: dict[tuple[str, str], float] = {}
_COUNT_AFTER: Final = lua.source("count_after")


@runtime_checkable
class _HasPending(Protocol):
    pending: Mapping[str, Any]


def label(network: str) -> str:
    """``network`` as a label value, ``31337:0xabc…``: from a key tag or any key of the network."""
    tagged = _TAG_RE.search(network)
    return tagged.group(1) if tagged else network


def serve(port: int, listen: str = "127.0.0.1") -> None:
    """Serve ``/metrics`` and ``/healthz`` on ``listen:port`` in daemon threads; 0 serves nothing."""
    if not port:
        return
    host = listen.strip("[]")
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]

        class _Server(ThreadingWSGIServer):
            address_family = family

        server = make_server(host, port, _app, _Server, handler_class=_Quiet)
    except OSError as exc:
        why = exc.strerror or str(exc)
        raise WgchainError(f"cannot serve metrics on {listen}:{port}: {why}") from None
    threading.Thread(target=server.serve_forever, name="wgchain-metrics", daemon=True).start()


class _Quiet(WSGIRequestHandler):
    """No access log line per scrape."""

    def log_message(self, format: str, *args: Any) -> None:
        return


_metrics_app: Final = make_wsgi_app(REGISTRY)


def _app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
    """``/healthz``: this process's :func:`health.verdict`; anything else: the metrics page."""
    if environ.get("PATH_INFO") == "/healthz":
        body, code = healthz()
        start_response(code, [("Content-Type", "application/json")])
        return iter([body])
    return iter(_metrics_app(environ, start_response))


def healthz() -> tuple[bytes, str]:
    """The ``/healthz`` body and HTTP status line of this process."""
    verdict = health.verdict()
    if verdict.healthy:
        return b'{"status": "ok"}', "200 OK"
    doc = {"status": "failing", "reason": verdict.reason}
    return json.dumps(doc).encode(), "503 Service Unavailable"


def render() -> tuple[bytes, str]:
    """The metrics page and its content type, for an app that serves ``/metrics`` itself."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def head_distance(network: str, head_block: int, cursor_block: int) -> None:
    """The chain's head minus the listener's cursor (negative when the head is below it)."""
    HEAD_DISTANCE.labels(label(network)).set(head_block - cursor_block)


def listener_progress(
    network: str, cursor_block: int, final_block: int, cursor_time: float | None = None
) -> None:
    """Where the listener is: its cursor, the final block, and how far behind (blocks, seconds).

    ``cursor_time`` is the cursor block's timestamp (None when it is unknown: the
    seconds gauge then only drops to 0 when caught up).
    """
    net = label(network)
    behind = max(0, final_block - cursor_block)
    CURSOR_BLOCK.labels(net).set(cursor_block)
    FINAL_BLOCK.labels(net).set(final_block)
    LAG_BLOCKS.labels(net).set(behind)
    if behind == 0:
        LAG_SECONDS.labels(net).set(0)
    elif cursor_time is not None:
        LAG_SECONDS.labels(net).set(max(0.0, time.time() - cursor_time))


def appended(
    network: str, *, entries: int, dead: int, end: int, final_block: int, end_time: float
) -> None:
    """One listener commit: ``entries`` appended and ``dead`` dead-lettered up to block ``end``."""
    EVENTS_APPENDED.labels(label(network)).inc(entries)
    DEAD_LETTERS.labels(label(network), "listener").inc(dead)
    listener_progress(network, end, final_block, end_time)


def stage_committed(
    stage: str,
    client: redis.Redis,
    stream: str,
    position: str,
    *,
    entries: int,
    full: bool,
    outputs: Iterable[object],
    dead: int,
    started: float,
    state: object,
) -> None:
    """One stage commit of ``entries`` read from ``stream`` since ``started`` (monotonic).

    Records the latency, dead letters, conflicts among ``outputs``, pending allocations
    (a state with ``pending``) and the lag: 0 unless the batch was ``full``, then the
    entries left after ``position`` (counted in Redis at most every :data:`LAG_EVERY`
    seconds per stage, the gauge keeping the last count in between; skipped if Redis fails).
    """
    net = label(stream)
    STAGE_BATCH.labels(net, stage).observe(time.monotonic() - started)
    STAGE_ENTRIES.labels(net, stage).inc(entries)
    DEAD_LETTERS.labels(net, stage).inc(dead)
    conflicts = sum(isinstance(o, Conflict) for o in outputs)
    if conflicts:
        CONFLICTS.labels(net).inc(conflicts)
    if isinstance(state, _HasPending):
        PENDING.labels(net).set(len(state.pending))
    if not full:
        STAGE_LAG.labels(net, stage).set(0)
        _LAG_COUNTED.pop((net, stage), None)
        return
    now = time.monotonic()
    if now - _LAG_COUNTED.get((net, stage), -math.inf) < LAG_EVERY:
        return
    _LAG_COUNTED[(net, stage)] = now
    with contextlib.suppress(redis.RedisError):
        STAGE_LAG.labels(net, stage).set(backlog(client, stream, position))


def backlog(client: redis.Redis, stream: str, position: str, cap: int = LAG_CAP) -> int:
    """Entries of ``stream`` after ``position`` (at most ``cap``), counted inside Redis."""
    return int(client.eval(_COUNT_AFTER, 1, stream, position, cap))  # type: ignore[no-untyped-call]


def agent_applied(network: str, started: float) -> None:
    """One agent reconcile that began at ``started`` (monotonic) is over."""
    child = _AGENT_APPLY.get(network)
    if child is None:  # (labels() validates and locks: per change, per agent of a process)
        child = _AGENT_APPLY[network] = AGENT_APPLY.labels(label(network))
    child.observe(time.monotonic() - started)


#: ``AGENT_APPLY``'s child per network as given to :func:`agent_applied`.
_AGENT_APPLY: dict[str, Any] = {}


def agent_error(network: str) -> None:
    """An agent reported an error (Redis, ``wg``, the key file, the config file)."""
    AGENT_ERRORS.labels(label(network)).inc()


def set_lease_holder(network: str, held: bool) -> None:
    """Whether this process holds the listener lease of ``network`` right now."""
    LEASE_HOLDER.labels(label(network)).set(1 if held else 0)
