"""Applying peers to the WireGuard interface, in proportion to the change (I/O).

:class:`Interface` keeps a model of what it applied: node -> peer, and the
addresses. A change of k peers is one ``wg set`` (or one request on wireguard-go's
socket) of those k peers against that model; the interface is not read. When it
fails, the touched peers are put back as the model says they were, and the next
reconcile reads the interface whole. On the timer (``WGCHAIN_RECONCILE_INTERVAL``)
:meth:`Interface.sync` reads it whole (``wg show IF dump``) and repairs drift: peers
changed by hand, a restarted wireguard-go, a hostname endpoint that did not resolve.

Removals go first in every request (a revoked key loses access before anything
else moves). A peer whose endpoint is a hostname is set on its own through ``wg``
(which resolves it); if that fails it is set without an endpoint (it may roam in)
and retried on the timer. Without ``wg`` (file-only mode) only the model changes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

from consumers.agent.desired import DesiredPeer
from consumers.agent.render import PeerSpec, is_ip_endpoint, normalise_ips, satisfied
from consumers.agent.uapi import DeviceHead
from consumers.agent.wg import WireGuard
from shared.errors import WireGuardError

#: Changed peers named in one "applied" log line; more are counted.
LOGGED_CHANGES: Final = 10

#: A change of the model: node -> the peer it should have (None: no peer).
Changes = Mapping[str, DesiredPeer | None]


class PipelineError(WireGuardError):
    """A request sent without waiting (:meth:`Interface.apply` with ``wait=False``) failed;
    its peers were put back. ``nodes``: the nodes it touched (for the state journal)."""

    def __init__(self, message: str, nodes: list[str]) -> None:
        super().__init__(message)
        self.nodes = nodes


@dataclass
class _InFlight:
    """A request whose answer is not read yet, and how to undo it."""

    wait: Callable[[], None]
    touched: list[str]
    old: Mapping[str, PeerSpec]
    undo: Callable[[], None]
    nodes: list[str]


def _spec(peer: DesiredPeer) -> PeerSpec:
    """The interface's view of a desired peer (canonical allowed IPs, no node id)."""
    return PeerSpec(peer.public_key, normalise_ips(peer.allowed_ips), peer.endpoint, peer.keepalive)


def _direct(spec: PeerSpec) -> bool:
    """Whether a peer can go into a batch (no endpoint, or an IP: nothing to resolve)."""
    return spec.endpoint is None or is_ip_endpoint(spec.endpoint)


