"""Reading the listener's next range while this one is decoded and committed.

A range full of logs costs the provider's time (the fetch) and then this process's
(decoding, chaining, committing). :class:`ReadAhead` overlaps the two: a step that
reads a range of many logs asks a thread for the next range right away, and the next
step takes that read instead of fetching (the provider, this process and Redis at work
at once). Ranges are then sized for about :data:`PIECE_LOGS` logs from the density of
the read before (a quiet chain keeps the sizer's large ranges, and reads nothing ahead).

Nothing is taken on trust: a read ahead is used only when it starts at the listener's
next block and ends at or below its final block, and the step checks it like its own
read (the first block's parent against the cursor: a reorg is found as before). A read
ahead that failed is dropped, and the step reads for itself (a refused range is told to
the sizer). Only one thread uses the RPC client at a time: a step first waits for the
read ahead (:meth:`ReadAhead.settle`) before it asks the node anything.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Final

from shared.chain.ranges import RangeSizer
from shared.chain.read import Read
from shared.chain.rpc import refused
from shared.errors import LogRangeError

#: Logs a range is sized for when its logs are dense (whole blocks: it may hold more).
PIECE_LOGS: Final = 5000
#: A range read ahead only when the one before held at least this many logs.
AHEAD_FROM: Final = 2000
#: A range is at most this many times more blocks than the one before.
GROWTH: Final = 8
#: Blocks of the first range, while the density is not known (then ``GROWTH`` times more).
FIRST_BLOCKS: Final = 8


class ReadAhead:
    """The next range's read, started on a thread, and the size of the ranges."""

    def __init__(self, read: Callable[[int, int], Read], sizer: RangeSizer) -> None:
        self._read = read
        self.sizer = sizer
        #: Blocks of the next range (learned from the log density).
        self.blocks = FIRST_BLOCKS
        self._pool: ThreadPoolExecutor | None = None
        self._ahead: tuple[int, int, Future[Read]] | None = None
        self._ready: tuple[int, int, Read] | None = None

    def last(self, start: int, target: int) -> int:
        """The last block of the range read from ``start``: the sizer's, cut to the density."""
        return min(self.sizer.span(start, target), start + self.blocks - 1)

    def learn(self, start: int, end: int, logs: int) -> None:
        """Size the next range for about :data:`PIECE_LOGS` logs, from this read's density."""
        blocks = end - start + 1
        wanted = blocks * PIECE_LOGS // max(1, logs)
        self.blocks = max(1, min(wanted, blocks * GROWTH, self.sizer.maximum))

    def start(self, start: int, target: int, logs: int) -> None:
        """Read the range from ``start`` on the thread, when the last one was dense."""
        if logs < AHEAD_FROM or start > target:
            return
        end = self.last(start, target)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="wgchain-listener-read")
        self._ahead = (start, end, self._pool.submit(self._read, start, end))

    def settle(self) -> None:
        """Wait for the read ahead, if one runs; a failed one is dropped (a refused range
        taught to the sizer)."""
        if self._ahead is None:
            return
        start, end, future = self._ahead
        self._ahead = None
        try:
            self._ready = (start, end, future.result())
        except LogRangeError as exc:
            refused(self.sizer, start, end, exc)
        except Exception:
            self._ready = None

    def take(self, start: int, target: int) -> tuple[int, Read] | None:
        """The read ahead, when it starts at ``start`` and ends at or below ``target``."""
        self.settle()
        ready, self._ready = self._ready, None
        if ready is None or ready[0] != start or ready[1] > target:
            return None
        self.sizer.on_success(ready[0], ready[1])
        return ready[1], ready[2]


__all__ = ["AHEAD_FROM", "PIECE_LOGS", "ReadAhead"]
