"""The HTTP API (Starlette): access checks, nodes, hosts, the log, health and metrics.

Endpoints are plain functions (Starlette runs them in its thread pool, so the
blocking Redis client is fine); ``/v1/access`` (bounded) and ``/healthz`` answer on the
event loop instead whenever they need no Redis round trip. ``/v1/access`` is bounded
by default (``&consistency=strict`` for a check never behind the registry stage's
last commit; see ``consumers/access/checker.py``). Every answer is JSON encoded with msgspec, except
``/metrics`` (Prometheus text) and the dashboard's files (``/`` and ``/ui/``). A
bearer token, when configured, guards everything but ``/healthz``, ``/readyz`` and
the dashboard's files (which hold no data: the page asks for the token and sends it
with every JSON request).

The API starts, and answers, while Redis is down: the access checker (which loads
the registry from Redis) is built on first use, and until then every read answers
503. ``/healthz`` is this process's health (Redis answers it), ``/readyz`` the
pipeline's (every problem ``wgchain status`` names makes it 503), and ``/metrics``
also carries the fleet's gauges (``consumers/status/exporter.py``).
"""

from __future__ import annotations

import hmac
import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import Any, Final

import msgspec
import redis
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from consumers.access.checker import (
    BOUNDED,
    AccessChecker,
    InvalidArgument,
    valid_address,
    valid_consistency,
    valid_node,
)
from consumers.api.fleet import FleetReads
from consumers.api.reads import NotFound, Reads
from consumers.api.schemas import ErrorBody, Health, HostList, IssueList, Ready, openapi
from consumers.dashboard import assets
from consumers.nodes.diagnose import diagnose
from consumers.nodes.gather import node_facts
from consumers.nodes.listing import Filter
from consumers.status.expiring import expiring, with_expiring
from consumers.status.exporter import FleetCollector
from consumers.status.health import Limits
from consumers.status.probe import no_data, probe
from consumers.status.snapshot import Snapshot
from shared import health, metrics, settings
from shared.errors import ServiceUnavailable, WgchainError
from shared.keys import Keys
from shared.redis_log import START

#: Paths that answer without the bearer token (health checks).
OPEN_PATHS: Final = frozenset({"/healthz", "/readyz", "/"})
#: Path prefix of the dashboard's files (no data in them: open, like ``/``).
ASSET_PREFIX: Final = "/ui/"
#: Default and largest page of ``/v1/nodes``.
NODES_PAGE: Final = (1000, 10_000)
#: Longest ``search`` of ``/v1/nodes`` (characters).
SEARCH_CHARS: Final = 100
#: Default and largest page of ``/v1/events``.
EVENTS_PAGE: Final = (100, 1000)
#: Default and largest number of rows of ``/v1/nodes/{node}/history``.
HISTORY_ROWS: Final = (500, 10_000)
_STREAM_ID: Final = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")
_JSON: Final = "application/json"

REQUESTS: Final = Counter("wgchain_api_requests", "HTTP API requests answered", ["route", "code"])
LATENCY: Final = Histogram("wgchain_api_request_seconds", "HTTP API request latency", ["route"])
DECISIONS: Final = Counter("wgchain_access_decisions", "Access checks answered", ["reason"])


def json_response(body: msgspec.Struct, status: int = 200) -> Response:
    return Response(msgspec.json.encode(body), status_code=status, media_type=_JSON)


def error(status: int, message: str, param: str | None = None) -> Response:
    return json_response(ErrorBody(error=message, param=param), status)


