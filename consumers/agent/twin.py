"""The in-memory twin of :class:`consumers.agent.wg.Wg` (no I/O), for tests of the agent
loop and for the fleet benchmark's agents; never a stand-in for WireGuard in e2e tests."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from consumers.agent.keys import public_key_from_file
from consumers.agent.render import InterfaceState, PeerSpec, normalise_ips
from shared.errors import WireGuardError

#: Calls :class:`MemoryWireGuard` remembers (the oldest are dropped beyond).
MAX_CALLS: Final = 1000


@dataclass
class MemoryWireGuard:
    """In-memory twin of :class:`Wg` for unit tests and the fleet benchmark.

    ``fail_keys`` makes setting those peers fail (after the peers before them in the same
    call were set, as a real ``wg set`` does). ``calls`` lists the last :data:`MAX_CALLS`
    operations (one line per call), so a long benchmark run does not grow it.
    """

    public_key: str | None = None
    listen_port: int = 0
    peers: dict[str, PeerSpec] = field(default_factory=dict)
    addresses: set[str] = field(default_factory=set)
    #: Whether the link is up (``set_addresses`` brings it up).
    up: bool = False
    fail_keys: set[str] = field(default_factory=set)
    calls: list[str] = field(default_factory=list)

    def _call(self, what: str) -> None:
        if len(self.calls) >= MAX_CALLS:
            del self.calls[: MAX_CALLS // 2]
        self.calls.append(what)

    def ensure(self, ifname: str) -> str:
        return "existing"

    def show(self, ifname: str) -> InterfaceState:
        return InterfaceState(self.public_key, self.listen_port, dict(self.peers))

    def set_private_key(self, ifname: str, path: str) -> None:
        self._call("private-key")
        self.public_key = public_key_from_file(path)

    def set_listen_port(self, ifname: str, port: int) -> None:
        self._call(f"listen-port {port}")
        self.listen_port = port

    def _set(self, peer: PeerSpec) -> None:
        if peer.public_key in self.fail_keys:
            raise WireGuardError("injected failure")
        old = self.peers.get(peer.public_key)
        endpoint = peer.endpoint if peer.endpoint is not None else (old.endpoint if old else None)
        ips = normalise_ips(peer.allowed_ips)
        if ips == peer.allowed_ips and endpoint == peer.endpoint and not peer.node_id:
            self.peers[peer.public_key] = peer  # shared, not copied (many agents per process)
        else:
            self.peers[peer.public_key] = PeerSpec(peer.public_key, ips, endpoint, peer.keepalive)

    def set_peer(self, ifname: str, peer: PeerSpec) -> None:
        self._call(f"set {peer.public_key}")
        self._set(peer)

    def set_peers(self, ifname: str, peers: Sequence[PeerSpec]) -> None:
        self.apply(ifname, (), peers)

    def remove_peer(self, ifname: str, key: str) -> None:
        self._call(f"remove {key}")
        self.peers.pop(key, None)

    def remove_peers(self, ifname: str, keys: Sequence[str]) -> None:
        self.apply(ifname, keys, ())

    def apply(self, ifname: str, removals: Sequence[str], peers: Sequence[PeerSpec]) -> None:
        if not removals and not peers:
            return
        self._call(f"apply -{len(removals)} +{len(peers)}")
        for key in removals:
            self.peers.pop(key, None)
        for peer in peers:
            self._set(peer)

    def set_addresses(
        self, ifname: str, cidrs: Sequence[str], pools: Sequence[str], *, up: bool = True
    ) -> bool:
        wanted = set(cidrs)
        changed = wanted != self.addresses or (up and not self.up)
        self.addresses = wanted
        self.up = self.up or up
        return changed
