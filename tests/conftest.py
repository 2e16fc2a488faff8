"""Shared fixtures: real services started on free ports, stopped by pid.

A missing service skips the test locally and fails it when ``CI=true``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import redis

from shared.devnet.redis_server import RedisServer
from shared.errors import ServiceUnavailable

IN_CI = os.environ.get("CI", "").lower() == "true"


def require(condition: bool, reason: str) -> None:
    """Skip (locally) or fail (in CI) when a real part is missing."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A fresh redis-server per test (it may be killed and restarted by the test)."""
    try:
        server = RedisServer().start()
    except ServiceUnavailable as exc:
        require(False, str(exc))
        raise
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    try:
        yield client
    finally:
        client.close()
