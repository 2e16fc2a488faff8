"""Per live node, the block of the ``NodeJoined`` that made it live, tracked from the
``registry`` stream.

:class:`JoinBlocks` reads the stream after the last entry it saw; a retraction there
makes it recompute the table from the effective stream (retracted changes left out).
The access cache's follower reads it blocking, so every registry commit wakes it.
"""

from __future__ import annotations

import threading
from typing import Final

import redis

from shared import streams
from shared.errors import DecodeError
from shared.events import NodeJoined, NodeLeft, Retracted, effective, from_fields
from shared.ids import id_key
from shared.keys import Keys
from shared.redis_log import START, as_str, read_after

#: Registry entries read per XREAD.
PAGE: Final = 1000


class JoinBlocks:
    """The join block of each live node, as the ``registry`` stream says."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self._since: dict[str, int] = {}
        self._lock = threading.Lock()
        self._seen = START

    def get(self, node: str) -> int | None:
        """Block of the ``NodeJoined`` that made ``node`` live (None when it is not live),
        after reading what the stream holds now."""
        self.read(None)
        with self._lock:
            return self._since.get(node)

    def read(self, block_ms: int | None) -> int:
        """Read registry entries after the last one seen; returns how many were new.

        ``block_ms`` None reads everything there is now; else one blocking XREAD.
        """
        new = 0
        while True:
            raw = read_after(self.client, self.keys.registry, self._seen, PAGE, block_ms)
            with self._lock:
                for raw_id, fields in raw:
                    entry_id = as_str(raw_id)
                    if id_key(entry_id) <= id_key(self._seen):
                        continue  # the other reader got there first
                    new += 1
                    try:
                        change = from_fields(fields)
                    except DecodeError:
                        change = None
                    if isinstance(change, Retracted):
                        self._rebuild(entry_id)
                    else:
                        _track(self._since, change)
                    self._seen = entry_id
            if block_ms is not None or len(raw) < PAGE:
                return new

    def _rebuild(self, until: str) -> None:
        """Recompute the join blocks from the effective registry stream up to ``until``."""
        raw = streams.read(self.client, self.keys.registry, through=until, retry=False)
        items = streams.decoded(raw)  # an undecodable change is skipped, as when tracked
        self._since = {}
        for _, change in effective(items):
            _track(self._since, change)


def _track(since: dict[str, int], change: object) -> None:
    """Update the join blocks with one registry change."""
    if isinstance(change, NodeJoined):
        since[change.node_id] = change.block_number
    elif isinstance(change, NodeLeft):
        since.pop(change.node_id, None)


__all__ = ["JoinBlocks"]
