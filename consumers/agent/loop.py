"""The agent's loop (I/O): wake on the stream, apply, keep the timer, ride out outages.

Each wake is one round trip: the status (when due) is written, then ``XREAD`` blocks
on the peers stream and ``…:announcements`` until something arrives, the next timer
or status write is due, or :data:`BLOCK_MS` passed (:data:`IDLE_BLOCK_MS` when nothing
waits for a wake; a file write that comes due is done at the next wake). What arrived is folded and applied at
once. The timer (``WGCHAIN_RECONCILE_INTERVAL``) re-announces this host, reads the
interface whole (drift repair) and writes a heartbeat status; every
:data:`FULL_ANNOUNCE_TICKS` ticks it reads every member's announcement again.

Redis unreachable (also at start): the interface stays as applied, the timer keeps
repairing drift from the applied state, and the loop retries every second; one log
line when it starts, one a minute, one when Redis answers again (``shared.health``).
The process never exits for an outage; only a bad key file or no interface at start,
or Redis refusing the agent's credentials, stops it.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import TYPE_CHECKING, Final

import redis
from redis.exceptions import AuthenticationError, AuthorizationError, NoPermissionError

from consumers.agent.announce import POLL_SECONDS
from consumers.agent.files import release_memory
from consumers.agent.follow import BATCH_SIZE, CATCH_UP_SIZE
from consumers.agent.status import status_fields
from shared import health, metrics
from shared.errors import ServiceUnavailable, WgchainError
from shared.logs import brief
from shared.redis_log import OUTAGE_ERRORS

if TYPE_CHECKING:
    from consumers.agent.agent import Agent

#: Milliseconds one XREAD blocks at most while something waits for a wake (a hold, the
#: config file to rewrite); :data:`IDLE_BLOCK_MS` otherwise. An idle wake is a round trip
#: for nothing, which a fleet pays per agent; the longer block bounds how long a stop waits.
BLOCK_MS: Final = 1000
IDLE_BLOCK_MS: Final = 3000
#: Seconds to wait before retrying after Redis is unreachable.
REDIS_PAUSE_SECONDS: Final = 1.0
#: Shortest such wait (seconds), when a pass expires sooner.
EXPIRY_PAUSE_SECONDS: Final = 0.05
#: Seconds between two looks at the private key file (one ``stat``) while running.
KEY_CHECK_SECONDS: Final = 1.0
#: Every this many timer ticks every announcement is read again, in case one was written
#: without ``…:announcements`` (an agent of an older version during an upgrade, by hand).
FULL_ANNOUNCE_TICKS: Final = 10


class Loop:
    """The timers of one running agent."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.interval = agent.cfg.reconcile_interval
        self.next_timer = time.monotonic() + self.interval
        self.next_poll = 0.0
        self.next_key_check = 0.0
        self.ticks = 0

    def step(self) -> None:
        """One wake: read (writing the status on the way), fold, apply; the timer."""
        agent = self.agent
        follower, announcements, status = agent.follower, agent.announcements, agent.status
        now = time.monotonic()
        # the status, when due, rides on this read: then the next write is a heartbeat
        # away (waiting until it is due, 0 s, would make this read return at once and
        # cost every agent of a fleet a second round trip per change)
        fields = (status.key, status_fields(agent)) if status.due_in(now) == 0 else None
        # (a file write that comes due rides on the next wake, at most BLOCK_MS later: a
        # wake of its own would cost a fleet of agents a round trip each)
        waits = [self.next_timer - now, status.heartbeat if fields else status.due_in(now)]
        pending = agent.hold_block or agent.files.config_due.dirty
        expiry = agent.next_expiry()
        if expiry is not None:  # wake when the next pass expires (its time is unix time)
            waits.append(max(0.0, expiry - time.time()))
        if announcements.position is None:
            waits.append(self.next_poll - now)
        also = None
        if follower.caught_up:
            most = BLOCK_MS if pending else IDLE_BLOCK_MS
            block_ms: int | None = max(1, min(most, int(min(waits) * 1000)))
            count = BATCH_SIZE
            if announcements.position is not None:
                also = (announcements.stream, announcements.position)
        else:
            block_ms, count = None, CATCH_UP_SIZE
        try:
            try:  # the common case without the retry policy's bookkeeping (a fleet's CPU)
                entries, others = follower.read(block_ms, count, fields, also)
            except OUTAGE_ERRORS:
                entries, others = agent.retry(follower.read, block_ms, count, fields, also)
        except NoPermissionError:
            if also is None:
                raise
            announcements.unwatch()
            return
        if fields is not None:
            status.written(now)
        agent.announced |= announcements.nodes_in(others)
        folded = follower.fold(entries) > 0
        changed = bool(agent.announced)
        now = time.monotonic()
        if now >= self.next_key_check:
            self.next_key_check = now + KEY_CHECK_SECONDS
            changed = agent.check_key_file() or changed
        if announcements.position is None and now >= self.next_poll:
            self.next_poll = now + POLL_SECONDS
            agent.announced |= set(follower.table.records)
            changed = True
        timer = now >= self.next_timer
        if folded and not (changed or timer) and advance(agent):
            folded = False  # none of this host's peers changed: only the position moved
        changed = changed or folded
        if timer:
            self.next_timer = now + self.interval
            announcements.publish()
            self.ticks += 1
            if self.ticks % FULL_ANNOUNCE_TICKS == 0 or not announcements.continuous():
                announcements.watch()
                agent.announced |= set(follower.table.records)
            status.mark()
        if timer or changed or agent.hold_block:
            started = time.monotonic()
            agent.apply_changes(full=timer)
            metrics.agent_applied(agent.cfg.keys.tag, started)
        if agent.expiry_due():
            agent.enforce_expiry()
        if timer:
            release_memory()

    def offline(self) -> None:
        """Redis is unreachable: the timer still repairs drift from the applied state, and
        passes that expire are removed on time."""
        now = time.monotonic()
        if now >= self.next_timer:
            self.next_timer = now + self.interval
            self.agent.repair_held()
        if self.agent.expiry_due():
            self.agent.enforce_expiry()

    def pause(self) -> float:
        """Seconds to wait before trying Redis again: a second, or less when a pass expires
        sooner."""
        expiry = self.agent.next_expiry()
        if expiry is None:
            return REDIS_PAUSE_SECONDS
        return max(EXPIRY_PAUSE_SECONDS, min(REDIS_PAUSE_SECONDS, expiry - time.time()))


