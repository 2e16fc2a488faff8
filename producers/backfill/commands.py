"""``wgchain backfill`` (plan, enqueue, watch) and ``wgchain worker`` (run rq workers)."""

from __future__ import annotations

import functools
import json
import logging
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import click
import redis
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rq import Queue
from rq.job import Job
from rq.registry import FailedJobRegistry
from rq.serializers import JSONSerializer

from producers.backfill.jobs import (
    JOB_RETRIES,
    MAINTENANCE_INTERVAL,
    WORKER_TTL,
    BackfillWorker,
    enqueue,
    requeue_abandoned,
    worker_name,
)
from producers.backfill.store import BackfillStore
from producers.listener.listener import open_listener
from producers.listener.store import ListenerStore
from shared import health, metrics
from shared.chain.plan import Plan
from shared.chain.rpc import RpcClient
from shared.chain.worker import JOB_TIMEOUT, WorkerContext, configure, queue_for
from shared.cmdline import CHAIN, STREAM, stop_event, with_chain_id, with_settings
from shared.errors import SettingsError, WgchainError
from shared.keys import Keys
from shared.logs import log
from shared.redis_log import connect, keep_going
from shared.settings import Settings

#: Blocks per job unless ``--size`` says otherwise (capped by ``max_block_range``).
DEFAULT_SIZE: Final = 2000
#: Seconds between two looks at the progress (and at abandoned jobs) while waiting.
MONITOR_INTERVAL: Final = 1.0
#: Seconds between plain progress lines (JSON logs, or no terminal).
PROGRESS_LOG_EVERY: Final = 5.0


def _require_contract(cfg: Settings) -> None:
    if not cfg.contract:
        raise SettingsError("WGCHAIN_CONTRACT", "required (the contract address)")


@click.command("backfill")
@click.option("--from", "from_block", type=click.IntRange(min=0), default=None,
              help="First block [default: the listener's next block].")  # fmt: skip
@click.option("--to", "to_block", type=click.IntRange(min=0), default=None,
              help="Last block [default: the last final block].")  # fmt: skip
@click.option("--size", type=click.IntRange(min=1), default=DEFAULT_SIZE, show_default=True,
              help="Blocks per job (at most max_block_range).")  # fmt: skip
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="Show progress until every range is appended.")  # fmt: skip
@click.option("--cancel", is_flag=True,
              help="Drop the running backfill; the listener reads its blocks itself.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON document at the end: the plan and how far it got.")  # fmt: skip
@with_settings(
    *STREAM,
    *CHAIN,
    stage="backfill",
    ask_chain_id=False,  # asked through the listener's RPC client (retries, failover)
)
def backfill(
    cfg: Settings,
    *,
    from_block: int | None,
    to_block: int | None,
    size: int,
    wait: bool,
    cancel: bool,
    as_json: bool,
) -> None:
    """Fetch blocks FROM-TO in parallel with rq workers; the listener appends them in order.

    With --json, one document at the end: ``state`` (``appended``, ``queued`` with
    --no-wait, ``watching-stopped``, ``nothing``, ``cancelled`` or ``none``), the plan and
    its progress.
    """
    _require_contract(cfg)
    client = connect(cfg.redis_url)
    listener = None
    result: dict[str, Any] = {}
    try:
        listener = open_listener(cfg, client)
        keys = listener.store.keys
        store = BackfillStore(client, keys)
        queue = queue_for(client, keys)
        if cancel:
            result = _cancel(store, queue)
            return
        running = store.plan()
        if running is not None:
            raise WgchainError(
                f"backfill {running.id} of blocks {running.start}-{running.end} is running; "
                "wait for it or `wgchain backfill --cancel`"
            )
        start = listener.next_block if from_block is None else from_block
        final = listener.target(refresh=True)
        end = final if to_block is None else to_block
        if start < listener.next_block:
            raise WgchainError(
                f"blocks before {listener.next_block} are already in the events stream "
                f"(--from {start})"
            )
        if end > final:
            raise WgchainError(f"block {end} is not final yet (the last final block is {final})")
        if start > end and from_block is None:
            log.info("nothing to backfill: the events stream reaches block {}", start - 1)
            result = {"state": "nothing", "reaches": start - 1}
            return
        if start > end:
            raise WgchainError(f"--from {start} is past the last block to backfill ({end})")
        plan = Plan(uuid.uuid4().hex[:12], start, end, min(size, cfg.max_block_range))
        _start(store, queue, plan, keys)
        result = {"state": "queued", **_plan(plan, queue)}
        if wait:
            fancy = sys.stdout.isatty() and not cfg.log_json and not as_json
            watch = _Monitor(store, ListenerStore(client, keys), queue, plan)
            progress = watch.run(stop_event(), fancy)
            result["state"] = "appended" if progress.done else "watching-stopped"
            result.update(fetched=progress.fetched, appended=progress.appended)
    finally:
        if listener is not None:
            listener.rpc.close()
        client.close()
        if as_json and result and sys.exc_info()[0] is None:  # a failure is its one line
            click.echo(json.dumps(result, sort_keys=True))


