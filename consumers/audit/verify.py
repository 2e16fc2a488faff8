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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, Final

import redis
from eth_abi.abi import decode as abi_decode
from eth_abi.abi import encode as abi_encode
from eth_utils.crypto import keccak

from consumers.audit.entries import Decoded, Undecodable, decode, void_ids
from consumers.audit.streams import read_stream
from consumers.registry.fold import RegistryFold
from consumers.registry.state import RegistryState
from shared.chain.compare import (
    DUPLICATE,
    EXTRA,
    MISMATCH,
    MISSING,
    UNDECODABLE,
    LogDiff,
    compare_logs,
)
from shared.chain.plan import Span, Staged, split
from shared.chain.rpc import BATCH_LIMIT, RpcClient
from shared.errors import ChainError
from shared.events import GENESIS_DIGEST, LogEntry, Retracted
from shared.keys import Keys
from shared.redis_log import START, as_str, redis_retry
from shared.validate import excerpt

#: Seconds between two looks while waiting for the registry stage or for rq jobs.
POLL: Final = 0.2


@dataclass(frozen=True)
class Problem:
    """Something that does not match: where (stream id, block, log index) and what."""

    entry_id: str
    block: int
    log_index: int
    what: str

    def __str__(self) -> str:
        where = [f"entry {self.entry_id}"] if self.entry_id else []
        if self.block >= 0:
            where.append(f"block {self.block}")
        if self.log_index >= 0:
            where.append(f"log {self.log_index}")
        return f"{', '.join(where) or 'log'}: {self.what}"


@dataclass
class Check:
    """One of the three checks: its name, a summary, and its problems in order."""

    name: str
    summary: str
    problems: list[Problem] = field(default_factory=list)


# --- 1. the digest chain (pure) ------------------------------------------------------


def check_digests(
    events: Sequence[Decoded], keys: Keys, cursor: dict[str, str] | None
) -> list[Problem]:
    """Problems of the digest chain of ``events`` and of the cursor that closes it."""
    problems: list[Problem] = []
    expected: str | None = GENESIS_DIGEST
    for entry_id, entry in events:
        if isinstance(entry, Undecodable):
            problems.append(Problem(entry_id, -1, -1, f"does not decode: {entry.reason}"))
            expected = None
            continue
        if not isinstance(entry, LogEntry | Retracted):
            kind = type(entry).__name__
            problems.append(Problem(entry_id, -1, -1, f"a {kind} has no place in events"))
            expected = None
            continue
        block = entry.block_number
        index = entry.log_index if isinstance(entry, LogEntry) else -1
        if not entry.digest_ok():
            problems.append(
                Problem(entry_id, block, index, "digest does not match the entry's content")
            )
        if expected is not None and entry.prev != expected:
            problems.append(
                Problem(
                    entry_id,
                    block,
                    index,
                    "prev is not the digest of the entry before it "
                    "(an entry was deleted, inserted or re-chained)",
                )
            )
        if isinstance(entry, LogEntry) and (
            entry.chain_id != keys.chain_id or entry.contract.lower() != keys.contract
        ):
            problems.append(
                Problem(
                    entry_id,
                    block,
                    index,
                    f"belongs to chain {entry.chain_id} contract {excerpt(entry.contract)}",
                )
            )
        expected = entry.digest
    if cursor:
        last_id = events[-1][0] if events else ""
        if expected is not None and cursor.get("digest", GENESIS_DIGEST) != expected:
            problems.append(
                Problem(
                    cursor.get("last_id", ""),
                    int(cursor.get("block", -1)),
                    -1,
                    "the listener cursor's digest is not the last entry's "
                    "(entries at the end were deleted or edited)",
                )
            )
        elif cursor.get("last_id", last_id) != last_id:
            problems.append(
                Problem(
                    cursor.get("last_id", ""),
                    -1,
                    -1,
                    f"the listener cursor names {cursor.get('last_id')} as the last entry, "
                    f"the stream ends at {last_id or 'nothing'}",
                )
            )
    return problems


# --- 2. the chain logs ---------------------------------------------------------------


def check_logs(
    events: Sequence[Decoded], fetched: Iterable[Staged], lo: int, hi: int
) -> list[Problem]:
    """Problems between the effective log entries of blocks ``lo``..``hi`` and the chain's logs."""
    void = void_ids(events)
    ours = [
        (entry_id, entry)
        for entry_id, entry in events
        if isinstance(entry, LogEntry) and entry_id not in void and lo <= entry.block_number <= hi
    ]
    logs: list[LogEntry] = []
    undecodable: set[str] = set()
    for staged in fetched:
        logs += staged.entries
        undecodable.update(d.ident for d in staged.dead)
    diffs = compare_logs(ours, logs, undecodable)
    # an edit the content does not show is a digest problem: part 1 names it
    return [_problem(d) for d in diffs if d.kind != MISMATCH or d.fields]


def _problem(diff: LogDiff) -> Problem:
    """A difference in the audit's words (its digests are checked in part 1)."""
    where = (diff.entry_id, diff.block, diff.log_index)
    if diff.kind == MISSING and diff.log is not None:
        tx = diff.log.tx_hash
        return Problem("", *where[1:], f"log of tx {tx} is on chain but not in the events stream")
    assert diff.entry is not None
    if diff.kind == DUPLICATE:
        return Problem(*where, f"duplicate of entry {diff.first_id}")
    if diff.kind == UNDECODABLE:
        return Problem(
            *where, "its log on chain does not decode (the listener sets such logs aside)"
        )
    if diff.kind == EXTRA:
        return Problem(*where, f"no such log on chain (tx {diff.entry.tx_hash})")
    return Problem(*where, "differs from the chain's log: " + ", ".join(diff.fields))


