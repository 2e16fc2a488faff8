"""The listener's JSON-RPC client against a real anvil, behind a misbehaving HTTP proxy.

The proxy (a real HTTP server on a free port) forwards to anvil but can answer
the first requests with 503/429/garbage, refuse wide ``eth_getLogs`` ranges the
way hosted providers do (in their wordings, with or without a suggested range),
refuse batches, or answer a head (and safe/finalized block) lower than the real one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import msgspec
import pytest
import redis
import requests
from eth_utils.crypto import keccak

from producers.listener.listener import Listener, ListenerConfig, open_listener
from producers.listener.ranges import RangeSizer
from producers.listener.rpc import RpcClient
from producers.listener.store import ListenerStore
from shared.contract.client import AccessNFT
from shared.devnet.anvil import ACCOUNTS, Anvil
from shared.devnet.proc import free_port, wait_for
from shared.errors import ChainError, LogRangeError, ServiceUnavailable
from shared.events import LogEntry, from_fields
from shared.keys import Keys
from shared.settings import Settings

pytestmark = pytest.mark.integration

KEY = "A" * 43 + "="


class Proxy:
    """An HTTP JSON-RPC proxy to ``upstream`` with scripted misbehaviour."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        #: Replies served before proxying: an int is an HTTP status, bytes a 200 body.
        self.script: list[int | bytes] = []
        #: Every request answered with this HTTP status (None: proxy).
        self.always: int | None = None
        #: Widest eth_getLogs range accepted (blocks), None for any.
        self.max_range: int | None = None
        #: Wording of the refusal: a key of :data:`REFUSALS`.
        self.refusal = "quicknode"
        #: Block reported as the head and as the safe/finalized block (None: the real ones).
        self.behind: int | None = None
        self.behind_answers = 0
        self.batches = True
        self.requests = 0
        self.refused_ranges: list[tuple[int, int]] = []
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status, reply = proxy.answer(body)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v2/secret-api-key"

    def answer(self, body: bytes) -> tuple[int, bytes]:
        with self.lock:
            self.requests += 1
            if self.always is not None:
                return self.always, b"{}"
            if self.script:
                step = self.script.pop(0)
                return (step, b"{}") if isinstance(step, int) else (200, step)
        request = msgspec.json.decode(body)
        if isinstance(request, list):
            if not self.batches:
                error = {"code": -32600, "message": "batch requests are not supported"}
                return 200, msgspec.json.encode({"jsonrpc": "2.0", "id": None, "error": error})
            return 200, msgspec.json.encode([self.one(r) for r in request])
        return 200, msgspec.json.encode(self.one(request))

    def one(self, request: dict[str, Any]) -> dict[str, Any]:
        method, params = request["method"], request.get("params") or []
        if method == "eth_getLogs" and self.max_range is not None:
            lo, hi = (int(params[0][k], 16) for k in ("fromBlock", "toBlock"))
            if hi - lo + 1 > self.max_range:
                with self.lock:
                    self.refused_ranges.append((lo, hi))
                code, message = REFUSALS[self.refusal](lo, hi, self.max_range)
                return {
                    "jsonrpc": "2.0",
                    "id": request["id"],
                    "error": {"code": code, "message": message},
                }
        behind = self.behind
        if behind is not None and method == "eth_blockNumber":
            with self.lock:
                self.behind_answers += 1
            return {"jsonrpc": "2.0", "id": request["id"], "result": hex(behind)}
        if (
            behind is not None
            and method == "eth_getBlockByNumber"
            and params[0] in ("latest", "safe", "finalized")
        ):
            with self.lock:
                self.behind_answers += 1
            request = {**request, "params": [hex(behind), *params[1:]]}
        reply: dict[str, Any] = requests.post(self.upstream, json=request, timeout=30).json()
        return reply


def _alchemy(lo: int, hi: int, k: int) -> tuple[int, str]:
    return -32602, (
        "Log response size exceeded. You can make eth_getLogs requests with up to a 2K block "
        "range and no limit on the response size, or you can request any block range with a cap "
        f"of 10K logs in the response. Based on your parameters, this block range should work: "
        f"[{hex(lo)}, {hex(lo + k - 1)}]"
    )


