"""What the fleet status reports: msgspec structs shared by ``wgchain status`` and the API. Pure."""

from __future__ import annotations

import msgspec


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


class StageInfo(msgspec.Struct, kw_only=True):
    """One stage: where it is in its input and how far behind."""

    name: str
    position: str
    #: Input entries after the position (at least this many when ``lag_capped``).
    lag_entries: int
    lag_capped: bool = False
    dead_letters: int = 0


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


class Counts(msgspec.Struct, kw_only=True):
    """Things an operator should look at."""

    #: ``Conflict`` entries recorded in the registry stream.
    conflicts: int = 0
    #: ``Anomaly`` entries recorded in the registry stream.
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
