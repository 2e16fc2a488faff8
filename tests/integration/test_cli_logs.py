"""Retry log lines name what failed in a few words: never an object repr, never a whole
connection-pool dump (a real Redis that went away, an RPC port nobody listens on)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
import redis
import requests
from tenacity import stop_after_attempt

from shared import health
from shared.chain.rpc import RpcClient
from shared.devnet.proc import free_port
from shared.devnet.redis_server import RedisServer
from shared.errors import ServiceUnavailable
from shared.logs import BRIEF_CHARS, brief, log
from shared.redis_log import redis_retry

pytestmark = pytest.mark.integration

REPR = re.compile(r"object at 0x[0-9a-f]+|ConnectionPool\(|Max retries exceeded")


@pytest.fixture
def lines() -> Iterator[list[str]]:
    captured: list[str] = []
    sink = log.add(
        lambda message: captured.append(str(message).rstrip()), level="WARNING", format="{message}"
    )
    try:
        yield captured
    finally:
        log.remove(sink)


def test_a_redis_outage_is_one_short_line_not_a_repr(lines: list[str]) -> None:
    """Retried calls report to ``health.REDIS``: one line when Redis stops answering (not one
    per attempt), with the error in a few words, never a callee's repr."""
    health.REDIS.ok()
    lines.clear()
    server = RedisServer().start()
    client = redis.Redis.from_url(server.url)
    script = client.register_script("return 1")
    server.cleanup()  # Redis goes away
    policy = redis_retry.copy(stop=stop_after_attempt(2))
    try:
        for call, args in ((script, ()), (client.get, ("k",))):
            with pytest.raises(redis.ConnectionError):
                policy(call, *args)
    finally:
        health.REDIS.ok()
    assert lines[0].startswith("Redis unreachable (ConnectionError: Error 111 connecting to")
    assert lines[0].endswith("; retrying until it answers")
    assert lines[1].startswith("Redis reachable again after")
    assert len(lines) == 2  # two calls, four failed attempts: one line when it started
    assert not any(REPR.search(line) for line in lines)


def test_an_rpc_outage_is_short(lines: list[str]) -> None:
    health.RPC.ok()
    lines.clear()
    rpc = RpcClient([f"http://127.0.0.1:{free_port()}/secret-api-key"], backoff=0.01)
    rpc._retry = rpc._retry.copy(stop=stop_after_attempt(3))  # no clock: exactly two retries
    try:
        with pytest.raises(ServiceUnavailable):
            rpc.chain_id()
    finally:
        health.RPC.ok()
    assert len(lines) == 2, lines
    assert re.fullmatch(
        r"RPC unreachable \(http://127\.0\.0\.1:\d+: ConnectionError\); retrying until it answers",
        lines[0],
    ), lines[0]
    assert lines[1].startswith("RPC reachable again after")
    assert not any("secret-api-key" in line for line in lines)


def test_brief_reads_a_requests_failure_in_one_short_line() -> None:
    with pytest.raises(requests.ConnectionError) as info:
        requests.post(f"http://127.0.0.1:{free_port()}", timeout=5)
    assert "HTTPConnectionPool" in str(info.value)  # what it would have logged
    assert re.fullmatch(r"ConnectionError: 127\.0\.0\.1:\d+: Connection refused", brief(info.value))
    assert (
        brief(ValueError("x <redis.commands.core.Script object at 0x7f00ab> y"))
        == "ValueError: x Script y"
    )
    assert brief(KeyError(b"v")) == "KeyError: b'v'"
    assert len(brief(RuntimeError("z" * 5000))) <= len("RuntimeError: ") + BRIEF_CHARS
