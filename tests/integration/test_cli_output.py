"""Commands against a real Redis (and anvil): the chain id comes from the RPC node, --json
everywhere data is printed, and a full disk or a closed pipe never ends in a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from shared.contract.client import AccessNFT
from shared.devnet.anvil import Anvil
from shared.devnet.proc import free_port, wait_for
from shared.devnet.redis_server import RedisServer
from shared.events import GENESIS_DIGEST, LogEntry, NodeAccessGranted, to_fields
from shared.keys import Keys

pytestmark = pytest.mark.integration

WGCHAIN = str(Path(sys.executable).parent / "wgchain")
CONTRACT = "0x" + "34" * 20
KEYS = Keys(31337, CONTRACT)
FULL = Path("/dev/full")


def env(server: RedisServer, **extra: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("WGCHAIN_")}
    return {
        **clean,
        "WGCHAIN_REDIS_URL": server.url,
        "WGCHAIN_CONTRACT": CONTRACT,
        "WGCHAIN_CHAIN_ID": "31337",
        "WGCHAIN_RPC_URL": f"http://127.0.0.1:{free_port()}",  # nobody answers
        **extra,
    }


def run(
    argv: list[str], environ: dict[str, str], **kwargs: object
) -> subprocess.CompletedProcess[str]:
    kwargs.setdefault("stdout", subprocess.PIPE)
    return subprocess.run(
        [WGCHAIN, *argv], env=environ, stderr=subprocess.PIPE, text=True, timeout=120,
        check=False, **kwargs,  # type: ignore[call-overload]
    )  # fmt: skip


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def one_event(client: redis.Redis) -> None:
    event = NodeAccessGranted(1, "node-a", "0x" + "ab" * 20, "A" * 43 + "=")
    entry = LogEntry(31337, CONTRACT, 1, "0x" + "11" * 32, "0x01", 0, 1_700_000_000, event)
    client.xadd(KEYS.events, to_fields(entry.with_digest(GENESIS_DIGEST)))  # type: ignore[arg-type]


def test_status_asks_the_chain_id_from_the_rpc_node(
    redis_server: RedisServer, anvil: Anvil
) -> None:
    environ = env(redis_server, WGCHAIN_RPC_URL=anvil.url)
    del environ["WGCHAIN_CHAIN_ID"]
    res = run(["status", "--json"], environ)
    assert res.returncode == 0, res.stderr
    assert f"31337:{CONTRACT}" in json.loads(res.stdout)["network"]

    environ["WGCHAIN_RPC_URL"] = f"http://127.0.0.1:{free_port()}"  # and when it does not answer
    res = run(["status"], environ)
    assert res.returncode == 1
    (line,) = lines(res.stderr)
    assert line.startswith("wgchain: cannot ask the RPC node for its chain id (eth_chainId)")
    assert "Connection refused" in line
    assert "set WGCHAIN_CHAIN_ID" in line
    assert "HTTPConnectionPool" not in line


@pytest.mark.skipif(not FULL.exists(), reason="no /dev/full")
@pytest.mark.parametrize(
    "argv",
    [
        ["status", "--json"],
        ["status"],
        ["audit", "export"],
        ["audit", "export", "--format", "csv"],
        ["audit", "export", "--output", str(FULL)],
        ["deadletters", "list", "--json"],
        ["audit", "history", "--node", "node-a", "--json"],
    ],
    ids=" ".join,
)
def test_a_full_disk_is_one_line(
    argv: list[str], redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    one_event(redis_client)
    with FULL.open("w") as full:
        res = run(argv, env(redis_server), stdout=full)
    assert res.returncode == 1
    assert lines(res.stderr) == ["wgchain: cannot write the output: No space left on device"]


def test_a_closed_pipe_ends_quietly(redis_server: RedisServer, redis_client: redis.Redis) -> None:
    for _ in range(3):
        one_event(redis_client)
    read, write = os.pipe()
    os.close(read)  # the reader is gone before anything is written (`| head -0`)
    try:
        res = run(["audit", "export"], env(redis_server), stdout=write)
    finally:
        os.close(write)
    assert res.returncode == 1
    assert res.stderr == ""


def test_deadletters_list_and_show_speak_json(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    redis_client.xadd(KEYS.events, {"junk": b"\xff\n[Peer]"})  # what no stage can read
    registry = subprocess.Popen(
        [WGCHAIN, "registry"], env=env(redis_server), stderr=subprocess.DEVNULL
    )
    try:
        wait_for(
            lambda: redis_client.xlen(KEYS.dead("registry")) == 1, timeout=60, what="a dead letter"
        )
    finally:
        registry.terminate()
        registry.wait(timeout=30)
    res = run(["deadletters", "list", "--json"], env(redis_server))
    assert res.returncode == 0, res.stderr
    document = json.loads(res.stdout)
    assert document["total"] == 1
    (letter,) = document["letters"]
    assert letter["stage"] == "registry"
    assert letter["state"] == "dead"
    assert (
        letter["reason"] == "not a wgchain envelope: no field v, type, data"
    )  # not KeyError(b'v')
    shown = run(["deadletters", "show", letter["id"], "--json"], env(redis_server))
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["fields"] == {"junk": "\\xff\\n[Peer]"}


def test_the_verify_commands_speak_json(
    redis_server: RedisServer, anvil: Anvil, nft: AccessNFT
) -> None:
    keys = Keys(31337, nft.address.lower())
    environ = env(redis_server, WGCHAIN_RPC_URL=anvil.url, WGCHAIN_CONTRACT=nft.address)
    head = anvil.block_number()
    clean = run(["listen", "--verify-range", "0", str(head), "--json"], environ)
    assert clean.returncode == 0, clean.stderr
    report = json.loads(clean.stdout)
    assert (report["ok"], report["on_chain"], report["in_stream"], report["findings"]) == (
        True,
        0,
        0,
        [],
    )

    client = redis.Redis.from_url(redis_server.url)
    event = NodeAccessGranted(1, "node-a", "0x" + "ab" * 20, "A" * 43 + "=")
    forged = LogEntry(31337, keys.contract, head, "0x" + "11" * 32, "0x01", 0, 1_700_000_000, event)
    client.xadd(keys.events, to_fields(forged.with_digest(GENESIS_DIGEST)))  # type: ignore[arg-type]
    client.close()
    found = run(["listen", "--verify-range", "0", str(head), "--json"], environ)
    assert found.returncode == 1
    report = json.loads(found.stdout)
    assert report["ok"] is False
    assert [f["kind"] for f in report["findings"]] == ["extra"]

    audited = run(["audit", "verify", "--json", "--wait", "1"], environ)
    assert audited.returncode == 0, audited.stderr  # no listener cursor yet: nothing to hold
    document = json.loads(audited.stdout)
    assert document["ok"] is True
    assert [c["name"] for c in document["checks"]][-1] == "contract views"
    assert all(set(c) == {"name", "summary", "problems"} for c in document["checks"])
