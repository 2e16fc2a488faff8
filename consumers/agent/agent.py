"""The agent of one WireGuard host: the ``peers`` stream in, the interface kept equal to it.

One module per concern: :mod:`~consumers.agent.follow` (the stream -> a peer table),
:mod:`~consumers.agent.peerset` (the desired peers, updated change by change; pure),
:mod:`~consumers.agent.interface` (changed peers applied against a model of the
interface; the timer's full read), :mod:`~consumers.agent.files` and
:mod:`~consumers.agent.state` (the config file and the state file),
:mod:`~consumers.agent.status` (the status hash). This module wires them.

One change: the blocked ``XREAD`` returns it, the table folds it, the desired peers
it changed are written ahead to the state journal and applied with one ``wg set``
(or one request on wireguard-go's socket); the config file, the state snapshot and
the status follow, spaced out under a burst. The timer (``WGCHAIN_RECONCILE_INTERVAL``)
reads the interface whole and repairs drift. With Redis unreachable the interface
stays as applied, the loop retries and the timer keeps repairing drift. A restart
loads the state file, restores the interface from it if it lost its peers, and
holds that configuration until the stream has caught up past its block.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import redis
from tenacity import stop_after_delay

from consumers.agent import files
from consumers.agent.desired import (
    Desired,
    DesiredPeer,
    PeerTable,
    Policy,
    announced_endpoint,
    parse_endpoint,
)
from consumers.agent.follow import ANNOUNCE_BATCH, BATCH_SIZE, CATCH_UP_SIZE, Follower
from consumers.agent.interface import Interface, summary
from consumers.agent.keys import public_key_from_file
from consumers.agent.peerset import DesiredPeers
from consumers.agent.render import render_chunks, render_config
from consumers.agent.state import AppliedState, Ident, StateProblem
from consumers.agent.status import Status
from consumers.agent.wg import WireGuard
from shared import metrics, shutdown
from shared.errors import KeyFileError, ServiceUnavailable, WgchainError, WireGuardError
from shared.keys import Keys
from shared.logs import log
from shared.redis_log import START, Entry, redis_retry

#: Milliseconds one XREAD blocks waiting for new peers entries.
BLOCK_MS: Final = 1000
#: Seconds between polls of every member's announcement (when ``…:announcements``
#: cannot be read: an ACL made before it existed).
HOSTS_POLL_SECONDS: Final = 5.0
#: Entries ``…:announcements`` keeps (approximately).
ANNOUNCEMENTS_KEPT: Final = 10_000
#: Keys per MGET when reading many announcements.
MGET_CHUNK: Final = 5000
#: Seconds to wait before retrying after Redis is unreachable.
REDIS_PAUSE_SECONDS: Final = 1.0
#: Longest a Redis call is retried before the loop gets control back (seconds).
REDIS_RETRY_SECONDS: Final = 30.0
#: Seconds between two "Redis still unreachable" lines.
OUTAGE_LOG_SECONDS: Final = 60.0
#: Seconds without a new peers entry after which a hold ends even short of its block.
HOLD_QUIET_SECONDS: Final = 120.0
#: Interface names: what Linux accepts, and safe in a file name (1..15 characters).
IFNAME_RE: Final = re.compile(r"[A-Za-z0-9_=+-][A-Za-z0-9_.=+-]{0,14}")


def is_valid_ifname(name: str) -> bool:
    return bool(IFNAME_RE.fullmatch(name))


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """Everything one agent needs to know about its host."""

    node_id: str
    interface: str
    private_key_file: Path
    keys: Keys
    policy: Policy = field(default_factory=Policy)
    listen_port: int | None = None
    endpoint: str | None = None
    config_dir: Path = Path("/etc/wireguard")
    file_only: bool = False
    reconcile_interval: float = 30.0

    def __post_init__(self) -> None:
        if not is_valid_ifname(self.interface):
            raise ValueError(f"invalid interface name {self.interface[:20]!r}")
        if self.endpoint is not None and parse_endpoint(self.endpoint) is None:
            raise ValueError("endpoint must be host:port or [v6]:port")

    @property
    def config_path(self) -> Path:
        return self.config_dir / f"{self.interface}.conf"


class Outage:
    """Log lines for Redis going away: when it starts, once a minute, when it is back."""

    def __init__(self, log: Any) -> None:
        self.log = log
        self.since: float | None = None
        self.logged = 0.0

    def failed(self, exc: Exception) -> None:
        now = time.monotonic()
        if self.since is None:
            self.since = self.logged = now
            self.log.warning("Redis unreachable ({}): keeping the interface as applied", exc)
        elif now - self.logged >= OUTAGE_LOG_SECONDS:
            self.logged = now
            self.log.warning("Redis unreachable for {:.0f} s ({})", now - self.since, exc)

    def recovered(self) -> None:
        if self.since is not None:
            self.log.warning("Redis reachable again after {:.0f} s", time.monotonic() - self.since)
            self.since = None


class Agent:
    """One host's agent. ``wireguard`` is None in file-only mode (no ``wg``/``ip`` at all)."""

    def __init__(
        self, config: AgentConfig, client: redis.Redis, wireguard: WireGuard | None
    ) -> None:
        self.cfg = config
        self.client = client
        self.wg = wireguard
        self.log = log.bind(stage="agent", node=config.node_id, interface=config.interface)
        policy = config.policy
        self.follower = Follower(client, config.keys, policy.needed(config.node_id), self.log)
        self.follower.on_reset = self._on_reset
        self.model = DesiredPeers(config.node_id, policy)
        self.iface = Interface(
            wireguard,
            config.interface,
            key_file=config.private_key_file,
            listen_port=config.listen_port,
            pools=[policy.pool, policy.pool6],
            log=self.log,
        )
        self.status = Status(client, config.keys, config.node_id, config.reconcile_interval)
        ident = Ident(config.keys.tag, config.node_id, config.interface)
        self.state_file = files.StateFile(config.config_dir, ident)
        self.state_kept = True
        self.config_writes = files.Debounce()
        self.state_writes = files.Debounce()
        self.config_written = False
        #: Stream id of the newest peers entry the applied state covers, and its block.
        self.applied_position = START
        self.applied_block = 0
        #: While > 0: the applied block a table rebuilt after a reset (or a restart)
        #: must reach before it is applied.
        self.hold_block = 0
        self.own_public_key: str | None = None
        self.last_error = ""
        self.last_apply = 0.0
        self.prepared = False
        self.bootstrapped = False
        self.outage = Outage(self.log)
        stop_after = max(1.0, min(config.reconcile_interval, REDIS_RETRY_SECONDS))
        self.retry = redis_retry.copy(stop=stop_after_delay(stop_after) | shutdown.requested)
        self._key_stamp: tuple[int, int, int] | None = None
        self._recompute = True
        self._announced: set[str] = set()
        self._announce_published = False
        self._may_publish = True
        self._fail_closed: str | None = None

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

    # --- starting --------------------------------------------------------------------

    def start(self) -> None:
        """Prepare, announce, catch up and reconcile once (all before returning)."""
        self.prepare()
        self.announce()
        self.bootstrap()
        self.reconcile("start")

    def prepare(self) -> None:
        """Everything that needs no Redis: the key, the interface, the state file (and the
        interface restored from it, when it lost its peers)."""
        if self.prepared:
            return
        self.own_public_key = public_key_from_file(self.cfg.private_key_file)
        self.check_key_file()
        self.log.info("own public key {}", self.own_public_key)
        policy = self.cfg.policy
        self.log.info("topology {} {}", policy.topology, ",".join(policy.hubs))
        self.remove_stale_temp_files()
        if self.wg is None:
            self.log.warning("file-only mode: writing {} only, no wg/ip", self.cfg.config_path)
        else:
            self.log.info("interface ready ({})", self.wg.ensure(self.cfg.interface))
        self.iface.own_public_key = self.own_public_key
        self._load_state()
        self.prepared = True

    def remove_stale_temp_files(self) -> None:
        """Delete temp files of the config and state files that a kill left behind."""
        name = self.cfg.config_path.name
        for stale in files.remove_stale_temp_files(
            self.cfg.config_dir, (name, self.state_file.path.name)
        ):
            self.log.info("removed the stale temp file {}", stale)

    def _load_state(self) -> None:
        try:
            state = self.state_file.load()
        except StateProblem as exc:
            self.log.warning("state file ignored: {}", exc)
            return
        if state is None:
            return
        self.iface.applied = dict(state.peers)
        self.iface.addresses = state.addresses
        self.iface.fail_closed = state.fail_closed
        self.applied_position, self.applied_block = state.position, state.block
        self.hold_block = state.block
        self.log.info(
            "state file: {} peer(s) applied up to {} (block {}); held until the peers "
            "stream reaches that block",
            len(state.peers),
            state.position,
            state.block,
        )
        self.config_writes.mark()
        self._sync(self.iface.applied, state.addresses, hold=True)

    def bootstrap(self) -> None:
        """Catch up before the first reconcile: the latest snapshot, then the stream after it."""
        follower = self.follower
        follower.load_snapshot(newer_than=follower.position)
        while True:
            entries, _ = self.retry(follower.read, None, CATCH_UP_SIZE)
            follower.fold(entries)
            if follower.caught_up:
                break
        follower.last_entries = time.monotonic()
        follower.watch_announcements()
        self._refresh_announcements(None)
        self.bootstrapped = True

    # --- inputs ----------------------------------------------------------------------

    def read_peers(self, block_ms: int | None) -> list[Entry]:
        """The next batch of ``peers`` entries (checked for continuity, see follow.py)."""
        entries, announced = self.retry(self.follower.read, block_ms)
        self._announced |= announced
        return entries

    def fold(self, entries: list[Entry]) -> int:
        return self.follower.fold(entries)

    def check_key_file(self) -> bool:
        """Reload the private key when its file changed; True when the public key changed."""
        path = self.cfg.private_key_file
        try:
            info = os.stat(path)
        except OSError as exc:
            self._error(f"private key file {path}: {exc.strerror}")
            return False
        stamp = (info.st_ino, info.st_mtime_ns, info.st_size)
        if stamp == self._key_stamp:
            return False
        try:
            public = public_key_from_file(path)
        except KeyFileError as exc:
            self._error(str(exc))
            return False
        self._key_stamp = stamp
        if public == self.own_public_key:
            return False
        if self.own_public_key is not None:
            self.log.info("private key file changed: new public key {}", public)
            self._recompute = True
            self.iface.load_key(public)
        self.own_public_key = public
        return True

    def announce(self) -> None:
        """Write this host's announcement; when it changed, say so in ``…:announcements``."""
        if self.cfg.endpoint is None:
            return
        keys = self.cfg.keys
        doc = json.dumps({"endpoint": self.cfg.endpoint, "listen_port": self.cfg.listen_port})
        old = self.retry(self.client.set, keys.host_announce(self.cfg.node_id), doc, get=True)
        if not self._may_publish or (old == doc.encode() and self._announce_published):
            return
        try:
            self.retry(
                self.client.xadd,
                keys.announcements,
                {"node": self.cfg.node_id},
                maxlen=ANNOUNCEMENTS_KEPT,
                approximate=True,
            )
        except redis.exceptions.NoPermissionError:
            self._may_publish = False
            self.log.warning(
                "this agent's Redis user may not append to {}: other agents see a new "
                "endpoint only when they poll (README, Agent: the ACL)",
                keys.announcements,
            )
        self._announce_published = True

    def _refresh_announcements(self, nodes: set[str] | None) -> set[str]:
        """Read the announcements of ``nodes`` (None: every member); the peers they changed."""
        records = self.follower.table.records
        wanted = sorted(records) if nodes is None else sorted(n for n in nodes if n in records)
        endpoints: dict[str, str | None] = {}
        for start in range(0, len(wanted), MGET_CHUNK):
            chunk = wanted[start : start + MGET_CHUNK]
            keys = [self.cfg.keys.host_announce(n) for n in chunk]
            raw: Any = self.retry(self.client.mget, keys)
            for node, value in zip(chunk, raw, strict=True):
                endpoint = announced_endpoint(value) if value is not None else None
                if self.model.endpoints.get(node) != endpoint:
                    endpoints[node] = endpoint
        return set(self.model.announce(endpoints))

    # --- reconcile -------------------------------------------------------------------

    def reconcile(self, reason: str) -> bool:
        """Bring the interface (or only the file) to the desired state; True on success.

        The timer, the start and a retry read the interface whole; other reasons apply
        what changed. The files and the status are written before this returns.
        """
        started = time.monotonic()
        ok = self._reconcile(full=reason in {"start", "timer", "retry"})
        metrics.agent_applied(self.cfg.keys.tag, started)
        self._write_files(force=True)
        self.report()
        return ok

    def _reconcile(self, *, full: bool) -> bool:
        if self._held():
            if full and self.wg is not None:  # repair drift of the held configuration
                self._sync(self.iface.applied, self.iface.addresses, hold=True)
            return False
        nodes = self._update_model()
        if full or not self.iface.synced:
            return self._sync(self.model.peers, self.model.addresses)
        if nodes is None:
            return self._apply(self.iface.changes_to(self.model.peers))
        return self._apply({node: self.model.peers.get(node) for node in nodes})

    def _update_model(self) -> set[str] | None:
        """Take in what changed since the last time: the peers it changed (None: any)."""
        records = self.follower.table.records
        changes = self.follower.take()
        nodes: set[str] | None
        if changes is None or self._recompute:
            self._recompute = False
            self.model.reset(records, self.own_public_key)
            nodes = None
        else:
            new = {node for node, old in changes.items() if old is None and node in records}
            if new:  # a node that (re)joins: its announcement, before its peer is computed
                self._refresh_announcements(new)
            nodes = set(self.model.update(records, changes))
        if self._announced:
            announced, self._announced = self._announced, set()
            for start in range(0, len(announced), ANNOUNCE_BATCH):
                chunk = set(sorted(announced)[start : start + ANNOUNCE_BATCH])
                changed = self._refresh_announcements(chunk)
                if nodes is not None:
                    nodes |= changed
        reason = self.model.fail_closed
        if reason and reason != self._fail_closed:
            self.log.warning("fail closed ({}): removing every peer", reason)
        self._fail_closed = reason
        return nodes

    def _header(self, addresses: tuple[str, ...], fail_closed: str | None) -> AppliedState:
        return AppliedState(self.follower.position, self.follower.block, addresses, fail_closed)

    def _apply(self, changed: dict[str, DesiredPeer | None]) -> bool:
        """Apply the changed peers (node -> peer, None: none) and the desired addresses."""
        changed = {n: p for n, p in changed.items() if self.iface.applied.get(n) != p}
        addresses, fail_closed = self.model.addresses, self.model.fail_closed
        other = addresses != self.iface.addresses or fail_closed != self.iface.fail_closed
        if changed or other:
            self._write_ahead(changed, self._header(addresses, fail_closed))
            try:
                described = self.iface.apply(changed)
                self.iface.set_addresses(addresses)
            except WireGuardError as exc:
                self._undo(changed)
                self._error(str(exc))
                return False
            self.iface.fail_closed = fail_closed
            self.config_writes.mark()
            if described:
                self.log.info("applied {} change(s): {}", len(described), summary(described))
        self._applied()
        return True

    def _sync(
        self, target: dict[str, DesiredPeer], addresses: tuple[str, ...], *, hold: bool = False
    ) -> bool:
        """Read the interface whole and make it hold ``target``; ``hold``: the applied
        configuration itself (a restart, a hold), which moves no position."""
        changed = self.iface.changes_to(target)
        fail_closed = self.iface.fail_closed if hold else self.model.fail_closed
        header = self._header(addresses, fail_closed)
        if hold:
            header.position, header.block = self.applied_position, self.applied_block
        other = addresses != self.iface.addresses or fail_closed != self.iface.fail_closed
        if changed or other:
            self._write_ahead(changed, header)
        try:
            operations = self.iface.sync(target)
            self.iface.set_addresses(addresses, check=True)
        except WireGuardError as exc:
            self._undo(changed)
            self._error(str(exc))
            return False
        if changed or other:
            self.config_writes.mark()
        self.iface.fail_closed = fail_closed
        if operations > len(changed):
            self.log.info("repaired {} peer(s) on the interface", operations - len(changed))
        if changed:
            described = [f"{'remove' if p is None else 'set'} {n}" for n, p in changed.items()]
            self.log.info("applied {} change(s): {}", len(changed), summary(described))
        if hold:
            self.state_writes.mark()
            self.status.mark()
        else:
            self._applied()
        return True

    def _applied(self) -> None:
        self.last_apply = time.time()
        self.last_error = ""
        self.applied_block = self.follower.block
        self.applied_position = self.follower.position  # the moment a change is applied
        self.state_writes.mark()
        self.status.mark()

    def _write_ahead(self, changed: dict[str, DesiredPeer | None], header: AppliedState) -> None:
        """Note a change in the state journal before applying it (a removal: on disk)."""
        if not self.state_kept:
            return
        removes = any(
            (old := self.iface.applied.get(node)) is not None
            and (peer is None or peer.public_key != old.public_key)
            for node, peer in changed.items()
        )
        try:
            self.state_file.append(header, changed, sync=removes)
        except OSError as exc:
            self._drop_state(exc)

    def _undo(self, changed: dict[str, DesiredPeer | None]) -> None:
        """After a failed apply (rolled back): the journal says what the peers are again."""
        if changed:
            back = {node: self.iface.applied.get(node) for node in changed}
            header = AppliedState(
                self.applied_position,
                self.applied_block,
                self.iface.addresses,
                self.iface.fail_closed,
            )
            self._write_ahead(back, header)

    def _drop_state(self, exc: OSError) -> None:
        self.log.error(
            "cannot keep the state file {} ({}): removed; a restart then starts without it",
            self.state_file.path,
            exc.strerror or exc,
        )
        self.state_kept = False
        try:
            self.state_file.remove()
        except OSError as again:
            self.log.error("cannot remove {}: {}", self.state_file.path, again.strerror)

    # --- the hold --------------------------------------------------------------------

    def _on_reset(self) -> None:
        """The stream was trimmed past us or reset: hold the applied configuration until
        the rebuilt table reaches its block (the pipeline refills the stream)."""
        self.hold_block = max(self.hold_block, self.applied_block)
        if self.follower.block >= self.hold_block:
            self.hold_block = 0  # the snapshot is not behind: nothing to hold
        else:
            self.log.warning(
                "keeping the configuration applied at block {} until the peers stream "
                "reaches that block again",
                self.hold_block,
            )

    def held_reason(self) -> str:
        if not self.hold_block:
            return ""
        return (
            f"the peers stream is at block {self.follower.block}, the applied "
            f"configuration at block {self.hold_block}"
        )

    def _held(self) -> bool:
        """True while a table rebuilt after a reset (or a restart) is behind the applied
        configuration.

        A Redis that lost its data is refilled by the pipeline from the chain; a table
        folded from a partly refilled stream is an older state of the network, and
        applying it would cut tunnels that the chain still grants. The hold ends when
        the table reaches the applied block, or when the refilled stream stays short
        of it for :data:`HOLD_QUIET_SECONDS` (that block is gone from the chain: a
        deep reorg). An empty stream (nothing refilled yet) never ends it.
        """
        if not self.hold_block:
            return False
        follower = self.follower
        if not self.bootstrapped:
            return True
        if follower.block < self.hold_block:
            quiet = time.monotonic() - follower.last_entries >= HOLD_QUIET_SECONDS
            if not (follower.block and quiet):
                return True
            self.log.warning(
                "the peers stream stopped at block {}, short of block {}: applying it",
                follower.block,
                self.hold_block,
            )
        else:
            self.log.info("the peers stream reached block {}: reconciling", follower.block)
        self.hold_block = 0
        self._recompute = True
        self.status.mark()
        return False

    # --- files and status ------------------------------------------------------------

    def _write_files(self, *, force: bool = False) -> None:
        now = time.monotonic()
        due = self.config_writes.due_in(now)
        if due is not None and (force or due == 0):
            self._write_config()
            self.config_writes.done(now)
        due = self.state_writes.due_in(now)
        if due is not None and (force or due == 0):
            self._write_state()
            self.state_writes.done(now)

    def _applied_desired(self) -> Desired:
        applied = self.iface.applied
        peers = tuple(applied[n] for n in sorted(applied))
        return Desired(self.cfg.node_id, self.iface.addresses, peers, self.iface.fail_closed)

    def _write_config(self) -> None:
        path = self.cfg.config_path
        options = {
            "listen_port": self.cfg.listen_port,
            "private_key_file": str(self.cfg.private_key_file.absolute()),
        }
        try:
            if not self.config_written:  # the first time: unchanged after a restart?
                text = render_config(self._applied_desired(), **options)  # type: ignore[arg-type]
                if files.write_config(path, text):
                    self.log.info("wrote {}", path)
            else:
                chunks = render_chunks(self._applied_desired(), **options)  # type: ignore[arg-type]
                files.write_atomic(path, (c.encode() for c in chunks), files.CONFIG_BACKUPS)
                self.log.debug("wrote {}", path)
            self.config_written = True
        except OSError as exc:
            self._error(f"cannot write {path}: {exc.strerror}")
            self.config_writes.mark()

    def _write_state(self) -> None:
        state = AppliedState(
            self.applied_position,
            self.applied_block,
            self.iface.addresses,
            self.iface.fail_closed,
            self.iface.applied,
        )
        try:
            self.state_file.compact(state)
        except OSError as exc:
            self._drop_state(exc)
        else:
            self.state_kept = True

    def _status_fields(self) -> dict[str, Any]:
        lag_entries, lag_seconds = self.status.lag(
            self.applied_position, self.follower.position, self.follower.caught_up
        )
        return {
            "node": self.cfg.node_id,
            "interface": self.cfg.interface,
            "mode": "file-only" if self.wg is None else "wireguard",
            "public_key": self.own_public_key or "",
            "applied_position": self.applied_position,
            "applied_block": self.applied_block,
            "lag_entries": lag_entries,
            "lag_seconds": lag_seconds,
            "last_apply": self.last_apply,
            "last_error": self.last_error,
            "peer_count": len(self.iface.applied),
            "fail_closed": self.iface.fail_closed or "",
            "addresses": ",".join(self.iface.addresses),
            "reconcile_interval": self.cfg.reconcile_interval,
            "handshake_latest": self.iface.handshake_latest,
            "held": self.held_reason(),
            "updated_at": time.time(),
        }

    def report(self) -> None:
        """Write this host's status hash now."""
        self.retry(lambda: self.status.write(self._status_fields()))

    def _error(self, message: str) -> None:
        metrics.agent_error(self.cfg.keys.tag)
        if message != self.last_error:
            self.log.error("{}", message)
        self.last_error = message
        self.status.mark()

    # --- the loop --------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Reconcile until ``stop`` is set; Redis outages keep the interface as it is."""
        self.prepare()
        interval = self.cfg.reconcile_interval
        next_timer = time.monotonic() + interval
        next_poll = 0.0
        try:
            while not stop.is_set():
                try:
                    if not self.bootstrapped:
                        self.announce()
                        self.bootstrap()
                        self._reconcile(full=True)
                        self._write_files(force=True)
                    else:
                        next_timer, next_poll = self._step(next_timer, next_poll)
                    self.outage.recovered()
                except (redis.RedisError, ServiceUnavailable) as exc:
                    self.outage.failed(exc)
                    self.last_error = f"redis: {exc}"
                    metrics.agent_error(self.cfg.keys.tag)
                    if time.monotonic() >= next_timer:  # drift repair goes on without Redis
                        next_timer = time.monotonic() + interval
                        if self.wg is not None and self.iface.applied:
                            self._sync(self.iface.applied, self.iface.addresses, hold=True)
                    self._write_files()
                    stop.wait(REDIS_PAUSE_SECONDS)
                except WgchainError as exc:
                    self._error(str(exc))
                    stop.wait(REDIS_PAUSE_SECONDS)
        finally:
            self._stop()

    def _step(self, next_timer: float, next_poll: float) -> tuple[float, float]:
        """One wake: read (writing the status on the way), fold, apply; the timer."""
        now = time.monotonic()
        waits = [next_timer - now, self.status.due_in(now)]
        for due in (self.config_writes.due_in(now), self.state_writes.due_in(now)):
            if due is not None:
                waits.append(due)
        if self.follower.announced_at is None:
            waits.append(next_poll - now)
        status = None
        if self.status.due_in(now) == 0:
            status = (self.status.key, self._status_fields())
        if self.follower.caught_up:
            block_ms: int | None = max(1, min(BLOCK_MS, int(min(waits) * 1000)))
            count = BATCH_SIZE
        else:
            block_ms, count = None, CATCH_UP_SIZE
        entries, announced = self.retry(self.follower.read, block_ms, count, status)
        if status is not None:
            self.status.written(now)
        self._announced |= announced
        changed = self.follower.fold(entries) > 0 or bool(announced)
        changed = self.check_key_file() or changed
        now = time.monotonic()
        if self.follower.announced_at is None and now >= next_poll:
            next_poll = now + HOSTS_POLL_SECONDS
            changed = bool(self._refresh_announcements(None)) or changed
        timer = now >= next_timer
        if timer:
            next_timer = now + self.cfg.reconcile_interval
            self.announce()
            if not self.follower.announcements_continuous():
                self.follower.watch_announcements()
                self._refresh_announcements(None)
            self.status.mark()
        if timer or changed or self.hold_block:
            started = time.monotonic()
            self._reconcile(full=timer)
            metrics.agent_applied(self.cfg.keys.tag, started)
        self._write_files()
        return next_timer, next_poll

    def _stop(self) -> None:
        self._write_files(force=True)
        with contextlib.suppress(redis.RedisError, ServiceUnavailable):
            self.status.write(self._status_fields())
        self.state_file.close()
        self.log.info("agent stopped")
