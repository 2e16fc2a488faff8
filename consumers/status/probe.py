"""A cheap look at one network for readers (``check``, ``/v1/access``): is there data, and is
the log being kept up to date? One pipelined round trip, independent of the history's length.

An access check against a network Redis has nothing for (a wrong ``WGCHAIN_CONTRACT``
or ``WGCHAIN_CHAIN_ID``) must not answer ``not-a-member``: :func:`probe` tells it
apart, and :func:`stale_note` says when an answer may be behind the chain (no
listener holds the lease, or the listener reports a problem or lags).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import redis

from shared.keys import Keys
from shared.redis_log import as_str
from shared.validate import excerpt

#: Final blocks behind after which an answer is said to be possibly stale.
STALE_BLOCKS: Final = 50


@dataclass(frozen=True)
class Probe:
    """What one look at a network found."""

    has_data: bool
    #: The token in the lease ("" when nobody holds it).
    lease: str
    cursor_block: int | None
    #: The lease holder's last final block and problem (its health record).
    final_block: int | None
    problem: str


def probe(client: redis.Redis, keys: Keys) -> Probe:
    """Data presence, lease, cursor and the listener's health record, in one round trip."""
    pipe = client.pipeline(transaction=False)
    pipe.hget(keys.cursor, "block")
    pipe.xlen(keys.events)
    pipe.get(keys.lease)
    pipe.hmget(keys.listener_health, ["final", "problem"])
    raw: Any = pipe.execute()
    cursor, events, lease, (final, problem) = raw
    cursor_text = as_str(cursor) if cursor is not None else ""
    final_text = as_str(final) if final is not None else ""
    return Probe(
        has_data=cursor is not None or int(events) > 0 or lease is not None,
        lease=as_str(lease) if lease is not None else "",
        cursor_block=int(cursor_text) if cursor_text.isdigit() else None,
        final_block=int(final_text) if final_text.isdigit() else None,
        problem=as_str(problem) if problem is not None else "",
    )


def no_data(keys: Keys) -> str:
    """The one line for a network Redis holds nothing for."""
    return (
        f"no data for network {keys.tag} in Redis: no listener cursor, lease or events "
        "(wrong WGCHAIN_CONTRACT or WGCHAIN_CHAIN_ID?)"
    )


def stale_note(found: Probe, limit: int = STALE_BLOCKS) -> str:
    """Why answers may lag the chain ("" when nothing says so)."""
    if not found.lease:
        return "no listener holds the lease: events since the last append are not counted"
    if found.problem:
        return f"the listener reports: {excerpt(found.problem)}"
    if found.final_block is not None and found.cursor_block is not None:
        behind = found.final_block - found.cursor_block
        if behind > limit:
            return f"the listener is {behind} blocks behind the chain"
    return ""


__all__ = ["Probe", "no_data", "probe", "stale_note"]
