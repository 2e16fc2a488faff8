"""Node and event reads for the API: the registry cache joined with the address pool.

Addresses come from the ipam stage's state hash (``n:<node>`` -> offset, ``meta`` ->
pool), read with one ``HMGET`` per page; host status from :class:`Snapshot`.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Final

import msgspec
import redis

from consumers.access.cache import RegistryCache
from consumers.access.decide import View
from consumers.api.schemas import EventItem, EventsPage, NodeDetail, NodeList, NodeSummary
from consumers.ipam.allocate import META_FIELD, NODE_FIELD, Address, Meta
from consumers.status.snapshot import Snapshot
from shared.errors import DecodeError
from shared.events import LogEntry, Retracted, from_fields
from shared.keys import Keys
from shared.redis_log import START, as_str
from shared.validate import is_valid_node_id, is_valid_wg_key

_ADDRESS: Final = msgspec.json.Decoder(Address)
_META: Final = msgspec.json.Decoder(Meta)


class NotFound(Exception):
    """Raised when a node id was never named by any token."""


class Reads:
    """Read-only queries over one network's projections."""

    def __init__(self, client: redis.Redis, keys: Keys, cache: RegistryCache) -> None:
        self.client = client
        self.keys = keys
        self.cache = cache
        self.snapshot = Snapshot(client, keys)

    def nodes(self, after: str, limit: int) -> NodeList:
        """Up to ``limit`` nodes with ids after ``after``, sorted."""
        with self.cache.fresh() as view:
            position = self.cache.position
            names = [n for n in view.nodes() if n > after and is_valid_node_id(n)]
            page = [_summary(view, n) for n in names[:limit]]
        self._addresses(page)
        more = len(names) > limit
        return NodeList(nodes=page, next=page[-1].node if more else None, position=position)

    def live(self, address_limit: int) -> tuple[list[NodeSummary], str]:
        """Every live member and the position; addresses filled up to ``address_limit`` members."""
        with self.cache.fresh() as view:
            position = self.cache.position
            names = [n for n in view.nodes() if is_valid_node_id(n)]
            page = [s for s in (_summary(view, n) for n in names) if s.live]
        if len(page) <= address_limit:
            self._addresses(page)
        return page, position

    def node(self, node: str) -> NodeDetail:
        """One node in detail; :class:`NotFound` when no token ever named it."""
        with self.cache.fresh() as view:
            if not view.known(node):
                raise NotFound(node)
            position = self.cache.position
            summary = _summary(view, node)
        self._addresses([summary])
        host = self.snapshot.host(node)
        since = self.cache.since_block(node) if summary.live else None
        return NodeDetail(
            **msgspec.structs.asdict(summary),
            since_block=since,
            endpoint=host.endpoint if host else None,
            host=host,
            position=position,
        )

    def events(self, after: str, limit: int) -> EventsPage:
        """Up to ``limit`` ``events`` entries after stream id ``after``."""
        return self.events_of(self.client, self.keys, after, limit)

    @staticmethod
    def events_of(client: redis.Redis, keys: Keys, after: str, limit: int) -> EventsPage:
        """:meth:`events` without the registry cache (it needs none)."""
        low = "-" if after == START else f"({after}"
        raw: Any = client.xrange(keys.events, min=low, count=limit)
        items = []
        for raw_id, fields in raw:
            entry_id = as_str(raw_id)
            try:
                entry = from_fields(fields)
            except DecodeError as exc:
                items.append(EventItem(id=entry_id, error=str(exc)))
                continue
            if isinstance(entry, LogEntry | Retracted):
                items.append(EventItem(id=entry_id, entry=entry))
            else:
                items.append(EventItem(id=entry_id, error=f"{type(entry).__name__} in events"))
        full = len(items) == limit
        return EventsPage(entries=items, next=items[-1].id if full else None)

    def _addresses(self, nodes: list[NodeSummary]) -> None:
        """Fill ``ipv4``/``ipv6`` of ``nodes`` from the ipam state (one HMGET)."""
        if not nodes:
            return
        fields = [META_FIELD] + [NODE_FIELD + n.node for n in nodes]
        raw: Any = self.client.hmget(self.keys.state("ipam"), fields)
        if raw[0] is None:
            return
        meta = _META.decode(raw[0])
        pool4 = ipaddress.IPv4Network(meta.pool)
        pool6 = ipaddress.IPv6Network(meta.pool6) if meta.pool6 else None
        for summary, value in zip(nodes, raw[1:], strict=True):
            if value is None:
                continue
            address = _ADDRESS.decode(value)
            if not address.live:
                continue
            summary.ipv4 = str(pool4.network_address + address.offset)
            if pool6 is not None:
                summary.ipv6 = str(pool6.network_address + address.offset)


def _summary(view: View, node: str) -> NodeSummary:
    status = view.status(node)
    if status is None:
        return NodeSummary(node=node, member=False, live=False, reason="revoked")
    key = status.public_key if is_valid_wg_key(status.public_key) else None
    return NodeSummary(
        node=node,
        member=True,
        live=status.live,
        reason=status.reason,
        token_id=status.token_id,
        owner=status.owner or None,
        public_key=key,
    )
