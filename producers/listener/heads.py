"""Low latency at the tip: an ``eth_subscribe("newHeads")`` WebSocket that wakes listeners.

RPC URLs are split by scheme (:func:`shared.chain.answers.split_urls`): http(s):// URLs carry every
JSON-RPC call (``eth_getLogs``, ``eth_getBlockByNumber``, ...) through the
:class:`~shared.chain.rpc.RpcClient`; ws(s):// URLs serve only this
subscription. Every new head sets the listeners' wake events, so a listener at the
tip steps at once instead of sleeping ``poll_interval``. Polling stays the fallback
(the loop always wakes at least every ``poll_interval``): a silent or dead
subscription costs latency, never data.

A subscription misses whatever happens while it is down. That is harmless here
because the listener is cursor-based: every disconnect and every reconnect sets the
wake events, and the step that follows re-scans every block after the cursor — the
range re-scan after a reconnect. Reconnects back off with jitter (the named policy
:data:`reconnect_retry`), rotating through the ws(s):// URLs.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, Final

import msgspec
from tenacity import RetryCallState, Retrying, retry_if_exception_type, wait_random_exponential
from websockets.exceptions import WebSocketException
from websockets.sync.client import ClientConnection, connect

from shared.chain.answers import endpoint
from shared.errors import ChainError
from shared.logs import log
from shared.validate import excerpt

#: Seconds a WebSocket handshake (and the subscription's reply) may take.
OPEN_TIMEOUT: Final = 10.0
#: Seconds between checks of the stop event while no message arrives.
RECV_TIMEOUT: Final = 1.0
#: Seconds the reconnect back-off grows to at most.
RECONNECT_MAX: Final = 15.0

_DECODER: Final = msgspec.json.Decoder()
_SUBSCRIBE: Final = {"jsonrpc": "2.0", "id": 1, "method": "eth_subscribe", "params": ["newHeads"]}
_log = log.bind(stage="heads")


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    _log.warning("newHeads: cannot subscribe ({}); retrying in {:.1f}s", exc, state.upcoming_sleep)


#: Reconnect policy of the subscription: jittered exponential backoff, network errors only.
#: Its stop condition (the watcher's stop event) is set per watcher.
reconnect_retry: Final = Retrying(
    retry=retry_if_exception_type((OSError, WebSocketException)),
    wait=wait_random_exponential(multiplier=0.5, max=RECONNECT_MAX),
    before_sleep=_log_retry,
    reraise=True,
)


class HeadWatcher:
    """A thread that keeps a newHeads subscription open and sets ``wakes`` on every head."""

    def __init__(self, urls: Sequence[str], wakes: Sequence[threading.Event]) -> None:
        if not urls:
            raise ValueError("HeadWatcher needs at least one ws(s):// URL")
        self.urls = list(urls)
        self.wakes = list(wakes)
        self._index = 0

    def start(self, stop: threading.Event) -> threading.Thread:
        """Run :meth:`run` in a daemon thread until ``stop`` is set."""
        thread = threading.Thread(target=self.run, args=(stop,), name="wgchain-heads", daemon=True)
        thread.start()
        return thread

    def run(self, stop: threading.Event) -> None:
        """Subscribe, wake on heads, and on a lost connection wake (re-scan) and reconnect."""
        retry = reconnect_retry.copy(stop=lambda _: stop.is_set(), sleep=stop.wait)
        while not stop.is_set():
            try:
                ws = retry(self._subscribe)
            except (OSError, WebSocketException):
                return  # stop was set while reconnecting
            except ChainError as exc:
                _log.error("newHeads unavailable ({}); polling only", exc)
                return
            with ws:
                self._wake()  # re-scan whatever the previous connection may have missed
                try:
                    self._listen(ws, stop)
                except (OSError, WebSocketException) as exc:
                    _log.warning("newHeads connection lost ({}); re-scanning, reconnecting", exc)
                    self._index = (self._index + 1) % len(self.urls)
            self._wake()

    def _subscribe(self) -> ClientConnection:
        """Connect to the current URL and subscribe; a JSON-RPC error is a ChainError."""
        url = self.urls[self._index]
        try:
            ws = connect(url, open_timeout=OPEN_TIMEOUT)
        except (OSError, WebSocketException):
            self._index = (self._index + 1) % len(self.urls)
            raise
        try:
            ws.send(msgspec.json.encode(_SUBSCRIBE).decode())
            reply = _decode(ws.recv(timeout=OPEN_TIMEOUT))
        except BaseException:
            ws.close()
            raise
        if not isinstance(reply, dict) or not isinstance(reply.get("result"), str):
            ws.close()
            raise ChainError(f"{endpoint(url)} refused eth_subscribe: {excerpt(str(reply))}")
        _log.info("newHeads subscribed at {}", endpoint(url))
        return ws

    def _listen(self, ws: ClientConnection, stop: threading.Event) -> None:
        """Wake the listeners on every notification until ``stop`` is set."""
        while not stop.is_set():
            try:
                message = ws.recv(timeout=RECV_TIMEOUT)
            except TimeoutError:
                continue
            note = _decode(message)
            if isinstance(note, dict) and note.get("method") == "eth_subscription":
                self._wake()

    def _wake(self) -> None:
        for wake in self.wakes:
            wake.set()


def _decode(message: str | bytes) -> Any:
    """A WebSocket message as JSON; None when it is not JSON (ignored, never logged raw)."""
    try:
        return _DECODER.decode(message)
    except msgspec.DecodeError:
        return None


__all__ = ["HeadWatcher", "reconnect_retry"]