def advance(agent: Agent) -> bool:
    """The common case of a fleet: the entries just folded changed none of the nodes
    this host's table keeps (a spoke keeps only the hubs). Then its peers, addresses and
    fail-closed reason cannot have changed, so the applied state is the same at the new
    position: only the position and block move (the status, the state file and anything
    watching ``applied_position`` see them move, as after any apply), without the model
    update and the apply path. True when done; False when anything else is pending (a
    recompute, announcements, a hold, a pass to expire, an interface to repair, a request
    in flight): the caller then takes the whole path, which covers this case too."""
    follower, model, iface = agent.follower, agent.model, agent.iface
    if (
        follower.replaced
        or follower.table.changes != {}
        or agent.recompute
        or agent.announced
        or agent.hold.block
        or not agent.bootstrapped
        or not iface.synced
        or iface.in_flight
        or agent.apply_problem
        or iface.fail_closed != model.fail_closed
        or iface.addresses != model.addresses
    ):
        return False
    deadline = model.next_deadline()
    if deadline is not None and deadline <= model.clock():
        return False  # a pass to expire: the whole path judges it
    agent.applied()
    agent.files.flush()
    return True


def run(agent: Agent, stop: threading.Event) -> None:
    """Run ``agent`` until ``stop`` is set (module docstring)."""
    agent.prepare()
    loop = Loop(agent)
    # /healthz (shared.health): 503 while Redis is unreachable, while the interface
    # cannot be given what was decided (agent.py), or when no wake completed for long
    bound = max(health.WORK_BOUND, 3 * agent.cfg.reconcile_interval)
    agent.work = health.work(f"agent {agent.cfg.node_id}", bound)
    agent.work.trouble(agent.apply_problem)
    try:
        while not stop.is_set():
            try:
                if not agent.bootstrapped:
                    agent.announcements.publish()
                    agent.bootstrap()
                    # a fill (agent.py) read the interface whole already
                    agent.apply_changes(full=not agent.iface.synced)
                    release_memory()
                else:
                    loop.step()
                health.REDIS.ok()
                agent.work.beat()
            except (AuthenticationError, AuthorizationError) as exc:
                raise WgchainError(f"Redis refused this agent: {brief(exc)}") from None
            except (redis.RedisError, ServiceUnavailable) as exc:
                health.REDIS.failed(exc)  # one line when it starts, one a minute
                agent.last_error = f"redis: {brief(exc)}"
                agent.status.mark()
                metrics.agent_error(agent.cfg.keys.tag)
                loop.offline()
                stop.wait(loop.pause())
            except WgchainError as exc:
                agent.error(str(exc))
                stop.wait(REDIS_PAUSE_SECONDS)
            agent.files.write(agent.snapshot)
    finally:
        health.retire(agent.work)
        agent.work = None
        agent.follower.close()
        agent.files.close(agent.snapshot)
        with contextlib.suppress(redis.RedisError, ServiceUnavailable):
            agent.status.write(status_fields(agent))
        agent.log.info("agent stopped")
