"""A fault-injecting JSON-RPC proxy in front of a real node (anvil), for tests.

A real HTTP server on a free port forwards every request to ``upstream`` but can,
as told: answer scripted faults (HTTP statuses, garbage bodies, delays longer than
the client's timeout, a reply that trickles in forever), answer faults chosen by
a ``plan`` function of the request number (bursts), refuse wide ``eth_getLogs``
ranges in the wordings of hosted providers, refuse batches, answer a head (and
safe/finalized block) lower than the real one, or a scripted sequence of heads
(a node whose head goes backwards). :meth:`FaultProxy.stop` closes its port, as
a provider that dies.

Use it as a context manager, or ``start()``/``stop()``; ``from faultproxy import
FaultProxy`` works in any test (``tests/`` is on ``sys.path``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import msgspec
import requests
from eth_utils.crypto import keccak

from shared.devnet.proc import free_port

#: topic0 of the contract's events, computed here (independently of the listener).
TOPICS = [
    "0x" + keccak(text=sig).hex()
    for sig in (
        "NodeAccessGranted(uint256,string,address,string)",
        "NodeAccessRevoked(uint256,string)",
        "NodeAccessTransferred(uint256,address,address)",
        "PublicKeyUpdated(address,string)",
        "SubscriptionUpdate(uint256,uint64)",
    )
]


def chain_positions(url: str, contract: str, to_block: int) -> list[tuple[int, int, str]]:
    """Independent eth_getLogs scan of the contract's events: sorted (block, index, tx)."""
    query = {"address": contract, "topics": [TOPICS], "fromBlock": "0x0", "toBlock": hex(to_block)}
    body = {"jsonrpc": "2.0", "id": 1, "method": "eth_getLogs", "params": [query]}
    logs = requests.post(url, json=body, timeout=30).json()["result"]
    return sorted(
        (int(x["blockNumber"], 16), int(x["logIndex"], 16), x["transactionHash"].lower())
        for x in logs
    )


@dataclass(frozen=True)
class Delay:
    """Wait ``seconds`` before answering (then forward the request as usual)."""

    seconds: float


@dataclass(frozen=True)
class Trickle:
    """Answer 200 and then one blank (valid JSON whitespace) every 50 ms, for ``seconds``."""

    seconds: float = 5.0


@dataclass(frozen=True)
class RpcError:
    """Answer a JSON-RPC error (HTTP ``status``) to every request of the batch or call."""

    code: int
    message: str
    status: int = 200


#: One fault: an HTTP status (body ``{}``), a 200 body, or one of the classes above.
Fault = int | bytes | Delay | Trickle | RpcError


@dataclass(frozen=True)
class Refusal:
    """How a provider refuses an eth_getLogs range: JSON-RPC error and HTTP status."""

    code: int
    message: str
    data: Any = None
    status: int = 200


def _alchemy(lo: int, hi: int, k: int) -> Refusal:
    return Refusal(
        -32602,
        "Log response size exceeded. You can make eth_getLogs requests with up to a 2K block "
        "range and no limit on the response size, or you can request any block range with a cap "
        f"of 10K logs in the response. Based on your parameters, this block range should work: "
        f"[{hex(lo)}, {hex(lo + k - 1)}]",
    )


