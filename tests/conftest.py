"""Shared fixtures: real services started on free ports, stopped by pid.

A missing service skips the test locally and fails it when ``CI=true``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import redis

from shared.contract.client import AccessNFT
from shared.devnet.anvil import ACCOUNTS, Anvil
from shared.devnet.netns import Lab, available
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


@pytest.fixture
def anvil() -> Iterator[Anvil]:
    """A fresh anvil chain per test (chain id 31337, one block per transaction)."""
    try:
        chain = Anvil().start()
    except ServiceUnavailable as exc:
        require(False, str(exc))
        raise
    try:
        yield chain
    finally:
        chain.cleanup()


@pytest.fixture
def nft(anvil: Anvil) -> AccessNFT:
    """DstackAccessNFT deployed on ``anvil``; signer and contract owner = ``ACCOUNTS[0]``."""
    return AccessNFT.deploy(anvil.url, ACCOUNTS[0][1])


@pytest.fixture
def lab() -> Iterator[Lab]:
    """A network-namespace lab (switch + hosts); hosts start wireguard-go on request."""
    ok, reason = available()
    require(ok, f"network-namespace lab unavailable: {reason}")
    with Lab() as the_lab:
        yield the_lab
