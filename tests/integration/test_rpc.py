"""The listener's JSON-RPC client against a real anvil, behind a misbehaving HTTP proxy.

The proxy (a real HTTP server on a free port) forwards to anvil but can answer
the first requests with 503/429/garbage, refuse wide ``eth_getLogs`` ranges the
way hosted providers do, or refuse batches.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import msgspec
import pytest
import redis
import requests

from producers.listener.listener import Listener, ListenerConfig
from producers.listener.rpc import RpcClient
from producers.listener.store import ListenerStore
from shared.contract.client import AccessNFT
from shared.devnet.anvil import ACCOUNTS, Anvil
from shared.devnet.proc import free_port
from shared.errors import ChainError, ServiceUnavailable
from shared.events import LogEntry, from_fields
from shared.keys import Keys

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
        if request["method"] == "eth_getLogs" and self.max_range is not None:
            lo, hi = (int(request["params"][0][k], 16) for k in ("fromBlock", "toBlock"))
            if hi - lo + 1 > self.max_range:
                with self.lock:
                    self.refused_ranges.append((lo, hi))
                message = f"eth_getLogs is limited to a {self.max_range} block range"
                return {
                    "jsonrpc": "2.0",
                    "id": request["id"],
                    "error": {"code": -32602, "message": message},
                }
        reply: dict[str, Any] = requests.post(self.upstream, json=request, timeout=30).json()
        return reply


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
