"""The registry stage's warning when a pass enters the warning window (docs/design.md §5).

Which passes are about to expire depends on the clock, so the fold never decides it:
the stage process looks at its state every :data:`SCAN_SECONDS` (O(members)) and logs
each live member whose pass expires within ``WGCHAIN_EXPIRY_WARNING`` once, when it is
first seen there (a renewal, a new expiration, is a new pass to warn about).
"""

from __future__ import annotations

import time
from typing import Any, Final

from consumers.registry.state import RegistryState
from consumers.status.expiring import expiring
from consumers.status.model import Expiring
from shared.durations import duration
from shared.validate import excerpt

#: Seconds between two looks at the state.
SCAN_SECONDS: Final = 30.0


class ExpiryWarnings:
    """Logs each pass once as it enters the warning window (``check`` after each step)."""

    def __init__(self, window: float, grace: float, log: Any, every: float = SCAN_SECONDS) -> None:
        self.window = window
        self.grace = grace
        self.log = log
        self.every = every
        self._next = 0.0
        #: (token, expiration) of every pass in the window at the last look.
        self._warned: set[tuple[int, int]] = set()

    def check(self, state: RegistryState, now: float | None = None) -> list[Expiring]:
        """The passes that entered the window since the last look (each logged once)."""
        now = time.time() if now is None else now
        if self.window <= 0 or now < self._next:
            return []
        self._next = now + self.every
        current = expiring(state, now, self.window, self.grace)
        entered = [e for e in current if (e.token_id, e.expires) not in self._warned]
        self._warned = {(e.token_id, e.expires) for e in current}
        for item in entered:
            self.log.bind(node=item.node, token=item.token_id).warning(
                "the pass of {} (token {}) expires in {} (at unix time {})",
                excerpt(item.node),
                item.token_id,
                duration(item.expires - now),
                item.expires,
            )
        return entered


__all__ = ["ExpiryWarnings"]
