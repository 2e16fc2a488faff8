"""``wgchain audit replay`` after ``wgchain deadletters retry``: a supported operation never
makes the audit fail; replay and verify speak JSON."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
import redis

from consumers.ipam.allocate import IpamFold
from consumers.registry.fold import RegistryFold
from consumers.stage import RETRY_FIELD, Stage
from shared import cli
from shared.devnet.redis_server import RedisServer
from shared.events import GENESIS_DIGEST, LogEntry, NodeAccessGranted, to_fields
from shared.keys import Keys
from shared.settings import Settings

pytestmark = pytest.mark.integration

KEYS = Keys(31337, "0x" + "78" * 20)


def wgchain(
    capsys: pytest.CaptureFixture[str], server: RedisServer, *argv: str
) -> tuple[int, str, str]:
    settings = ["--redis-url", server.url, "--chain-id", "31337", "--contract", KEYS.contract]
    try:
        cli.main([*argv, *settings])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def drain(stage: Stage[Any]) -> None:
    while stage.step(block_ms=None):
        pass


def test_replay_after_a_retry_is_ok(
    capsys: pytest.CaptureFixture[str], redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    event = NodeAccessGranted(
        1, "node-a", "0x" + "ab" * 20, "YWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWE="
    )
    entry = LogEntry(31337, KEYS.contract, 1, "0x" + "11" * 32, "0x01", 0, 1_700_000_000, event)
    redis_client.xadd(KEYS.events, to_fields(entry.with_digest(GENESIS_DIGEST)))  # type: ignore[arg-type]
    redis_client.xadd(KEYS.events, {"junk": b"\xff"})  # dead-lettered by the registry
    registry = Stage(redis_client, KEYS, RegistryFold())
    ipam = Stage(redis_client, KEYS, IpamFold.from_settings(Settings()))
    drain(registry)
    drain(ipam)

    stop = threading.Event()
    thread = threading.Thread(target=registry.run, args=(stop,), daemon=True)
    thread.start()
    try:  # the garbage fails again: a new dead letter, and the request recorded as done
        code, out, _ = wgchain(capsys, redis_server, "deadletters", "retry", "--all")
    finally:
        stop.set()
        thread.join(timeout=10)
    assert code == 1
    assert "failed again" in out
    assert redis_client.hget(KEYS.state("registry"), RETRY_FIELD)  # the bookkeeping field

    code, out, err = wgchain(capsys, redis_server, "audit", "replay", "--wait", "5")
    assert code == 0, out + err
    assert "DIFF" not in out
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["OK"] * 4

    code, out, err = wgchain(capsys, redis_server, "audit", "replay", "--wait", "5", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["ok"] is True
    assert [o["status"] for o in report["outcomes"]] == ["OK"] * 4
    assert report["entries"] == 2

    # a real difference is still one: the audit fails, in JSON too
    redis_client.hset(KEYS.state("registry"), "token:9", b"forged")
    code, out, err = wgchain(capsys, redis_server, "audit", "replay", "--wait", "5", "--json")
    assert code == 1
    report = json.loads(out)
    assert report["ok"] is False
    assert any("token:9" in line for o in report["outcomes"] for line in o["diff"])
    assert err.splitlines()[-1].startswith("wgchain: the replay differs from the live projections")
