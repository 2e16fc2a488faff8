"""The audit replay through the real stages, for a log it cannot fold in process.

A log whose retractions do not void the end of the log (never written by wgchain)
is copied, with its ids, into the ``events`` stream of a scratch namespace
(``Keys(..., prefix="wgchain-audit-<random>")``) where the real stages
(:class:`~consumers.stage.Stage`) run until idle. The scratch keys are deleted
afterwards, and expire within :data:`SCRATCH_TTL` seconds if the audit is killed.
"""

from __future__ import annotations

import secrets
from typing import Any, Final

import redis

from consumers.audit.outcome import STAGES
from consumers.audit.progress import bar
from consumers.audit.streams import read_stream
from consumers.ipam.allocate import IpamFold
from consumers.registry.fold import RegistryFold
from consumers.stage import Fold, Stage
from shared.keys import Keys
from shared.redis_log import START, as_str

#: Prefix of scratch namespaces (a random suffix follows).
SCRATCH_PREFIX: Final = "wgchain-audit-"
#: Seconds a scratch key lives if the audit dies before deleting it.
SCRATCH_TTL: Final = 3600
#: Entries copied per pipeline.
COPY_CHUNK: Final = 1000


class Scratch:
    """A scratch namespace next to the live ``keys``, where the real stages replay the log."""

    def __init__(self, client: redis.Redis, keys: Keys, show: bool = False) -> None:
        self.client = client
        self.live = keys
        self.show = show
        suffix = secrets.token_hex(6)
        self.keys = Keys(keys.chain_id, keys.contract, SCRATCH_PREFIX + suffix)

    def replay(self, bound: str, ipam: IpamFold) -> int:
        """Copy the log up to ``bound`` and run the registry and ipam stages over it; the
        number of entries copied."""
        copied = self._copy(bound)
        self._run(RegistryFold(), copied)
        self._run(ipam, int(self.client.xlen(self.keys.registry)))
        return copied

    def _names(self) -> list[str]:
        s = self.keys
        names = [s.events, s.registry, s.peers]
        for stage in STAGES:
            names += [s.position(stage), s.state(stage), s.dead(stage)]
        return names

    def _expire(self) -> None:
        pipe = self.client.pipeline(transaction=False)
        for name in self._names():
            pipe.expire(name, SCRATCH_TTL)
        pipe.execute()

    def _copy(self, bound: str) -> int:
        """Copy the log up to ``bound`` into the scratch ``events`` stream, ids kept."""
        entries = read_stream(self.client, self.live.events, high=bound) if bound != START else []
        with bar("copying the log", len(entries), self.show) as progress:
            for start in range(0, len(entries), COPY_CHUNK):
                chunk = entries[start : start + COPY_CHUNK]
                pipe = self.client.pipeline(transaction=False)
                for entry_id, fields in chunk:
                    pipe.xadd(self.keys.events, fields, id=entry_id)  # type: ignore[arg-type]
                pipe.execute()
                self._expire()
                progress.advance(len(chunk))
        return len(entries)

    def _run(self, fold: Fold[Any], total: int) -> None:
        """Run the real stage ``fold`` over its scratch input until it is idle."""
        stage = Stage(self.client, self.keys, fold)
        with bar(f"replaying {fold.name}", total, self.show) as progress:
            while True:
                done = stage.step(block_ms=None)
                if not done:
                    return
                self._expire()
                progress.advance(done)

    def cleanup(self) -> None:
        """Delete every key of the scratch namespace."""
        names = set(self._names())
        names.update(as_str(k) for k in self.client.scan_iter(match=f"{self.keys.prefix}:*"))
        self.client.delete(*names)


__all__ = ["COPY_CHUNK", "SCRATCH_PREFIX", "SCRATCH_TTL", "Scratch"]