class Interface:
    """What this agent applied to its interface (or its file, in file-only mode)."""

    def __init__(
        self,
        wg: WireGuard | None,
        ifname: str,
        *,
        key_file: Path,
        listen_port: int | None,
        pools: Sequence[str],
        log: Any,
    ) -> None:
        self.wg = wg
        self.ifname = ifname
        self.key_file = key_file
        self.listen_port = listen_port
        self.pools = list(pools)
        self.log = log
        #: node id -> the peer applied for it.
        self.applied: dict[str, DesiredPeer] = {}
        self.addresses: tuple[str, ...] = ()
        #: Why the applied configuration has no peers (None: not failed closed).
        self.fail_closed: str | None = None
        #: Whether the interface was read whole and matched the model since the last failure.
        self.synced = False
        #: Public keys whose hostname endpoint ``wg`` could not resolve (retried on the timer).
        self.unresolved: set[str] = set()
        #: Unix time of the newest handshake over all peers at the last full read (0: none).
        self.handshake_latest = 0
        self.own_public_key: str | None = None
        #: The request in flight (``wait=False``), until :meth:`settle`.
        self._in_flight: _InFlight | None = None
        #: Addresses :meth:`give_addresses` gave the interface, its link left down (None:
        #: none since the last :meth:`set_addresses`).
        self._given: tuple[str, ...] | None = None

    def changes_to(self, target: Mapping[str, DesiredPeer]) -> dict[str, DesiredPeer | None]:
        """What differs between the model and ``target`` (node -> wanted peer, None: none)."""
        changed: dict[str, DesiredPeer | None] = {
            node: None for node in self.applied if node not in target
        }
        for node, peer in target.items():
            if self.applied.get(node) != peer:
                changed[node] = peer
        return changed

    # --- changes against the model -----------------------------------------------------

    def apply(self, changed: Changes, *, wait: bool = True) -> None:
        """Make the interface hold ``changed`` (node -> peer, None: none).

        Raises :class:`WireGuardError` after putting the touched peers back. ``wait``
        false (a bootstrap's fill): on wireguard-go's socket the request is sent and the
        model updated, the answer is read by :meth:`settle` (called first by every later
        operation), so that the caller works on the next batch meanwhile.
        """
        removals: list[str] = []
        sets: list[DesiredPeer] = []
        before: dict[str, DesiredPeer | None] = {}
        applied = self.applied
        for node in sorted(changed):  # in node order, as the config file lists them
            want, have = changed[node], applied.get(node)
            if have is None:  # a new peer (all of a fill's): nothing to compare or remove
                if want is not None:
                    before[node] = None
                    sets.append(want)
                continue
            if have == want:
                continue
            before[node] = have
            if (
                want is not None
                and have is not None
                and replace(have, expires=want.expires) == want
            ):
                continue  # a renewal: the interface already holds this peer
            if have is not None and (want is None or want.public_key != have.public_key):
                removals.append(have.public_key)
            if want is not None:
                sets.append(want)
        if not before:
            return
        if self.wg is not None:
            old = {p.public_key: _spec(p) for p in before.values() if p is not None}
            touched = removals + [p.public_key for p in sets]
            send = None if wait else self._prepare(removals, sets)
            self.settle()
            pending = send() if send is not None else None
            if pending is not None:

                def undo() -> None:
                    for node, peer in before.items():
                        if peer is None:
                            applied.pop(node, None)
                        else:
                            applied[node] = peer

                self._in_flight = _InFlight(pending.wait, touched, old, undo, list(before))
            else:
                try:
                    self._run(removals, [_spec(p) for p in sets])
                except WireGuardError:
                    self.synced = False
                    self._put_back(touched, old)
                    raise
        for node in before:
            want = changed[node]
            if want is None:
                applied.pop(node, None)
            else:
                applied[node] = want

    def _prepare(self, removals: list[str], sets: list[DesiredPeer]) -> Callable[[], Any] | None:
        """A function that sends a request without waiting for its answer, the request
        encoded already when the interface can (so that it goes out as soon as the one in
        flight is answered); None when the interface cannot send one (no control socket,
        a hostname endpoint). ``prepare_apply`` encodes the desired peers themselves (it
        validates every field as it encodes it: no :class:`PeerSpec` per peer, docs/design.md
        §11.2)."""
        if not (removals or sets):
            return None
        prepare = getattr(self.wg, "prepare_apply", None)
        if prepare is not None:
            send: Callable[[], Any] | None = prepare(self.ifname, removals, sets)
            return send
        start = getattr(self.wg, "start_apply", None)
        if start is None:
            return None
        specs = [_spec(p) for p in sets]
        return lambda: start(self.ifname, removals, specs)

    @property
    def in_flight(self) -> bool:
        """Whether a request's answer is still to be read (:meth:`settle`)."""
        return self._in_flight is not None

    def settle(self) -> None:
        """Read the answer of the request in flight, if any. When it failed, its peers are
        put back, the model undone, and :class:`PipelineError` raised."""
        flight, self._in_flight = self._in_flight, None
        if flight is None:
            return
        try:
            flight.wait()
        except WireGuardError as exc:
            self.synced = False
            flight.undo()
            self._put_back(flight.touched, flight.old)
            raise PipelineError(str(exc), flight.nodes) from None

    def set_addresses(self, addresses: tuple[str, ...], *, check: bool = False) -> None:
        """Give the interface ``addresses`` (and bring it up); ``check``: even if unchanged."""
        self.settle()
        given, self._given = self._given, None
        wanted = self.wg is not None and addresses and (check or addresses != self.addresses)
        # given already (the end of a fill): only the link goes up, one ioctl, where
        # reading the addresses again would be an ``ip`` process between the last answer
        # and the applied position
        link_up = getattr(self.wg, "link_up", None) if given == addresses and not check else None
        if not wanted or self.wg is None:
            pass
        elif link_up is not None:
            link_up(self.ifname)
            self.log.info("address set to {}", ", ".join(addresses))
        elif self.wg.set_addresses(self.ifname, addresses, self.pools):
            self.log.info("address set to {}", ", ".join(addresses))
        self.addresses = addresses

    def give_addresses(self, addresses: tuple[str, ...]) -> None:
        """Give the interface ``addresses`` while a request may be in flight (a fill's last),
        the link left as it is. Not applied yet: :meth:`set_addresses` brings the link up
        once the request is answered. A link up while wireguard-go still adds peers would
        make it start each one added after that and send it a handshake initiation (key
        exchanges): the end of the fill would be slower."""
        if self.wg is not None and addresses:
            self._given = None
            self.wg.set_addresses(self.ifname, addresses, self.pools, up=False)
            self._given = addresses

    def load_key(self, public_key: str) -> None:
        """Load the private key file into the interface (its public key is ``public_key``)."""
        self.settle()
        self.own_public_key = public_key
        if self.wg is not None:
            self.wg.set_private_key(self.ifname, str(self.key_file.absolute()))
            self.log.info("private key loaded into the interface")

    # --- the whole interface -----------------------------------------------------------

    def sync(self, target: Mapping[str, DesiredPeer]) -> int:
        """Read the interface whole and make it hold ``target`` (node -> peer); the model
        becomes ``target``. Returns how many peers had to change (drift, or new ones)."""
        self.settle()
        if self.wg is None:
            self.applied = dict(target)
            self.synced = True
            return 0
        state = self.wg.show(self.ifname)
        self.handshake_latest = max(state.handshakes.values(), default=0)
        self._check_device(state.public_key, state.listen_port)
        hostnames = {
            p.public_key: p.endpoint
            for p in self.applied.values()
            if p.endpoint and not is_ip_endpoint(p.endpoint) and p.public_key not in self.unresolved
        }
        self.unresolved.clear()
        have = state.peers
        want = {p.public_key: _spec(p) for p in target.values()}
        removals = sorted(key for key in have if key not in want)
        sets = [s for k, s in want.items() if not satisfied(have.get(k), s, hostnames.get(k))]
        operations = len(removals) + len(sets)
        try:
            self._run(removals, sets)
        except WireGuardError:
            self.synced = False
            self._put_back(removals + [s.public_key for s in sets], state.peers)
            raise
        self.applied = dict(target)
        self.synced = True
        return operations

    def take_empty(self) -> bool:
        """Read the interface; when it has no peers (a fresh interface), the model is that
        (synced) and True is returned: a fill may then only add. On wireguard-go its
        control socket says so (one ``get=1``, :meth:`Wg.head`), where ``wg show`` would
        be a process between the agent's start and the fill's first request; elsewhere,
        or when the socket does not answer, ``wg show``."""
        self.settle()
        if self.wg is None:
            return False
        head = self._head()
        if head is None:
            state = self.wg.show(self.ifname)
            head = DeviceHead(state.public_key, state.listen_port, len(state.peers))
        if head.peers:
            return False
        self._check_device(head.public_key, head.listen_port)
        self.handshake_latest = 0
        self.applied = {}
        self.synced = True
        return True

    def _head(self) -> DeviceHead | None:
        """The interface's key, listen port and number of peers through its control socket;
        None: no control socket, or no answer (then ``wg show`` says)."""
        head = getattr(self.wg, "head", None)
        if head is None:
            return None
        try:
            found: DeviceHead | None = head(self.ifname)
        except WireGuardError as exc:
            self.log.warning("{}: reading the interface with wg show instead", exc)
            return None
        return found

    def _check_device(self, public_key: str | None, listen_port: int) -> None:
        """The private key loaded and the listen port set when the interface has others."""
        assert self.wg is not None
        if self.own_public_key and public_key != self.own_public_key:
            self.load_key(self.own_public_key)
        if self.listen_port is not None and listen_port != self.listen_port:
            self.wg.set_listen_port(self.ifname, self.listen_port)

    # --- running the commands ----------------------------------------------------------

    def _run(self, removals: list[str], specs: list[PeerSpec]) -> None:
        """Removals first, then sets, as few requests as possible.

        A peer whose endpoint is a hostname gets a request of its own, and so does every
        peer of a batch that failed: a peer whose endpoint cannot be set (most likely a
        hostname that does not resolve) is then set without one.
        """
        assert self.wg is not None
        batch = [s for s in specs if _direct(s)]
        alone = [s for s in specs if not _direct(s)]
        if removals or batch:
            try:
                self.wg.apply(self.ifname, removals, batch)
            except WireGuardError as exc:
                if not batch:
                    raise
                self.log.warning("setting {} peer(s) failed ({}): one by one", len(batch), exc)
                if removals:
                    self.wg.apply(self.ifname, removals, ())
                alone = batch + alone
        for spec in alone:
            self._set_one(spec)

    def _set_one(self, spec: PeerSpec) -> None:
        assert self.wg is not None
        try:
            self.wg.apply(self.ifname, (), [spec])
        except WireGuardError as exc:
            if spec.endpoint is None:
                raise
            # Most likely a hostname that does not resolve: keep the peer, let it roam in.
            self.log.warning("peer {}…: endpoint not set ({})", spec.public_key[:8], exc)
            self.wg.apply(self.ifname, (), [replace(spec, endpoint=None)])
            self.unresolved.add(spec.public_key)

    def _put_back(self, touched: list[str], old: Mapping[str, PeerSpec]) -> None:
        """Best effort: the touched keys as ``old`` (key -> peer) has them, or gone."""
        assert self.wg is not None
        keys = set(touched)
        gone = sorted(k for k in keys if k not in old)
        back = [old[k] for k in sorted(keys) if k in old]
        try:
            self.wg.apply(self.ifname, gone, [s for s in back if _direct(s)])
            for spec in back:
                if not _direct(spec):
                    self.wg.apply(self.ifname, (), [spec])
            self.log.warning("rolled back {} peer(s) to what they were", len(keys))
        except WireGuardError as exc:
            self.log.error("rollback failed: {}", exc)


def summary(changed: Changes, applied: Mapping[str, DesiredPeer | None]) -> str:
    """The first :data:`LOGGED_CHANGES` changes against ``applied`` in words, and how many
    more."""
    words: list[str] = []
    for node, peer in changed.items():
        if len(words) == LOGGED_CHANGES:
            break
        key = (peer or applied.get(node) or DesiredPeer(node, "?", (), None, 0)).public_key
        words.append(f"{'remove' if peer is None else 'set'} {node} ({key[:8]}…)")
    more = len(changed) - len(words)
    return ", ".join(words) + (f" and {more} more" if more > 0 else "")
