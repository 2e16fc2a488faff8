"""B1 ingest: chain logs into the ``events`` stream.

A bench contract (``BenchEmitter.sol``, compiled with the pinned solc from
``.tools``) emits logs with DstackAccessNFT's exact ``NodeAccessGranted``
signature, many per transaction, on a real anvil. The same logs are then ingested
three ways, each into its own stream of a fresh ``redis-server``:

- the listener: the real :class:`Listener` step loop (adaptive ``eth_getLogs``
  ranges, header checks, hand decoding, digest chain, one Lua append per part of
  about 5,000 logs of a range, each overlapping the decoding of the next);
- the rq backfill (``producers/backfill``), when that package is installed: idle
  rq workers in separate processes fetch ranges, the listener appends them in
  order (its own Redis, timed from the plan's creation to the last append);
- naive web3.py: ``w3.eth.get_logs``, then
  ``contract.events.NodeAccessGranted().process_log`` per log and one ``XADD``
  per event, on the first blocks of the same range (``--b1-naive-logs``; its cost
  per log does not depend on the count, and the whole range would take a minute);

and the ceiling is the raw ``eth_getLogs`` fetch of the whole range alone
(one JSON-RPC request, decoded with msgspec), with nothing appended.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from typing import Any, Final

import msgspec
import redis
import requests
from common import HERE, Background, Result, Unavailable, timer

from shared.devnet.anvil import ACCOUNTS, Anvil
from shared.devnet.proc import wait_for
from shared.devnet.redis_server import RedisServer
from shared.events import LogEntry, NodeAccessGranted, to_fields
from shared.keys import Keys

SOURCE = HERE / "BenchEmitter.sol"
#: A valid WireGuard key carried by every bench log.
KEY = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="
#: Fraction of the raw eth_getLogs ceiling the listener should reach (issue 11).
TARGET_CEILING: Final = 0.5
#: Gas per emitted log (measured: about 6,000) with room to spare.
GAS_PER_LOG = 9_000

_COMPILE_JS = r"""
const fs = require('fs');
const path = require('path');
const solc = require(path.resolve(process.argv[1], 'node_modules', 'solc'));
process.stdout.write(solc.compile(fs.readFileSync(0, 'utf8')));
"""


def compile_emitter() -> dict[str, Any]:
    """ABI and bytecode of ``BenchEmitter.sol`` (solc from ``.tools``)."""
    from shared.contract.build import tools_dir

    node = shutil.which("node")
    if node is None or not (tools_dir() / "node_modules" / "solc").is_dir():
        raise Unavailable("node and solc in .tools/node_modules are needed (make setup)")
    request = {
        "language": "Solidity",
        "sources": {"BenchEmitter.sol": {"content": SOURCE.read_text()}},
        "settings": {
            "optimizer": {"enabled": True, "runs": 200},
            "outputSelection": {"*": {"*": ["abi", "evm.bytecode.object"]}},
        },
    }
    proc = subprocess.run(
        [node, "-e", _COMPILE_JS, str(tools_dir())],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    output = json.loads(proc.stdout)
    errors = [e["formattedMessage"] for e in output.get("errors", []) if e["severity"] == "error"]
    if errors:
        raise RuntimeError("; ".join(errors))
    contract = output["contracts"]["BenchEmitter.sol"]["BenchEmitter"]
    return {"abi": contract["abi"], "bytecode": "0x" + contract["evm"]["bytecode"]["object"]}


def emit(chain: Anvil, logs: int, per_tx: int) -> tuple[Any, int, int]:
    """Deploy the emitter and emit ``logs`` logs; (web3 contract, first block, last block)."""
    from web3 import Web3

    artifact = compile_emitter()
    w3 = Web3(Web3.HTTPProvider(chain.url, request_kwargs={"timeout": 60}))
    sender = ACCOUNTS[0][0]  # anvil's unlocked dev account: eth_sendTransaction, no signing
    factory = w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
    receipt = w3.eth.wait_for_transaction_receipt(factory.constructor().transact({"from": sender}))
    contract = w3.eth.contract(address=receipt["contractAddress"], abi=artifact["abi"])
    first_block = int(receipt["blockNumber"]) + 1
    token = 1
    last_hash = None
    while token <= logs:
        count = min(per_tx, logs - token + 1)
        call = contract.functions.emitGrants(token, count, KEY)
        last_hash = call.transact({"from": sender, "gas": 100_000 + GAS_PER_LOG * count})
        token += count
    assert last_hash is not None
    last = w3.eth.wait_for_transaction_receipt(last_hash)
    assert last["status"] == 1
    return contract, first_block, int(last["blockNumber"])


def run(logs: int, per_tx: int, naive_logs: int, workers: int, blocks_per_job: int) -> list[Result]:
    """Emit ``logs`` logs, ingest them each way, and compare (see the module docstring)."""
    from producers.listener.listener import Listener, ListenerConfig
    from producers.listener.store import ListenerStore
    from shared.chain.rpc import RpcClient

    params: dict[str, Any] = {"logs": logs, "logs_per_tx": per_tx}
    with Anvil() as chain, RedisServer() as server:
        contract, first, last = emit(chain, logs, per_tx)
        address = str(contract.address).lower()
        params["blocks"] = last - first + 1
        client = redis.Redis.from_url(server.url)

        # ceiling: the raw fetch alone
        body = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "eth_getLogs",
            "params": [{"address": address, "fromBlock": hex(first), "toBlock": hex(last)}],
        }
        with requests.Session() as session, timer() as t_raw:
            reply = msgspec.json.decode(session.post(chain.url, json=body, timeout=300).content)
        assert len(reply["result"]) == logs, len(reply["result"])

        # the listener
        keys = Keys(chain.chain_id, address)
        rpc = RpcClient([chain.url])
        config = ListenerConfig(
            chain_id=chain.chain_id, contract=address, start_block=first, confirmations=0
        )
        listener = Listener(rpc, ListenerStore(client, keys), config)
        with timer() as t_listener:
            while listener.step():
                pass
        rpc.close()
        assert client.xlen(keys.events) == logs

        # naive web3.py, on the first blocks of the same range (its cost per log is flat)
        naive_last = min(last, first - 1 + -(-naive_logs // per_tx))
        naive_stream = "bench:b1:naive"
        event = contract.events.NodeAccessGranted()
        with timer() as t_naive:
            raws = contract.w3.eth.get_logs(
                {"address": contract.address, "fromBlock": first, "toBlock": naive_last}
            )
            for raw in raws:
                decoded = event.process_log(raw)
                args = decoded["args"]
                entry = LogEntry(
                    chain_id=chain.chain_id,
                    contract=address,
                    block_number=int(decoded["blockNumber"]),
                    block_hash="0x" + bytes(decoded["blockHash"]).hex(),
                    tx_hash="0x" + bytes(decoded["transactionHash"]).hex(),
                    log_index=int(decoded["logIndex"]),
                    block_timestamp=0,
                    event=NodeAccessGranted(
                        int(args["tokenId"]),
                        args["nodeId"],
                        str(args["owner"]).lower(),
                        args["wireguardPublicKey"],
                    ),
                )
                client.xadd(naive_stream, to_fields(entry))  # type: ignore[arg-type]
        naive_count = int(client.xlen(naive_stream))
        params["naive_logs"] = naive_count
        backfill = _backfill(chain, address, first, last, workers, blocks_per_job)
        if backfill is not None:
            params.update(backfill_workers=workers, backfill_blocks_per_job=blocks_per_job)
        client.close()

    listener_rate = logs / t_listener[0]
    rows = [
        Result(
            id="B1.listener",
            name="B1 ingest: listener vs naive web3.py",
            value=listener_rate,
            unit="logs/s",
            baseline="web3 get_logs + process_log + one XADD per event",
            baseline_value=naive_count / t_naive[0],
            better="higher",
            ratio_meaning="faster",
            params=params,
        ),
        Result(
            id="B1.listener_ceiling",
            name="B1 ingest: listener vs raw eth_getLogs",
            value=listener_rate,
            unit="logs/s",
            baseline="raw eth_getLogs fetch alone (ceiling)",
            baseline_value=logs / t_raw[0],
            better="higher",
            ratio_meaning="of the ceiling",
            params=params,
            target=f">= {TARGET_CEILING:g} of the ceiling",
            met=listener_rate >= TARGET_CEILING * logs / t_raw[0],
        ),
    ]
    if backfill is not None:
        rows.append(
            Result(
                id="B1.backfill",
                name=f"B1 ingest: rq backfill ({workers} workers) vs naive web3.py",
                value=logs / backfill,
                unit="logs/s",
                baseline="web3 get_logs + process_log + one XADD per event",
                baseline_value=naive_count / t_naive[0],
                better="higher",
                ratio_meaning="faster",
                params=params,
                extra={"vs_raw_ceiling": (logs / backfill) / (logs / t_raw[0])},
            )
        )
    return rows


def _backfill(
    chain: Anvil, address: str, first: int, last: int, workers: int, blocks_per_job: int
) -> float | None:
    """Seconds the rq backfill takes for the same blocks, or None when it is not installed.

    ``workers`` rq workers (separate processes, started and idle beforehand) fetch
    ranges of ``blocks_per_job`` blocks; this process's listener appends them in
    order. Timed from the plan's creation to the last range appended.
    """
    try:
        from producers.backfill.jobs import enqueue
        from producers.backfill.store import BackfillStore
        from shared.chain.plan import Plan
        from shared.chain.worker import queue_for
    except ImportError:
        return None
    from rq import Worker

    from producers.listener.listener import Listener, ListenerConfig
    from producers.listener.store import ListenerStore
    from shared.chain.rpc import RpcClient

    keys = Keys(chain.chain_id, address)
    with RedisServer() as server:  # its own Redis: the workers use the default key prefix
        client = redis.Redis.from_url(server.url)
        queue = queue_for(client, keys)
        params = {"redis_url": server.url, "rpc_url": chain.url, **_ids(chain, address)}
        running = [Background("worker", params) for _ in range(workers)]
        try:
            wait_for(lambda: Worker.count(queue=queue) >= workers, timeout=60, what="rq workers")
            rpc = RpcClient([chain.url])
            config = ListenerConfig(
                chain_id=chain.chain_id, contract=address, start_block=first, confirmations=0
            )
            listener = Listener(rpc, ListenerStore(client, keys), config)
            with timer() as t_backfill:
                plan = Plan(uuid.uuid4().hex[:12], first, last, blocks_per_job)
                assert BackfillStore(client, keys).create(plan)
                enqueue(queue, plan, keys)
                while listener.next_block <= last:
                    if not listener.step():
                        time.sleep(0.002)
            rpc.close()
        finally:
            for worker in running:
                worker.kill(timeout=10)
        client.close()
    return t_backfill[0]


def _ids(chain: Anvil, address: str) -> dict[str, Any]:
    return {"chain_id": chain.chain_id, "contract": address}


def worker_child(params: dict[str, Any]) -> dict[str, Any]:
    """An rq backfill worker, as ``wgchain worker`` runs it, until SIGTERM."""
    from rq.serializers import JSONSerializer

    from producers.backfill.jobs import (
        MAINTENANCE_INTERVAL,
        WORKER_TTL,
        BackfillWorker,
        worker_name,
    )
    from shared.chain.rpc import RpcClient
    from shared.chain.worker import WorkerContext, configure, queue_for

    client = redis.Redis.from_url(params["redis_url"])
    rpc = RpcClient([params["rpc_url"]])
    keys = Keys(params["chain_id"], params["contract"])
    configure(WorkerContext(client, rpc, keys.chain_id, keys.contract, 2000))
    worker = BackfillWorker(
        [queue_for(client, keys)],
        name=worker_name(),
        connection=client,
        serializer=JSONSerializer,
        worker_ttl=WORKER_TTL,
        maintenance_interval=MAINTENANCE_INTERVAL,
    )
    worker.work(burst=False, logging_level="WARNING", with_scheduler=False)
    return {}
