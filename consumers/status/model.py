"""What the fleet status reports: msgspec structs shared by ``wgchain status`` and the API. Pure.

:class:`Issue` is also what the registry and ipam folds keep in their state hashes
(the *current* conflicts, anomalies and pending allocations, each with its cause), so
that a status, the API, ``wgchain nodes`` or a dashboard list them with one ``HGET``
each, whatever the length of the history. :class:`Problem` is one reason the
pipeline is not healthy (``consumers.status.health`` finds them).
"""

from __future__ import annotations

from typing import Final

import msgspec

#: Issue kinds.
CONFLICT: Final = "conflict"
ANOMALY: Final = "anomaly"
PENDING: Final = "pending"
#: Problem severities, with the exit codes of ``wgchain status --check`` (the
#: monitoring-plugin convention: 0 OK, 1 warning, 2 critical, 3 unknown).
OK: Final = "ok"
WARNING: Final = "warning"
CRITICAL: Final = "critical"
UNKNOWN: Final = "unknown"
EXIT_CODES: Final = {OK: 0, WARNING: 1, CRITICAL: 2, UNKNOWN: 3}


class Issue(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Something wrong with one node right now, and the contract log that caused it.

    * ``conflict``: ``duplicate-node`` (a second active token names the node; the
      lowest one, ``winner_token_id``, keeps it) or ``duplicate-key`` (the node's key
      is the key of a live member with a lower token);
    * ``anomaly``: ``invalid-node-id`` (an active token names a node id that is not
      ``[A-Za-z0-9._-]{1,64}``) or ``invalid-key`` (the member's owner has a key on
      chain that is not a WireGuard key);
    * ``pending``: ``pool-exhausted`` (a live member waits for a free address).

    It lasts until the node's state changes (the token revoked, the key fixed, an
    address freed). One-time anomalies (a revoke of a token never granted) are facts
    of the log, not current issues: ``wgchain audit history`` shows them.
    """

    kind: str
    reason: str
    #: The node id as on chain (hostile until validated: show it through ``excerpt``).
    node: str
    token_id: int | None = None
    #: The token that keeps the node (``duplicate-node``).
    winner_token_id: int | None = None
    #: Hash of the transaction whose contract log caused it ("" when unknown: a pending
    #: allocation, or state from before issues were kept). A chain fact, so a replay of the
    #: log gives the same issue.
    cause: str = ""
    #: Block of that log (for a pending allocation: of the change that made it wait) ...
    block: int = 0
    #: ... and its index in the block.
    log_index: int | None = None
    #: One escaped line of detail (e.g. the invalid key, as an excerpt).
    detail: str = ""


class Problem(msgspec.Struct, frozen=True, kw_only=True):
    """One reason the pipeline is not healthy, named in one line."""

    #: Stable identifier (``no-data``, ``no-lease``, ``listener-lag``, ``head-below-cursor``,
    #: ``listener-silent``, ``stage-lag``, ``stage-stalled``, ``host-stale``,
    #: ``host-behind``, ``pool-exhausted``, ``redis``).
    code: str
    #: ``warning`` or ``critical`` (``unknown`` when the status could not be read).
    severity: str
    #: What it concerns: a stage, a node, the listener, the network.
    subject: str
    #: The line shown to a person (every chain or Redis string in it is escaped).
    message: str


class ListenerInfo(msgspec.Struct, kw_only=True):
    """The listener: its cursor, the chain head and the lease."""

    cursor_block: int | None = None
    cursor_hash: str | None = None
    last_entry: str | None = None
    #: The RPC node's latest block (None: the node did not answer).
    chain_head: int | None = None
    #: Blocks between the chain head and the cursor (None: head unknown).
    lag_blocks: int | None = None
    #: Listener id that holds the lease (None: nobody holds it).
    lease_holder: str | None = None
    lease_fence: int | None = None
    lease_ttl_seconds: float | None = None
    events: int = 0
    dead_letters: int = 0
    #: What the lease holder last saw (its health record): the last final block ...
    final_block: int | None = None
    #: ... the chain's head ...
    head_block: int | None = None
    #: ... when (unix time; None: no record) ...
    polled_at: float | None = None
    #: ... and what kept it from appending ("" when nothing did), e.g. the head below the cursor.
    problem: str = ""


class StageInfo(msgspec.Struct, kw_only=True):
    """One stage: where it is in its input and how far behind."""

    name: str
    position: str
    #: Input entries after the position (at least this many when ``lag_capped``).
    lag_entries: int
    lag_capped: bool = False
    dead_letters: int = 0
    #: Seconds the oldest input entry it has not committed has waited (0: caught up).
    waiting_seconds: float = 0.0


class HostInfo(msgspec.Struct, kw_only=True):
    """One agent, as it reported itself; its lag is measured against the peers stream now."""

    node: str
    endpoint: str | None = None
    interface: str = ""
    mode: str = ""
    applied_position: str = ""
    #: ``peers`` entries the host has not applied yet (at least this many when ``lag_capped``).
    lag_entries: int = 0
    lag_capped: bool = False
    #: Time between the newest ``peers`` entry and the applied one (seconds).
    lag_seconds: float = 0.0
    #: Unix time of the last successful apply (None: never).
    last_apply: float | None = None
    last_error: str = ""
    peer_count: int = 0
    fail_closed: str = ""
    addresses: str = ""
    #: Unix time of the agent's last report (None: it announced an endpoint but never reported).
    updated_at: float | None = None
    #: Seconds between two reconciles of this agent (None: an agent that does not say).
    reconcile_interval: float | None = None
    #: Block of the chain its applied configuration reflects (None: unknown).
    applied_block: int | None = None
    #: Unix time of the newest WireGuard handshake on its interface (0: none; None: unknown).
    handshake_latest: float | None = None
    #: Whether it holds its last applied configuration (Redis was reset; None: unknown) ...
    held: bool | None = None
    #: ... and why, as the agent says it ("" when it does not hold, or does not say).
    held_reason: str = ""
    #: Silent for more than 3 reconcile intervals.
    stale: bool = False
    #: The public key of the host's own private key, as its agent reports it ("" unknown).
    public_key: str = ""
    #: Seconds the oldest ``peers`` entry it has not applied has waited (0: none waits).
    waiting_seconds: float = 0.0


class Expiring(msgspec.Struct, frozen=True, kw_only=True):
    """A live member whose pass expires within ``WGCHAIN_EXPIRY_WARNING`` (ERC-5643)."""

    node: str
    token_id: int
    owner: str
    #: Unix time its pass expires (it counts as expired ``WGCHAIN_EXPIRY_GRACE`` later).
    expires: int


class Counts(msgspec.Struct, kw_only=True):
    """Things an operator should look at, now (not totals since genesis)."""

    #: Current conflicts (duplicate node or key).
    conflicts: int = 0
    #: Current anomalies (invalid node id or key of an active token).
    anomalies: int = 0
    #: Live members waiting for an address right now.
    pending_allocations: int = 0
    #: Entries in the dead-letter streams of the listener and the stages.
    dead_letters: int = 0


class FleetStatus(msgspec.Struct, kw_only=True):
    """Everything ``wgchain status`` shows."""

    network: str
    generated_at: float
    listener: ListenerInfo
    stages: list[StageInfo]
    hosts: list[HostInfo]
    counts: Counts
    #: Newest entry of the ``peers`` stream: what a converged host has applied (None: empty).
    peers_head: str | None = None
    #: Whether Redis holds anything for this network (False: wrong contract or chain id?).
    has_data: bool = True
    #: The current conflicts, anomalies and pending allocations.
    issues: list[Issue] = []
    #: Why the pipeline is not healthy (empty: it is).
    problems: list[Problem] = []
    #: The worst severity among ``problems``: ``ok``, ``warning`` or ``critical``.
    health: str = OK
    #: Live members whose pass expires within ``WGCHAIN_EXPIRY_WARNING``, soonest first.
    expiring: list[Expiring] = []
