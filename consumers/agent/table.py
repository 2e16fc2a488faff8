"""The peer table: the ``peers`` stream folded into node -> record. Pure: no I/O.

:class:`PeerTable` folds PeerUpsert, PeerRemove and AllocationPending entries in
stream order. Every string is validated again (node ids, keys, addresses) even
though the ipam stage validated it: nothing unchecked reaches a file or argv. The
checks are cheap (a regular expression, then :mod:`ipaddress` only for the rare
shapes it does not cover). Once a process runs several agents (the fleet benchmark
runs hundreds per process), the strings their tables keep are interned, so that
they share one copy of each (:func:`share_strings`).
"""

from __future__ import annotations

import ipaddress
import re
import sys
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Final

from shared.events import AllocationPending, PeerRemove, PeerUpsert
from shared.validate import WG_KEY_RE, excerpt, is_valid_node_id

_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
#: A canonical dotted quad (no leading zeros), as :mod:`ipaddress` prints one.
IPV4_RE: Final = re.compile(rf"(?:{_OCTET}\.){{3}}{_OCTET}")
#: The all-zero key: valid base64 of 32 bytes, but no X25519 public key.
_ZERO_KEY: Final = "A" * 43 + "="


def is_key(key: str) -> bool:
    """:func:`shared.validate.is_valid_wg_key` without decoding: the pattern admits only
    the canonical base64 of 32 bytes, so what is left to refuse is the all-zero key."""
    return WG_KEY_RE.fullmatch(key) is not None and key != _ZERO_KEY


def _same(text: str) -> str:
    return text


#: Applied to the strings a table keeps: :func:`sys.intern` once a process runs several
#: agents (:func:`share_strings`), so that they share one copy of each.
_share: Callable[[str], str] = _same


def share_strings() -> None:
    """Intern the strings of peer tables from now on (several agents in one process)."""
    global _share  # noqa: PLW0603 - one process-wide switch, flipped once
    _share = sys.intern


def share(text: str) -> str:
    """``text``, or the process's one copy of it once strings are shared."""
    return _share(text)


@dataclass(frozen=True, slots=True)
class PeerRecord:
    """One live member with its address, as the ``peers`` stream last said."""

    node_id: str
    public_key: str
    ipv4: str
    ipv6: str | None = None
    #: Unix time the member's pass expires (None: never); see ``desired.expired``.
    expires: int | None = None


def expires_of(value: object) -> int | None:
    """A stream's ``expires`` as a time this agent can judge: None (never) stays None; a
    negative value means expired (0); anything else is kept (2^64-1 is simply far away)."""
    if value is None or not isinstance(value, int) or isinstance(value, bool):
        return None
    return max(0, value)


class PeerTable:
    """node id -> :class:`PeerRecord`, folded from ``peers`` entries in stream order.

    ``keep`` (node ids) limits the table to those nodes: a spoke of a hub network
    needs only its own record and the hubs'. While :attr:`changes` is a dict, every
    node whose record changes is noted there with its record before the first change
    (None: it had none), for :class:`consumers.agent.peerset.DesiredPeers`.
    """

    def __init__(self, keep: Collection[str] | None = None) -> None:
        self.records: dict[str, PeerRecord] = {}
        self.keep = frozenset(keep) if keep is not None else None
        self.changes: dict[str, PeerRecord | None] | None = None

    def apply(self, entry: object) -> str | None:
        """Fold one entry; returns why it was ignored (safe to log), or None."""
        if isinstance(entry, PeerUpsert):
            node = entry.node_id
            if not is_valid_node_id(node):
                return f"invalid node id {excerpt(node)}"
            if self.keep is not None and node not in self.keep:
                return None
            if not is_key(entry.public_key):
                self._set(node, None)
                return f"node {node}: invalid key {excerpt(entry.public_key)}"
            ipv4 = address(entry.ipv4, 4)
            ipv6 = address(entry.ipv6, 6) if entry.ipv6 else None
            if ipv4 is None:
                self._set(node, None)
                return f"node {node}: invalid ipv4 {excerpt(entry.ipv4)}"
            share = _share
            if share is _same:  # one agent in the process: nothing to share (no calls)
                record = PeerRecord(node, entry.public_key, ipv4, ipv6, expires_of(entry.expires))
            else:
                record = PeerRecord(
                    share(node),
                    share(entry.public_key),
                    share(ipv4),
                    share(ipv6) if ipv6 else None,
                    expires_of(entry.expires),
                )
            self._set(node, record)
            return None
        if isinstance(entry, PeerRemove | AllocationPending):
            # A node without an address cannot be a peer, whatever it was before.
            self._set(entry.node_id, None)
            return None
        return f"not a peers entry: {type(entry).__name__}"

    def _set(self, node: str, record: PeerRecord | None) -> None:
        old = self.records.get(node)
        if old == record:
            return
        if self.changes is not None and node not in self.changes:
            self.changes[node] = old
        if record is None:
            del self.records[node]
        else:
            self.records[node] = record


def address(text: str | None, version: int) -> str | None:
    """The bare address in ``text`` ("10.88.0.5" or "10.88.0.5/32"), or None if invalid."""
    if text is None or len(text) > 64:
        return None
    if version == 4:
        bare = text[:-3] if text.endswith("/32") else text
        if IPV4_RE.fullmatch(bare):
            return bare  # already canonical: the common case, no parsing
    try:
        iface = ipaddress.ip_interface(text)
    except ValueError:
        return None
    if iface.version != version:
        return None
    return str(iface.ip)
