"""A cheap look at one network for readers (``check``, ``/v1/access``): is there data, and is
the log being kept up to date? One pipelined round trip, independent of the history's length.

An access check against a network Redis has nothing for (a wrong ``WGCHAIN_CONTRACT``
or ``WGCHAIN_CHAIN_ID``) must not answer ``not-a-member``: :func:`probe` tells it
apart, and :func:`stale_note` says when an answer may be behind the chain (no
listener holds the lease, the listener reports a problem or lags, or the registry
stage has left an entry unfolded for more than :data:`STALE_SECONDS`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import redis

from shared import lua
from shared.keys import Keys
from shared.redis_log import as_str
from shared.settings import DEFAULTS
from shared.validate import excerpt

#: Final blocks behind after which an answer is said to be possibly stale (the default of
#: ``WGCHAIN_MAX_LISTENER_LAG``, after which ``wgchain status`` says the listener lags).
STALE_BLOCKS: Final = DEFAULTS.max_listener_lag
#: Seconds an ``events`` entry may wait for the registry stage before answers may be stale.
STALE_SECONDS: Final = 10.0


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
    #: Seconds the oldest ``events`` entry the registry stage has not folded has waited.
    registry_waiting: float = 0.0


def probe(client: redis.Redis, keys: Keys) -> Probe:
    """Data presence, lease, cursor, the listener's health record and how long the oldest
    entry has waited for the registry stage, in one script (one round trip)."""
    raw: Any = client.eval(  # type: ignore[no-untyped-call]
        _PROBE_LUA, 5, keys.cursor, keys.events, keys.lease, keys.listener_health,
        keys.position("registry"),
    )  # fmt: skip
    cursor, events, lease, (final, problem), first, now_ms = raw
    cursor_text = as_str(cursor) if cursor else ""
    final_text = as_str(final) if final else ""
    first_ms = as_str(first).partition("-")[0] if first else ""
    waited = (int(now_ms) - int(first_ms)) / 1000 if first_ms.isdigit() else 0.0
    return Probe(
        has_data=bool(cursor) or int(events) > 0 or bool(lease),
        lease=as_str(lease) if lease else "",
        cursor_block=int(cursor_text) if cursor_text.isdigit() else None,
        final_block=int(final_text) if final_text.isdigit() else None,
        problem=as_str(problem) if problem else "",
        registry_waiting=max(0.0, waited),
    )


_PROBE_LUA: Final = lua.source("status_probe")


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
    if found.registry_waiting > STALE_SECONDS:
        return (
            f"the registry stage has not folded events appended {found.registry_waiting:.0f}s "
            "ago (is `wgchain registry` running?)"
        )
    return ""


__all__ = ["Probe", "no_data", "probe", "stale_note"]