#: Refusals of an eth_getLogs range [lo, hi] wider than k blocks: (code, message).
REFUSALS: dict[str, Callable[[int, int, int], tuple[int, str]]] = {
    "quicknode": lambda lo, hi, k: (-32602, f"eth_getLogs is limited to a {k} block range"),
    "alchemy": _alchemy,
    "infura": lambda lo, hi, k: (
        -32005,
        f"query returned more than 10000 results. Try with this block range "
        f"[{hex(lo)}, {hex(lo + k - 1)}].",
    ),
    "same_back": lambda lo, hi, k: (
        -32005,
        f"query returned more than 10000 results. Try with this block range [{lo}, {hi}].",
    ),
    "larger": lambda lo, hi, k: (
        -32602,
        f"Log response size exceeded. this block range should work: [{hex(lo)}, {hex(hi + k)}]",
    ),
    "plain": lambda lo, hi, k: (-32000, "block range too large"),
}


@pytest.fixture
def proxy(anvil: Anvil) -> Iterator[Proxy]:
    p = Proxy(anvil.url)
    p.thread.start()
    try:
        yield p
    finally:
        p.server.shutdown()
        p.server.server_close()


def test_transient_failures_are_retried(proxy: Proxy, anvil: Anvil) -> None:
    proxy.script = [503, 429, b"<html>bad gateway</html>"]
    client = RpcClient([proxy.url], retry_seconds=30)
    assert client.chain_id() == anvil.chain_id
    assert proxy.requests == 4


def test_client_errors_are_not_retried(proxy: Proxy) -> None:
    proxy.always = 403
    client = RpcClient([proxy.url], retry_seconds=30)
    with pytest.raises(ChainError, match="HTTP 403") as info:
        client.block_number()
    assert proxy.requests == 1
    assert "secret-api-key" not in str(info.value)


def test_jsonrpc_errors_are_chain_errors(anvil: Anvil) -> None:
    client = RpcClient([anvil.url], retry_seconds=30)
    with pytest.raises(ChainError):
        client.call("eth_noSuchMethod", [])


def test_unreachable_endpoints_give_up_with_service_unavailable() -> None:
    dead = [f"http://127.0.0.1:{free_port()}/key-{i}" for i in range(2)]
    client = RpcClient(dead, retry_seconds=1, timeout=1)
    with pytest.raises(ServiceUnavailable) as info:
        client.block_number()
    assert "key-" not in str(info.value)


def test_failover_moves_to_the_next_url(proxy: Proxy, anvil: Anvil) -> None:
    proxy.always = 502
    client = RpcClient([proxy.url, anvil.url], retry_seconds=30)
    assert client.block_number() == anvil.block_number()
    assert proxy.requests == 1
    assert client.endpoint == anvil.url


def test_batches_fall_back_to_single_calls(proxy: Proxy, anvil: Anvil) -> None:
    anvil.mine(3)
    proxy.batches = False
    client = RpcClient([proxy.url], retry_seconds=30)
    headers = client.get_blocks([1, 3, 2])
    assert sorted(headers) == [1, 2, 3]
    assert headers[3].parent_hash == headers[2].hash
    assert headers[2].parent_hash == headers[1].hash


def test_refused_ranges_are_halved_and_nothing_is_lost(
    proxy: Proxy, anvil: Anvil, nft: AccessNFT, redis_client: redis.Redis
) -> None:
    for i in range(6):
        nft.mint(ACCOUNTS[1 + i % 3][0], f"node-{i}", KEY)
        anvil.mine(i)
    proxy.max_range = 3
    keys = Keys(anvil.chain_id, nft.address.lower())
    cfg = ListenerConfig(chain_id=anvil.chain_id, contract=nft.address, confirmations=0)
    listener = Listener(RpcClient([proxy.url]), ListenerStore(redis_client, keys), cfg)
    while listener.step():
        pass
    assert proxy.refused_ranges  # the provider did refuse the wide range
    raw: Any = redis_client.xrange(keys.events)
    entries = [from_fields(fields) for _, fields in raw]
    assert all(isinstance(e, LogEntry) for e in entries)
    minted = [e.event.node_id for e in entries if isinstance(e, LogEntry)]  # type: ignore[union-attr]
    assert minted == [f"node-{i}" for i in range(6)]