#: Refusals of an eth_getLogs range [lo, hi] wider than k blocks, by provider.
REFUSALS: dict[str, Callable[[int, int, int], Refusal]] = {
    "quicknode": lambda lo, hi, k: Refusal(-32602, f"eth_getLogs is limited to a {k} block range"),
    "quicknode_413": lambda lo, hi, k: Refusal(
        -32614, "eth_getLogs is limited to a 10,000 range", status=413
    ),
    "alchemy": _alchemy,
    "alchemy_400": lambda lo, hi, k: Refusal(
        -32600,
        f"You can make eth_getLogs requests with up to a {k} block range. Based on your "
        f"parameters, this block range should work: [{hex(lo)}, {hex(lo + k - 1)}]",
        status=400,
    ),
    "infura": lambda lo, hi, k: Refusal(
        -32005,
        f"query returned more than 10000 results. Try with this block range "
        f"[{hex(lo)}, {hex(lo + k - 1)}].",
        data={"from": hex(lo), "limit": 10000, "to": hex(hi)},
    ),
    "infura_range": lambda lo, hi, k: Refusal(-32602, f"range {hi - lo + 1} exceeds limit of {k}"),
    "reth": lambda lo, hi, k: Refusal(
        -32602, f"query exceeds max results 20000, retry with the range {lo}-{lo + k - 1}"
    ),
    "tenderly": lambda lo, hi, k: Refusal(
        -32602,
        "invalid params",
        data={"error_id": "4ed9", "payload": f"range {hi - lo + 1} is bigger than range limit {k}"},
    ),
    "geth_fork": lambda lo, hi, k: Refusal(
        -32000,
        f"block range is larger than max block range, block range = {hi - lo + 1}, "
        f"max block range = {k}",
    ),
    "same_back": lambda lo, hi, k: Refusal(
        -32005, f"query returned more than 10000 results. Try with this block range [{lo}, {hi}]."
    ),
    "larger": lambda lo, hi, k: Refusal(
        -32602,
        f"Log response size exceeded. this block range should work: [{hex(lo)}, {hex(hi + k)}]",
    ),
    "plain": lambda lo, hi, k: Refusal(-32000, "block range too large"),
}


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that gave up (timeout) broke the pipe: expected, not worth a traceback."""


class FaultProxy:
    """An HTTP JSON-RPC proxy to ``upstream`` with scripted misbehaviour."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        #: Faults served first, one per request, before anything else.
        self.script: list[Fault] = []
        #: The fault for request number n (from 1) and its method ("batch" for a batch).
        self.plan: Callable[[int, str], Fault | None] | None = None
        #: Every request answered with this HTTP status (None: proxy).
        self.always: int | None = None
        #: Widest eth_getLogs range accepted (blocks), None for any.
        self.max_range: int | None = None
        #: Wording of the refusal: a key of :data:`REFUSALS`.
        self.refusal = "quicknode"
        #: Block reported as the head and as the safe/finalized block (None: the real ones).
        self.behind: int | None = None
        #: eth_blockNumber answers served first, one per call (then the real head).
        self.heads: list[int] = []
        self.batches = True
        #: Requests holding an eth_getLogs (alone or in a batch) answered, first, by a lagging
        #: backend behind a load balancer: its chain ends at ``stale_head``, so it answers no
        #: logs past it and no headers past it; other requests reach an up-to-date backend.
        self.stale_requests = 0
        self.stale_head = 0
        #: Counters: requests received, faults injected, lagging answers, refused ranges.
        self.requests = 0
        self.faults = 0
        self.behind_answers = 0
        self.refused_ranges: list[tuple[int, int]] = []
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                fault = proxy.fault(body)
                if isinstance(fault, Trickle):
                    self.trickle(fault.seconds)
                    return
                if isinstance(fault, Delay):
                    time.sleep(fault.seconds)
                status, reply = proxy.answer(body, fault)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def trickle(self, seconds: float) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                end = time.monotonic() + seconds
                while time.monotonic() < end:
                    self.wfile.write(b" ")
                    self.wfile.flush()
                    time.sleep(0.05)

        self.server = _Server(("127.0.0.1", free_port()), Handler)
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        """The proxy's URL, with an API key in its path (which must never be logged)."""
        return f"http://127.0.0.1:{self.server.server_address[1]}/v2/secret-api-key"

    def start(self) -> FaultProxy:
        """Serve in a background thread."""
        self.thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the port (connections are refused from now on)."""
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def fault(self, body: bytes) -> Fault | None:
        """The fault (if any) for this request; counts it."""
        with self.lock:
            self.requests += 1
            fault: Fault | None = None
            if self.script:
                fault = self.script.pop(0)
            elif self.plan is not None:
                try:
                    request = msgspec.json.decode(body)
                except msgspec.DecodeError:
                    request = {}
                method = request.get("method", "?") if isinstance(request, dict) else "batch"
                fault = self.plan(self.requests, method)
            if fault is not None:
                self.faults += 1
            return fault

    def answer(self, body: bytes, fault: Fault | None) -> tuple[int, bytes]:
        """HTTP status and body for a request (``fault`` already drawn by :meth:`fault`)."""
        if self.always is not None:
            return self.always, b"{}"
        if isinstance(fault, int):
            return fault, b"{}"
        if isinstance(fault, bytes):
            return 200, fault
        request = msgspec.json.decode(body)
        calls = request if isinstance(request, list) else [request]
        stale = False
        if any(isinstance(c, dict) and c.get("method") == "eth_getLogs" for c in calls):
            with self.lock:
                stale, self.stale_requests = (
                    self.stale_requests > 0,
                    max(0, self.stale_requests - 1),
                )
        if isinstance(fault, RpcError):
            error = {"code": fault.code, "message": fault.message}
            ids = [r["id"] for r in request] if isinstance(request, list) else [request["id"]]
            replies = [{"jsonrpc": "2.0", "id": i, "error": error} for i in ids]
            reply = replies if isinstance(request, list) else replies[0]
            return fault.status, msgspec.json.encode(reply)
        if isinstance(request, list):
            if not self.batches:
                error = {"code": -32600, "message": "batch requests are not supported"}
                return 200, msgspec.json.encode({"jsonrpc": "2.0", "id": None, "error": error})
            return 200, msgspec.json.encode([self.one(r, stale)[1] for r in request])
        status, reply = self.one(request, stale)
        return status, msgspec.json.encode(reply)

    def one(self, request: dict[str, Any], stale: bool = False) -> tuple[int, dict[str, Any]]:
        """Answer one JSON-RPC request: refused, lagging, or forwarded upstream."""
        method, params = request["method"], request.get("params") or []
        if stale and method == "eth_getLogs":
            lo, hi = (int(params[0][k], 16) for k in ("fromBlock", "toBlock"))
            if lo > self.stale_head:
                return 200, {"jsonrpc": "2.0", "id": request["id"], "result": []}
            clamped = {**params[0], "toBlock": hex(min(hi, self.stale_head))}
            request = {**request, "params": [clamped]}
        numbered = method == "eth_getBlockByNumber" and params[0].startswith("0x")
        if stale and numbered and int(params[0], 16) > self.stale_head:
            return 200, {"jsonrpc": "2.0", "id": request["id"], "result": None}
        if method == "eth_getLogs" and self.max_range is not None:
            lo, hi = (int(params[0][k], 16) for k in ("fromBlock", "toBlock"))
            if hi - lo + 1 > self.max_range:
                with self.lock:
                    self.refused_ranges.append((lo, hi))
                r = REFUSALS[self.refusal](lo, hi, self.max_range)
                error: dict[str, Any] = {"code": r.code, "message": r.message}
                if r.data is not None:
                    error["data"] = r.data
                return r.status, {"jsonrpc": "2.0", "id": request["id"], "error": error}
        if method == "eth_blockNumber":
            with self.lock:
                head = self.heads.pop(0) if self.heads else self.behind
                if head is not None:
                    self.behind_answers += 1
            if head is not None:
                return 200, {"jsonrpc": "2.0", "id": request["id"], "result": hex(head)}
        behind = self.behind
        if (
            behind is not None
            and method == "eth_getBlockByNumber"
            and params[0] in ("latest", "safe", "finalized")
        ):
            with self.lock:
                self.behind_answers += 1
            request = {**request, "params": [hex(behind), *params[1:]]}
        reply: dict[str, Any] = requests.post(self.upstream, json=request, timeout=30).json()
        return 200, reply


__all__ = [
    "REFUSALS",
    "TOPICS",
    "Delay",
    "Fault",
    "FaultProxy",
    "Refusal",
    "RpcError",
    "Trickle",
    "chain_positions",
]