def _plan(plan: Plan, queue: Queue) -> dict[str, Any]:
    """A plan for ``--json``."""
    return {
        "plan": plan.id,
        "start": plan.start,
        "end": plan.end,
        "size": plan.size,
        "jobs": len(plan.spans),
        "blocks": plan.blocks,
        "queue": queue.name,
    }


def _cancel(store: BackfillStore, queue: Queue) -> dict[str, Any]:
    plan = store.plan()
    store.drop()
    queue.empty()  # type: ignore[no-untyped-call]
    if plan is None:
        log.info("no backfill is running")
        return {"state": "none"}
    log.info("plan {} (blocks {}-{}) cancelled", plan.id, plan.start, plan.end)
    return {"state": "cancelled", "plan": plan.id, "start": plan.start, "end": plan.end}


def _start(store: BackfillStore, queue: Queue, plan: Plan, keys: Keys) -> None:
    if not store.create(plan):
        raise WgchainError("another backfill started meanwhile; see `wgchain backfill --cancel`")
    try:
        enqueue(queue, plan, keys)
    except redis.RedisError:
        store.drop(plan.id)
        raise
    log.info(
        "plan {}: blocks {}-{} in {} jobs of up to {} blocks on rq queue {}",
        plan.id,
        plan.start,
        plan.end,
        len(plan.spans),
        plan.size,
        queue.name,
    )


@dataclass
class _Progress:
    ranges: int
    fetched: int
    blocks: int
    appended: int

    @property
    def done(self) -> bool:
        return self.appended >= self.blocks


_Show = Callable[[_Progress], None]


@dataclass
class _Lines:
    """Plain progress lines: on change, at most every :data:`PROGRESS_LOG_EVERY` seconds."""

    plan: Plan
    last: float = field(default=-PROGRESS_LOG_EVERY)
    seen: tuple[int, int] = (-1, -1)

    def __call__(self, p: _Progress) -> None:
        moment = time.monotonic()
        if (p.fetched, p.appended) == self.seen or moment - self.last < PROGRESS_LOG_EVERY:
            return
        self.last, self.seen = moment, (p.fetched, p.appended)
        log.info(
            "plan {}: {}/{} ranges fetched, {}/{} blocks appended",
            self.plan.id,
            p.fetched,
            p.ranges,
            p.appended,
            p.blocks,
        )


