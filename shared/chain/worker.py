"""What an rq job of a ``wgchain worker`` process gets from it: the network it serves.

One worker process serves one network's queue (``Keys.backfill_queue``) with its own
``WGCHAIN_RPC_URL``; jobs arrive as JSON (never pickle, never an RPC URL) and run with
the context the worker set once (:func:`configure`). Two kinds of job run there: a
backfill's ``producers.backfill.jobs.fetch_range`` and an audit's
``consumers.audit.jobs.verify_range``; both read their range with
:func:`shared.chain.read.read_range`, so they see the chain exactly alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import redis
from rq import Queue
from rq.serializers import JSONSerializer

from shared.chain.rpc import RpcClient
from shared.errors import ChainError, WgchainError
from shared.keys import Keys

#: Seconds a job may run before rq stops it (RPC calls retry for up to two minutes each).
JOB_TIMEOUT: Final = 600


@dataclass(frozen=True)
class WorkerContext:
    """What a job needs from the worker process it runs in."""

    client: redis.Redis
    rpc: RpcClient
    chain_id: int
    contract: str
    max_block_range: int


_context: WorkerContext | None = None


def configure(context: WorkerContext | None) -> None:
    """Set the context jobs of this process use (``wgchain worker`` calls it once)."""
    global _context  # noqa: PLW0603 - one worker process serves one network
    _context = context


def context_for(kind: str, chain_id: int, contract: str) -> WorkerContext:
    """This worker's context, checked against the network a ``kind`` job was queued for."""
    ctx = _context
    if ctx is None:
        raise WgchainError(f"{kind} jobs run in `wgchain worker` (no worker context here)")
    if (chain_id, contract.lower()) != (ctx.chain_id, ctx.contract):
        raise ChainError(
            f"{kind} job for chain {chain_id} contract {contract[:42]}, but this worker serves "
            f"chain {ctx.chain_id} contract {ctx.contract}"
        )
    return ctx


def queue_for(client: redis.Redis, keys: Keys) -> Queue:
    """The rq queue of ``keys``' network, with the JSON serializer."""
    return Queue(keys.backfill_queue, connection=client, serializer=JSONSerializer)


__all__ = ["JOB_TIMEOUT", "WorkerContext", "configure", "context_for", "queue_for"]
