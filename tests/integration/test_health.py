"""Health that tells the truth, on real processes, a real Redis and a real anvil.

* Every long-running process starts while Redis is down, waits (one log line, ``/healthz``
  503 with the reason), and does its job once Redis answers, with no restart.
* A chain head below the listener's cursor (anvil reset: a devnet restarted without its
  state) is an error line that repeats, a 503 on the listener's ``/healthz``, a negative
  head distance, and a critical problem in ``status --check``.
* A block replaced at the same height is noticed on the next poll and retracted.
* ``status --check`` exits with the monitoring-plugin codes and names each problem;
  ``check`` and the API say "no data for this network" for a wrong contract.
* A status costs the same number of Redis commands with 10 entries of history as with 20,000.
* ``--timeout`` bounds ``audit verify`` and ``listen --verify-range`` against a silent RPC.
"""

from __future__ import annotations

import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis
import requests
from factories import (
    KEY_A,
    WGCHAIN,
    catch_up,
    clean_env,
    devnet_env,
    devnet_settings,
    wgchain,
)

from producers.listener.lease import Lease
from producers.listener.listener import open_listener
from shared.contract.client import AccessNFT
from shared.devnet.anvil import ACCOUNTS, Anvil
from shared.devnet.proc import free_port, stop_process, wait_for
from shared.devnet.redis_server import RedisServer
from shared.events import Conflict, Retracted, from_fields, to_fields
from shared.keys import Keys

pytestmark = pytest.mark.integration

OTHER_CONTRACT = "0x" + "77" * 20


def healthz(port: int) -> tuple[int, dict[str, Any]]:
    res = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
    return res.status_code, res.json()


