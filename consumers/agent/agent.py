"""The agent of one WireGuard host: the ``peers`` stream in, the interface kept equal to it.

One module per concern, wired here: :mod:`~consumers.agent.follow` (the stream -> a
peer table), :mod:`~consumers.agent.peerset` (the desired peers, updated change by
change; pure), :mod:`~consumers.agent.interface` (changed peers applied against a
model of the interface; the timer's full read), :mod:`~consumers.agent.hostfiles`
(the config file and the state file), :mod:`~consumers.agent.announce` (endpoints),
:mod:`~consumers.agent.status` (the status hash). The loop is in
:mod:`~consumers.agent.loop`, the start (the state file, catching up, filling a fresh
interface) in :mod:`~consumers.agent.bootstrap`, holding the applied configuration and
expiring passes meanwhile in :mod:`~consumers.agent.holding` (when to hold: ``hold.py``).

One change: the blocked ``XREAD`` returns it, the table folds it, the desired peers
it changed are written ahead to the state journal and applied with one ``wg set``
(or one request on wireguard-go's socket); the config file, the state snapshot and
the status follow, spaced out under a burst. A restart loads the state file,
restores the interface from it if it lost its peers, and holds that configuration
until the stream has caught up past its block (as after Redis lost its data).
"""

from __future__ import annotations

import os
import threading
import time
from itertools import islice
from typing import Final

import redis
from tenacity import stop_after_delay

from consumers.agent import bootstrap, holding, loop
from consumers.agent.announce import Announcements
from consumers.agent.config import AgentConfig, is_valid_ifname
from consumers.agent.desired import Desired, DesiredPeer, PeerTable, share_strings
from consumers.agent.follow import Follower
from consumers.agent.hold import Hold
from consumers.agent.hostfiles import HostFiles
from consumers.agent.interface import LOGGED_CHANGES as LOGGED
from consumers.agent.interface import Changes, Interface, PipelineError, summary
from consumers.agent.keys import public_key_from_file
from consumers.agent.peerset import DesiredPeers
from consumers.agent.render import keep_blocks
from consumers.agent.state import AppliedState, Ident
from consumers.agent.status import Status, status_fields
from consumers.agent.wg import WireGuard
from shared import health, metrics, shutdown
from shared.errors import KeyFileError, WireGuardError
from shared.logs import log
from shared.redis_log import START, Entry, redis_retry

#: Longest a Redis call is retried before the loop gets control back (seconds).
REDIS_RETRY_SECONDS: Final = 30.0


