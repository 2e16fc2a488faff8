"""What ``wgchain diagnose NODE`` knows about a node, from every source: msgspec structs. Pure.

:mod:`consumers.nodes.gather` reads them (Redis, the RPC node, ``wg``);
:func:`consumers.nodes.diagnose.diagnose` reasons over them. Every fact a source
cannot give stays None or empty and is said to be unknown, never guessed.
"""

from __future__ import annotations

import msgspec

from consumers.status.model import HostInfo, Issue, ListenerInfo, Problem, StageInfo
from shared.settings import DEFAULTS


class Membership(msgspec.Struct, kw_only=True):
    """The node in the registry (its tokens, key and liveness) and in the ipam state."""

    #: A token, active or revoked, has named the node.
    known: bool = False
    #: An active token names it.
    member: bool = False
    live: bool = False
    #: Why it is not live (``shared/reasons.py``; "" when live).
    reason: str = ""
    #: The token that keeps the node, and its owner.
    token_id: int | None = None
    owner: str | None = None
    #: The owner's key on chain, as it is there ("" when none; hostile until validated).
    public_key: str = ""
    #: Why that key is not a WireGuard key, in words (None: it is one, or there is none).
    key_problem: str | None = None
    #: Every token that ever named the node, and the active ones.
    tokens: list[int] = []
    active_tokens: list[int] = []
    #: The access check of the node's own key, in words (who keeps the key in a conflict).
    detail: str = ""
    #: Unix time its pass expires (ERC-5643; None: never).
    expires: int | None = None
    #: Node ids close to this one (when no token ever named it: a typo?).
    similar: list[str] = []
    #: The ipam stage holds an address for it now (it is in the ``peers`` stream).
    published: bool = False
    #: That address ...
    ipv4: str | None = None
    ipv6: str | None = None
    #: ... and the key published with it (None: not known, from an older ipam state).
    published_key: str | None = None


class TunnelPeer(msgspec.Struct, kw_only=True):
    """One peer of that interface, as ``wg show`` prints it."""

    public_key: str
    endpoint: str | None = None
    #: Unix time of its latest handshake (0: never).
    handshake: int = 0
    #: Bytes received from it and sent to it.
    rx: int = 0
    tx: int = 0


class Tunnel(msgspec.Struct, kw_only=True):
    """The WireGuard interface of the machine ``diagnose --interface IF`` runs on."""

    interface: str
    #: Its public key (None: unknown).
    public_key: str | None = None
    #: Its peers: only the node's, on another host; all of them on the node's own host.
    peers: list[TunnelPeer] = []
    #: Why it could not be read ("" when it was).
    error: str = ""


class PeersEntry(msgspec.Struct, kw_only=True):
    """The newest ``peers`` stream entry about the node (what a host must apply to carry it)."""

    #: Its id (None: not among the newest ``examined`` entries).
    id: str | None = None
    #: ``upsert`` (the node is a peer) or ``remove``; "" when not found.
    kind: str = ""
    #: Entries examined walking back from the newest one, and the oldest of them.
    examined: int = 0
    oldest: str | None = None


class Facts(msgspec.Struct, kw_only=True):
    """Everything ``diagnose`` looked at."""

    node: str
    network: str
    #: Unix time of the look.
    now: float
    #: Whether Redis holds anything for this network.
    has_data: bool = True
    membership: Membership
    #: The node's current conflicts, anomalies and pending allocation.
    issues: list[Issue] = []
    listener: ListenerInfo
    stages: list[StageInfo] = []
    #: The pipeline's problems, as ``wgchain status`` names them.
    problems: list[Problem] = []
    #: Newest entry of the ``peers`` stream.
    peers_head: str | None = None
    entry: PeersEntry = msgspec.field(default_factory=PeersEntry)
    #: Every host that reported or announced itself (the node's own among them, if any).
    hosts: list[HostInfo] = []
    #: Reconcile interval of agents that do not report theirs (seconds).
    reconcile_interval: float = DEFAULTS.reconcile_interval
    topology: str = DEFAULTS.topology
    hubs: list[str] = []
    #: The endpoint template of hosts that announce none ("" none).
    endpoint_template: str = ""
    #: The local interface (None: ``--interface`` not given).
    tunnel: Tunnel | None = None

    def own_host(self) -> HostInfo | None:
        """The node's own agent (None: none reported or announced itself)."""
        return next((h for h in self.hosts if h.node == self.node), None)


__all__ = ["Facts", "Membership", "PeersEntry", "Tunnel", "TunnelPeer"]
