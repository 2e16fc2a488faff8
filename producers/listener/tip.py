"""The listener at the tip of the chain: one look per poll, and what it says about the chain.

Each poll at the tip is one JSON-RPC batch (:func:`look`): the head, the final block
(``head - confirmations``, or the ``safe`` / ``finalized`` block) and the header the
node now has at the cursor's block. That header tells two things a block number
cannot:

* **same-height reorgs**: the block at the cursor's height was replaced (a reorg
  with no newer block yet). The listener rewinds at once, through its usual
  retraction path, instead of waiting for the next block to show a wrong parent;
* **a head below the cursor**: the node is behind what was already appended (an
  RPC URL of another chain, a devnet restarted without its state, a node
  resyncing). The listener can only wait, but :class:`Watch` says so: once it has
  lasted :data:`BELOW_GRACE` seconds, an error line, repeated every minute while
  it lasts, a 503 on ``/healthz``, and the problem in the listener's health record
  in Redis (``Keys.listener_health``), which ``wgchain status`` and ``/readyz`` read.

The health record is written at most every :data:`RECORD_EVERY` seconds (and at
once when a problem starts or ends): the head, the final block, the cursor, when,
and the problem (``""`` when none).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any, Final

import redis

from shared import health
from shared.chain.decode import header, quantity
from shared.chain.rpc import RpcClient
from shared.durations import duration
from shared.errors import ChainError, DecodeError
from shared.health import REMIND_EVERY
from shared.keys import Keys
from shared.logs import log

#: Seconds the head must stay below the cursor before it is reported (a load-balanced
#: provider may answer from a node one block behind for a moment).
BELOW_GRACE: Final = 10.0
#: Seconds between two writes of the health record while nothing changes.
RECORD_EVERY: Final = 1.0


@dataclass(frozen=True)
class Look:
    """What one poll saw."""

    #: The node's latest block.
    head: int
    #: The last block final enough to append.
    final: int
    #: The hash the node now has at the cursor's block (None: no cursor, or not served).
    cursor_hash: str | None


def look(rpc: RpcClient, finality_tag: str, confirmations: int, cursor_block: int | None) -> Look:
    """Head, final block and the cursor block's header, in one batch (one node answers all)."""
    calls: list[tuple[str, list[Any]]] = [("eth_blockNumber", [])]
    if finality_tag:
        calls.append(("eth_getBlockByNumber", [finality_tag, False]))
    if cursor_block is not None:
        calls.append(("eth_getBlockByNumber", [hex(cursor_block), False]))
    results = rpc.batch(calls)
    try:
        head = quantity(results[0], "eth_blockNumber")
        if finality_tag:
            if results[1] is None:
                raise ChainError(f"the node has no {finality_tag} block")
            final = header(results[1]).number
        else:
            final = head - confirmations
        at_cursor = results[-1] if cursor_block is not None else None
        cursor_hash = header(at_cursor).hash if at_cursor is not None else None
    except DecodeError as exc:
        raise ChainError(f"head poll: {exc}") from None
    return Look(head, final, cursor_hash)


class Watch:
    """The chain as the listener sees it: problems named, logged and recorded (see above)."""

    def __init__(self, client: redis.Redis, keys: Keys, work: health.Work | None = None) -> None:
        self.client = client
        self.keys = keys
        #: The loop whose /healthz a problem turns to 503 (set per lease term).
        self.work = work
        self.log = log.bind(stage="listener", network=keys.tag)
        self.problem = ""
        self._below_since: float | None = None
        self._reminded = 0.0
        self._recorded = -RECORD_EVERY
        self._last: dict[str, str | int | float] = {}

    def saw(self, seen: Look, cursor_block: int | None) -> None:
        """One poll's outcome: report a head below the cursor once it lasts, record it."""
        now = time.monotonic()
        below = cursor_block is not None and seen.final < cursor_block
        if not below:
            if self._below_since is not None and self.problem:
                self.log.warning(
                    "the chain's final block {} is back at or above the cursor {}",
                    seen.final,
                    cursor_block,
                )
            self._below_since = None
            self._set("")
        else:
            assert cursor_block is not None
            if self._below_since is None:
                self._below_since = now
            lasted = now - self._below_since
            if lasted >= BELOW_GRACE:
                problem = (
                    f"the chain's head {seen.head} (final block {seen.final}) is below the "
                    f"cursor {cursor_block}: an RPC node of another chain, a chain restarted "
                    "without its state, or a node still syncing; nothing is appended until "
                    f"the chain passes block {cursor_block}"
                )
                if not self.problem or now - self._reminded >= REMIND_EVERY:
                    self._reminded = now
                    self.log.error("{} (for {})", problem, duration(lasted))
                self._set(problem)
        fields: dict[str, str | int | float] = {"head": seen.head, "final": seen.final}
        if cursor_block is not None:
            fields["cursor"] = cursor_block
        self.record(fields)

    def trouble(self, problem: str) -> None:
        """A problem that is not about the chain's height (the RPC unreachable), or ""."""
        if problem != self.problem:
            self._set(problem)
            self.record({})

    def _set(self, problem: str) -> None:
        changed = problem != self.problem
        self.problem = problem
        if self.work is not None:
            self.work.trouble(problem)
        if changed:
            self._recorded = -RECORD_EVERY  # write it now

    def record(self, fields: dict[str, str | int | float]) -> None:
        """Write the health record (throttled); a Redis failure is left to the main loop."""
        self._last.update(fields)
        now = time.monotonic()
        if now - self._recorded < RECORD_EVERY:
            return
        self._recorded = now
        doc: dict[Any, Any] = {**self._last, "at": time.time(), "problem": self.problem}
        with contextlib.suppress(redis.RedisError):
            self.client.hset(self.keys.listener_health, mapping=doc)


__all__ = ["BELOW_GRACE", "Look", "Watch", "look"]
