"""newHeads over WebSocket against a real anvil: prompt appends, and a broken connection.

The listener polls only every 60 seconds here, so an entry appended well within
that time was woken by the subscription (or by the re-scan after a reconnect).
The WebSocket goes through a small TCP proxy that the test stops and restarts,
which breaks the connection the way a provider restart or a network cut does.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from test_lease import KEY, Listeners, complete, listener_group, positions

from shared.contract.client import AccessNFT
from shared.devnet.anvil import ACCOUNTS, Anvil
from shared.devnet.proc import free_port, wait_for
from shared.devnet.redis_server import RedisServer
from shared.keys import Keys

pytestmark = pytest.mark.integration

#: Seconds between polls of the test listener: far longer than any wait below.
POLL = "60"
#: Seconds the test waits for an entry (less than POLL: only a wake-up can explain it).
PROMPT = 30


class TcpProxy:
    """Forwards 127.0.0.1:``port`` to ``target``; :meth:`stop` cuts every connection."""

    def __init__(self, target: int) -> None:
        self.port = free_port()
        self.target = target
        self._server: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> TcpProxy:
        server = socket.create_server(("127.0.0.1", self.port))  # SO_REUSEADDR: same port again
        server.settimeout(0.2)
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        with self._lock:
            for conn in self._conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                conn.close()
            self._conns.clear()

    def _accept(self, server: socket.socket) -> None:
        while self._server is server:
            try:
                client, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            client.settimeout(None)
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def listeners(
    tmp_path: Path, redis_server: RedisServer, anvil: Anvil, nft: AccessNFT
) -> Iterator[Listeners]:
    with listener_group(tmp_path, redis_server, anvil, nft) as group:
        yield group


@pytest.fixture
def proxy(anvil: Anvil) -> Iterator[TcpProxy]:
    the_proxy = TcpProxy(anvil.port).start()
    try:
        yield the_proxy
    finally:
        the_proxy.stop()


def test_new_heads_wake_the_listener_and_a_reconnect_rescans(
    listeners: Listeners,
    proxy: TcpProxy,
    anvil: Anvil,
    nft: AccessNFT,
    redis_client: redis.Redis,
) -> None:
    keys = Keys(anvil.chain_id, nft.address.lower())
    ws_url = f"ws://127.0.0.1:{proxy.port}"
    listeners.spawn("W", WGCHAIN_RPC_URL=f"{anvil.url},{ws_url}", WGCHAIN_POLL_INTERVAL=POLL)

    def log() -> str:
        return listeners.log("W")

    def cursor_at_head() -> bool:
        raw = redis_client.hget(keys.cursor, "block")
        return raw is not None and int(raw) == anvil.block_number()

    wait_for(lambda: "newHeads subscribed" in log(), timeout=20, what="subscription")
    wait_for(cursor_at_head, timeout=20, what="the first step")

    nft.mint(ACCOUNTS[1][0], "first", KEY)  # a new head: appended long before the next poll
    wait_for(lambda: len(positions(redis_client, keys)) == 1, timeout=PROMPT, what="first")

    proxy.stop()  # the connection breaks; what happens now reaches no subscription
    wait_for(lambda: "newHeads connection lost" in log(), timeout=20, what="disconnect seen")
    nft.mint(ACCOUNTS[2][0], "while-down", KEY)
    proxy.start()
    wait_for(lambda: log().count("newHeads subscribed") == 2, timeout=PROMPT, what="reconnect")
    wait_for(lambda: len(positions(redis_client, keys)) == 2, timeout=PROMPT, what="re-scan")

    nft.mint(ACCOUNTS[3][0], "after", KEY)  # the new subscription wakes it again
    wait_for(lambda: complete(redis_client, keys, anvil.url), timeout=PROMPT, what="complete")
    got = positions(redis_client, keys)
    assert len(got) == len(set(got)) == 3
