"""The HTTP plumbing around the API's endpoints (:mod:`consumers.api.app`): JSON answers and
errors, the bearer token, query parameters, and the wrapper that turns an endpoint's errors
into JSON answers and counts its requests and latency."""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable
from typing import Any, Final

import msgspec
import redis
from prometheus_client import Counter, Histogram
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from consumers.access.checker import InvalidArgument
from consumers.api.reads import NotFound
from consumers.api.schemas import ErrorBody
from shared.errors import ServiceUnavailable, WgchainError

#: Paths that answer without the bearer token (health checks).
OPEN_PATHS: Final = frozenset({"/healthz", "/readyz", "/"})
#: Path prefix of the dashboard's files (no data in them: open, like ``/``).
ASSET_PREFIX: Final = "/ui/"
#: Media type of every answer but ``/metrics`` and the dashboard's files.
JSON: Final = "application/json"

REQUESTS: Final = Counter("wgchain_api_requests", "HTTP API requests answered", ["route", "code"])
LATENCY: Final = Histogram("wgchain_api_request_seconds", "HTTP API request latency", ["route"])


def json_response(body: msgspec.Struct, status: int = 200) -> Response:
    return Response(msgspec.json.encode(body), status_code=status, media_type=JSON)


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


def int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    """Query parameter ``name``: an integer from ``low`` to ``high`` (``default`` when absent)."""
    text = request.query_params.get(name)
    if text is None:
        return default
    if not text.isdigit() or not low <= int(text) <= high:
        raise InvalidArgument(name, f"must be an integer from {low} to {high}")
    return int(text)


def bool_param(request: Request, name: str) -> bool | None:
    """Query parameter ``name``: true or false (None when absent)."""
    text = request.query_params.get(name)
    if text is None:
        return None
    if text.lower() not in {"true", "false", "1", "0"}:
        raise InvalidArgument(name, "must be true or false")
    return text.lower() in {"true", "1"}


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


def route(
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


__all__ = [
    "ASSET_PREFIX",
    "JSON",
    "OPEN_PATHS",
    "BearerAuth",
    "bool_param",
    "error",
    "int_param",
    "json_response",
    "route",
]