# --- adaptive ranges, a lagging head, finality tags ---------------------------------------

TOPICS = [
    "0x" + keccak(text=sig).hex()
    for sig in (
        "NodeAccessGranted(uint256,string,address,string)",
        "NodeAccessRevoked(uint256,string)",
        "NodeAccessTransferred(uint256,address,address)",
        "PublicKeyUpdated(address,string)",
    )
]


def scan(anvil: Anvil, contract: str, to_block: int) -> list[tuple[int, int, str]]:
    """Independent eth_getLogs scan of the contract's four events (block, index, tx)."""
    logs = anvil.rpc(
        "eth_getLogs",
        [{"address": contract, "topics": [TOPICS], "fromBlock": "0x0", "toBlock": hex(to_block)}],
    )
    return sorted(
        (int(x["blockNumber"], 16), int(x["logIndex"], 16), x["transactionHash"].lower())
        for x in logs
    )


def appended(client: redis.Redis, keys: Keys) -> list[tuple[int, int, str]]:
    raw: Any = client.xrange(keys.events)
    out = []
    for _, fields in raw:
        entry = from_fields(fields)
        assert isinstance(entry, LogEntry)
        out.append((entry.block_number, entry.log_index, entry.tx_hash))
    return out


def spread_history(anvil: Anvil, nft: AccessNFT, count: int = 8) -> None:
    """``count`` mints spread over about 5 blocks each."""
    for i in range(count):
        nft.mint(ACCOUNTS[1 + i % 3][0], f"node-{i}", KEY)
        anvil.mine(1 + i % 7)


def listener_via(
    url: str, anvil: Anvil, nft: AccessNFT, client: redis.Redis, **cfg: Any
) -> Listener:
    config = ListenerConfig(chain_id=anvil.chain_id, contract=nft.address, **cfg)
    store = ListenerStore(client, Keys(anvil.chain_id, nft.address.lower()))
    return Listener(RpcClient([url], retry_seconds=30), store, config)


@pytest.mark.parametrize("refusal", ["alchemy", "infura", "same_back", "larger", "plain"])
def test_refusals_in_each_wording_still_give_the_complete_stream(
    refusal: str, proxy: Proxy, anvil: Anvil, nft: AccessNFT, redis_client: redis.Redis
) -> None:
    spread_history(anvil, nft)
    proxy.max_range = 4
    proxy.refusal = refusal
    listener = listener_via(
        proxy.url, anvil, nft, redis_client, confirmations=0, max_block_range=64
    )
    steps = 0
    while listener.step():
        steps += 1
    head = anvil.block_number()
    cursor = listener.store.load_cursor()
    assert cursor is not None
    assert cursor.block == head  # reached the tip
    got = appended(redis_client, Keys(anvil.chain_id, nft.address.lower()))
    expected = scan(anvil, nft.address, head)
    assert len(expected) == 8
    assert got == expected  # complete, in chain order, no duplicates
    assert proxy.refused_ranges  # the provider did refuse
    # The learned size is kept across steps: the wide range is not asked again each step.
    assert steps > 4
    assert len(proxy.refused_ranges) <= (1 if refusal in ("alchemy", "infura") else 5)


def test_a_provider_that_refuses_a_single_block_is_a_hard_error(
    proxy: Proxy, anvil: Anvil, nft: AccessNFT, redis_client: redis.Redis
) -> None:
    nft.mint(ACCOUNTS[1][0], "alpha", KEY)
    proxy.max_range = 0
    proxy.refusal = "same_back"
    listener = listener_via(proxy.url, anvil, nft, redis_client, confirmations=0)
    with pytest.raises(LogRangeError, match="even for blocks 0-0"):
        listener.step()
    assert listener.store.load_cursor() is None


