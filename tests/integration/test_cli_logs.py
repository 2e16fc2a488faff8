"""Retry log lines name what failed in a few words: never an object repr, never a whole
connection-pool dump (a real Redis that went away, an RPC port nobody listens on)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
import redis
import requests
from tenacity import stop_after_attempt

from producers.listener.rpc import RpcClient
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


def test_a_redis_retry_names_the_call_not_its_repr(lines: list[str]) -> None:
    server = RedisServer().start()
    client = redis.Redis.from_url(server.url)
    script = client.register_script("return 1")
    server.cleanup()  # Redis goes away
    policy = redis_retry.copy(stop=stop_after_attempt(2))
    for call, args in ((script, ()), (client.get, ("k",))):
        with pytest.raises(redis.ConnectionError):
            policy(call, *args)
    assert len(lines) == 2
    assert lines[0].startswith(
        "Redis call (Lua script) failed (ConnectionError: Error 111 connecting to"
    )
    assert lines[1].startswith("Redis call (get) failed (ConnectionError: ")
    assert all(re.search(r"; attempt 1, retrying in \d+\.\ds$", line) for line in lines)
    assert not any(REPR.search(line) for line in lines)


def test_an_rpc_retry_is_short(lines: list[str]) -> None:
    rpc = RpcClient([f"http://127.0.0.1:{free_port()}/secret-api-key"], backoff=0.01)
    rpc._retry = rpc._retry.copy(stop=stop_after_attempt(3))  # no clock: exactly two retries
    with pytest.raises(ServiceUnavailable):
        rpc.chain_id()
    assert len(lines) == 2
    for line in lines:
        assert re.fullmatch(
            r"RPC call failed \(http://127\.0\.0\.1:\d+: ConnectionError\); attempt \d+, retrying in \d+\.\ds",
            line,
        ), line
        assert "secret-api-key" not in line


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