# --- 3. the contract's views ---------------------------------------------------------

_GET_NODE_ACCESS: Final = keccak(text="getNodeAccess(uint256)")[:4]
_OWNER_OF: Final = keccak(text="ownerOf(uint256)")[:4]
_KEY_OF: Final = keccak(text="getPublicKeyByOwner(address)")[:4]
_EXPIRES_AT: Final = keccak(text="expiresAt(uint256)")[:4]


def expirations(state: RegistryState) -> dict[int, int]:
    """token -> the expiration the registry holds (tokens a ``SubscriptionUpdate`` named)."""
    return {t: r.expires for t, r in state.tokens.items() if r.expires is not None}


def _calldata(selector: bytes, types: list[str], args: list[Any]) -> str:
    return "0x" + (selector + abi_encode(types, args)).hex()


def eth_calls(
    rpc: RpcClient, contract: str, block: int, calls: Sequence[str]
) -> list[bytes | ChainError]:
    """``eth_call`` of each calldata at ``block`` (batched); a revert is its ChainError."""
    out: list[bytes | ChainError] = []
    for start in range(0, len(calls), BATCH_LIMIT):
        chunk = [
            ("eth_call", [{"to": contract, "data": c}, hex(block)])
            for c in calls[start : start + BATCH_LIMIT]
        ]
        try:
            results: list[Any] = rpc.batch(chunk)
        except ChainError:  # one call reverted: ask them one by one to tell which
            results = []
            for method, params in chunk:
                try:
                    results.append(rpc.call(method, params))
                except ChainError as exc:
                    results.append(exc)
        for result in results:
            if isinstance(result, ChainError):
                out.append(result)
            elif isinstance(result, str) and result.startswith("0x"):
                out.append(bytes.fromhex(result[2:]))
            else:
                out.append(ChainError(f"eth_call answered {str(result)[:40]!r}"))
    return out


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


def check_views(
    rpc: RpcClient,
    contract: str,
    block: int,
    state: RegistryState,
    expires: dict[int, int] | None = None,
) -> tuple[list[Problem], int, int]:
    """Problems between the registry state and the contract's views at ``block``.

    ``expires`` (token -> expiration) are the expirations the registry holds: each is
    compared with ``expiresAt`` at ``block``. Returns the problems and the numbers of
    tokens and owners checked.
    """
    tokens = sorted(state.tokens.items())
    owners = sorted({r.owner for _, r in tokens if r.owner} | set(state.keys))
    limited = sorted((expires or {}).items())
    calls = [_calldata(_GET_NODE_ACCESS, ["uint256"], [t]) for t, _ in tokens]
    calls += [_calldata(_OWNER_OF, ["uint256"], [t]) for t, _ in tokens]
    calls += [_calldata(_KEY_OF, ["address"], [o]) for o in owners]
    calls += [_calldata(_EXPIRES_AT, ["uint256"], [t]) for t, _ in limited]
    results = eth_calls(rpc, contract, block, calls)
    n_tokens, n_owners = len(tokens), len(owners)
    access, holders, keys, expiring = (
        results[:n_tokens],
        results[n_tokens : 2 * n_tokens],
        results[2 * n_tokens : 2 * n_tokens + n_owners],
        results[2 * n_tokens + n_owners :],
    )
    problems: list[Problem] = []

    def bad(what: str) -> None:
        problems.append(Problem("", block, -1, what))

    for (token, record), got, holder in zip(tokens, access, holders, strict=True):
        name = f"registry token {token}"
        if isinstance(got, ChainError):
            bad(f"{name}: the contract does not know it ({got})")
            continue
        if isinstance(holder, ChainError):
            bad(f"{name}: the contract does not know it ({holder})")
            continue
        node, key, _, active = abi_decode(["bytes", "bytes", "uint256", "bool"], got)
        (owner,) = abi_decode(["address"], holder)
        owner = str(owner).lower()
        if _text(node) != record.node_id:
            bad(f"{name}: node {excerpt(record.node_id)}, the contract says {excerpt(_text(node))}")
        if bool(active) != record.active:
            bad(f"{name}: active {record.active}, the contract says {bool(active)}")
        if owner != record.owner:
            bad(f"{name}: owner {excerpt(record.owner)}, the contract says {owner}")
        want = state.keys.get(record.owner, "")
        if _text(key) != want:
            bad(f"{name}: key {excerpt(want)}, the contract says {excerpt(_text(key))}")
    for owner, got in zip(owners, keys, strict=True):
        if isinstance(got, ChainError):
            bad(f"key of {excerpt(owner)}: {got}")
            continue
        (key,) = abi_decode(["bytes"], got)
        want = state.keys.get(owner, "")
        if _text(key) != want:
            bad(
                f"key of {excerpt(owner)}: {excerpt(want)} in the registry, "
                f"the contract says {excerpt(_text(key))}"
            )
    for (token, want_expiry), got in zip(limited, expiring, strict=True):
        name = f"registry token {token}"
        if isinstance(got, ChainError):
            bad(f"{name}: expires {want_expiry}, the contract has no expiresAt for it ({got})")
            continue
        try:
            (expiry,) = abi_decode(["uint64"], got)
        except Exception:  # an answer that is not a uint64 word: hostile or not ERC-5643
            bad(f"{name}: expiresAt answered {excerpt(got.hex())}, not a uint64")
            continue
        if int(expiry) != want_expiry:
            bad(f"{name}: expires {want_expiry} in the registry, the contract says {int(expiry)}")
    return problems, len(tokens), len(owners)


# --- the run -------------------------------------------------------------------------


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


__all__ = [
    "Check",
    "Problem",
    "Verify",
    "check_digests",
    "check_logs",
    "check_views",
    "eth_calls",
    "expirations",
    "live",
]