class Agent:
    """One host's agent. ``wireguard`` is None in file-only mode (no ``wg``/``ip`` at all)."""

    #: Agents created in this process; from the second on, their tables share strings and
    #: their config files keep their blocks (render.keep_blocks).
    created = 0

    def __init__(
        self, config: AgentConfig, client: redis.Redis, wireguard: WireGuard | None
    ) -> None:
        Agent.created += 1
        if Agent.created == 2:
            share_strings()
            keep_blocks()
        self.cfg = config
        self.client = client
        self.wg = wireguard
        self.log = log.bind(stage="agent", node=config.node_id, interface=config.interface)
        stop_after = max(1.0, min(config.reconcile_interval, REDIS_RETRY_SECONDS))
        self.retry = redis_retry.copy(
            stop=stop_after_delay(stop_after) | shutdown.requested | holding.ExpiryDue(self),
            wait=holding.UntilExpiry(redis_retry.wait, self),
        )
        policy, keys = config.policy, config.keys
        self.follower = Follower(client, keys, policy.needed(config.node_id), self.log)
        self.follower.on_reset = lambda: holding.on_reset(self)
        self.model = DesiredPeers(config.node_id, policy)
        self.iface = Interface(
            wireguard,
            config.interface,
            key_file=config.private_key_file,
            listen_port=config.listen_port,
            pools=[policy.pool, policy.pool6],
            log=self.log,
        )
        document = None
        if config.endpoint is not None:
            document = {"endpoint": config.endpoint, "listen_port": config.listen_port}
        self.announcements = Announcements(
            client, keys, config.node_id, document=document, log=self.log, retry=self.retry
        )
        self.files = HostFiles(
            config.config_path,
            Ident(keys.tag, config.node_id, config.interface),
            listen_port=config.listen_port,
            key_file=config.private_key_file,
            log=self.log,
            error=self.error,
        )
        self.status = Status(client, keys, config.node_id, config.reconcile_interval)
        #: Stream id of the newest peers entry the applied state covers, and its block.
        self.applied_position = START
        self.applied_block = 0
        self.hold = Hold()
        self.own_public_key: str | None = None
        self.last_error = ""
        self.last_apply = 0.0
        self.prepared = self.bootstrapped = False
        #: Whether the applied state is known (from the state file, or applied since start).
        self.applied_known = False
        self._key_stamp: tuple[int, int, int] | None = None
        #: Whether the next update recomputes the desired peers whole (a new key, a hold's end).
        self.recompute = True
        #: Nodes whose announcement changed and is to be read.
        self.announced: set[str] = set()
        self._fail_closed: str | None = None
        #: Unix time the node's own pass expires, as applied (None: never).
        self.own_expires: int | None = None
        #: While the applied configuration is held: when its next pass expires (None: never).
        self.held_deadline: float | None = None
        #: Why the interface does not hold what was decided ("": it does); /healthz says it.
        self.apply_problem = ""
        #: This agent's loop in /healthz while it runs (consumers/agent/loop.py).
        self.work: health.Work | None = None

    # --- views kept for callers of the former single-module agent --------------------

    @property
    def table(self) -> PeerTable:
        return self.follower.table

    @property
    def position(self) -> str:
        return self.follower.position

    @property
    def block(self) -> int:
        return self.follower.block

    @property
    def desired(self) -> Desired:
        """The whole desired state (built on demand: O(peers))."""
        return self.model.desired()

    def run(self, stop: threading.Event) -> None:
        """Reconcile until ``stop`` is set; Redis outages keep the interface as it is
        (consumers/agent/loop.py)."""
        loop.run(self, stop)

    # --- starting --------------------------------------------------------------------

    def start(self) -> None:
        """Prepare, announce, catch up and reconcile once (all before returning)."""
        self.prepare()
        self.announcements.publish()
        self.bootstrap()
        self.reconcile("start")

    def prepare(self) -> None:
        """Everything that needs no Redis (consumers/agent/bootstrap.py)."""
        bootstrap.prepare(self)

    def bootstrap(self) -> None:
        """Catch up before the first reconcile, filling a fresh interface on the way
        (consumers/agent/bootstrap.py)."""
        bootstrap.bootstrap(self)

    def settle_fill(self) -> None:
        """Read the answer of a fill's last request; a failure was rolled back."""
        try:
            self.iface.settle()
        except PipelineError as exc:
            self._rolled_back(exc.nodes)
            self.error(str(exc))
            self._apply_problem(f"cannot apply to {self.cfg.interface}: {exc}")

    # --- inputs ----------------------------------------------------------------------

    def read_peers(self, block_ms: int | None) -> list[Entry]:
        """The next batch of ``peers`` entries (checked for continuity, see follow.py)."""
        entries, _ = self.retry(self.follower.read, block_ms)
        return entries

    def fold(self, entries: list[Entry]) -> int:
        return self.follower.fold(entries)

    def check_key_file(self) -> bool:
        """Reload the private key when its file changed; True when the public key changed."""
        path = self.cfg.private_key_file
        try:
            info = os.stat(path)
        except OSError as exc:
            self.error(f"private key file {path}: {exc.strerror}")
            return False
        stamp = (info.st_ino, info.st_mtime_ns, info.st_size)
        if stamp == self._key_stamp:
            return False
        try:
            public = public_key_from_file(path)
        except KeyFileError as exc:
            self.error(str(exc))
            return False
        self._key_stamp = stamp
        if public == self.own_public_key:
            return False
        if self.own_public_key is not None:
            self.log.info("private key file changed: new public key {}", public)
            self.recompute = True
            self.iface.load_key(public)
        self.own_public_key = public
        return True

    def read_announcements(self, nodes: set[str]) -> set[str]:
        """Read the announcements of ``nodes`` (in the table); the peers they changed."""
        records = self.follower.table.records
        read = self.announcements.read(n for n in nodes if n in records)
        changed = {n: e for n, e in read.items() if self.model.endpoints.get(n) != e}
        return set(self.model.announce(changed))

    # --- reconcile -------------------------------------------------------------------

    def reconcile(self, reason: str) -> bool:
        """Bring the interface (or only the file) to the desired state; True on success.

        The timer, the start and a retry read the interface whole; other reasons apply
        what changed. The files and the status are written before this returns.
        """
        started = time.monotonic()
        ok = self.apply_changes(full=reason in {"start", "timer", "retry"})
        metrics.agent_applied(self.cfg.keys.tag, started)
        self.files.write(self.snapshot, force=True)
        self.report()
        return ok

    def apply_changes(self, *, full: bool, fill: bool = False) -> bool:
        """Apply what changed (``full``: read the interface whole and repair it). ``fill``:
        a bootstrap's fill (:meth:`bootstrap`)."""
        if holding.held(self):
            if full:
                self.repair_held()
            return False
        nodes = self.update_model()
        model = self.model
        if full or not self.iface.synced:
            target = model.peers
            changed = self.iface.changes_to(target)
            return self._change(changed, model.addresses, model.fail_closed, target=target)
        if nodes is None:
            changed = self.iface.changes_to(model.peers)
        else:
            applied = self.iface.applied
            changed = {n: p for n in nodes if (p := model.peers.get(n)) != applied.get(n)}
        return self._change(changed, model.addresses, model.fail_closed, fill=fill)

    def repair_held(self) -> None:
        """Make the interface hold the applied configuration again (a restart, a hold),
        without the peers whose pass has expired since (failed closed if ours has)."""
        if not self.applied_known:
            return
        iface = self.iface
        target, addresses, fail_closed = holding.held_target(self)
        if self.wg is None and len(target) == len(iface.applied) and not fail_closed:
            return  # file-only: nothing to repair, nothing expired
        if fail_closed and fail_closed != self._fail_closed:
            self.log.warning("fail closed ({}): removing every peer", fail_closed)
            self._fail_closed = fail_closed
        changed = iface.changes_to(target)
        self._change(changed, addresses, fail_closed, target=target, hold=True)

    # --- expiring passes -------------------------------------------------------------

    @property
    def holding(self) -> bool:
        """Whether the applied configuration is held rather than the table applied."""
        return bool(self.hold.block) or not self.bootstrapped

    def next_expiry(self) -> float | None:
        """Unix time the next pass on this host expires, grace included (None: none will)."""
        return self.held_deadline if self.holding else self.model.next_deadline()

    def expiry_due(self) -> bool:
        """Whether a pass has expired by this host's clock and is still to be removed."""
        deadline = self.next_expiry()
        return deadline is not None and time.time() >= deadline

    def enforce_expiry(self) -> None:
        """Remove the peers whose pass has expired (fail closed if ours has): by this
        host's own clock, with no stream entry and no Redis (docs/design.md §11.6)."""
        if self.holding:
            self.repair_held()
        else:
            self.apply_changes(full=False)

    def update_model(self) -> set[str] | None:
        """Take in what changed since the last time: the peers it changed (None: any)."""
        records = self.follower.table.records
        changes = self.follower.take()
        nodes: set[str] | None = None
        # A node that (re)joins: its announcement first (the model forgot it when the node
        # left), before its peer is computed, whether incrementally or in a recomputation
        # (a fill reads each batch's announcements itself).
        joined = {n for n, old in (changes or {}).items() if old is None and n in records}
        if joined and (self.bootstrapped or not self.recompute):
            self.read_announcements(joined)
        if changes is None or self.recompute:
            self.recompute = False
            self.model.reset(records, self.own_public_key)
        else:
            nodes = set(self.model.update(records, changes))
        expired = self.model.expire(records)  # passes whose time has come, by our clock
        if nodes is not None:
            nodes |= set(expired)
        if self.announced:
            changed = self.read_announcements(self.announced)
            self.announced = set()
            if nodes is not None:
                nodes |= changed
        reason = self.model.fail_closed
        if not self.bootstrapped:
            return nodes  # (a fill: the stream's prefix so far; said once caught up)
        if reason and reason != self._fail_closed:
            self.log.warning("fail closed ({}): removing every peer", reason)
        self._fail_closed = reason
        return nodes

    def _change(
        self,
        changed: Changes,
        addresses: tuple[str, ...],
        fail_closed: str | None,
        *,
        target: dict[str, DesiredPeer] | None = None,
        hold: bool = False,
        fill: bool = False,
    ) -> bool:
        """Apply ``changed`` (node -> peer, None: none) and the addresses, written ahead to
        the state journal. ``target``: read the interface whole and make it hold
        ``target`` (drift repaired). ``hold``: the applied configuration itself, which
        moves no position. ``fill``: only the peers, the answer not awaited, no position
        moved (:meth:`bootstrap`)."""
        iface = self.iface
        other = addresses != iface.addresses or fail_closed != iface.fail_closed
        before = {node: iface.applied.get(node) for node in islice(changed, LOGGED)}
        if changed or other:
            position, block = (
                (self.applied_position, self.applied_block)
                if hold
                else (self.follower.position, self.follower.block)
            )
            own = self.own_expires if hold else self.model.own_expires
            header = AppliedState(position, block, addresses, fail_closed, expires=own)
            self.files.write_ahead(changed, header, iface.applied)
        try:
            if fill:
                iface.apply(changed, wait=False)
                repaired = 0
            elif target is None:
                iface.apply(changed)
                iface.set_addresses(addresses)
                repaired = 0
            else:
                repaired = iface.sync(target) - len(changed)
                iface.set_addresses(addresses, check=True)
        except WireGuardError as exc:
            # rolled back (and a request in flight before it): the journal says so too
            self._rolled_back([*changed, *getattr(exc, "nodes", ())])
            self.error(str(exc))
            self._apply_problem(f"cannot apply to {self.cfg.interface}: {exc}")
            return False
        if changed or other:
            self.files.config_due.mark()
        if fill:
            return True
        iface.fail_closed = fail_closed
        self._apply_problem("")
        if hold:
            self.files.state_due.mark()
            self.status.mark()
        else:
            self.applied()
        self.files.flush()  # a removal: on the disk before anything else is read
        if repaired > 0:
            self.log.info("repaired {} peer(s) on the interface", repaired)
        if changed:
            self.log.info("applied {} change(s): {}", len(changed), summary(changed, before))
        return True

    def _apply_problem(self, problem: str) -> None:
        if problem != self.apply_problem:
            self.apply_problem = problem
            if self.work is not None:
                self.work.trouble(problem)

    def _rolled_back(self, nodes: list[str]) -> None:
        """Note in the state journal that ``nodes`` are back to what the model has."""
        if nodes:
            applied = self.iface.applied
            back = {node: applied.get(node) for node in nodes}
            self.files.write_ahead(back, self.snapshot(peers=False), applied)

    def applied(self) -> None:
        """The applied state now covers the table's position and block."""
        self.applied_known = True
        self.last_apply = time.time()
        self.last_error = ""
        self.applied_block = self.follower.block
        self.applied_position = self.follower.position  # the moment a change is applied
        self.own_expires = self.model.own_expires
        self.files.state_due.mark()
        self.status.mark()

    def snapshot(self, *, peers: bool = True) -> AppliedState:
        """The applied state as of now (a copy: the file writer thread reads it)."""
        iface = self.iface
        return AppliedState(
            self.applied_position,
            self.applied_block,
            iface.addresses,
            iface.fail_closed,
            dict(iface.applied) if peers else {},
            expires=self.own_expires,
        )

    # --- the hold --------------------------------------------------------------------

    @property
    def hold_block(self) -> int:
        return self.hold.block

    # --- status ----------------------------------------------------------------------

    def report(self) -> None:
        """Write this host's status hash now."""
        self.retry(lambda: self.status.write(status_fields(self)))

    def error(self, message: str) -> None:
        metrics.agent_error(self.cfg.keys.tag)
        if message != self.last_error:
            self.log.error("{}", message)
        self.last_error = message
        self.status.mark()


__all__ = ["Agent", "AgentConfig", "is_valid_ifname"]
