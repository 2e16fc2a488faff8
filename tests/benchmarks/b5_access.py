"""B5 access checks: the in-process checker and the HTTP API, on a real folded registry.

A fresh ``redis-server`` gets a synthetic events stream (``synthetic.py``) that the
real registry :class:`Stage` folds. Then:

- in process: :class:`AccessChecker` ``check_key`` with a warm cache (its freshness
  check included: one MULTI per check that reads the stage's position), against one
  Redis round trip per check (``HGET`` of the node's token record in the registry
  state hash, decoded: a lower bound for any check that asks Redis every time);
- HTTP: ``/v1/access`` served by ``consumers.api`` under uvicorn in a child process,
  driven from this process over loopback at a fixed request rate (one keep-alive
  connection, each request sent at its scheduled time or at once when late),
  against ``/healthz`` of the same server at the same rate (the HTTP floor),
  interleaved request by request so both see the same conditions.
"""

from __future__ import annotations

import http.client
import random
import time
import urllib.parse
from typing import Any

import msgspec
import redis
import synthetic
from common import Background, Result, Unavailable, percentiles, timer

from shared.devnet.proc import free_port, wait_for
from shared.devnet.redis_server import RedisServer


def run(nodes: int, checks: int, rate: float, requests_: int) -> list[Result]:
    """In-process checks and HTTP latency on a registry of ``nodes`` nodes."""
    try:
        from consumers.access.checker import AccessChecker
        from consumers.access.decide import decide_key
        from consumers.api.app import create_app  # noqa: F401 (the child needs it)
    except ImportError as exc:
        raise Unavailable(f"consumers.access / consumers.api: {exc}") from None
    from consumers.registry.fold import FOLD, TOKEN_FIELD, TokenRecord
    from consumers.stage import Stage

    events = nodes * 2
    params = {
        "nodes": nodes,
        "events": events,
        "checks": checks,
        "rate_per_s": rate,
        "requests": requests_,
    }
    keys = synthetic.keys()
    rng = random.Random(5)
    with RedisServer() as server:
        client = redis.Redis.from_url(server.url)
        synthetic.append(client, events, nodes)
        stage = Stage(client, keys, FOLD)
        while stage.step(block_ms=None):
            pass
        live = list(stage.state.live().items())
        queries = [
            (node, status.public_key, status.token_id)
            for node, status in (rng.choice(live) for _ in range(checks))
        ]

        # in process, warm cache
        checker = AccessChecker(client, keys, follow=True)
        checker.check_key(*queries[0][:2])
        with timer() as t_checker:
            for node, key, _ in queries:
                checker.check_key(node, key)
        view = checker.cache.view
        with timer() as t_decide:
            for node, key, _ in queries:
                decide_key(view, node, key)
        granted = sum(checker.check_key(n, k).granted for n, k, _ in queries[:100])
        assert granted == 100, granted
        checker.close()

        # baseline: one HGET per check
        decoder = msgspec.json.Decoder(TokenRecord)
        state_key = keys.state("registry")
        opened = 0
        with timer() as t_hget:
            for node, _, token in queries:
                raw: Any = client.hget(state_key, f"{TOKEN_FIELD}{token}")
                record = decoder.decode(raw)
                opened += record.active and record.node_id == node
        assert opened == len(queries), opened

        # HTTP at a fixed rate, from this process to the API's
        port = free_port()
        api = Background(
            "api",
            {
                "redis_url": server.url,
                "chain_id": keys.chain_id,
                "contract": keys.contract,
                "port": port,
            },
        )
        try:
            wait_for(lambda: _get(port, "/healthz")[0] == 200, timeout=30, what="the API")
            access_paths = [
                "/v1/access?" + urllib.parse.urlencode({"node": n, "key": k})
                for n, k, _ in queries[:requests_]
            ]
            paths = [
                p
                for pair in zip(["/healthz"] * len(access_paths), access_paths, strict=True)
                for p in pair
            ]
            latencies, achieved = _fixed_rate(port, paths, 2 * rate)
            floor, access = latencies[0::2], latencies[1::2]
        finally:
            api.kill(timeout=10)  # uvicorn re-raises SIGTERM after its graceful shutdown
        client.close()

    http_access = percentiles(access)
    http_floor = percentiles(floor)
    return [
        Result(
            id="B5.inprocess",
            name="B5 access checks: in process, warm cache",
            value=checks / t_checker[0],
            unit="checks/s",
            baseline="one Redis HGET of the token record per check",
            baseline_value=checks / t_hget[0],
            better="higher",
            ratio_meaning="faster",
            params=params,
            extra={"decide_only_checks_per_s": checks / t_decide[0]},
        ),
        Result(
            id="B5.http",
            name="B5 access checks: HTTP /v1/access",
            value=http_access[99],
            unit="ms (p99)",
            baseline="/healthz of the same server at the same rate (HTTP floor)",
            baseline_value=http_floor[99],
            better="lower",
            ratio_meaning="faster",
            params=params,
            extra={
                "p50_ms": http_access[50],
                "p95_ms": http_access[95],
                "p99_ms": http_access[99],
                "floor_p50_ms": http_floor[50],
                "achieved_rate_per_s": achieved / 2,
            },
        ),
    ]


def _get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _fixed_rate(port: int, paths: list[str], rate: float) -> tuple[list[float], float]:
    """Latencies (ms) of GET ``paths`` sent at ``rate`` per second; and the rate achieved."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    latencies = []
    start = time.perf_counter()
    try:
        for i, path in enumerate(paths):
            due = start + i / rate
            now = time.perf_counter()
            if due > now:
                time.sleep(due - now)
            sent = time.perf_counter()
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read()
            latencies.append((time.perf_counter() - sent) * 1000)
            if resp.status != 200:
                raise RuntimeError(f"{path} answered {resp.status}: {body[:200]!r}")
    finally:
        conn.close()
    return latencies, len(paths) / (time.perf_counter() - start)


def api_child(params: dict[str, Any]) -> dict[str, Any]:
    """The HTTP API under uvicorn on 127.0.0.1:``port`` until SIGTERM."""
    import uvicorn

    from consumers.api.app import create_app
    from shared.keys import Keys

    client = redis.Redis.from_url(params["redis_url"])
    app = create_app(client, Keys(params["chain_id"], params["contract"]))
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=params["port"],
        log_level="warning",
        access_log=False,
        log_config=None,
    )
    uvicorn.Server(config).run()  # until SIGTERM (which it re-raises after shutting down)
    return {}
