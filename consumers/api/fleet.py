"""The dashboard's reads: the fleet status with a cached chain head, the topology, a node's story.

``status`` is :meth:`Snapshot.fleet` (one Lua call) with the chain head from
:class:`ChainHead` (never an RPC round trip on the request path). ``topology`` joins
the registry cache's live members with their addresses. ``history`` folds the whole
``events`` stream with the registry fold (``wgchain audit history``): its cost grows
with the log, so the dashboard asks for it only when a node's story is opened.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Final

from consumers.api.head import ChainHead
from consumers.api.reads import NotFound, Reads
from consumers.api.schemas import NodeHistory, Topology, TopologyMember
from consumers.audit.entries import decode
from consumers.audit.history import NodeSubject, timeline
from consumers.audit.streams import read_stream
from consumers.dashboard import topology as drawing
from consumers.status.model import FleetStatus
from shared.settings import DEFAULTS

#: Seconds a ``/v1/status`` answer is shared between requests.
STATUS_TTL: Final = 0.5
#: The event of a timeline row for an ``events`` entry that does not decode (every subject
#: gets one: it might have concerned it).
UNDECODABLE: Final = "Undecodable"


class FleetReads:
    """Status, topology and history for one network.

    ``fleet`` makes a status snapshot without a chain head (``Snapshot.fleet([])``);
    ``reads`` gives the node reads (made on first use by the caller if it likes).
    """

    def __init__(
        self,
        fleet: Callable[[], FleetStatus],
        reads: Callable[[], Reads],
        rpc_urls: Sequence[str] = (),
        topology: str = DEFAULTS.topology,
        hubs: Sequence[str] = (),
    ) -> None:
        self.fleet = fleet
        self.reads = reads
        self.head = ChainHead(rpc_urls)
        self.topology_name = topology
        self.hubs = list(hubs)
        self._status_lock = threading.Lock()
        self._status: tuple[float, FleetStatus] | None = None

    def status(self) -> FleetStatus:
        """The fleet status; the chain head as last seen (None: unknown).

        Answers of the last :data:`STATUS_TTL` seconds are shared: however many dashboards
        poll, Redis runs the status script at most about twice a second.
        """
        with self._status_lock:
            now = time.monotonic()
            if self._status is not None and now - self._status[0] < STATUS_TTL:
                return self._status[1]
            fleet = self.fleet()
            head = self.head.latest()
            listener = fleet.listener
            listener.chain_head = head
            if head is not None and listener.cursor_block is not None:
                listener.lag_blocks = max(0, head - listener.cursor_block)
            self._status = (now, fleet)
            return fleet

    def topology(self) -> Topology:
        """Live members (with addresses up to the draw limit), hubs and tunnel count."""
        live, position = self.reads().live(address_limit=drawing.DRAW_LIMIT)
        names = [n.node for n in live]
        hubs = drawing.live_hubs(self.topology_name, self.hubs, names)
        members: list[TopologyMember] = []
        if len(live) <= drawing.DRAW_LIMIT:
            members = [
                TopologyMember(node=n.node, ipv4=n.ipv4, ipv6=n.ipv6, hub=n.node in hubs)
                for n in live
            ]
        return Topology(
            topology=self.topology_name,
            hubs=self.hubs,
            live_hubs=hubs,
            live=len(live),
            tunnels=drawing.tunnels(self.topology_name, self.hubs, names),
            draw_limit=drawing.DRAW_LIMIT,
            members=members,
            position=position,
        )

    def history(self, node: str, limit: int) -> NodeHistory:
        """The newest ``limit`` rows of ``node``'s timeline; :class:`NotFound` if never named."""
        reads = self.reads()
        events = decode(read_stream(reads.client, reads.keys.events))
        rows = timeline(events, NodeSubject(node))
        if all(r.event == UNDECODABLE for r in rows):  # nothing on chain ever named it
            with reads.cache.fresh() as view:
                if not view.known(node):
                    raise NotFound(node)
        shown = rows[-limit:]
        return NodeHistory(node=node, rows=shown, total=len(rows), events=len(events))


__all__ = ["FleetReads"]