class BearerAuth:
    """ASGI middleware: 401 unless ``Authorization: Bearer <token>`` (constant-time compare)."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"] if scope["type"] == "http" else ""
        if path and path not in OPEN_PATHS and not path.startswith(ASSET_PREFIX):
            scheme, _, given = Headers(scope=scope).get("authorization", "").partition(" ")
            ok = scheme.lower() == "bearer" and hmac.compare_digest(
                given.strip().encode(), self.token
            )
            if not ok:
                response = error(401, "missing or wrong bearer token")
                response.headers["WWW-Authenticate"] = 'Bearer realm="wgchain"'
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _int(request: Request, name: str, default: int, low: int, high: int) -> int:
    text = request.query_params.get(name)
    if text is None:
        return default
    if not text.isdigit() or not low <= int(text) <= high:
        raise InvalidArgument(name, f"must be an integer from {low} to {high}")
    return int(text)


def _bool(request: Request, name: str) -> bool | None:
    text = request.query_params.get(name)
    if text is None:
        return None
    if text.lower() not in {"true", "false", "1", "0"}:
        raise InvalidArgument(name, "must be true or false")
    return text.lower() in {"true", "1"}


def _filter(request: Request) -> Filter:
    """The filters of ``/v1/nodes`` (those of ``wgchain nodes``)."""
    q = request.query_params
    owner = q.get("owner")
    if owner is not None:
        owner = valid_address(owner)
    search = q.get("search")
    if search is not None and (len(search) > SEARCH_CHARS or not search.isprintable()):
        raise InvalidArgument("search", f"at most {SEARCH_CHARS} printable characters")
    return Filter(
        live=_bool(request, "live"),
        host_offline=bool(_bool(request, "host_offline")),
        owner=owner,
        search=search or None,
    )


def _answer(fn: Callable[[Request], Response | None], request: Request) -> Response | None:
    """``fn``'s response, with errors as JSON answers."""
    try:
        return fn(request)
    except InvalidArgument as exc:
        return error(400, str(exc), exc.param)
    except NotFound as exc:
        return error(404, f"no token has ever named node {exc}")
    except ServiceUnavailable as exc:
        return error(503, str(exc))
    except (redis.RedisError, WgchainError) as exc:
        return error(503, f"unavailable: {type(exc).__name__}")


def _route(
    name: str,
    fn: Callable[[Request], Response],
    inline: Callable[[Request], Response | None] | None = None,
) -> Callable[[Request], Any]:
    """Errors to JSON answers, and metrics, around one endpoint.

    The endpoint runs in Starlette's thread pool (it may block on Redis). ``inline``,
    when given, is tried first on the event loop: it answers from memory, or returns
    None and the request goes to the thread pool (a thread hop is most of the cost
    of an answer that needs no I/O).
    """

    def observed(response: Response, started: float) -> Response:
        REQUESTS.labels(name, str(response.status_code)).inc()
        LATENCY.labels(name).observe(time.perf_counter() - started)
        return response

    def handler(request: Request) -> Response:
        started = time.perf_counter()
        response = _answer(fn, request)
        assert response is not None
        return observed(response, started)

    if inline is None:
        return handler

    async def handler_inline(request: Request) -> Response:
        started = time.perf_counter()
        response = _answer(inline, request)
        if response is None:
            return await run_in_threadpool(handler, request)
        return observed(response, started)

    return handler_inline


