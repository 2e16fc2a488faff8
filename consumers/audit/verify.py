"""``audit verify``: check the log and the registry against the chain itself.

Three checks, each naming the first bad entry it finds:

1. **Digest chain** (whole ``events`` stream, no RPC): every entry decodes, its
   ``digest`` covers its content (``digest_ok``), its ``prev`` is the digest of the
   entry before it (the genesis digest for the first), ``Retracted`` entries
   included; the listener cursor's digest is the last entry's. An entry edited,
   inserted or deleted by hand breaks one of these.
2. **Chain logs** (blocks ``--from``..``--to``, at most the cursor's block): the
   contract's logs are read again (``eth_getLogs`` over ranges of
   ``max_block_range`` blocks, and the headers of their blocks) and every effective
   ``LogEntry`` must be one of them with the same block hash, tx hash, log index,
   timestamp and decoded data; every log must be in the stream (or in the
   listener's dead letters). Ranges run in this process, or as rq jobs when
   ``wgchain worker`` processes serve the network's queue and there is more than
   one range.
3. **Contract views**: the live registry state, once the registry stage has folded
   the whole log, must match ``getNodeAccess``, ``ownerOf`` and
   ``getPublicKeyByOwner`` called at the cursor's block, for every token and owner
   it knows; and ``expiresAt`` (ERC-5643, docs/design.md §5) against the expiration
   the registry holds, for every token that has one (tokens never named by a
   ``SubscriptionUpdate`` never expire, and a contract without ERC-5643 is never asked).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass
from typing import Any, Final

import redis

from consumers.audit.checks import Check, Problem, check_digests, check_logs
from consumers.audit.entries import Decoded, decode
from consumers.audit.streams import read_stream
from consumers.audit.views import check_views, expirations
from consumers.registry.fold import RegistryFold
from shared.chain.plan import Span, Staged, split
from shared.chain.rpc import RpcClient
from shared.events import LogEntry
from shared.keys import Keys
from shared.redis_log import START, as_str, redis_retry

#: Seconds between two looks while waiting for the registry stage or for rq jobs.
POLL: Final = 0.2


@dataclass(frozen=True)
class Live:
    """The cursor, the end of the log and the registry state, read atomically."""

    cursor: dict[str, str]
    events_last: str
    registry_at: str
    registry_state: dict[str, bytes]


def live(client: redis.Redis, keys: Keys) -> Live:
    """Read :class:`Live` in one transaction."""

    def read() -> list[Any]:
        pipe = client.pipeline(transaction=True)
        pipe.hgetall(keys.cursor)
        pipe.xrevrange(keys.events, count=1)
        pipe.get(keys.position("registry"))
        pipe.hgetall(keys.state("registry"))
        result: list[Any] = pipe.execute()
        return result

    cursor, last, position, state = redis_retry(read)
    return Live(
        cursor={as_str(k): as_str(v) for k, v in cursor.items()},
        events_last=as_str(last[0][0]) if last else START,
        registry_at=as_str(position) if position else START,
        registry_state={as_str(k): v for k, v in state.items()},
    )


#: Reads the chain's logs of block ranges (in this process, or through rq workers).
Fetcher = Callable[[list[Span]], list[Staged]]


@dataclass(eq=False)
class Verify:
    """One ``audit verify`` run."""

    client: redis.Redis
    keys: Keys
    rpc: RpcClient
    _: KW_ONLY
    fetch: Fetcher
    max_block_range: int
    wait: float = 30.0
    show_progress: bool = False

    @property
    def show(self) -> bool:
        return self.show_progress

    def _settled(self) -> Live:
        """A snapshot in which the registry stage has folded the whole log (waits for it)."""
        deadline = time.monotonic() + self.wait
        while True:
            now = live(self.client, self.keys)
            if now.registry_at == now.events_last or time.monotonic() >= deadline:
                return now
            time.sleep(POLL)

    def run(self, from_block: int | None, to_block: int | None) -> list[Check]:
        """The three checks (see the module docstring)."""
        snap = self._settled()
        events: list[Decoded] = []
        if snap.events_last != START:
            events = decode(read_stream(self.client, self.keys.events, high=snap.events_last))
        checks = [
            Check(
                "digest chain",
                f"{len(events)} entries, from genesis to the cursor",
                check_digests(events, self.keys, snap.cursor or None),
            )
        ]
        checks.append(self._logs(events, snap, from_block, to_block))
        checks.append(self._views(snap))
        return checks

    def _logs(
        self, events: list[Decoded], snap: Live, from_block: int | None, to_block: int | None
    ) -> Check:
        cursor_block = int(snap.cursor.get("block", -1)) if snap.cursor else -1
        first = next((e.block_number for _, e in events if isinstance(e, LogEntry)), cursor_block)
        lo = first if from_block is None else from_block
        hi = cursor_block if to_block is None else min(to_block, cursor_block)
        if hi < lo or hi < 0:
            return Check("chain logs", f"no appended block in {lo}-{hi}: nothing to compare")
        spans = split(lo, hi, self.max_block_range)
        fetched = self.fetch(spans)
        problems = check_logs(events, fetched, lo, hi)
        count = sum(len(s.entries) for s in fetched)
        return Check(
            "chain logs", f"blocks {lo}-{hi}: {count} logs in {len(spans)} ranges", problems
        )

    def _views(self, snap: Live) -> Check:
        if not snap.cursor:
            return Check("contract views", "no cursor yet: nothing to compare")
        block = int(snap.cursor["block"])
        if snap.registry_at != snap.events_last:
            problem = Problem(
                "",
                block,
                -1,
                f"the registry stage is at {snap.registry_at}, the log ends at "
                f"{snap.events_last}: cannot compare it with the contract (run again)",
            )
            return Check("contract views", f"at block {block}", [problem])
        state = RegistryFold().load(snap.registry_state)
        expires = expirations(state)
        problems, tokens, owners = check_views(self.rpc, self.keys.contract, block, state, expires)
        summary = f"block {block}: {tokens} tokens, {owners} owners, {len(expires)} expirations"
        return Check("contract views", summary, problems)


__all__ = ["Fetcher", "Live", "Verify", "live"]
