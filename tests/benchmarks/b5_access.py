"""B5 access checks: the in-process checker and the HTTP API, on a real folded registry.

A fresh ``redis-server`` gets a synthetic events stream (``synthetic.py``) that the
real registry :class:`Stage` folds. Then:

- in process, bounded (``B5.inprocess``): :class:`AccessChecker` ``check_key`` with
  a warm cache and its follower running, answered from the copy (no round trip),
  against one Redis round trip per check (``HGET`` of the node's token record in the
  registry state hash, decoded: a lower bound for any check that asks Redis every
  time);
- freshness (``B5.freshness``): the real registry stage runs in a child process and
  notes ``time.monotonic()`` (one clock for every process) as each of its commits
  returns; this process appends a revoke of a live node and checks that node,
  bounded, flat out (between random checks of other nodes: the load) until it is
  denied. The time from the commit to the first denied answer, against the same with
  strict checks (one shared position read per check);
- strict (``B5.strict``): ``b5-callers`` threads checking at once, strict, against
  the same threads making one ``HGET`` per check; the position reads per check are
  an extra figure (they are shared: far fewer than one per check);
- HTTP (``B5.http``): ``/v1/access`` (its default: bounded) served by
  ``consumers.api`` under uvicorn in a child process, driven from this process over
  loopback at a fixed request rate (one keep-alive connection, each request sent at
  its scheduled time or at once when late), against ``/healthz`` of the same server at
  the same rate (the HTTP floor), interleaved request by request so both see the same
  conditions.
"""

from __future__ import annotations

import http.client
import random
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import Any, Final

import msgspec
import redis
import synthetic
from common import Background, Result, Unavailable, percentiles, timer

from shared.devnet.proc import free_port, wait_for
from shared.devnet.redis_server import RedisServer

#: Targets of issue 11.
TARGET_INPROCESS: Final = 200_000
TARGET_FRESHNESS_MS: Final = 50.0
TARGET_STRICT: Final = 20_000
TARGET_HTTP_P99_MS: Final = 2.0
TARGET_HTTP_RATIO: Final = 1.3
#: Seconds a revoke may take to show before the run gives up on it.
REVOKE_TIMEOUT: Final = 10.0


