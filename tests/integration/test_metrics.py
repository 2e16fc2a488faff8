"""``/metrics`` of real processes: ``wgchain run`` and ``wgchain agent`` started with
``--metrics-port``, scraped over HTTP while the pipeline folds real mints on anvil."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
import requests
from factories import KEY_C
from prometheus_client.parser import text_string_to_metric_families

from consumers.agent.keys import generate_private_key_file
from shared import metrics
from shared.contract.client import AccessNFT
from shared.devnet.anvil import ACCOUNTS, Anvil
from shared.devnet.netns import wgchain_command
from shared.devnet.proc import free_port, stop_process, wait_for
from shared.devnet.redis_server import RedisServer
from shared.keys import Keys

pytestmark = pytest.mark.integration

DEADLINE = 60.0
Sample = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Sample:
    """Every sample on ``/metrics``: (name, labels) -> value."""
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Sample, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


class Proc:
    """A ``wgchain`` subprocess serving metrics on a free port; stopped by pid."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.log = log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [*wgchain_command(), *args, "--metrics-port", str(self.port)],
                env=env,
                stdout=out,
                stderr=out,
            )

    def wait(self, condition: Callable[[Sample], bool], what: str) -> Sample:
        found: list[Sample] = []

        def check() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"{what}: exited\n{self.log.read_text()[-3000:]}")
            try:
                found[:] = [scrape(self.port)]
            except requests.ConnectionError:
                return False
            return condition(found[0])

        try:
            wait_for(check, timeout=DEADLINE, interval=0.2, what=what)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n{found}\n{self.log.read_text()[-3000:]}") from None
        return found[0]


@pytest.fixture
def env(anvil: Anvil, nft: AccessNFT, redis_server: RedisServer) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("WGCHAIN_")}
    return {
        **base,
        "WGCHAIN_REDIS_URL": redis_server.url,
        "WGCHAIN_RPC_URL": anvil.url,
        "WGCHAIN_CONTRACT": nft.address,
        "WGCHAIN_CHAIN_ID": str(anvil.chain_id),
        "WGCHAIN_CONFIRMATIONS": "0",
        "WGCHAIN_POLL_INTERVAL": "0.1",
        "WGCHAIN_POOL": "10.77.0.0/30",  # two addresses: the third member waits
        "WGCHAIN_RECONCILE_INTERVAL": "1",
    }


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    try:
        yield started
    finally:
        for p in started:
            stop_process(p.proc)


def test_run_and_agent_serve_metrics_that_follow_the_pipeline(
    env: dict[str, str],
    anvil: Anvil,
    nft: AccessNFT,
    redis_client: redis.Redis,
    procs: list[Proc],
    tmp_path: Path,
) -> None:
    net = f"{anvil.chain_id}:{nft.address.lower()}"
    keys = Keys(anvil.chain_id, nft.address.lower())
    run = Proc(["run"], env, tmp_path / "run.log")
    procs.append(run)
    first = run.wait(
        lambda s: ("wgchain_listener_lag_blocks", frozenset({("network", net)})) in s,
        "the listener reports its lag",
    )
    assert value(first, "wgchain_events_appended_total", network=net) in (None, 0.0)

    key_file = tmp_path / "node-1.key"
    pub1 = generate_private_key_file(key_file)
    key2 = generate_private_key_file(tmp_path / "node-2.key")
    nft.mint(ACCOUNTS[1][0], "node-1", pub1)
    nft.mint(ACCOUNTS[2][0], "node-2", key2)
    nft.mint(ACCOUNTS[3][0], "node-3", KEY_C)
    nft.mint(ACCOUNTS[4][0], "node-4", KEY_C)  # the same key as node-3: a conflict
    head = anvil.block_number()
    redis_client.xadd(keys.events, {"v": "1", "type": "Nonsense", "data": "{}"})  # poison

    def settled(s: Sample) -> bool:
        return (
            value(s, "wgchain_listener_cursor_block", network=net) == head
            and value(s, "wgchain_stage_entries_total", network=net, stage="ipam") is not None
            and value(s, "wgchain_pending_allocations", network=net) == 1
            and value(s, "wgchain_dead_letters_total", network=net, stage="registry") == 1
        )

    s = run.wait(settled, "the pipeline folds four mints and a poison entry")
    assert value(s, "wgchain_events_appended_total", network=net) == 4
    assert value(s, "wgchain_listener_lag_blocks", network=net) == 0
    assert value(s, "wgchain_listener_lag_seconds", network=net) == 0
    assert value(s, "wgchain_chain_final_block", network=net) == head
    assert value(s, "wgchain_dead_letters_total", network=net, stage="listener") == 0
    assert value(s, "wgchain_stage_entries_total", network=net, stage="registry") == 5
    assert value(s, "wgchain_stage_lag_entries", network=net, stage="registry") == 0
    assert value(s, "wgchain_conflicts_total", network=net) == 1
    batches = value(s, "wgchain_stage_batch_seconds_count", network=net, stage="registry")
    assert batches is not None
    assert batches >= 1
    # the lag a full batch measures: entries after a position, counted in Redis
    ids = [i.decode() for i, _ in redis_client.xrange(keys.events)]  # type: ignore[union-attr]
    assert metrics.backlog(redis_client, keys.events, "0-0") == 5
    assert metrics.backlog(redis_client, keys.events, ids[1]) == 3
    assert metrics.backlog(redis_client, keys.events, ids[1], cap=2) == 2

    # an agent whose config folder cannot be created: it reconciles and reports errors
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    agent_args = ["agent", "--node", "node-1", "--interface", "wgmetr0", "--file-only"]
    agent_args += ["--private-key-file", str(key_file), "--config-dir", str(blocker / "conf")]
    agent = Proc(agent_args, env, tmp_path / "agent.log")
    procs.append(agent)

    def agent_worked(s: Sample) -> bool:
        applies = value(s, "wgchain_agent_apply_seconds_count", network=net) or 0
        errors = value(s, "wgchain_agent_errors_total", network=net) or 0
        return applies >= 2 and errors >= 2

    agent.wait(agent_worked, "the agent reports applies and errors")


def test_label_accepts_tags_and_keys() -> None:
    keys = Keys(8453, "0x" + "ab" * 20)
    assert metrics.label(keys.tag) == f"8453:0x{'ab' * 20}"
    assert metrics.label(keys.events) == f"8453:0x{'ab' * 20}"
    assert metrics.label("8453:0xab") == "8453:0xab"
