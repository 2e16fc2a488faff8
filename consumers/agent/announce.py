"""Endpoint announcements (I/O): this host's, and the other members'.

Each agent writes its endpoint in its own key, ``…:host:<node>:announce`` (one key
per host, so an ACL can confine it), with ``SET … GET``: when the value changed (or
at start, in case a crash came between the two writes) it appends its node id to
``…:announcements``. The other agents watch that stream in the same ``XREAD`` as the
peers stream and read just the announcements that changed: nobody polls 10,000
keys every few seconds. The stream keeps about :data:`KEPT` entries; an agent that
finds it trimmed past its position (or reset) reads every announcement again.

A Redis user whose ACL predates the stream may not read or append to it: the agent
then says so once and falls back to polling every member's announcement
(:data:`POLL_SECONDS`). README, "Agent", gives the ACL rules.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, Final

import redis
from redis.exceptions import NoPermissionError

from consumers.agent.desired import announced_endpoint
from shared.keys import Keys
from shared.redis_log import START, as_str
from shared.validate import is_valid_node_id

#: Entries ``…:announcements`` keeps (approximately).
KEPT: Final = 10_000
#: Keys per MGET when reading many announcements.
MGET_CHUNK: Final = 5000
#: Seconds between polls of every member's announcement, when the stream cannot be read.
POLL_SECONDS: Final = 5.0


class Announcements:
    """Publishing this host's endpoint; watching and reading the members'."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        node_id: str,
        *,
        document: dict[str, Any] | None,
        log: Any,
        retry: Any,
    ) -> None:
        self.client = client
        self.keys = keys
        self.node_id = node_id
        self.document = json.dumps(document) if document is not None else None
        self.log = log
        self.retry = retry
        #: Position in ``…:announcements``; None: not watched (announcements are polled).
        self.position: str | None = START
        self._published = False
        self._may_publish = True

    @property
    def stream(self) -> str:
        return self.keys.announcements

    def publish(self) -> None:
        """Write this host's announcement; when it changed, say so in the stream."""
        if self.document is None:
            return
        key = self.keys.host_announce(self.node_id)
        old = self.retry(self.client.set, key, self.document, get=True)
        if not self._may_publish or (old == self.document.encode() and self._published):
            return
        try:
            self.retry(
                self.client.xadd,
                self.stream,
                {"node": self.node_id},
                maxlen=KEPT,
                approximate=True,
            )
        except NoPermissionError:
            self._may_publish = False
            self.log.warning(
                "this agent's Redis user may not append to {}: other agents see a new "
                "endpoint only when they poll (README, Agent: the ACL)",
                self.stream,
            )
        self._published = True

    def watch(self) -> None:
        """Watch the stream from its newest entry on (call before reading every
        announcement, so that no change between the two is missed)."""
        if self.position is None:
            return
        try:
            last: Any = self.retry(self.client.xrevrange, self.stream, count=1)
        except NoPermissionError:
            self.unwatch()
            return
        self.position = as_str(last[0][0]) if last else START

    def unwatch(self) -> None:
        """The stream cannot be read: poll from now on."""
        if self.position is not None:
            self.log.warning(
                "this agent's Redis user may not read {}: polling announcements instead "
                "(README, Agent: the ACL)",
                self.stream,
            )
        self.position = None

    def continuous(self) -> bool:
        """False when entries of the stream we have not read may be gone (trimmed, or
        Redis reset): then every announcement must be read again."""
        at = self.position
        if at is None or at == START:
            return True
        try:
            ours: Any = self.retry(self.client.xrange, self.stream, min=at, max=at)
        except redis.ResponseError:
            return True
        return bool(ours)

    def nodes_in(self, items: list[Any]) -> set[str]:
        """The node ids in entries read from the stream (and move past them)."""
        nodes: set[str] = set()
        if items:
            self.position = as_str(items[-1][0])
        for _, fields in items:
            node = as_str(fields.get(b"node", b""))
            if is_valid_node_id(node):
                nodes.add(node)
        return nodes

    def read(self, nodes: Iterable[str]) -> dict[str, str | None]:
        """node id -> announced endpoint (None: none, or nothing valid)."""
        wanted = sorted(nodes)
        endpoints: dict[str, str | None] = {}
        # each node's key from one key's two ends (a fill reads 10,000 of them; the prefix
        # and the network's tag hold no newline)
        head, _, tail = self.keys.host_announce("\n").partition("\n")
        for start in range(0, len(wanted), MGET_CHUNK):
            chunk = wanted[start : start + MGET_CHUNK]
            raw: Any = self.retry(self.client.mget, [f"{head}{n}{tail}" for n in chunk])
            for node, value in zip(chunk, raw, strict=True):
                endpoints[node] = announced_endpoint(value) if value is not None else None
        return endpoints