class Proc:
    """A ``wgchain`` subprocess logging to a file; stopped by pid."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log_path = log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen([WGCHAIN, *args], env=env, stdout=out, stderr=out)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for p in started:
        stop_process(p.proc)


# --- start-up while Redis is down ----------------------------------------------------------

#: A log line that shows each process at work once Redis answers.
AT_WORK = {
    "registry": "registry started at position",
    "ipam": "ipam started at position",
    "listen": "took the lease",
    "run": "took the lease",
    "worker": "serving queue",
}


@pytest.mark.parametrize("command", sorted(AT_WORK))
def test_a_process_started_while_redis_is_down_waits_for_it(
    command: str, anvil: Anvil, nft: AccessNFT, tmp_path: Path, procs: list[Proc]
) -> None:
    server = RedisServer(port=free_port())  # not started yet
    port = free_port()
    env = devnet_env(
        anvil,
        nft,
        server,
        WGCHAIN_LEASE_TTL="3",
        WGCHAIN_POLL_INTERVAL="0.2",
    )
    proc = Proc([command, "--metrics-port", str(port)], env, tmp_path / f"{command}.log")
    procs.append(proc)
    try:
        wait_for(lambda: "Redis unreachable (" in proc.log(), timeout=30, what="the wait noticed")
        code, body = wait_for(lambda: healthz(port), timeout=30, what="/healthz served")
        assert code == 503
        assert body["status"] == "failing"
        assert body["reason"].startswith("Redis unreachable for")
        time.sleep(3)
        assert proc.proc.poll() is None, proc.log()[-3000:]
        assert proc.log().count("Redis unreachable (") == 1  # one line, not one per attempt
        server.start()
        wait_for(lambda: AT_WORK[command] in proc.log(), timeout=60, what=f"{command} at work")
        wait_for(lambda: healthz(port)[0] == 200, timeout=30, what="/healthz 200")
        assert "Redis reachable again after" in proc.log()
        assert "Traceback" not in proc.log()
    finally:
        server.cleanup()


def test_the_api_starts_while_redis_is_down_and_answers_once_it_is_back(
    anvil: Anvil, nft: AccessNFT, tmp_path: Path, procs: list[Proc]
) -> None:
    server = RedisServer(port=free_port())
    listen = f"127.0.0.1:{free_port()}"
    env = clean_env(
        WGCHAIN_REDIS_URL=server.url,
        WGCHAIN_CONTRACT=nft.address,
        WGCHAIN_CHAIN_ID=str(anvil.chain_id),
        WGCHAIN_API_LISTEN=listen,
    )
    proc = Proc(["api"], env, tmp_path / "api.log")
    procs.append(proc)
    url = f"http://{listen}"
    try:
        [down] = wait_for(
            lambda: [requests.get(url + "/healthz", timeout=5)], timeout=30, what="api"
        )
        assert down.status_code == 503
        assert "Redis unreachable" in down.json()["reason"]
        access = requests.get(url + "/v1/access", params={"node": "n", "key": KEY_A}, timeout=5)
        assert access.status_code == 503
        server.start()
        wait_for(
            lambda: requests.get(url + "/healthz", timeout=5).status_code == 200,
            timeout=30,
            what="/healthz 200",
        )
        access = requests.get(url + "/v1/access", params={"node": "n", "key": KEY_A}, timeout=5)
        assert access.status_code == 503  # Redis answers, but holds nothing for this network
        assert "no data for network" in access.json()["error"]
        assert proc.proc.poll() is None
    finally:
        server.cleanup()


# --- the chain's head below the cursor ------------------------------------------------------


def test_a_head_below_the_cursor_is_an_error_that_repeats_and_a_failing_health(
    anvil: Anvil, nft: AccessNFT, redis_server: RedisServer, tmp_path: Path, procs: list[Proc]
) -> None:
    for i in range(3):
        nft.mint(ACCOUNTS[1 + i][0], f"node-{i}", KEY_A)
    anvil.mine(5)
    head = anvil.block_number()
    keys = Keys(anvil.chain_id, nft.address.lower())
    port = free_port()
    env = devnet_env(
        anvil,
        nft,
        redis_server,
        WGCHAIN_CONFIRMATIONS="0",
        WGCHAIN_POLL_INTERVAL="0.2",
    )
    proc = Proc(["listen", "--metrics-port", str(port)], env, tmp_path / "listen.log")
    procs.append(proc)
    client = redis.Redis.from_url(redis_server.url)
    try:
        wait_for(
            lambda: int(client.hget(keys.cursor, "block") or -1) >= head,  # type: ignore[arg-type]
            timeout=60,
            what="the listener caught up",
        )
        assert healthz(port)[0] == 200
        assert wgchain(env, "status", "--check").returncode == 0

        anvil.rpc("anvil_reset", [])  # the devnet restarted without its state: head 0
        wait_for(lambda: "is below the cursor" in proc.log(), timeout=60, what="the error line")
        code, body = healthz(port)
        assert code == 503
        assert "is below the cursor" in body["reason"]
        metrics = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        distance = re.search(
            r"^wgchain_listener_head_distance_blocks\{[^}]*\} (\S+)$", metrics, re.M
        )
        assert distance is not None
        assert float(distance.group(1)) < 0
        res = wgchain(env, "status", "--check")
        assert res.returncode == 2, res.stdout + res.stderr
        assert "CRITICAL head-below-cursor: listener" in res.stdout
        assert proc.proc.poll() is None  # it waits, it does not exit
    finally:
        client.close()


# --- same-height reorgs ---------------------------------------------------------------------


def test_a_block_replaced_at_the_same_height_is_retracted_on_the_next_poll(
    anvil: Anvil, nft: AccessNFT, redis_server: RedisServer
) -> None:
    cfg = devnet_settings(anvil, nft, redis_server)
    client = redis.Redis.from_url(redis_server.url)
    listener = open_listener(cfg, client)
    try:
        anvil.mine(2)
        orphan = nft.mint(ACCOUNTS[1][0], "node-x", KEY_A)
        catch_up(listener)
        assert listener.cursor is not None
        assert listener.cursor.block == anvil.block_number() == orphan.block_number
        events: Any = client.xrange(cfg.keys().events)
        [(orphan_id, _)] = events

        anvil.rpc("anvil_reorg", [1, []])  # the head block replaced; no block above it
        assert anvil.block_number() == orphan.block_number
        assert listener.step() == 1  # the very next poll rewinds
        raw: Any = client.xrange(cfg.keys().events)
        retracted = [from_fields(f) for _, f in raw[1:]]
        assert retracted
        assert all(isinstance(r, Retracted) for r in retracted)
        assert orphan_id.decode() in {r.entry_id for r in retracted}  # type: ignore[union-attr]
        catch_up(listener)
        assert listener.step() == 0  # the replaced block holds no log: nothing more
    finally:
        listener.rpc.close()
        client.close()


# --- status --check, check and the API for each situation ----------------------------------


def test_status_check_exit_codes_name_each_problem(
    anvil: Anvil, nft: AccessNFT, redis_server: RedisServer, tmp_path: Path
) -> None:
    cfg = devnet_settings(anvil, nft, redis_server)
    keys = cfg.keys()
    client = redis.Redis.from_url(redis_server.url)
    env = devnet_env(
        anvil,
        nft,
        redis_server,
    )
    listener = open_listener(cfg, client)
    try:
        nft.mint(ACCOUNTS[1][0], "node-a", KEY_A)
        catch_up(listener)
        lease = Lease(client, keys, "listener-1", 60)
        assert lease.acquire()

        ok = wgchain(env, "status", "--check")
        assert (ok.returncode, ok.stdout.split(":")[0]) == (0, "wgchain OK"), ok.stdout

        # a host silent for more than 3 reconcile intervals: a warning
        client.hset(
            keys.host_status("node-a"),
            mapping={"updated_at": time.time() - 100, "reconcile_interval": 30},
        )
        stale = wgchain(env, "status", "--check")
        assert stale.returncode == 1, stale.stdout
        assert "WARNING host-stale: host node-a has not reported for 1m" in stale.stdout
        human = wgchain(env, "status")
        assert human.returncode == 0
        assert "STALE" in human.stdout

        # the stages not running while entries wait (a listener appended, nobody folds)
        doc = msgspec.json.decode(wgchain(env, "status", "--json").stdout)
        assert doc["stages"][0]["lag_entries"] == 1
        stalled = wgchain(env, "status", "--check", "--max-lag-seconds", "0.001")
        assert stalled.returncode == 2
        assert "CRITICAL stage-stalled: registry stage has not committed" in stalled.stdout
        behind = wgchain(env, "status", "--check", "--max-lag", "0")
        assert "CRITICAL stage-lag: registry stage is 1 entries behind" in behind.stdout

        lease.release()  # no listener: nothing is appended
        none = wgchain(env, "status", "--check")
        assert none.returncode == 2
        assert "CRITICAL no-lease: no listener holds the lease" in none.stdout
        note = wgchain(env, "check", "--node", "node-a", "--key", KEY_A)
        assert "this answer may be stale: no listener holds the lease" in note.stderr

        wrong = {**env, "WGCHAIN_CONTRACT": OTHER_CONTRACT}
        nodata = wgchain(wrong, "status", "--check")
        assert nodata.returncode == 2
        assert f"CRITICAL no-data: no data for network {{{anvil.chain_id}:{OTHER_CONTRACT}}}" in (
            nodata.stdout
        )
        assert f"Redis has data for {anvil.chain_id}:{nft.address.lower()}" in nodata.stdout
        denied = wgchain(wrong, "check", "--node", "node-a", "--key", KEY_A)
        assert denied.returncode == 3  # no answer, not "not-a-member"
        assert "no data for network" in denied.stderr
        assert "not-a-member" not in denied.stdout + denied.stderr

        bad = wgchain({**env, "WGCHAIN_POOL": "nonsense"}, "status", "--check")
        assert bad.returncode == 3
        assert bad.stdout.startswith("wgchain UNKNOWN: invalid setting WGCHAIN_POOL")
        gone = wgchain(
            {**env, "WGCHAIN_REDIS_URL": f"redis://127.0.0.1:{free_port()}"}, "status", "--check"
        )
        assert gone.returncode == 2
        assert gone.stdout.startswith("wgchain CRITICAL: cannot reach Redis")
    finally:
        listener.rpc.close()
        client.close()


def test_current_issues_not_totals_and_a_status_that_does_not_grow_with_history(
    redis_server: RedisServer,
) -> None:
    """Conflicts that were resolved are not listed; 20,000 entries of history cost what 10 do."""
    from consumers.status.snapshot import Snapshot

    keys = Keys(31337, "0x" + "56" * 20)
    client = redis.Redis.from_url(redis_server.url)
    client.hset(keys.cursor, mapping={"block": 1, "hash": "0x01", "digest": "00"})

    def commands(n_history: int) -> int:
        pipe = client.pipeline(transaction=False)
        for i in range(n_history):
            pipe.xadd(keys.registry, to_fields(Conflict("duplicate-key", f"n{i}", 2, 1, "1-0", 1)))
        pipe.execute()
        position = client.xrevrange(keys.registry, count=1)[0][0]  # type: ignore[index]
        client.set(keys.position("ipam"), position)
        snapshot = Snapshot(client, keys)
        snapshot.fleet([])  # loads the script
        client.config_resetstat()
        fleet = snapshot.fleet([])
        assert fleet.counts.conflicts == 0  # history is not the present
        stats: Any = client.info("commandstats")
        return sum(int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info")

    few = commands(10)
    many = commands(20_000 - 10)
    assert many == few
    client.close()


# --- --timeout against an RPC that never answers -------------------------------------------


@pytest.fixture
def silent_rpc() -> Iterator[str]:
    """A TCP server that accepts connections and never answers (a hung RPC node)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=5)
        for conn in held:
            conn.close()
        server.close()