@dataclass
class _Monitor:
    """Watches a plan until every block is appended; retries abandoned jobs meanwhile."""

    store: BackfillStore
    listener: ListenerStore
    queue: Queue
    plan: Plan

    def run(self, stop: threading.Event, fancy: bool) -> _Progress:
        """Progress bar (``fancy``) or plain log lines, until done, failed, cancelled or ``stop``;
        the last progress seen."""
        if not fancy:
            return self._loop(stop, _Lines(self.plan))
        columns = (
            TextColumn("{task.description:<9}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        with Progress(*columns) as bar:
            fetched = bar.add_task("fetched", total=len(self.plan.spans))
            appended = bar.add_task("appended", total=self.plan.blocks)

            def show(p: _Progress) -> None:
                bar.update(fetched, completed=p.fetched)
                bar.update(appended, completed=p.appended)

            return self._loop(stop, show)

    def _loop(self, stop: threading.Event, show: _Show) -> _Progress:
        while True:
            requeue_abandoned(self.queue)
            progress = self._progress()
            show(progress)
            if progress.done:
                log.info(
                    "plan {}: blocks {}-{} appended",
                    self.plan.id,
                    self.plan.start,
                    self.plan.end,
                )
                return progress
            self._check_alive()
            if stop.wait(MONITOR_INTERVAL):
                log.info("stopped watching; backfill {} goes on", self.plan.id)
                return progress

    def _progress(self) -> _Progress:
        plan = self.plan
        cursor = self.listener.load_cursor()
        last = (
            plan.start - 1 if cursor is None else min(max(cursor.block, plan.start - 1), plan.end)
        )
        appended_ranges = sum(1 for span in plan.spans if span.end <= last)
        ranges = len(plan.spans)
        fetched = min(ranges, appended_ranges + self.store.staged_count())
        return _Progress(ranges, fetched, plan.blocks, last - plan.start + 1)

    def _check_alive(self) -> None:
        prefix = f"backfill-{self.plan.id}-"
        failed = [
            i for i in FailedJobRegistry(queue=self.queue).get_job_ids() if i.startswith(prefix)
        ]
        if failed:
            job = self.queue.fetch_job(failed[0])
            raise WgchainError(
                f"backfill {self.plan.id}: {len(failed)} ranges failed {JOB_RETRIES + 1} times "
                f"(first: blocks {failed[0].removeprefix(prefix)}: {_failure(job)}); "
                "`wgchain backfill --cancel` lets the listener read them itself"
            )
        current = self.store.plan()
        if current is None or current.id != self.plan.id:
            progress = self._progress()
            if not progress.done:
                raise WgchainError(
                    f"backfill {self.plan.id} was dropped before it completed "
                    "(cancelled, or the listener found it inconsistent: see its log)"
                )


def _failure(job: Job | None) -> str:
    """The last line of a failed job's error (its worker may have died instead)."""
    result = job.latest_result() if job is not None else None
    lines = (result.exc_string or "").strip().splitlines() if result is not None else []
    return lines[-1][:300] if lines else "its worker stopped"


class _RqOutageLines(logging.Filter):
    """rq logs every failed attempt to reach Redis; they go to :data:`health.REDIS` instead
    (one line when the outage starts, one a minute, one when Redis answers)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "could not connect to Redis" not in str(record.msg):
            return True
        args = record.args if isinstance(record.args, tuple) else ()
        health.REDIS.failed(args[1] if len(args) > 1 else record.getMessage())
        return False


@click.command("worker")
@click.option("--burst", is_flag=True, help="Exit once the queue is empty.")
@with_settings(
    "redis_url",
    "rpc_url",
    "contract",
    "chain_id",
    "max_block_range",
    "metrics_port",
    "metrics_listen",
    stage="worker",
    ask_chain_id=False,  # asked through its RPC client (retries, failover), waiting for it
)
def worker(cfg: Settings, burst: bool) -> None:
    """Run an rq worker for this network's backfill jobs (any number, on any machine).

    Redis or RPC outages, at start-up or later, are waited out: when rq's own loop
    gives up on Redis, a new rq worker starts once Redis answers again.
    """
    _require_contract(cfg)
    stop = stop_event()
    metrics.serve(cfg.metrics_port, cfg.metrics_listen)
    client = connect(cfg.redis_url, wait=stop)
    rpc = RpcClient(cfg.rpc_urls)
    work = health.work("worker", bound=JOB_TIMEOUT + WORKER_TTL)
    rq_lines = logging.getLogger("rq.worker")
    quiet = _RqOutageLines()
    rq_lines.addFilter(quiet)
    try:
        served = keep_going(functools.partial(with_chain_id, cfg, rpc.chain_id), stop)
        if served is None:
            return
        chain_id = served.chain_id
        keys = Keys(chain_id, cfg.contract.lower())
        configure(WorkerContext(client, rpc, chain_id, keys.contract, cfg.max_block_range))
        queue = queue_for(client, keys)
        level = "DEBUG" if cfg.log_level.upper() in {"TRACE", "DEBUG"} else "WARNING"
        while not stop.is_set():
            rq_worker = BackfillWorker(
                [queue],
                name=worker_name(),
                connection=client,
                serializer=JSONSerializer,
                worker_ttl=WORKER_TTL,
                maintenance_interval=MAINTENANCE_INTERVAL,
            )
            rq_worker.health_record = work
            log.bind(stage="worker").info(
                "{} serving queue {} (RPC {})", rq_worker.name, queue.name, rpc.endpoint
            )
            keep_going(
                functools.partial(
                    rq_worker.work, burst=burst, logging_level=level, with_scheduler=False
                ),
                stop,
            )
            stop_event()  # rq replaced the signal handlers; ours set the shutdown flag
            if burst or stop.is_set():
                break
            # rq's loop quit on its own (a Redis error it does not wait out): start over
            keep_going(client.ping, stop)
    finally:
        rq_lines.removeFilter(quiet)
        health.retire(work)
        rpc.close()
        client.close()


__all__ = ["backfill", "worker"]