def run(
    nodes: int, checks: int, callers: int, revokes: int, rate: float, requests_: int
) -> list[Result]:
    """In-process checks, freshness, strict checks and HTTP latency on ``nodes`` nodes."""
    try:
        from consumers.access.checker import BOUNDED, STRICT, AccessChecker
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
        "callers": callers,
        "revokes": revokes,
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
        live_keys = {node: status.public_key for node, status in live}

        # in process, bounded, warm cache, follower running
        checker = AccessChecker(client, keys, follow=True, consistency=BOUNDED)
        checker.check_key(*queries[0][:2])
        reads_before = checker.cache.reads
        cpu = time.process_time()
        with timer() as t_checker:
            for node, key, _ in queries:
                checker.check_key(node, key)
        cpu_checker = time.process_time() - cpu
        bounded_reads = checker.cache.reads - reads_before
        view = checker.cache.view
        with timer() as t_decide:
            for node, key, _ in queries:
                decide_key(view, node, key)
        granted = sum(checker.check_key(n, k).granted for n, k, _ in queries[:100])
        assert granted == 100, granted
        one_strict = queries[: max(1, checks // 20)]
        with timer() as t_one_strict:
            for node, key, _ in one_strict:
                checker.check_key(node, key, consistency=STRICT)
        checker.close()

        # baseline: one HGET per check
        decoder = msgspec.json.Decoder(TokenRecord)
        state_key = keys.state("registry")

        def hget(part: list[tuple[str, str, int]]) -> None:
            opened = 0
            for node, _, token in part:
                raw: Any = client.hget(state_key, f"{TOKEN_FIELD}{token}")
                record = decoder.decode(raw)
                opened += record.active and record.node_id == node
            assert opened == len(part), opened

        hget_queries = queries[: max(1, checks // 10)]
        with timer() as t_hget:
            hget(hget_queries)

        # strict, concurrent callers (each check waits for a position read that began after
        # it was called; the reads are shared), against as many threads making one HGET each
        strict_queries = queries[: max(callers, checks // 10)]
        checker = AccessChecker(client, keys, follow=True, consistency=STRICT)
        reads_before = checker.cache.reads
        cpu = time.process_time()
        t_strict = _threads(
            callers, strict_queries, lambda part: [checker.check_key(n, k) for n, k, _ in part]
        )
        strict_reads = checker.cache.reads - reads_before
        cpu_strict = time.process_time() - cpu
        checker.close()
        t_hget_threads = _threads(callers, strict_queries, hget)

        # freshness: the registry stage in its own process, revokes appended here
        stage_proc = Background(
            "registry",
            {"redis_url": server.url, "chain_id": keys.chain_id, "contract": keys.contract},
        )
        try:
            victims = rng.sample(sorted(live_keys), min(len(live_keys) - 1, revokes * 2))
            others = [(n, k) for n, k, _ in queries[:1000]]
            checker = AccessChecker(client, keys, follow=True, consistency=BOUNDED)
            bounded_wait = _revoke_times(
                client, keys, checker, victims[:revokes], live_keys, others, rng
            )
            checker.close()
            checker = AccessChecker(client, keys, follow=True, consistency=STRICT)
            strict_wait = _revoke_times(
                client, keys, checker, victims[revokes:], live_keys, others, rng
            )
            checker.close()
        finally:
            commits = stage_proc.finish()["commits"]
        bounded_ms = _since_commit(bounded_wait, commits)
        strict_ms = _since_commit(strict_wait, commits)

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
            live_now = [(n, k) for n, k, _ in queries if n not in set(victims)]
            access_paths = [
                "/v1/access?" + urllib.parse.urlencode({"node": n, "key": k})
                for n, k in (live_now[i % len(live_now)] for i in range(requests_))
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
    inprocess = checks / t_checker[0]
    fresh = percentiles(bounded_ms)
    fresh_strict = percentiles(strict_ms)
    strict = len(strict_queries) / t_strict
    http_ratio = http_access[99] / http_floor[99] if http_floor[99] else 0.0
    return [
        Result(
            id="B5.inprocess",
            name="B5 access checks: in process, bounded, warm cache",
            value=inprocess,
            unit="checks/s",
            baseline="one Redis HGET of the token record per check",
            baseline_value=len(hget_queries) / t_hget[0],
            better="higher",
            ratio_meaning="faster",
            params=params,
            extra={
                "decide_only_checks_per_s": checks / t_decide[0],
                "strict_one_caller_checks_per_s": len(one_strict) / t_one_strict[0],
                "position_reads_during_run": bounded_reads,
                # this process's CPU time: what the checks cost, whatever else the machine runs
                "checks_per_cpu_s": checks / cpu_checker if cpu_checker else 0.0,
            },
            target=f">= {TARGET_INPROCESS:,} checks/s",
            met=inprocess >= TARGET_INPROCESS,
        ),
        Result(
            id="B5.freshness",
            name="B5 access checks: registry commit of a revoke -> first denied bounded answer",
            value=fresh[99],
            unit="ms (p99)",
            baseline="the same with strict checks",
            baseline_value=fresh_strict[99],
            better="lower",
            ratio_meaning="faster",
            params=params,
            extra={
                "p50_ms": fresh[50],
                "p95_ms": fresh[95],
                "max_ms": max(bounded_ms),
                "strict_p50_ms": fresh_strict[50],
                "revokes_timed": len(bounded_ms),
            },
            target=f"p99 <= {TARGET_FRESHNESS_MS:g} ms",
            met=fresh[99] <= TARGET_FRESHNESS_MS,
        ),
        Result(
            id="B5.strict",
            name=f"B5 access checks: strict, {callers} concurrent callers",
            value=strict,
            unit="checks/s",
            baseline=f"{callers} threads, one Redis HGET per check",
            baseline_value=len(strict_queries) / t_hget_threads,
            better="higher",
            ratio_meaning="faster",
            params=params,
            extra={
                "position_reads_per_check": strict_reads / len(strict_queries),
                "checks_per_cpu_s": len(strict_queries) / cpu_strict if cpu_strict else 0.0,
            },
            target=f">= {TARGET_STRICT:,} checks/s",
            met=strict >= TARGET_STRICT,
        ),
        Result(
            id="B5.http",
            name="B5 access checks: HTTP /v1/access (bounded)",
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
            target=f"p99 <= {TARGET_HTTP_P99_MS:g} ms and <= {TARGET_HTTP_RATIO:g}x /healthz",
            met=http_access[99] <= TARGET_HTTP_P99_MS and http_ratio <= TARGET_HTTP_RATIO,
        ),
    ]


def _threads(callers: int, queries: list[Any], work: Callable[[list[Any]], Any]) -> float:
    """Seconds ``callers`` threads take to run ``work`` over their share of ``queries``."""
    parts = [queries[i::callers] for i in range(callers)]
    ready = threading.Barrier(callers + 1)

    def body(part: list[Any]) -> None:
        ready.wait()
        work(part)

    threads = [threading.Thread(target=body, args=(part,)) for part in parts]
    for thread in threads:
        thread.start()
    ready.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    return time.perf_counter() - start


def _revoke_times(
    client: redis.Redis,
    keys: Any,
    checker: Any,
    victims: list[str],
    live_keys: dict[str, str],
    others: list[tuple[str, str]],
    rng: random.Random,
) -> list[tuple[str, float]]:
    """Revoke each victim; (its ``events`` id, ``time.monotonic()`` of the first denial)."""
    from producers.listener.store import Cursor, ListenerStore
    from shared.events import LogEntry, NodeAccessRevoked

    store = ListenerStore(client, keys)
    out: list[tuple[str, float]] = []
    for node in victims:
        key = live_keys[node]
        assert checker.check_key(node, key).granted, node
        until = time.monotonic() + rng.uniform(0.0, 0.01)  # the load between revokes
        while time.monotonic() < until:
            for other, other_key in rng.sample(others, 8):
                checker.check_key(other, other_key)
        cursor = store.load_cursor()
        assert cursor is not None
        token = checker.check_key(node, key).token_id
        block = cursor.block + 1
        entry = LogEntry(
            chain_id=keys.chain_id,
            contract=keys.contract,
            block_number=block,
            block_hash=f"0x{block:064x}",
            tx_hash=f"0x{block:064x}",
            log_index=0,
            block_timestamp=1_800_000_000 + block,
            event=NodeAccessRevoked(token or 0, node),
        ).with_digest(cursor.digest)
        entry_id = store.commit(cursor, Cursor(block, entry.block_hash, entry.digest), [entry])
        assert entry_id is not None
        deadline = time.monotonic() + REVOKE_TIMEOUT
        while True:
            for other, other_key in rng.sample(others, 8):
                checker.check_key(other, other_key)
            if not checker.check_key(node, key).granted:
                out.append((entry_id, time.monotonic()))
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the revoke of {node} was not answered in {REVOKE_TIMEOUT} s")
    return out


def _since_commit(denied: list[tuple[str, float]], commits: list[list[Any]]) -> list[float]:
    """Milliseconds from the stage's commit of each revoke to its first denied answer."""
    from consumers.access.cache import id_key

    out = []
    for entry_id, at in denied:
        committed = next(t for pos, t in commits if id_key(pos) >= id_key(entry_id))
        out.append((at - committed) * 1000)
    return out


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


def registry_child(params: dict[str, Any]) -> dict[str, Any]:
    """The registry stage until SIGTERM; every commit's position and ``time.monotonic()``
    just after it returned."""
    from consumers.registry.fold import FOLD
    from consumers.stage import Stage
    from shared.cmdline import stop_event
    from shared.keys import Keys

    stop = stop_event()
    client = redis.Redis.from_url(params["redis_url"])
    stage = Stage(client, Keys(params["chain_id"], params["contract"]), FOLD)
    returned = [0.0]
    commit = stage.store.commit

    def timed(*args: Any, **kwargs: Any) -> Any:
        result = commit(*args, **kwargs)
        returned[0] = time.monotonic()
        return result

    stage.store.commit = timed  # type: ignore[method-assign]
    commits: list[tuple[str, float]] = []
    while not stop.is_set():
        if stage.step(block_ms=100):
            commits.append((stage.position, returned[0]))
    return {"commits": commits}
