"""One reader of a block range of the contract's logs, for whoever needs the range whole.

:func:`read_range` reads ``eth_getLogs`` for the range (with the adaptive
:class:`RangeSizer`), the headers of the blocks it needs, checks that every log's block
hash is its header's hash (reading again, up to :data:`REREAD_ATTEMPTS` times, when a
reorg happened mid-read), and decodes the logs into undigested :class:`LogEntry` objects;
a log that does not decode becomes a dead letter. Reading a range twice gives the same
result, so a job that runs it may run more than once. Used by backfill jobs and by
``audit verify`` (in process or as rq jobs).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from shared.chain.decode import TOPIC0S, BlockHeader, LogRef, decode_log, log_ref
from shared.chain.plan import Span, Staged, StagedDead
from shared.chain.ranges import RangeSizer
from shared.chain.rpc import RpcClient
from shared.errors import ChainError, DecodeError
from shared.logs import log

#: Times a range is read again when its logs and headers disagree (a reorg mid-read).
REREAD_ATTEMPTS: Final = 5


@dataclass(frozen=True)
class Read:
    """One consistent read of a block range: its logs (chain order) and the headers used."""

    logs: list[tuple[LogRef, Mapping[str, Any]]]
    headers: dict[int, BlockHeader]

    def parts(self, size: int) -> list[list[tuple[LogRef, Mapping[str, Any]]]]:
        """The logs (chain order) in parts of at least ``size`` logs (the last may be
        smaller), never splitting a block; one (maybe empty) part for fewer logs."""
        parts: list[list[tuple[LogRef, Mapping[str, Any]]]] = []
        part: list[tuple[LogRef, Mapping[str, Any]]] = []
        for item in self.logs:
            if len(part) >= size and item[0].block_number != part[-1][0].block_number:
                parts.append(part)
                part = []
            part.append(item)
        parts.append(part)
        return parts


#: How a reader asks for the raw logs of ``[start, end]``: at once (the listener, which
#: sizes its ranges itself and hears of a refusal) or split as the provider requires.
FetchLogs = Callable[[int, int], Sequence[Mapping[str, Any]]]


def read_logs(
    rpc: RpcClient, contract: str, start: int, end: int, fetch: FetchLogs, *, who: str
) -> Read:
    """Logs and headers of ``[start, end]`` that agree on every block hash.

    A log whose block hash is not its header's means the chain moved during the read:
    the range is read again, up to :data:`REREAD_ATTEMPTS` times (then :class:`ChainError`).
    The headers of ``start`` and ``end`` are always read (the caller checks the parent).
    """
    for attempt in range(1, REREAD_ATTEMPTS + 1):
        logs: dict[tuple[int, int], tuple[LogRef, Mapping[str, Any]]] = {}
        for raw in fetch(start, end):
            ref = checked_ref(raw, contract, start, end)
            logs.setdefault(ref.position, (ref, raw))  # a provider may repeat a log
        headers = rpc.get_blocks({start, end} | {pos[0] for pos in logs})
        stale = sorted(p for p, (ref, _) in logs.items() if ref.block_hash != headers[p[0]].hash)
        if not stale:
            return Read([logs[p] for p in sorted(logs)], headers)
        log.bind(stage=who).warning(
            "blocks {}-{}: {} logs disagree with their headers (first at {}); read {} again",
            start,
            end,
            len(stale),
            stale[0],
            attempt,
        )
    raise ChainError(f"blocks {start}-{end} keep changing while being read")


def read_range(
    rpc: RpcClient, contract: str, chain_id: int, span: Span, max_block_range: int
) -> Staged:
    """Logs and headers of ``span`` that agree on every block hash, decoded (no digests)."""
    sizer = RangeSizer(max_block_range, initial=min(span.blocks, max_block_range))

    def fetch(start: int, end: int) -> Sequence[Mapping[str, Any]]:
        return rpc.get_logs(contract, TOPIC0S, start, end, sizer)

    read = read_logs(rpc, contract, span.start, span.end, fetch, who="backfill")
    headers = read.headers
    entries = []
    dead = []
    for ref, found in read.logs:
        try:
            entries.append(decode_log(found, chain_id, headers[ref.block_number].timestamp))
        except DecodeError as exc:
            ident = f"{ref.block_number}:{ref.log_index}"
            log.bind(stage="backfill").warning("dead-lettering log {}: {}", ident, exc)
            dead.append(StagedDead(ref.block_number, ident, str(exc), msgspec.json.encode(found)))
    return Staged(
        start=span.start,
        end=span.end,
        parent_hash=headers[span.start].parent_hash,
        end_hash=headers[span.end].hash,
        entries=entries,
        dead=dead,
    )


def checked_ref(raw: Any, contract: str, start: int, end: int) -> LogRef:
    """Position of a log from the provider; a malformed or foreign one is the provider's fault."""
    try:
        ref = log_ref(raw)
    except DecodeError as exc:
        raise ChainError(f"eth_getLogs returned a malformed log: {exc}") from None
    if ref.removed or ref.address != contract or not start <= ref.block_number <= end:
        raise ChainError(
            f"eth_getLogs returned a log it should not have (block {ref.block_number}, "
            f"address {ref.address}, removed {ref.removed})"
        )
    return ref


__all__ = ["REREAD_ATTEMPTS", "FetchLogs", "Read", "checked_ref", "read_logs", "read_range"]
