"""The chain head for status answers, asked in the background so a request never waits on RPC.

A dashboard polls ``/v1/status`` every second; asking the RPC node each time would
cost a round trip per poll (and up to the RPC timeout per URL when the node is
down). :class:`ChainHead` keeps the last answer for ``ttl`` seconds and refreshes it
in one background thread at a time, waiting a moment for it (an RPC node that answers
at once gives a fresh head; one that hangs costs a request at most
:data:`FRESH_WAIT`); an unreachable node reads as unknown (None), never as an old
number.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Final

from consumers.status.snapshot import chain_head

#: Seconds a chain head answer is reused before it is asked again.
HEAD_TTL: Final = 1.0
#: Seconds the very first request waits for the first answer.
FIRST_WAIT: Final = 1.0
#: Seconds a later request waits for the refresh it started (then it takes the last answer).
FRESH_WAIT: Final = 0.25


class ChainHead:
    """The latest block of the first RPC URL that answers, refreshed in the background."""

    def __init__(
        self,
        urls: Sequence[str],
        ttl: float = HEAD_TTL,
        ask: Callable[[list[str]], int | None] = chain_head,
    ) -> None:
        self.urls = list(urls)
        self.ttl = ttl
        self._ask = ask
        self._lock = threading.Lock()
        self._value: int | None = None
        self._at = -float("inf")
        self._busy = False
        self._first = threading.Event()
        self._done = threading.Event()

    def latest(self) -> int | None:
        """The last answer (None: unknown); starts a refresh when it is older than ``ttl``."""
        if not self.urls:
            return None
        started = None
        with self._lock:
            if time.monotonic() - self._at > self.ttl and not self._busy:
                self._busy = True
                started = self._done = threading.Event()
                threading.Thread(target=self._refresh, name="chain-head", daemon=True).start()
        if not self._first.wait(FIRST_WAIT):
            return None
        if started is not None:
            started.wait(FRESH_WAIT)
        with self._lock:
            return self._value

    def _refresh(self) -> None:
        value = None
        try:
            value = self._ask(self.urls)
        finally:
            with self._lock:
                self._value, self._at, self._busy = value, time.monotonic(), False
                done = self._done
            self._first.set()
            done.set()


__all__ = ["ChainHead"]
