"""Parallel backfill against a real anvil, a real Redis and real ``wgchain worker`` processes.

The events stream after a backfill is compared with an independent ``eth_getLogs``
scan (topic hashes computed here). One worker talks to the chain through a proxy
that never answers ``eth_getLogs``, so it is certainly in the middle of a job when
it is SIGKILLed; that job must be retried by the other worker.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from eth_abi import encode as abi_encode
from eth_utils.crypto import keccak
from factories import rpc
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from producers.backfill.jobs import JOB_RETRIES, fetch_range
from producers.backfill.store import BackfillStore
from producers.listener.listener import Listener, ListenerConfig
from producers.listener.store import ListenerStore
from shared.chain import worker
from shared.chain.plan import Plan, Span
from shared.chain.rpc import RpcClient
from shared.chain.worker import WorkerContext
from shared.contract.client import AccessNFT
from shared.devnet.anvil import ACCOUNTS, Anvil
from shared.devnet.proc import stop_process, wait_for
from shared.devnet.redis_server import RedisServer
from shared.events import GENESIS_DIGEST, LogEntry, from_fields
from shared.keys import Keys

pytestmark = pytest.mark.integration

WGCHAIN = Path(sys.executable).parent / "wgchain"
SIGNATURES = (
    "NodeAccessGranted(uint256,string,address,string)",
    "NodeAccessRevoked(uint256,string)",
    "NodeAccessTransferred(uint256,address,address)",
    "PublicKeyUpdated(address,string)",
)
TOPICS = ["0x" + keccak(text=sig).hex() for sig in SIGNATURES]
KEY = "K" * 43 + "="


# --- helpers ------------------------------------------------------------------------------


def scan(url: str, contract: str, to_block: int) -> list[tuple[int, int, str]]:
    """Independent scan: (block, logIndex, tx hash) of the contract's events, chain order."""
    logs = rpc(
        url,
        "eth_getLogs",
        [{"address": contract, "topics": [TOPICS], "fromBlock": "0x0", "toBlock": hex(to_block)}],
    )
    return sorted(
        (int(x["blockNumber"], 16), int(x["logIndex"], 16), x["transactionHash"].lower())
        for x in logs
    )


def stream(client: redis.Redis, keys: Keys) -> list[LogEntry]:
    raw: Any = client.xrange(keys.events)
    entries = [from_fields(fields) for _, fields in raw]
    assert all(isinstance(e, LogEntry) for e in entries)
    return entries


def assert_complete(client: redis.Redis, keys: Keys, url: str, head: int) -> list[LogEntry]:
    """The stream equals the scan (so: ordered, duplicate-free) and its digests chain."""
    entries = stream(client, keys)
    got = [(e.block_number, e.log_index, e.tx_hash) for e in entries]
    assert got == scan(url, keys.contract, head)
    assert len(set(got)) == len(got)
    prev = GENESIS_DIGEST
    for entry in entries:
        assert entry.prev == prev
        assert entry.digest_ok()
        prev = entry.digest
    cursor = ListenerStore(client, keys).load_cursor()
    assert cursor is not None
    assert cursor.digest == prev
    return entries


def batch_send(url: str, txs: list[dict[str, str]]) -> None:
    body = [
        {"jsonrpc": "2.0", "id": i, "method": "eth_sendTransaction", "params": [tx]}
        for i, tx in enumerate(txs)
    ]
    replies = requests.post(url, json=body, timeout=60).json()
    assert all("error" not in r for r in replies), replies[:3]


MINT = "mintNodeAccess(address,string,string,string)"
MINT_TYPES = ["address", "string", "string", "string"]
UPDATE_KEY = "updatePublicKey(string)"


def calldata(signature: str, types: list[str], args: list[Any]) -> str:
    return "0x" + (keccak(text=signature)[:4] + abi_encode(types, args)).hex()


