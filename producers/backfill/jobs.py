"""What rq runs: fetch one block range of a plan into the staging area; and the worker itself.

Jobs travel as JSON (:class:`rq.serializers.JSONSerializer`: arguments are the
plan id, chain id, contract and the range's ends; never pickle, never an RPC URL:
each worker uses its own ``WGCHAIN_RPC_URL``). A job reads ``eth_getLogs`` for
its range with the listener's adaptive :class:`RangeSizer`, the headers of the
blocks it needs, checks that every log's block hash is its header's hash (read
again otherwise), decodes the logs into undigested :class:`LogEntry` objects
(undecodable ones become dead letters) and stages the result. Fetching a range
twice stages the same bytes, so a job may run more than once.

Abandoned jobs: rq notices a dead worker's job only when its started-registry
entry expires (job timeout + 60 s for a :class:`SimpleWorker`) and a worker runs
its maintenance (every 10 minutes by default). Too slow for a backfill, so while
a job runs it renews a claim key with a TTL of :data:`CLAIM_TTL` seconds from a
thread; :func:`requeue_abandoned` (run by ``wgchain backfill --wait`` every
second and by every worker's maintenance) retries a started job whose claim
lapsed, through rq's own retry bookkeeping (``Retry(max=JOB_RETRIES)``).
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Final

import redis
from rq import Queue, Retry, SimpleWorker, get_current_job
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry, StartedJobRegistry
from rq.utils import now

from producers.backfill.store import BackfillStore
from producers.listener.store import ListenerStore
from shared import health, shutdown
from shared.chain import worker
from shared.chain.plan import Plan, Span
from shared.chain.read import read_range
from shared.chain.worker import JOB_TIMEOUT
from shared.keys import Keys
from shared.logs import log
from shared.redis_log import redis_retry

#: Times a failed or abandoned job is run again before it counts as failed.
JOB_RETRIES: Final = 4
#: Seconds a running job's claim lives without renewal (abandonment is noticed after this).
CLAIM_TTL: Final = 6
#: Seconds between renewals of a running job's claim.
CLAIM_RENEW: Final = 1.5
#: Seconds rq keeps a finished job's result / a failed job.
RESULT_TTL: Final = 24 * 3600
FAILURE_TTL: Final = 7 * 24 * 3600
#: rq worker: seconds between maintenance runs (which include :func:`requeue_abandoned`),
#: and its registration TTL (an idle worker wakes up every ``WORKER_TTL - 15`` seconds).
MAINTENANCE_INTERVAL: Final = 15
WORKER_TTL: Final = 30


def job_id(plan: Plan, span: Span) -> str:
    return f"backfill-{plan.id}-{span.start}-{span.end}"


def enqueue(queue: Queue, plan: Plan, keys: Keys) -> list[Job]:
    """One job per range of ``plan``, in block order."""
    datas = [
        Queue.prepare_data(
            fetch_range,
            args=[plan.id, keys.chain_id, keys.contract, span.start, span.end],
            job_id=job_id(plan, span),
            description=f"backfill blocks {span.name}",
            timeout=JOB_TIMEOUT,
            result_ttl=RESULT_TTL,
            failure_ttl=FAILURE_TTL,
            retry=Retry(max=JOB_RETRIES),
        )
        for span in plan.spans
    ]
    return queue.enqueue_many(datas)


def fetch_range(plan_id: str, chain_id: int, contract: str, start: int, end: int) -> dict[str, Any]:
    """The rq job: fetch blocks ``start``-``end`` and stage them for plan ``plan_id``."""
    ctx = worker.context_for("backfill", chain_id, contract)
    span = Span(start, end)
    keys = Keys(chain_id, ctx.contract)
    store = BackfillStore(ctx.client, keys)
    job_log = log.bind(stage="backfill", network=keys.tag, blocks=span.name)
    skip = _skip_reason(store, ListenerStore(ctx.client, keys), plan_id, span)
    if skip:
        job_log.info("blocks {}: nothing to do ({})", span.name, skip)
        return {"skipped": skip}
    job = get_current_job()
    holder = job.worker_name if job is not None and job.worker_name else "?"
    with _claimed(ctx.client, keys.backfill_claim(span.name), holder):
        staged = read_range(ctx.rpc, ctx.contract, chain_id, span, ctx.max_block_range)
        written = store.stage(plan_id, staged)
    job_log.info(
        "blocks {}: {} {} entries, {} dead letters",
        span.name,
        "staged" if written else "dropped (plan gone)",
        len(staged.entries),
        len(staged.dead),
    )
    return {"entries": len(staged.entries), "dead": len(staged.dead), "staged": written}


def _skip_reason(store: BackfillStore, listener: ListenerStore, plan_id: str, span: Span) -> str:
    plan = store.plan()
    if plan is None or plan.id != plan_id:
        return "its backfill no longer runs"
    cursor = listener.load_cursor()
    if cursor is not None and cursor.block >= span.end:
        return "already appended"
    if store.is_staged(span):
        return "already staged"
    return ""


@contextmanager
def _claimed(client: redis.Redis, key: str, holder: str) -> Iterator[None]:
    """Hold ``key`` (renewed from a thread) while the block runs; a killed process lets it lapse."""
    stop = threading.Event()
    redis_retry(client.set, key, holder, ex=CLAIM_TTL)

    def renew() -> None:
        while not stop.wait(CLAIM_RENEW):
            try:
                client.set(key, holder, ex=CLAIM_TTL)
            except redis.RedisError as exc:
                log.bind(stage="backfill").warning("cannot renew claim {}: {}", key, exc)

    thread = threading.Thread(target=renew, name="backfill-claim", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        redis_retry(client.delete, key)


def _job_range(job: Job) -> tuple[Keys, Span] | None:
    """The network and range of a backfill job (None for anything else in the queue)."""
    args = job.args
    if job.func_name != f"{__name__}.fetch_range" or len(args) != 5:
        return None
    _, chain_id, contract, start, end = args
    return Keys(int(chain_id), str(contract).lower()), Span(int(start), int(end))


def requeue_abandoned(queue: Queue) -> list[str]:
    """Retry the started jobs of ``queue`` whose claim lapsed (their worker died); their ids.

    A job just picked up has not written its claim yet: jobs started less than
    :data:`CLAIM_TTL` seconds ago are left alone. Setting the lapsed claim (NX)
    first makes concurrent callers retry a job once. A job out of retries is
    moved to the failed registry, as rq does with abandoned jobs.
    """
    client = queue.connection
    registry = StartedJobRegistry(queue=queue)
    requeued = []
    for ident, _ in registry.get_job_and_execution_ids(cleanup=False):
        job = queue.fetch_job(ident)
        if job is None or job.get_status() != JobStatus.STARTED:
            continue
        if job.started_at is None or (now() - job.started_at).total_seconds() < CLAIM_TTL:
            continue
        found = _job_range(job)
        if found is None:
            continue
        keys, span = found
        if not client.set(keys.backfill_claim(span.name), "requeued", nx=True, ex=CLAIM_TTL):
            continue  # its worker is alive (or someone else requeues it)
        retry = bool(job.retries_left)
        with client.pipeline() as pipe:
            registry.remove_executions(job, pipeline=pipe)
            if retry:
                job.retry(queue, pipe)
            else:
                job.set_status(JobStatus.FAILED, pipeline=pipe)
                FailedJobRegistry(queue=queue).add(
                    job, exc_string="abandoned: its worker stopped (claim lapsed)", pipeline=pipe
                )
            pipe.execute()
        log.bind(stage="backfill").warning(
            "blocks {}: its worker stopped mid-job; {}",
            span.name,
            "retrying it" if retry else "out of retries, failed",
        )
        requeued.append(ident)
    return requeued


class BackfillWorker(SimpleWorker):
    """An rq worker that runs jobs in its own process and retries abandoned jobs in maintenance.

    In-process (no fork per job): jobs are I/O-bound, and a killed worker takes
    its job with it instead of leaving an orphan work horse behind. Its heartbeats
    tell ``shared.health`` that Redis answers and the worker loop goes on; a stop
    signal sets the process-wide shutdown flag (so ``wgchain worker`` does not start
    it again).
    """

    #: The loop's health record (``wgchain worker`` sets it).
    health_record: health.Work | None = None

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        super().heartbeat(timeout, pipeline)  # type: ignore[no-untyped-call]
        if pipeline is None:
            health.REDIS.ok()
        if self.health_record is not None:
            self.health_record.beat()

    def request_stop(self, signum: Any, frame: Any) -> None:
        shutdown.SHUTDOWN.set()
        super().request_stop(signum, frame)  # type: ignore[no-untyped-call]

    def run_maintenance_tasks(self) -> None:
        super().run_maintenance_tasks()  # type: ignore[no-untyped-call]
        for queue in self.queues:
            requeue_abandoned(queue)

    def teardown(self) -> None:
        """Unregister on the way out; a stop while Redis is unreachable still exits cleanly.

        The worker's key then expires by itself (its TTL), rq's maintenance drops it
        from the worker registry, and the pubsub thread is a daemon.
        """
        try:
            super().teardown()  # type: ignore[no-untyped-call]
        except redis.ConnectionError as exc:
            log.bind(stage="worker").warning("Redis unreachable while stopping: {}", exc)


def worker_name() -> str:
    """``<host>-<pid>-<random>``: unique among live workers, and tells where a job runs."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


__all__ = [
    "CLAIM_TTL",
    "JOB_RETRIES",
    "BackfillWorker",
    "enqueue",
    "fetch_range",
    "job_id",
    "requeue_abandoned",
    "worker_name",
]