@dataclass(eq=False)
class _Lazy:
    """The access checker and the reads built on it, made on first use (they load the
    registry from Redis), so that the API serves while Redis is down."""

    client: redis.Redis
    keys: Keys
    snapshot: Snapshot
    reconcile_interval: float
    #: Seconds past an expiration before a pass counts as expired (``WGCHAIN_EXPIRY_GRACE``).
    expiry_grace: float = settings.DEFAULT_EXPIRY_GRACE
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
                        expiry_grace=self.expiry_grace,
                    )
                    if self.following:
                        checker.cache.start()
                    reads = Reads(
                        self.client,
                        self.keys,
                        checker.cache,
                        reconcile_interval=self.reconcile_interval,
                        expiry_grace=self.expiry_grace,
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


def create_app(
    client: redis.Redis,
    keys: Keys,
    *,
    token: str = "",
    max_lag: int = 1000,
    limits: Limits | None = None,
    rpc_urls: Sequence[str] = (),
    topology: str = "mesh",
    hubs: Sequence[str] = (),
    endpoint_template: str = "",
) -> Starlette:
    """The API for one network; the registry follower runs while the app is served.

    ``limits`` are the thresholds of ``/readyz`` (default: ``Limits(max_lag=max_lag)``);
    ``rpc_urls`` are asked for the chain head of ``/v1/status``; ``topology`` and
    ``hubs`` are what ``/v1/topology`` draws (the agents' ``WGCHAIN_TOPOLOGY``/``HUBS``),
    and, with ``endpoint_template``, what ``/v1/nodes/{node}/diagnosis`` reasons with.
    """
    limits = limits or Limits(max_lag=max_lag)
    snapshot = Snapshot(client, keys)
    lazy = _Lazy(client, keys, snapshot, limits.reconcile_interval, limits.expiry_grace)
    fleet_metrics = CollectorRegistry(auto_describe=False)
    fleet_metrics.register(
        FleetCollector(
            snapshot,
            limits,
            lazy_live=lambda: _live(lazy),
            lazy_expiring=lambda: _expiring(lazy, limits),
        )
    )
    fleet = FleetReads(
        lambda: with_expiring(snapshot.fleet([], limits=limits), lazy.get()[0].cache.fresh, limits),
        lambda: lazy.get()[1],
        rpc_urls,
        topology,
        hubs,
    )
    files = assets.load(auth=bool(token))
    document = msgspec.json.encode(openapi(version("wgchain"), auth=bool(token)))

    def access(request: Request) -> Response:
        q = request.query_params
        node = q.get("node")
        if node is None:
            raise InvalidArgument("node", "required")
        key, address = q.get("key"), q.get("address")
        if (key is None) == (address is None):
            raise InvalidArgument("key", "give exactly one of key and address")
        at = q.get("at_block")
        if at is not None and not at.isdigit():
            raise InvalidArgument("at_block", "must be a block number")
        block = None if at is None else int(at)
        consistency = valid_consistency(q.get("consistency", BOUNDED))
        checker, _ = lazy.get()
        if key is not None:
            decision = checker.check_key(node, key, at_block=block, consistency=consistency)
        else:
            decision = checker.check_address(
                node, address or "", at_block=block, consistency=consistency
            )
        if block is None and decision.position in ("", START) and not probe(client, keys).has_data:
            raise ServiceUnavailable(no_data(keys))  # a wrong network is not "not-a-member"
        DECISIONS.labels(decision.reason).inc()
        return json_response(decision)

    def access_inline(request: Request) -> Response | None:
        """A bounded live check answered on the event loop when the copy is recent enough."""
        q = request.query_params
        if not lazy.made or "at_block" in q or q.get("consistency", BOUNDED) != BOUNDED:
            return None
        checker = lazy.get()[0]
        if checker.cache.age() > checker.max_age or checker.cache.position == START:
            return None  # a position read, or the no-data probe: Redis, in the thread pool
        return access(request)

    def nodes(request: Request) -> Response:
        after = request.query_params.get("after", "")
        limit = _int(request, "limit", NODES_PAGE[0], 1, NODES_PAGE[1])
        return json_response(lazy.get()[1].nodes(after, limit, _filter(request)))

    def node(request: Request) -> Response:
        return json_response(lazy.get()[1].node(valid_node(request.path_params["node"])))

    def diagnosis(request: Request) -> Response:
        node_id = valid_node(request.path_params["node"])
        now = fleet.status()
        if not now.has_data:
            raise ServiceUnavailable(no_data(keys))
        facts = node_facts(
            client,
            keys,
            node_id,
            now,
            reconcile_interval=limits.reconcile_interval,
            topology=topology,
            hubs=hubs,
            endpoint_template=endpoint_template,
            expiry_grace=limits.expiry_grace,
        )
        return json_response(diagnose(facts))

    def hosts(request: Request) -> Response:
        return json_response(HostList(hosts=snapshot.hosts()))

    def issues(request: Request) -> Response:
        return json_response(IssueList(issues=snapshot.issues()))

    def events(request: Request) -> Response:
        after = request.query_params.get("after", "0-0")
        if after == "0":
            after = "0-0"
        if not _STREAM_ID.fullmatch(after):
            raise InvalidArgument("after", "must be a stream id such as 1700000000000-0")
        limit = _int(request, "limit", EVENTS_PAGE[0], 1, EVENTS_PAGE[1])
        return json_response(Reads.events_of(client, keys, after, limit))

    def status(request: Request) -> Response:
        return json_response(fleet.status())

    def topology_page(request: Request) -> Response:
        return json_response(fleet.topology())

    def history(request: Request) -> Response:
        node_id = valid_node(request.path_params["node"])
        limit = _int(request, "limit", HISTORY_ROWS[0], 1, HISTORY_ROWS[1])
        return json_response(fleet.history(node_id, limit))

    def dashboard_file(request: Request) -> Response:
        name = request.path_params.get("name", assets.INDEX)
        if name not in files:
            return error(404, "no such dashboard file")
        body, media_type = files[name]
        return Response(body, media_type=media_type, headers=assets.HEADERS)

    def healthz(request: Request) -> Response:
        if health.REDIS.down() or not lazy.made:  # else the follower keeps the verdict fresh
            try:
                client.ping()
                lazy.get()
                health.REDIS.ok()
            except redis.RedisError as exc:
                health.REDIS.failed(exc)
        verdict = health.verdict((health.REDIS,))
        if verdict.healthy:
            return json_response(Health("ok"))
        return json_response(Health("failing", verdict.reason), 503)

    def healthz_inline(request: Request) -> Response | None:
        """/healthz on the event loop while the follower keeps the verdict fresh."""
        if health.REDIS.down() or not lazy.made:
            return None
        return healthz(request)

    def readyz(request: Request) -> Response:
        try:
            now = snapshot.fleet([], cap=max(limits.max_lag + 1, 1), limits=limits)
        except redis.RedisError as exc:
            why = f"Redis unreachable: {type(exc).__name__}"
            return json_response(Ready(ready=False, redis=False, max_lag=max_lag, detail=why), 503)
        body = Ready(
            ready=not now.problems,
            redis=True,
            max_lag=limits.max_lag,
            stages=now.stages,
            detail="; ".join(p.message for p in now.problems),
            problems=now.problems,
            health=now.health,
        )
        return json_response(body, 503 if now.problems else 200)

    def metrics_page(request: Request) -> Response:
        page, content_type = metrics.render()
        return Response(page + generate_latest(fleet_metrics), media_type=content_type)

    def openapi_json(request: Request) -> Response:
        return Response(document, media_type=_JSON)

    endpoints: dict[str, Callable[[Request], Response]] = {
        "/v1/access": access,
        "/v1/nodes": nodes,
        "/v1/nodes/{node}": node,
        "/v1/hosts": hosts,
        "/v1/issues": issues,
        "/v1/events": events,
        "/v1/status": status,
        "/v1/topology": topology_page,
        "/v1/nodes/{node}/history": history,
        "/v1/nodes/{node}/diagnosis": diagnosis,
        "/": dashboard_file,
        ASSET_PREFIX + "{name}": dashboard_file,
        "/healthz": healthz,
        "/readyz": readyz,
        "/metrics": metrics_page,
        "/openapi.json": openapi_json,
    }
    inline: dict[str, Callable[[Request], Response | None]] = {
        "/v1/access": access_inline,
        "/healthz": healthz_inline,
    }
    routes = [
        Route(path, _route(path, fn, inline.get(path)), methods=["GET"])
        for path, fn in endpoints.items()
    ]

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        lazy.start()
        try:
            yield
        finally:
            lazy.close()

    async def http_error(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        return error(status, exc.detail if isinstance(exc, HTTPException) else "internal error")

    middleware = [Middleware(BearerAuth, token=token)] if token else []
    return Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={HTTPException: http_error},
    )


def _live(lazy: _Lazy) -> int:
    """Live members now (the registry as the access checker holds it)."""
    checker, _ = lazy.get()
    with checker.cache.fresh() as view:
        return sum(1 for status in view.state.status.values() if status.live)


def _expiring(lazy: _Lazy, limits: Limits) -> int:
    """Live members whose pass expires within ``WGCHAIN_EXPIRY_WARNING`` now."""
    checker, _ = lazy.get()
    with checker.cache.fresh() as view:
        now = time.time()
        return len(expiring(view.state, now, limits.expiry_warning, limits.expiry_grace))


__all__ = ["create_app"]