def make_history(anvil: Anvil, nft: AccessNFT, *, blocks: int, per_block: int, gap: int) -> int:
    """``blocks`` blocks of ``per_block`` transactions (mints and key updates), ``gap`` empty
    blocks after each; returns the head. Transactions go to anvil's pool in JSON-RPC batches
    and are mined together (anvil's dev accounts are unlocked)."""
    owner = ACCOUNTS[0][0]
    anvil.rpc("evm_setAutomine", [False])
    try:
        serial = 0
        for _ in range(blocks):
            txs = []
            for i in range(per_block):
                serial += 1
                if i % 10 == 9:
                    data = calldata(UPDATE_KEY, ["string"], [f"{serial:043d}="])
                else:
                    data = calldata(MINT, MINT_TYPES, [owner, f"node-{serial}", KEY, ""])
                txs.append({"from": owner, "to": nft.address, "data": data, "gas": hex(400_000)})
            batch_send(anvil.url, txs)
            anvil.rpc("evm_mine")
            anvil.rpc("anvil_mine", [hex(gap)])
    finally:
        anvil.rpc("evm_setAutomine", [True])
    return anvil.block_number()


#: What the proxy answers to eth_getLogs instead of anvil's reply.
REVERTED = b'{"jsonrpc":"2.0","id":1,"error":{"code":3,"message":"execution reverted"}}'


class StallProxy:
    """A JSON-RPC proxy in front of anvil that never answers ``eth_getLogs`` (until closed),
    or, with ``fail``, answers it with a JSON-RPC error that is not worth retrying."""

    def __init__(self, upstream: str, *, fail: bool = False) -> None:
        release = self.release = threading.Event()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if b"eth_getLogs" in body and fail:
                    self.reply(200, REVERTED)
                elif b"eth_getLogs" in body:
                    release.wait(60)
                    with contextlib.suppress(OSError):  # its client was killed meanwhile
                        self.send_error(503)
                else:
                    reply = requests.post(
                        upstream,
                        data=body,
                        headers={"Content-Type": "application/json"},
                        timeout=30,
                    )
                    self.reply(reply.status_code, reply.content)

            def reply(self, status: int, content: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


class Runner:
    """A listener stepping in a thread (it appends staged ranges, then goes live)."""

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while not self.stop.is_set():
                if self.listener.step() == 0:
                    self.stop.wait(0.1)
        except BaseException as exc:  # surfaced by close()
            self.error = exc

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=30)
        assert self.error is None, self.error


def make_listener(client: redis.Redis, url: str, keys: Keys, start_block: int) -> Listener:
    cfg = ListenerConfig(
        chain_id=keys.chain_id,
        contract=keys.contract,
        start_block=start_block,
        confirmations=0,
        max_block_range=100,
        poll_interval=0.1,
    )
    return Listener(RpcClient([url], retry_seconds=10), ListenerStore(client, keys), cfg)


