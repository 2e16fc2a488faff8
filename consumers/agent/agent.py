"""The agent loop on one WireGuard host: peers stream in, ``wg set`` differences out.

Read ``peers`` (from the start today; a snapshot bootstrap slots into
:meth:`Agent.bootstrap`), fold it into the peer table, and reconcile on every
batch, when the private key file changes, when announcements change, and on a
timer (drift repair). A reconcile reads the interface, computes the desired
state, applies only the difference (the interface never goes down), sets the
address, verifies by reading back, rolls back to the previous peers on failure,
writes the wg-quick file atomically with rotated backups, and reports status.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

import msgspec
import redis

from consumers.agent.desired import Desired, PeerTable, Policy, desired_state, parse_endpoint
from consumers.agent.keys import public_key_from_file
from consumers.agent.render import (
    PeerSpec,
    RemovePeer,
    SetPeer,
    diff_peers,
    is_ip_endpoint,
    render_config,
    wanted_peers,
)
from consumers.agent.wg import WireGuard
from shared import metrics
from shared.errors import (
    DecodeError,
    KeyFileError,
    ServiceUnavailable,
    WgchainError,
    WireGuardError,
)
from shared.events import PeersSnapshot, Retracted, effective, from_fields
from shared.keys import Keys
from shared.logs import log
from shared.redis_log import START, Entry, as_str, id_key, read_after, redis_retry
from shared.validate import excerpt

#: Entries of the peers stream read per batch.
BATCH_SIZE: Final = 500
#: Milliseconds one XREAD blocks waiting for new peers entries.
BLOCK_MS: Final = 1000
#: Entries per page when a retraction makes the agent re-read the peers stream.
REBUILD_PAGE: Final = 5000
#: Seconds between polls of the members' endpoint announcements.
HOSTS_POLL_SECONDS: Final = 5.0
#: Rotated backups kept of the config file (``IF.conf.1`` newest .. ``IF.conf.5``).
CONFIG_BACKUPS: Final = 5
#: Most entries counted when reporting lag (entries); more shows as this number.
LAG_COUNT_CAP: Final = 10_000
#: Seconds to wait before retrying after Redis is unreachable.
REDIS_PAUSE_SECONDS: Final = 1.0
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


def write_config(path: Path, text: str, backups: int = CONFIG_BACKUPS) -> bool:
    """Atomically replace ``path`` with ``text`` (0600), keeping rotated backups.

    Returns False (and writes nothing) when the file already holds ``text``.
    """
    try:
        if path.read_text() == text:
            return False
    except (FileNotFoundError, UnicodeDecodeError):
        pass
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        for i in range(backups - 1, 0, -1):
            older = path.with_name(f"{path.name}.{i}")
            if older.exists():
                os.replace(older, path.with_name(f"{path.name}.{i + 1}"))
        if backups and path.exists():
            newest = path.with_name(f"{path.name}.1")
            with contextlib.suppress(FileNotFoundError):
                newest.unlink()
            try:
                os.link(path, newest)
            except OSError:  # no hard links on this filesystem
                shutil.copy2(path, newest)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return True


_SNAPSHOT: Final = msgspec.json.Decoder(PeersSnapshot)


def _before(entry_id: str) -> str:
    """The stream id just before ``entry_id``."""
    ms, seq = id_key(entry_id)
    return f"{ms}-{seq - 1}" if seq else f"{ms - 1}-{2**64 - 1}"


def _block_of(entry: object) -> int:
    """The chain block a peers entry stems from (0 when it names none)."""
    block = getattr(entry, "block_number", 0)
    return block if isinstance(block, int) else 0


def _ms(entry_id: str) -> int:
    return int(entry_id.split("-", 1)[0]) if entry_id and entry_id != START else 0


def _deleted_after(info: object) -> str:
    """The newest id XDEL (or, from Redis 7.2, XTRIM) removed from a stream (``0-0``: none)."""
    if not isinstance(info, dict):
        return START
    return as_str(info.get("max-deleted-entry-id") or START)


def _trimmed_past(info: object, position: str) -> bool:
    """Whether XINFO STREAM ``info`` shows the stream trimmed past ``position``.

    Redis 7.0's XTRIM leaves ``max-deleted-entry-id`` alone, so a trim shows as a
    first entry after ``position`` in a stream that has lost entries (more added
    than it holds). A stream refilled after a reset lost none: it was reset.
    """
    if not isinstance(info, dict):
        return False
    added, length = info.get("entries-added"), info.get("length")
    if isinstance(added, int) and isinstance(length, int):
        if added <= length:
            return False
        if length == 0:
            return True  # trimmed to nothing
    first = info.get("recorded-first-entry-id")
    if not first:
        entry = info.get("first-entry")
        first = entry[0] if isinstance(entry, list | tuple) and entry else None
    return first is not None and id_key(as_str(first)) > id_key(position)


def _spec(op: SetPeer) -> PeerSpec:
    return PeerSpec(op.public_key, op.allowed_ips, op.endpoint, op.keepalive, op.node_id)


class Agent:
    """One host's agent. ``wireguard`` is None in file-only mode (no ``wg``/``ip`` at all)."""

    def __init__(
        self, config: AgentConfig, client: redis.Redis, wireguard: WireGuard | None
    ) -> None:
        self.cfg = config
        self.client = client
        self.wg = wireguard
        self.table = PeerTable()
        self.position = START
        self.applied_position = START
        #: Block of the newest peers entry the table covers, and of the applied table.
        self.block = self.applied_block = 0
        #: After the stream was reset or trimmed: the applied block a rebuilt table must
        #: reach before it is applied (0: no hold), and when an entry last arrived.
        self.hold_block = 0
        self.last_entries = 0.0
        self.own_public_key: str | None = None
        self.announcements: dict[str, bytes] = {}
        self.applied_endpoints: dict[str, str] = {}
        self.unresolved: set[str] = set()
        self.last_error = ""
        self.last_apply = 0.0
        self.desired: Desired | None = None
        self._key_stamp: tuple[int, int, int] | None = None
        self._names: dict[str, str] = {}  # public key -> node id, for log lines
        self._announce_keys: dict[str, str] = {}  # node id -> its announcement key
        self.log = log.bind(stage="agent", node=config.node_id, interface=config.interface)

    # --- inputs ----------------------------------------------------------------------

    def read_peers(self, block_ms: int | None) -> list[Entry]:
        """The next batch of ``peers`` entries after our position.

        Each read is checked against the stream: when entries we have not read were
        trimmed (retention) we start again from the snapshot; when the stream was
        reset (Redis lost its data) from scratch. The check follows the read in the
        same retried call, so a read that waited through a Redis restart is checked.
        """
        return redis_retry(self._read_peers, block_ms)

    def _read_peers(self, block_ms: int | None) -> list[Entry]:
        peers = self.cfg.keys.peers
        entries = read_after(self.client, peers, self.position, BATCH_SIZE, block_ms)
        if self.position != START and not self._check_continuity():
            entries = read_after(self.client, peers, self.position, BATCH_SIZE, None)
        return entries

    def _check_continuity(self) -> bool:
        """True when the stream still holds everything after our position.

        Else (entries were trimmed, or Redis was reset) the table starts again from
        the snapshot or from scratch, and False. That table may be older than the
        applied one (the pipeline is still refilling the stream): the applied
        configuration is then held until the table reaches its block (:meth:`_held`).
        """
        pipe = self.client.pipeline(transaction=False)
        pipe.xinfo_stream(self.cfg.keys.peers)
        pipe.xrange(self.cfg.keys.peers, min=self.position, max=self.position)
        info, ours = pipe.execute(raise_on_error=False)
        if id_key(_deleted_after(info)) > id_key(self.position) or (
            isinstance(ours, list) and not ours and _trimmed_past(info, self.position)
        ):
            self.log.warning(
                "peers entries after {} were trimmed before we read them: using the snapshot",
                self.position,
            )
        elif isinstance(ours, list) and not ours:
            self.log.warning(
                "our position {} is not in the peers stream (Redis was reset?): reading again",
                self.position,
            )
        else:
            return True
        self.hold_block = max(self.hold_block, self.applied_block)
        self.table, self.position, self.block = PeerTable(), START, 0
        self.load_snapshot()
        self.last_entries = time.monotonic()
        if self.block >= self.hold_block:
            self.hold_block = 0  # the snapshot is not behind: nothing to hold
        else:
            self.log.warning(
                "keeping the configuration applied at block {} until the peers stream "
                "reaches that block again",
                self.hold_block,
            )
        return False

    def load_snapshot(self, newer_than: str = START) -> bool:
        """Replace the table with the latest snapshot if it is newer than ``newer_than``."""
        raw: Any = redis_retry(self.client.hmget, self.cfg.keys.snapshot, "id", "data")
        if raw[0] is None or raw[1] is None:
            return False
        through = as_str(raw[0])
        if id_key(through) <= id_key(newer_than):
            return False
        try:
            snapshot = _SNAPSHOT.decode(raw[1])
        except msgspec.DecodeError as exc:
            self.log.error("snapshot unreadable ({}); ignoring it", excerpt(str(exc)))
            return False
        table = PeerTable()
        for peer in snapshot.peers:
            table.apply(peer)
        self.table, self.position = table, through
        blocks = [self.block, *(p.block_number for p in snapshot.peers)]
        last: Any = redis_retry(self.client.xrange, self.cfg.keys.peers, through, through)
        with contextlib.suppress(DecodeError):  # the entry the snapshot covers through
            blocks += [_block_of(from_fields(fields)) for _, fields in last]
        self.block = max(blocks)
        self.log.info("peer table from the snapshot at {} ({} peers)", through, len(table.records))
        return True

    def fold(self, entries: list[Entry]) -> int:
        """Fold entries into the peer table; returns how many were consumed.

        A ``Retracted`` entry (deep reorg upstream) rebuilds the table from the
        effective stream up to the last retraction of its run, so the table equals
        a clean fold of the canonical history.
        """
        retract_until = ""
        for entry_id, fields in entries:
            if id_key(entry_id) <= id_key(self.position):
                continue  # already covered by a snapshot loaded in this batch
            try:
                entry = from_fields(fields)
            except DecodeError as exc:
                self.log.bind(entry=entry_id).warning("peers entry ignored: {}", exc)
                self.position = entry_id
                continue
            self.block = max(self.block, _block_of(entry))
            if isinstance(entry, Retracted):
                retract_until = entry_id
                self.position = entry_id
                continue
            if retract_until:
                self._retract(retract_until)
                retract_until = ""
                if id_key(entry_id) <= id_key(self.position):
                    continue
            problem = self.table.apply(entry)
            if problem:
                self.log.bind(entry=entry_id).warning("peers entry ignored: {}", problem)
            self.position = entry_id
        if retract_until:
            self._retract(retract_until)
        if entries:
            self.last_entries = time.monotonic()
        return len(entries)

    def _retract(self, until: str) -> None:
        """Make the table a clean fold of the effective stream up to ``until``.

        The ipam stage writes a snapshot in the same commit as any retraction, so
        the snapshot (which may be newer still) is the quick and exact way; without
        one, the stream is folded again from its start.
        """
        self.log.warning("peers retracted upstream (reorg) at {}", until)
        if not self.load_snapshot(newer_than=_before(until)):
            self.table, self.position = self._rebuild(until), until

    def _rebuild(self, until: str) -> PeerTable:
        """The peer table folded from the effective ``peers`` stream up to ``until``."""
        items: list[tuple[str, Any]] = []
        low = "-"
        while True:
            page: Any = redis_retry(
                self.client.xrange, self.cfg.keys.peers, min=low, max=until, count=REBUILD_PAGE
            )
            for raw_id, fields in page:
                with contextlib.suppress(DecodeError):
                    items.append((as_str(raw_id), from_fields(fields)))
            if len(page) < REBUILD_PAGE:
                break
            low = f"({as_str(page[-1][0])}"
        table = PeerTable()
        for _, entry in effective(items):
            table.apply(entry)
        self.log.info("peer table folded again up to {}", until)
        return table

    def bootstrap(self) -> None:
        """Catch up before the first reconcile: the latest snapshot, then the stream after it."""
        self.load_snapshot(newer_than=self.position)
        while self.fold(batch := self.read_peers(None)) == BATCH_SIZE and batch:
            pass

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
        self.own_public_key = public
        return True

    def refresh_announcements(self) -> bool:
        """Re-read the members' announcements (one MGET); True when any changed.

        Each agent writes only its own key (``Keys.host_announce``), so an ACL can
        confine it; the list of hosts comes from the peer table, not a shared index.
        """
        nodes = sorted(self.table.records)
        keys = [self._announce_key(node) for node in nodes]
        raw: Any = redis_retry(self.client.mget, keys) if keys else []
        fresh = {node: value for node, value in zip(nodes, raw, strict=True) if value is not None}
        changed = fresh != self.announcements
        self.announcements = fresh
        return changed

    def _announce_key(self, node: str) -> str:
        key = self._announce_keys.get(node)
        if key is None:
            key = self._announce_keys[node] = self.cfg.keys.host_announce(node)
        return key

    def announce(self) -> None:
        if self.cfg.endpoint is None:
            return
        doc = {"endpoint": self.cfg.endpoint, "listen_port": self.cfg.listen_port}
        key = self.cfg.keys.host_announce(self.cfg.node_id)
        redis_retry(self.client.set, key, json.dumps(doc))

    # --- reconcile -------------------------------------------------------------------

    def reconcile(self, reason: str) -> bool:
        """Bring the interface (or only the file) to the desired state; True on success."""
        if self._held():
            return False
        started = time.monotonic()
        self.refresh_announcements()
        desired = desired_state(
            self.table.records,
            self.cfg.node_id,
            self.own_public_key,
            self.announcements,
            self.cfg.policy,
        )
        if desired.fail_closed and (self.desired is None or not self.desired.fail_closed):
            self.log.warning("fail closed ({}): removing every peer", desired.fail_closed)
        for node, why in desired.skipped:
            self.log.debug("member {} left out: {}", node, why)
        self.desired = desired
        self._names.update((p.public_key, p.node_id) for p in desired.peers)
        ok = True
        if self.wg is not None:
            try:
                self._apply(desired)
            except WireGuardError as exc:
                self._error(str(exc))
                ok = False
        if ok:
            text = render_config(
                desired,
                listen_port=self.cfg.listen_port,
                private_key_file=str(self.cfg.private_key_file.absolute()),
            )
            try:
                if write_config(self.cfg.config_path, text):
                    self.log.info("wrote {}", self.cfg.config_path)
            except OSError as exc:
                self._error(f"cannot write {self.cfg.config_path}: {exc.strerror}")
                ok = False
        if ok:
            self.applied_position = self.position
            self.applied_block = self.block
            self.last_apply = time.time()
            self.last_error = ""
            self.log.debug("reconciled ({}): {} peers", reason, len(desired.peers))
        metrics.agent_applied(self.cfg.keys.tag, started)
        self.report()
        return ok

    def _held(self) -> bool:
        """True while a table rebuilt after a reset is behind the applied configuration.

        A Redis that lost its data is refilled by the pipeline from the chain; a table
        folded from a partly refilled stream is an older state of the network, and
        applying it would cut tunnels that the chain still grants. The hold ends when
        the table reaches the applied block, or when the refilled stream stays short
        of it for :data:`HOLD_QUIET_SECONDS` (that block is gone from the chain: a
        deep reorg). An empty stream (nothing refilled yet) never ends it.
        """
        if not self.hold_block:
            return False
        if self.block < self.hold_block:
            quiet = time.monotonic() - self.last_entries >= HOLD_QUIET_SECONDS
            if not (self.block and quiet):
                return True
            self.log.warning(
                "the peers stream stopped at block {}, short of block {}: applying it",
                self.block,
                self.hold_block,
            )
        else:
            self.log.info("the peers stream reached block {} again: reconciling", self.block)
        self.hold_block = 0
        return False

    def _apply(self, desired: Desired) -> None:
        assert self.wg is not None
        ifname = self.cfg.interface
        before = self.wg.show(ifname)
        if self.own_public_key and before.public_key != self.own_public_key:
            self.wg.set_private_key(ifname, str(self.cfg.private_key_file.absolute()))
            self.log.info("private key loaded into the interface")
        if self.cfg.listen_port is not None and before.listen_port != self.cfg.listen_port:
            self.wg.set_listen_port(ifname, self.cfg.listen_port)
        target = wanted_peers(desired)
        ops = diff_peers(before.peers, target, self.applied_endpoints)
        for op in ops:
            self.log.debug(
                "{}: have {}, want {}",
                type(op).__name__,
                before.peers.get(op.public_key),
                target.get(op.public_key),
            )
        try:
            self._run_ops(ops)
            if desired.addresses:
                pools = [self.cfg.policy.pool, self.cfg.policy.pool6]
                if self.wg.set_addresses(ifname, desired.addresses, pools):
                    self.log.info("address set to {}", ", ".join(desired.addresses))
            if ops:  # read back once; with no operation ``before`` already matched ``target``
                after = self.wg.show(ifname)
                left = diff_peers(after.peers, target, self.applied_endpoints)
                if left:
                    raise WireGuardError(f"verify failed: {len(left)} peer(s) differ after apply")
        except WireGuardError:
            self._rollback(before.peers)
            raise
        if ops:
            self.log.info(
                "applied {} change(s): {}", len(ops), ", ".join(self._describe(op) for op in ops)
            )

    def _run_ops(self, ops: list[SetPeer | RemovePeer]) -> None:
        """Removals first, then sets, many peers per ``wg set``.

        A peer whose endpoint is a hostname gets a command of its own, and so does
        every peer of a batch that failed: a peer whose endpoint cannot be set (most
        likely a hostname that does not resolve) is then set without one.
        """
        assert self.wg is not None
        removals = [op.public_key for op in ops if isinstance(op, RemovePeer)]
        if removals:
            self.wg.remove_peers(self.cfg.interface, removals)
            for key in removals:
                self.applied_endpoints.pop(key, None)
        batch: list[SetPeer] = []
        alone: list[SetPeer] = []
        for op in ops:
            if isinstance(op, SetPeer):
                by_ip = op.endpoint is None or is_ip_endpoint(op.endpoint)
                (batch if by_ip else alone).append(op)
        if batch:
            try:
                self.wg.set_peers(self.cfg.interface, [_spec(op) for op in batch])
            except WireGuardError:
                alone = batch + alone  # again one by one (setting a peer twice is harmless)
            else:
                for op in batch:
                    if op.endpoint is not None:
                        self.applied_endpoints[op.public_key] = op.endpoint
        for op in alone:
            self._set_one(op)

    def _set_one(self, op: SetPeer) -> None:
        assert self.wg is not None
        spec = _spec(op)
        try:
            self.wg.set_peer(self.cfg.interface, spec)
        except WireGuardError as exc:
            if op.endpoint is None:
                raise
            # Most likely a hostname that does not resolve: keep the peer, let it roam in.
            self.log.warning("peer {}: endpoint not set ({})", op.node_id, exc)
            self.wg.set_peer(self.cfg.interface, replace(spec, endpoint=None))
            self.unresolved.add(op.public_key)
        if op.endpoint is not None:
            self.applied_endpoints[op.public_key] = op.endpoint

    def _rollback(self, previous: dict[str, PeerSpec]) -> None:
        """Best effort: put the peers back as they were before this apply."""
        assert self.wg is not None
        try:
            now = self.wg.show(self.cfg.interface).peers
            back = diff_peers(now, previous)
            removals = [op.public_key for op in back if isinstance(op, RemovePeer)]
            if removals:
                self.wg.remove_peers(self.cfg.interface, removals)
            sets = [_spec(op) for op in back if isinstance(op, SetPeer)]
            if sets:
                self.wg.set_peers(self.cfg.interface, sets)
            self.applied_endpoints = {
                k: v for k, v in self.applied_endpoints.items() if k in previous
            }
            self.log.warning("rolled back to the previous {} peer(s)", len(previous))
        except WireGuardError as exc:
            self.log.error("rollback failed: {}", exc)

    def _describe(self, op: SetPeer | RemovePeer) -> str:
        verb = "remove" if isinstance(op, RemovePeer) else "set"
        node = op.node_id or self._names.get(op.public_key, "unknown")
        return f"{verb} {node} ({op.public_key[:8]}…)"

    # --- reporting -------------------------------------------------------------------

    def _error(self, message: str) -> None:
        metrics.agent_error(self.cfg.keys.tag)
        if message != self.last_error:
            self.log.error("{}", message)
        self.last_error = message

    def report(self) -> None:
        """Write this host's status hash: position, lag, last apply, last error, peers."""
        keys = self.cfg.keys
        last: Any = redis_retry(self.client.xrevrange, keys.peers, count=1)
        last_id = as_str(last[0][0]) if last else START
        behind = 0
        if last_id != self.applied_position:
            after = f"({self.applied_position}" if self.applied_position != START else "-"
            pending: Any = redis_retry(
                self.client.xrange, keys.peers, min=after, count=LAG_COUNT_CAP
            )
            behind = len(pending)
        desired = self.desired
        status = {
            "node": self.cfg.node_id,
            "interface": self.cfg.interface,
            "mode": "file-only" if self.wg is None else "wireguard",
            "public_key": self.own_public_key or "",
            "applied_position": self.applied_position,
            "lag_entries": behind,
            "lag_seconds": max(0, _ms(last_id) - _ms(self.applied_position)) / 1000,
            "last_apply": self.last_apply,
            "last_error": self.last_error,
            "peer_count": len(desired.peers) if desired else 0,
            "fail_closed": (desired.fail_closed or "") if desired else "",
            "addresses": ",".join(desired.addresses) if desired else "",
            "updated_at": time.time(),
        }
        redis_retry(self.client.hset, keys.host_status(self.cfg.node_id), mapping=status)

    # --- the loop --------------------------------------------------------------------

    def start(self) -> None:
        """Load the key, prepare the interface, announce, catch up and reconcile once."""
        self.own_public_key = public_key_from_file(self.cfg.private_key_file)
        self.check_key_file()
        self.log.info("own public key {}", self.own_public_key)
        policy = self.cfg.policy
        self.log.info("topology {} {}", policy.topology, ",".join(policy.hubs))
        self.remove_stale_temp_files()
        if self.wg is None:
            self.log.warning("file-only mode: writing {} only, no wg/ip", self.cfg.config_path)
        else:
            how = self.wg.ensure(self.cfg.interface)
            self.log.info("interface ready ({})", how)
        self.announce()
        self.bootstrap()
        self.reconcile("start")

    def remove_stale_temp_files(self) -> None:
        """Delete temp files of :func:`write_config` that a kill left before their rename."""
        path = self.cfg.config_path
        with contextlib.suppress(FileNotFoundError):
            for stale in path.parent.glob(f".{path.name}.*.tmp"):
                with contextlib.suppress(FileNotFoundError):
                    stale.unlink()
                    self.log.info("removed the stale temp file {}", stale)

    def run(self, stop: threading.Event) -> None:
        """Reconcile until ``stop`` is set; Redis outages keep the interface as it is."""
        interval = self.cfg.reconcile_interval
        block_ms = max(10, min(BLOCK_MS, int(interval * 1000)))
        started = False
        next_timer = next_hosts = 0.0
        while not stop.is_set():
            try:
                if not started:
                    self.start()
                    started = True
                    next_timer = time.monotonic() + interval
                    next_hosts = time.monotonic() + HOSTS_POLL_SECONDS
                    continue
                reason = "peers" if self.fold(self.read_peers(block_ms)) else ""
                if self.check_key_file():
                    reason = reason or "key-file"
                now = time.monotonic()
                if now >= next_hosts:
                    next_hosts = now + HOSTS_POLL_SECONDS
                    if not reason and self.refresh_announcements():
                        reason = "announcements"
                if now >= next_timer:
                    next_timer = now + interval
                    self.announce()
                    for key in self.unresolved:
                        self.applied_endpoints.pop(key, None)
                    self.unresolved.clear()
                    reason = reason or "timer"
                if reason:
                    self.reconcile(reason)
            except (redis.RedisError, ServiceUnavailable) as exc:
                self._error(f"redis: {exc}")
                stop.wait(REDIS_PAUSE_SECONDS)
            except WgchainError as exc:
                if not started:
                    raise
                self._error(str(exc))
                stop.wait(REDIS_PAUSE_SECONDS)
        self.log.info("agent stopped")