@pytest.mark.parametrize(
    "argv", [["audit", "verify"], ["listen", "--verify-range", "0", "5"]], ids=["audit", "listen"]
)
def test_timeout_bounds_one_shot_commands_against_a_silent_rpc(
    argv: list[str], silent_rpc: str, redis_server: RedisServer
) -> None:
    env = clean_env(
        WGCHAIN_REDIS_URL=redis_server.url,
        WGCHAIN_RPC_URL=silent_rpc,
        WGCHAIN_CONTRACT=OTHER_CONTRACT,
    )
    res = wgchain(env, *argv, "--timeout", "2", timeout=40)
    assert res.returncode == 1
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    assert "the RPC node did not answer within 2s (--timeout)" in lines[0]
    assert "Traceback" not in res.stderr


# --- the metrics address --------------------------------------------------------------------


def _listening(port: int) -> set[str]:
    """Local IPv4 addresses with a socket listening on ``port`` (from /proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, _, hex_port = local.partition(":")
        if state == "0A" and int(hex_port, 16) == port:
            found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


def test_metrics_bind_loopback_unless_told_otherwise(
    redis_server: RedisServer, tmp_path: Path, procs: list[Proc]
) -> None:
    env = clean_env(
        WGCHAIN_REDIS_URL=redis_server.url,
        WGCHAIN_CONTRACT=OTHER_CONTRACT,
        WGCHAIN_CHAIN_ID="31337",
    )
    default, chosen = free_port(), free_port()
    procs.append(Proc(["registry", "--metrics-port", str(default)], env, tmp_path / "a.log"))
    told = {**env, "WGCHAIN_METRICS_LISTEN": "127.0.0.2"}
    procs.append(Proc(["registry", "--metrics-port", str(chosen)], told, tmp_path / "b.log"))
    wait_for(lambda: healthz(default)[0] == 200, timeout=90, what="the default address")
    assert _listening(default) == {"127.0.0.1"}  # not every interface
    ok = wait_for(
        lambda: requests.get(f"http://127.0.0.2:{chosen}/healthz", timeout=5).ok,
        timeout=90,
        what="the chosen address",
    )
    assert ok
    assert _listening(chosen) == {"127.0.0.2"}
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{chosen}/healthz", timeout=5)
