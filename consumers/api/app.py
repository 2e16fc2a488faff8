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
the registry from Redis) is built on first use (``consumers/api/lazy.py``), and until
then every read answers 503. ``/healthz`` is this process's health (Redis answers it), ``/readyz`` the
pipeline's (every problem ``wgchain status`` names makes it 503), and ``/metrics``
also carries the fleet's gauges (``consumers/status/exporter.py``).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from importlib.metadata import version
from typing import Final

import msgspec
import redis
from prometheus_client import CollectorRegistry, Counter, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from consumers.access.checker import (
    BOUNDED,
    InvalidArgument,
    valid_address,
    valid_consistency,
    valid_node,
)
from consumers.api.fleet import FleetReads
from consumers.api.lazy import LazyReads
from consumers.api.reads import Reads
from consumers.api.routing import (
    ASSET_PREFIX,
    JSON,
    BearerAuth,
    bool_param,
    error,
    int_param,
    json_response,
    route,
)
from consumers.api.schemas import Health, HostList, IssueList, Ready, openapi
from consumers.dashboard import assets
from consumers.nodes.diagnose import diagnose
from consumers.nodes.gather import node_facts
from consumers.nodes.listing import Filter
from consumers.status.expiring import with_expiring
from consumers.status.exporter import FleetCollector
from consumers.status.health import Limits
from consumers.status.probe import no_data, probe
from consumers.status.snapshot import Snapshot
from shared import health, metrics
from shared.errors import ServiceUnavailable
from shared.keys import Keys
from shared.redis_log import START
from shared.settings import DEFAULTS

#: Default and largest page of ``/v1/nodes``.
NODES_PAGE: Final = (1000, 10_000)
#: Longest ``search`` of ``/v1/nodes`` (characters).
SEARCH_CHARS: Final = 100
#: Default and largest page of ``/v1/events``.
EVENTS_PAGE: Final = (100, 1000)
#: Default and largest number of rows of ``/v1/nodes/{node}/history``.
HISTORY_ROWS: Final = (500, 10_000)
_STREAM_ID: Final = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")

DECISIONS: Final = Counter("wgchain_access_decisions", "Access checks answered", ["reason"])


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
        live=bool_param(request, "live"),
        host_offline=bool(bool_param(request, "host_offline")),
        owner=owner,
        search=search or None,
    )


def create_app(
    client: redis.Redis,
    keys: Keys,
    *,
    token: str = "",
    max_lag: int = DEFAULTS.max_lag,
    limits: Limits | None = None,
    rpc_urls: Sequence[str] = (),
    topology: str = DEFAULTS.topology,
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
    lazy = LazyReads(client, keys, snapshot, limits)
    fleet_metrics = CollectorRegistry(auto_describe=False)
    fleet_metrics.register(
        FleetCollector(
            snapshot,
            limits,
            lazy_live=lazy.live_count,
            lazy_expiring=lazy.expiring_count,
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
        limit = int_param(request, "limit", NODES_PAGE[0], 1, NODES_PAGE[1])
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
            limits=limits,
            topology=topology,
            hubs=hubs,
            endpoint_template=endpoint_template,
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
        limit = int_param(request, "limit", EVENTS_PAGE[0], 1, EVENTS_PAGE[1])
        return json_response(Reads.events_of(client, keys, after, limit))

    def status(request: Request) -> Response:
        return json_response(fleet.status())

    def topology_page(request: Request) -> Response:
        return json_response(fleet.topology())

    def history(request: Request) -> Response:
        node_id = valid_node(request.path_params["node"])
        limit = int_param(request, "limit", HISTORY_ROWS[0], 1, HISTORY_ROWS[1])
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
        return Response(document, media_type=JSON)

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
        Route(path, route(path, fn, inline.get(path)), methods=["GET"])
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


__all__ = ["create_app"]
