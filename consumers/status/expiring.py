"""Passes about to expire (docs/design.md §5): what ``status``, the API and a metric list. Pure.

The registry keeps each token's expiration as a fact; which passes are "about to
expire" depends on the clock, so it is computed where they are shown: the live
members whose pass expires within the warning window (``WGCHAIN_EXPIRY_WARNING``)
and has not yet expired (its expiration plus ``WGCHAIN_EXPIRY_GRACE`` is ahead).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

from consumers.registry.state import RegistryState
from consumers.status.model import Expiring, FleetStatus

if TYPE_CHECKING:
    from consumers.access.decide import View
    from consumers.status.health import Limits


def expiring(state: RegistryState, now: float, window: float, grace: float) -> list[Expiring]:
    """Live members whose pass expires within ``window`` seconds of ``now``, soonest first."""
    found = []
    for node, status in state.status.items():
        if not status.live:
            continue
        record = state.tokens.get(status.token_id)
        expires = record.expires if record is not None else None
        if expires is None or now >= expires + grace or expires - now > window:
            continue
        found.append(
            Expiring(node=node, token_id=status.token_id, owner=status.owner, expires=expires)
        )
    found.sort(key=lambda e: (e.expires, e.node))
    return found


def with_expiring(
    fleet: FleetStatus, fresh: Callable[[], AbstractContextManager[View]], limits: Limits
) -> FleetStatus:
    """``fleet`` with the passes about to expire now, from a registry view (``fresh``: a
    ``RegistryCache.fresh``; entered only when the network has data)."""
    if fleet.has_data:
        with fresh() as view:
            fleet.expiring = expiring(
                view.state, time.time(), limits.expiry_warning, limits.expiry_grace
            )
    return fleet


__all__ = ["expiring", "with_expiring"]
