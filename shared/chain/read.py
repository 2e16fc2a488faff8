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

from collections.abc import Mapping
from typing import Any, Final

import msgspec

from shared.chain.decode import TOPIC0S, LogRef, decode_log, log_ref
from shared.chain.plan import Span, Staged, StagedDead
from shared.chain.ranges import RangeSizer
from shared.chain.rpc import RpcClient
from shared.errors import ChainError, DecodeError
from shared.logs import log

#: Times a range is read again when its logs and headers disagree (a reorg mid-read).
REREAD_ATTEMPTS: Final = 5


def read_range(
    rpc: RpcClient, contract: str, chain_id: int, span: Span, max_block_range: int
) -> Staged:
    """Logs and headers of ``span`` that agree on every block hash, decoded (no digests)."""
    sizer = RangeSizer(max_block_range, initial=min(span.blocks, max_block_range))
    for attempt in range(1, REREAD_ATTEMPTS + 1):
        raws = rpc.get_logs(contract, TOPIC0S, span.start, span.end, sizer)
        logs: dict[tuple[int, int], tuple[LogRef, Mapping[str, Any]]] = {}
        for raw in raws:
            ref = _ref(raw, contract, span)
            logs.setdefault(ref.position, (ref, raw))  # a provider may repeat a log
        headers = rpc.get_blocks({span.start, span.end} | {pos[0] for pos in logs})
        stale = [p for p, (ref, _) in logs.items() if ref.block_hash != headers[p[0]].hash]
        if not stale:
            break
        log.bind(stage="backfill").warning(
            "blocks {}: {} logs disagree with their headers; read {} again",
            span.name,
            len(stale),
            attempt,
        )
    else:
        raise ChainError(f"blocks {span.name} keep changing while being read")
    entries = []
    dead = []
    for position in sorted(logs):
        ref, found = logs[position]
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


def _ref(raw: Any, contract: str, span: Span) -> LogRef:
    """Position of a log from the provider; a malformed or foreign one is the provider's fault."""
    try:
        ref = log_ref(raw)
    except DecodeError as exc:
        raise ChainError(f"eth_getLogs returned a malformed log: {exc}") from None
    if ref.removed or ref.address != contract or not span.start <= ref.block_number <= span.end:
        raise ChainError(
            f"eth_getLogs returned a log it should not have (block {ref.block_number}, "
            f"address {ref.address}, removed {ref.removed})"
        )
    return ref


__all__ = ["REREAD_ATTEMPTS", "read_range"]