@pytest.mark.parametrize("finality", [{"confirmations": 0}, {"finality_tag": "safe"}])
def test_a_head_below_the_cursor_just_waits_and_catches_up_later(
    finality: dict[str, Any],
    proxy: Proxy,
    anvil: Anvil,
    nft: AccessNFT,
    redis_client: redis.Redis,
) -> None:
    spread_history(anvil, nft, count=3)
    anvil.mine(40)  # so the safe block (head - 32) is past the first mints
    listener = listener_via(
        proxy.url, anvil, nft, redis_client, max_block_range=8, poll_interval=0.05, **finality
    )
    while listener.step():
        pass
    keys = Keys(anvil.chain_id, nft.address.lower())
    before = appended(redis_client, keys)
    assert before
    cursor = listener.store.load_cursor()
    assert cursor is not None

    nft.mint(ACCOUNTS[2][0], "late", KEY)
    anvil.mine(40)
    proxy.behind = cursor.block - 5  # the node we now reach lags behind our cursor
    stop = threading.Event()
    thread = threading.Thread(target=listener.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_for(lambda: proxy.behind_answers >= 3, timeout=20, what="polls of a lagging head")
        assert thread.is_alive()  # no error: it waits
        assert appended(redis_client, keys) == before  # nothing appended, nothing retracted
        assert listener.store.load_cursor() == cursor
        proxy.behind = None  # the node catches up
        head = anvil.block_number()
        final = head if "confirmations" in finality else head - 32
        wait_for(
            lambda: (listener.store.load_cursor() or cursor).block >= final,
            timeout=30,
            what="listener caught up",
        )
    finally:
        stop.set()
        thread.join(timeout=20)
    assert not thread.is_alive()
    assert appended(redis_client, keys) == scan(anvil, nft.address, final)
    assert len(appended(redis_client, keys)) == len(before) + 1


@pytest.mark.parametrize(("tag", "depth"), [("safe", 32), ("finalized", 64)])
def test_safe_and_finalized_append_only_up_to_the_tagged_block(
    tag: str, depth: int, anvil: Anvil, nft: AccessNFT, redis_client: redis.Redis
) -> None:
    early = nft.mint(ACCOUNTS[1][0], "early", KEY)
    anvil.mine(depth + 5)
    late = nft.mint(ACCOUNTS[2][0], "late", KEY)
    cfg = Settings(rpc_url=anvil.url, contract=nft.address, finality=tag, confirmations=0)
    listener = open_listener(cfg, redis_client, RpcClient(cfg.rpc_urls, retry_seconds=30))
    while listener.step():
        pass
    keys = Keys(anvil.chain_id, nft.address.lower())
    tagged = int(anvil.rpc("eth_getBlockByNumber", [tag, False])["number"], 16)
    assert tagged == anvil.block_number() - depth
    cursor = listener.store.load_cursor()
    assert cursor is not None
    assert cursor.block == tagged  # not the head, although confirmations=0
    assert [p[2] for p in appended(redis_client, keys)] == [early.tx_hash.lower()]

    anvil.mine(depth)  # now the late mint is behind the tag too
    while listener.step():
        pass
    got = appended(redis_client, keys)
    assert [p[2] for p in got] == [early.tx_hash.lower(), late.tx_hash.lower()]
    assert got == scan(anvil, nft.address, anvil.block_number() - depth)


def test_get_logs_covers_the_whole_range_through_refusals(
    proxy: Proxy, anvil: Anvil, nft: AccessNFT
) -> None:
    spread_history(anvil, nft, count=5)
    proxy.max_range = 3
    proxy.refusal = "plain"
    client = RpcClient([proxy.url], retry_seconds=30)
    head = anvil.block_number()
    sizer = RangeSizer(100)
    logs = client.get_logs(nft.address.lower(), TOPICS, 0, head, sizer)
    got = sorted(
        (int(x["blockNumber"], 16), int(x["logIndex"], 16), x["transactionHash"].lower())
        for x in logs
    )
    assert got == scan(anvil, nft.address, head)
    assert len(got) == len(logs) == 5
    assert proxy.refused_ranges
    assert sizer.size <= 3  # the sizer learned the provider's limit