def env_for(redis_server: RedisServer, rpc_url: str, nft: AccessNFT, start: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WGCHAIN_")}
    env.update(
        WGCHAIN_REDIS_URL=redis_server.url,
        WGCHAIN_RPC_URL=rpc_url,
        WGCHAIN_CONTRACT=nft.address,
        WGCHAIN_CONFIRMATIONS="0",
        WGCHAIN_START_BLOCK=str(start),
    )
    return env


@pytest.fixture
def context(redis_client: redis.Redis, anvil: Anvil, nft: AccessNFT) -> Iterator[Keys]:
    """This process as a worker of ``nft``'s network (for jobs run in-process)."""
    keys = Keys(anvil.chain_id, nft.address.lower())
    rpc_client = RpcClient([anvil.url], retry_seconds=10)
    worker.configure(WorkerContext(redis_client, rpc_client, keys.chain_id, keys.contract, 100))
    try:
        yield keys
    finally:
        worker.configure(None)
        rpc_client.close()


def staged_now(client: redis.Redis, keys: Keys) -> dict[bytes, bytes]:
    raw: Any = client.hgetall(keys.backfill_staged)
    return dict(raw)


# --- tests --------------------------------------------------------------------------------


def test_backfill_with_two_workers_one_killed_mid_job_gives_a_complete_stream(
    redis_server: RedisServer, redis_client: redis.Redis, anvil: Anvil, nft: AccessNFT, tmp_path
) -> None:
    assert nft.deployment is not None
    start = nft.deployment.block_number
    head = make_history(anvil, nft, blocks=100, per_block=20, gap=4)  # 2,000 events, 500 blocks
    keys = Keys(anvil.chain_id, nft.address.lower())
    stall = StallProxy(anvil.url)
    procs: list[subprocess.Popen[bytes]] = []
    listener = None
    try:
        monitor = subprocess.Popen(
            [WGCHAIN, "backfill", "--from", str(start), "--to", str(head), "--size", "20"],
            env=env_for(redis_server, anvil.url, nft, start),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        procs.append(monitor)
        wait_for(lambda: redis_client.exists(keys.backfill_plan), timeout=30, what="the plan")
        plan = BackfillStore(redis_client, keys).plan()
        assert plan is not None
        # Worker A stalls in its first job; worker B does the rest.
        log_a = open(tmp_path / "a.log", "wb")  # noqa: SIM115
        stalled = subprocess.Popen(
            [WGCHAIN, "worker"],
            env=env_for(redis_server, stall.url, nft, start),
            stdout=log_a,
            stderr=subprocess.STDOUT,
        )
        procs.append(stalled)

        def claim_of_a() -> str | None:
            for key in redis_client.scan_iter(match=keys.backfill_claim("*")):
                holder = redis_client.get(key)
                if holder is not None and f"-{stalled.pid}-" in holder.decode():
                    return key.decode().rsplit(":", 1)[1]
            return None

        wait_for(lambda: claim_of_a() is not None, timeout=30, what="worker A in a job")
        span = claim_of_a()
        assert span is not None
        log_b = open(tmp_path / "b.log", "wb")  # noqa: SIM115
        helper = subprocess.Popen(
            [WGCHAIN, "worker"],
            env=env_for(redis_server, anvil.url, nft, start),
            stdout=log_b,
            stderr=subprocess.STDOUT,
        )
        procs.append(helper)
        listener = Runner(make_listener(redis_client, anvil.url, keys, start))
        os.kill(stalled.pid, signal.SIGKILL)
        stalled.wait(timeout=10)

        out, err = monitor.communicate(timeout=90)
        assert monitor.returncode == 0, err.decode()[-2000:]
        lines = err.decode()
        assert "ranges fetched" in lines
        assert "appended" in lines
        assert "\x1b[" not in out.decode() + lines  # no progress bar without a terminal

        # The killed worker's job was retried (by the monitor or B's maintenance) and done by B.
        job = Job.fetch(
            f"backfill-{plan.id}-{span}", connection=redis_client, serializer=JSONSerializer
        )
        assert job.get_status() == JobStatus.FINISHED
        assert job.retries_left == JOB_RETRIES - 1
        assert f"-{helper.pid}-" in (job.worker_name or "")

        assert_complete(redis_client, keys, anvil.url, head)
        assert len(stream(redis_client, keys)) == 2000

        # Then the listener goes on live, and the finished plan is gone.
        nft.mint(ACCOUNTS[1][0], "after-backfill", KEY)
        live_head = anvil.block_number()
        wait_for(
            lambda: (
                (c := ListenerStore(redis_client, keys).load_cursor()) is not None
                and c.block >= live_head
            ),
            timeout=30,
            what="the live append",
        )
        entries = assert_complete(redis_client, keys, anvil.url, live_head)
        assert entries[-1].block_number == live_head
        assert not redis_client.exists(keys.backfill_plan)
        assert not redis_client.exists(keys.backfill_staged)
    finally:
        if listener is not None:
            listener.close()
        for proc in procs:
            stop_process(proc)
        stall.close()


def test_jobs_are_json_not_pickle_and_staging_is_idempotent(
    redis_server: RedisServer,
    redis_client: redis.Redis,
    anvil: Anvil,
    nft: AccessNFT,
    context: Keys,
) -> None:
    assert nft.deployment is not None
    start = nft.deployment.block_number
    head = make_history(anvil, nft, blocks=3, per_block=5, gap=3)
    keys = context
    env = env_for(redis_server, anvil.url, nft, start)
    done = subprocess.run(
        [WGCHAIN, "--log-json", "backfill", "--size", "5", "--no-wait", "--json"],
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    queued = json.loads(done.stdout)  # --json: one document on stdout
    assert (queued["state"], queued["start"], queued["end"]) == ("queued", start, head)
    first = json.loads(done.stderr.decode().strip().splitlines()[-1])  # a JSON log line
    assert "jobs of up to 5 blocks" in first["text"]
    plan = BackfillStore(redis_client, keys).plan()
    assert plan is not None
    assert (plan.start, plan.end) == (start, head)

    job_ids = [j.decode() for j in redis_client.lrange(f"rq:queue:{keys.backfill_queue}", 0, -1)]
    assert len(job_ids) == len(plan.spans)
    data = redis_client.hget(f"rq:job:{job_ids[0]}", "data")
    assert data is not None
    payload = zlib.decompress(data)
    assert not payload.startswith(b"\x80")  # pickle's protocol marker
    func, instance, args, kwargs = json.loads(payload)
    assert func == "producers.backfill.jobs.fetch_range"
    assert instance is None
    assert args == [plan.id, keys.chain_id, keys.contract, plan.start, plan.spans[0].end]
    assert kwargs == {}

    burst = subprocess.run(
        [WGCHAIN, "worker", "--burst"], env=env, capture_output=True, timeout=60, check=False
    )
    assert burst.returncode == 0, burst.stderr.decode()
    staged = staged_now(redis_client, keys)
    assert sorted(staged) == sorted(s.name.encode() for s in plan.spans)

    # The same range fetched again (here, by this process) stages the very same bytes.
    span = plan.spans[1]
    redis_client.hdel(keys.backfill_staged, span.name)
    result = fetch_range(plan.id, keys.chain_id, keys.contract, span.start, span.end)
    assert result["staged"] is True
    assert staged_now(redis_client, keys) == staged
    assert fetch_range(plan.id, keys.chain_id, keys.contract, span.start, span.end) == {
        "skipped": "already staged"
    }
    # A job of a plan that no longer runs writes nothing.
    redis_client.hdel(keys.backfill_staged, span.name)
    assert fetch_range("gone", keys.chain_id, keys.contract, span.start, span.end) == {
        "skipped": "its backfill no longer runs"
    }
    assert span.name.encode() not in staged_now(redis_client, keys)


def test_listener_appends_staged_ranges_in_order_and_waits_for_missing_ones(
    redis_client: redis.Redis, anvil: Anvil, nft: AccessNFT, context: Keys
) -> None:
    assert nft.deployment is not None
    start = nft.deployment.block_number
    head = make_history(anvil, nft, blocks=6, per_block=4, gap=4)
    keys = context
    store = BackfillStore(redis_client, keys)
    listener = make_listener(redis_client, anvil.url, keys, start)
    # The listener read live into what the plan will cover before the plan existed.
    listener.sizer.size = 7
    assert listener.step() == 7
    plan = Plan("p1", start + 3, head, 6)
    assert store.create(plan)
    assert not store.create(Plan("p2", start, head, 6))  # one plan at a time
    first, second = plan.spans[0], plan.spans[1]
    assert first.start < listener.next_block <= first.end

    assert listener.step() == 0  # its range is not staged yet: wait, do not read it live
    fetch_range(plan.id, keys.chain_id, keys.contract, second.start, second.end)
    assert listener.step() == 0  # the next range is staged, but not this one
    fetch_range(plan.id, keys.chain_id, keys.contract, first.start, first.end)
    assert listener.step() == first.end - (start + 7) + 1  # only blocks it did not have
    assert listener.step() == second.blocks
    for span in plan.spans[2:]:
        fetch_range(plan.id, keys.chain_id, keys.contract, span.start, span.end)
    while listener.next_block <= head:
        assert listener.step() > 0
    assert listener.step() == 0  # at the tip; the plan is complete and dropped
    assert store.plan() is None
    assert not redis_client.exists(keys.backfill_staged)
    assert_complete(redis_client, keys, anvil.url, head)


def test_a_staged_range_that_does_not_follow_the_cursor_is_dropped_and_read_live(
    redis_client: redis.Redis, anvil: Anvil, nft: AccessNFT, context: Keys
) -> None:
    assert nft.deployment is not None
    start = nft.deployment.block_number
    head = make_history(anvil, nft, blocks=2, per_block=3, gap=2)
    keys = context
    store = BackfillStore(redis_client, keys)
    listener = make_listener(redis_client, anvil.url, keys, start)
    listener.sizer.size = 1
    assert listener.step() == 1  # cursor at the deployment block
    plan = Plan("p1", start + 1, head, 100)
    assert store.create(plan)
    span = Span(start + 1, head)
    fetch_range(plan.id, keys.chain_id, keys.contract, span.start, span.end)
    staged = store.staged(span)
    assert staged is not None
    forged = staged.__class__(
        start=staged.start,
        end=staged.end,
        parent_hash="0x" + "ee" * 32,
        end_hash=staged.end_hash,
        entries=staged.entries,
        dead=staged.dead,
    )
    assert store.stage(plan.id, forged)
    assert listener.step() > 0  # read live instead
    assert store.plan() is None
    while listener.step():
        pass
    assert_complete(redis_client, keys, anvil.url, head)


def test_a_range_that_keeps_failing_ends_the_watch_with_one_clear_line(
    redis_server: RedisServer, redis_client: redis.Redis, anvil: Anvil, nft: AccessNFT
) -> None:
    assert nft.deployment is not None
    start = nft.deployment.block_number
    make_history(anvil, nft, blocks=2, per_block=2, gap=1)
    keys = Keys(anvil.chain_id, nft.address.lower())
    broken = StallProxy(anvil.url, fail=True)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        monitor = subprocess.Popen(
            [WGCHAIN, "backfill", "--size", "100"],
            env=env_for(redis_server, anvil.url, nft, start),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        procs.append(monitor)
        wait_for(lambda: redis_client.exists(keys.backfill_plan), timeout=30, what="the plan")
        procs.append(
            subprocess.Popen(
                [WGCHAIN, "worker"],
                env=env_for(redis_server, broken.url, nft, start),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        _, err = monitor.communicate(timeout=60)
        assert monitor.returncode == 1
        last = err.decode().strip().splitlines()[-1]
        assert last.startswith("wgchain: backfill ")
        assert f"failed {JOB_RETRIES + 1} times" in last
        assert "execution reverted" in last
        assert "Traceback" not in err.decode()
        # The plan stays (the listener waits) until it is cancelled.
        assert redis_client.exists(keys.backfill_plan)
        done = subprocess.run(
            [WGCHAIN, "backfill", "--cancel", "--json"],
            env=env_for(redis_server, anvil.url, nft, start),
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr.decode()
        cancelled = json.loads(done.stdout)
        assert (cancelled["state"], cancelled["start"]) == ("cancelled", start)
        assert not redis_client.exists(keys.backfill_plan)
    finally:
        for proc in procs:
            stop_process(proc)
        broken.close()
