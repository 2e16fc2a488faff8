"""Node and event reads for the API: the registry cache joined with the address pool.

Addresses come from the ipam stage's state hash (``n:<node>`` -> offset, ``meta`` ->
pool), read with one ``HMGET`` per page; host status from :class:`Snapshot`.
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, Final

import msgspec
import redis

from consumers.access.cache import RegistryCache
from consumers.access.decide import DEFAULT_GRACE, EXPIRED, View, is_expired
from consumers.api.schemas import EventItem, EventsPage, NodeDetail, NodeList, NodeSummary
from consumers.ipam.allocate import META_FIELD, NODE_FIELD, Address, Meta
from consumers.nodes.listing import Filter, mark_hosts, matches
from consumers.status.snapshot import Snapshot
from shared import streams
from shared.errors import DecodeError
from shared.events import LogEntry, Retracted, from_fields
from shared.keys import Keys
from shared.settings import DEFAULTS
from shared.validate import is_valid_node_id, is_valid_wg_key

_ADDRESS: Final = msgspec.json.Decoder(Address)
_META: Final = msgspec.json.Decoder(Meta)


class NotFound(Exception):
    """Raised when a node id was never named by any token."""


@dataclass(eq=False)
class Reads:
    """Read-only queries over one network's projections."""

    client: redis.Redis
    keys: Keys
    cache: RegistryCache
    _: KW_ONLY
    #: Reconcile interval of agents that do not report theirs (when a host is stale).
    reconcile_interval: float = DEFAULTS.reconcile_interval
    #: Seconds past an expiration before a pass counts as expired (``WGCHAIN_EXPIRY_GRACE``).
    expiry_grace: float = DEFAULT_GRACE
    snapshot: Snapshot = field(init=False)

    def __post_init__(self) -> None:
        self.snapshot = Snapshot(self.client, self.keys)

    def nodes(self, after: str, limit: int, wanted: Filter | None = None) -> NodeList:
        """Up to ``limit`` nodes with ids after ``after`` that pass ``wanted``, sorted, each
        with its host's state (one status read of every host per page)."""
        wanted = wanted or Filter()
        hosts = self.snapshot.hosts(cap=1)
        now = time.time()
        with self.cache.fresh() as view:
            position = self.cache.position
            names = [n for n in view.nodes() if n > after and is_valid_node_id(n)]
            if not wanted.given:
                page = [_summary(view, n, grace=self.expiry_grace) for n in names[: limit + 1]]
            else:
                page = [_summary(view, n, grace=self.expiry_grace) for n in names]
        if wanted.given:
            self._addresses(page)
            mark_hosts(page, hosts, now, self.reconcile_interval)
            page = [s for s in page if matches(s, wanted)]
        more = len(page) > limit
        page = page[:limit]
        if not wanted.given:
            self._addresses(page)
            mark_hosts(page, hosts, now, self.reconcile_interval)
        return NodeList(nodes=page, next=page[-1].node if more else None, position=position)

    def summaries(self) -> tuple[list[NodeSummary], str]:
        """Every node a token ever named (valid ids), with its address, and the position."""
        with self.cache.fresh() as view:
            position = self.cache.position
            found = [
                _summary(view, n, grace=self.expiry_grace)
                for n in view.nodes()
                if is_valid_node_id(n)
            ]
        self._addresses(found)
        return found, position

    def live(self, address_limit: int) -> tuple[list[NodeSummary], str]:
        """Every live member and the position; addresses filled up to ``address_limit`` members."""
        with self.cache.fresh() as view:
            position = self.cache.position
            names = [n for n in view.nodes() if is_valid_node_id(n)]
            page = [
                s for s in (_summary(view, n, grace=self.expiry_grace) for n in names) if s.live
            ]
        if len(page) <= address_limit:
            self._addresses(page)
        return page, position

    def node(self, node: str) -> NodeDetail:
        """One node in detail; :class:`NotFound` when no token ever named it."""
        with self.cache.fresh() as view:
            if not view.known(node):
                raise NotFound(node)
            position = self.cache.position
            summary = _summary(view, node, grace=self.expiry_grace)
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
        raw = streams.read(client, keys.events, after=after, limit=limit, retry=False)
        items = []
        for entry_id, fields in raw:
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
        for summary, value in zip(nodes, raw[1:], strict=True):
            found = address_of(raw[0], value)
            if found is not None:
                summary.ipv4, summary.ipv6 = found[0], found[1]


def address_of(meta: bytes | None, value: bytes | None) -> tuple[str, str | None, str] | None:
    """(IPv4, IPv6 or None, published key) of a node's field of the ipam state and its
    ``meta`` field; None when it holds no address now."""
    if meta is None or value is None:
        return None
    address = _ADDRESS.decode(value)
    if not address.live:
        return None
    found = _META.decode(meta)
    ipv4 = str(ipaddress.IPv4Network(found.pool).network_address + address.offset)
    ipv6 = None
    if found.pool6:
        ipv6 = str(ipaddress.IPv6Network(found.pool6).network_address + address.offset)
    return ipv4, ipv6, address.public_key


def _summary(
    view: View, node: str, now: float | None = None, grace: float = DEFAULT_GRACE
) -> NodeSummary:
    """``node`` as shown now (a pass that expired by ``now``, default this host's clock, is
    not live: ``expired``)."""
    status = view.status(node)
    if status is None:
        return NodeSummary(node=node, member=False, live=False, reason="revoked")
    key = status.public_key if is_valid_wg_key(status.public_key) else None
    record = view.state.tokens.get(status.token_id)
    expires = record.expires if record is not None else None
    live, reason = status.live, status.reason
    if live and is_expired(expires, time.time() if now is None else now, grace):
        live, reason = False, EXPIRED
    return NodeSummary(
        node=node,
        member=True,
        live=live,
        reason=reason,
        token_id=status.token_id,
        owner=status.owner or None,
        public_key=key,
        expires=expires,
    )
