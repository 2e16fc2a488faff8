"""When an agent holds its applied configuration instead of applying its table. Pure.

Redis that lost its data is refilled by the pipeline from the chain; a table folded
from a partly refilled stream is an older state of the network, and applying it
would cut tunnels that the chain still grants. So after the stream was reset (or
trimmed past the agent), and after a restart with a state file, the agent keeps the
configuration it applied at block B until its table reaches B again. The hold ends
early only when the refilled stream stays short of B for :data:`HOLD_QUIET_SECONDS`
(that block is gone from the chain: a deep reorg); an empty stream (nothing
refilled yet) never ends it.

A table at block B exactly may still lack some of B's entries (the pipeline may
append one block's entries in several commits): it is applied at once if that adds
or updates peers only, and, if it would remove one (or fail closed), only once the
stream has been quiet for :data:`HOLD_SETTLE_SECONDS` (the agent decides, knowing
the change).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Final

#: Seconds without a new peers entry after which a hold ends even short of its block.
HOLD_QUIET_SECONDS: Final = 120.0
#: Seconds without a new peers entry before a table at the held block may remove a peer.
HOLD_SETTLE_SECONDS: Final = 2.0
#: What :meth:`Hold.check` says.
HELD, FREE, REACHED = "held", "free", "reached"


@dataclass(slots=True)
class Hold:
    """The applied block a table must reach before it is applied (0: no hold)."""

    block: int = 0

    def begin(self, applied_block: int, table_block: int) -> bool:
        """The stream restarted under us: hold if the table is behind; True if it is."""
        self.block = max(self.block, applied_block)
        if table_block >= self.block:
            self.block = 0  # the snapshot is not behind: nothing to hold
        return self.block > 0

    def reason(self, table_block: int) -> str:
        """Why the configuration is held ("" when it is not), for the status."""
        if not self.block:
            return ""
        return (
            f"the peers stream is at block {table_block}, the applied configuration "
            f"at block {self.block}"
        )

    def check(self, table_block: int, last_entries: float, *, ready: bool) -> tuple[str, str]:
        """(:data:`HELD`, :data:`FREE` or :data:`REACHED`, what ended the hold: "" if
        nothing did). ``last_entries``: when an entry last arrived (monotonic); ``ready``:
        the table has caught up with the stream. :data:`REACHED`: the table is at the
        held block exactly; the caller ends the hold with :meth:`end` (or keeps it)."""
        if not self.block:
            return FREE, ""
        if not ready:
            return HELD, ""
        if table_block < self.block:
            quiet = time.monotonic() - last_entries >= HOLD_QUIET_SECONDS
            if not (table_block and quiet):
                return HELD, ""
            why = (
                f"the peers stream stopped at block {table_block}, short of block "
                f"{self.block}: applying it"
            )
        elif table_block == self.block:
            return REACHED, f"the peers stream reached block {table_block}: reconciling"
        else:
            why = f"the peers stream passed block {self.block}: reconciling"
        self.block = 0
        return FREE, why

    def settled(self, last_entries: float) -> bool:
        """Whether the stream has been quiet long enough for a table at the held block
        to remove a peer."""
        return time.monotonic() - last_entries >= HOLD_SETTLE_SECONDS

    def end(self) -> None:
        self.block = 0
