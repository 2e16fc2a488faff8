"""Reading the chain's logs for ``audit verify``: in this process, or as rq jobs.

A verify over more than one block range hands the ranges to ``wgchain worker``
processes when any serve the network's queue (``rq.Worker.all``): one job per
range, run by :func:`verify_range` with the worker's own RPC endpoints, its
result (the range's logs, decoded, as JSON) read back here. A job that fails, or
that no worker finishes within :data:`JOB_WAIT` seconds, is read in this process
instead. Ranges are read with :func:`shared.chain.read.read_range` either way, so a
verify sees the chain exactly as the listener's workers do.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Final

import redis
from rq import Queue, Worker
from rq.job import Job, JobStatus

from consumers.audit.progress import bar
from shared.chain import worker
from shared.chain.plan import Span, Staged, decode_staged, encode_staged
from shared.chain.read import read_range
from shared.chain.rpc import RpcClient
from shared.keys import Keys
from shared.logs import log

#: Seconds a verify waits for its jobs before reading the rest itself.
JOB_WAIT: Final = float(worker.JOB_TIMEOUT)
#: Seconds rq keeps a verify job's result or failure.
JOB_TTL: Final = 600
#: Seconds between two looks at the jobs.
POLL: Final = 0.2

Fetch = Callable[[list[Span]], list[Staged]]


def verify_range(chain_id: int, contract: str, start: int, end: int) -> str:
    """The rq job: the logs of blocks ``start``-``end`` (a :class:`Staged` as JSON)."""
    ctx = worker.context_for("verify", chain_id, contract)
    staged = read_range(ctx.rpc, ctx.contract, chain_id, Span(start, end), ctx.max_block_range)
    return encode_staged(staged).decode()


def fetcher(
    client: redis.Redis, keys: Keys, rpc: RpcClient, max_block_range: int, show: bool
) -> Fetch:
    """A :data:`Fetch` for ``keys``' network: rq jobs when workers run, else in-process."""

    def local(span: Span) -> Staged:
        return read_range(rpc, keys.contract, keys.chain_id, span, max_block_range)

    def fetch(spans: list[Span]) -> list[Staged]:
        queue = worker.queue_for(client, keys)
        workers = Worker.all(queue=queue) if len(spans) > 1 else []
        with bar("reading the chain's logs", len(spans), show) as progress:
            if not workers:
                out = []
                for span in spans:
                    out.append(local(span))
                    progress.advance()
                return out
            log.bind(stage="audit").info(
                "{} ranges handed to {} rq workers", len(spans), len(workers)
            )
            return _through_jobs(queue, keys, spans, local, progress.advance)

    return fetch


def _through_jobs(
    queue: Queue,
    keys: Keys,
    spans: list[Span],
    local: Callable[[Span], Staged],
    advance: Callable[[int], None],
) -> list[Staged]:
    """Run ``spans`` as jobs; each failed or unfinished one is read by ``local``."""
    run = uuid.uuid4().hex[:12]
    jobs = queue.enqueue_many(
        [
            Queue.prepare_data(
                verify_range,
                args=[keys.chain_id, keys.contract, span.start, span.end],
                job_id=f"audit-verify-{run}-{span.name}",
                description=f"audit verify blocks {span.name}",
                timeout=worker.JOB_TIMEOUT,
                result_ttl=JOB_TTL,
                failure_ttl=JOB_TTL,
            )
            for span in spans
        ]
    )
    results: dict[Span, Staged] = {}
    pending = dict(zip(spans, jobs, strict=True))
    deadline = time.monotonic() + JOB_WAIT
    while pending and time.monotonic() < deadline:
        for span, job in list(pending.items()):
            status = job.get_status(refresh=True)
            if status == JobStatus.FINISHED:
                results[span] = decode_staged(str(job.return_value()))
            elif status in {JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED}:
                log.bind(stage="audit").warning("job {} {}; reading it here", span.name, status)
                results[span] = local(span)
            else:
                continue
            del pending[span]
            advance(1)
        time.sleep(POLL if pending else 0)
    for span, job in pending.items():
        _cancel(job)
        results[span] = local(span)
        advance(1)
    return [results[s] for s in spans]


def _cancel(job: Job) -> None:
    try:
        job.cancel()
    except Exception as exc:  # already running or gone: its result is simply not read
        log.bind(stage="audit").debug("cannot cancel {}: {}", job.id, exc)


__all__ = ["JOB_WAIT", "Fetch", "fetcher", "verify_range"]
