"""How many blocks to ask ``eth_getLogs`` for: a range size that adapts to provider limits.

Pure rules, no I/O. A :class:`RangeSizer` starts at a moderate size, doubles after
each full-size read the provider accepted (never past ``maximum``), and shrinks
when the provider refuses a range: to the provider's suggested range when that
one is strictly smaller than the refused range and starts at the same block,
otherwise to half. After a refusal it holds its size until :data:`PROBE_AFTER`
full-size reads have succeeded (so a provider with a hard limit is asked for too
much once every few dozen reads, not on every other read). Ranges are always
``[lo, span(lo, target)]`` for the caller's next block ``lo``: it never skips a
block. A refused single block is a hard error: shrinking cannot help.
"""

from __future__ import annotations

from typing import Final

from shared.errors import LogRangeError

#: Blocks of the first range asked for (then grown or shrunk).
INITIAL_RANGE: Final = 500
#: Full-size reads that must succeed after a refusal before the size grows again.
PROBE_AFTER: Final = 32


class RangeSizer:
    """The size of the next ``eth_getLogs`` range, learned from the provider's answers."""

    def __init__(self, maximum: int, *, initial: int = INITIAL_RANGE, minimum: int = 1) -> None:
        if not 1 <= minimum <= maximum:
            raise ValueError(f"range bounds must satisfy 1 <= {minimum} <= {maximum}")
        self.minimum = minimum
        self.maximum = maximum
        #: Blocks the next range spans (before the target cuts it short).
        self.size = max(minimum, min(initial, maximum))
        #: Full-size successes still needed before the size may grow (after a refusal).
        self.hold = 0

    def span(self, lo: int, target: int) -> int:
        """The last block of the next range starting at ``lo`` (at most ``target``)."""
        return min(lo + self.size - 1, target)

    def on_success(self, lo: int, hi: int) -> None:
        """The provider answered ``[lo, hi]``: grow after a full-size read."""
        if hi - lo + 1 < self.size:
            return  # cut short by the target: says nothing about larger ranges
        if self.hold > 0:
            self.hold -= 1
            if self.hold > 0:
                return
        self.size = max(self.size, min(self.size * 2, self.maximum))

    def on_refused(self, lo: int, hi: int, suggestion: tuple[int, int] | None = None) -> None:
        """The provider refused ``[lo, hi]``, perhaps suggesting a range; shrink.

        The suggestion is used only when it starts at ``lo`` and is strictly smaller
        than the refused range (a provider may suggest the same range back, or a
        larger one); otherwise the size is halved. Raises :class:`LogRangeError`
        when a range of ``minimum`` blocks (or fewer) is refused.
        """
        asked = hi - lo + 1
        if asked <= self.minimum:
            raise LogRangeError(
                f"the provider refuses eth_getLogs even for blocks {lo}-{hi} "
                f"({asked} block{'s' if asked != 1 else ''}); it cannot serve this contract"
            )
        size = asked // 2
        if suggestion is not None:
            s_lo, s_hi = suggestion
            if s_lo == lo and lo <= s_hi < hi:
                size = s_hi - s_lo + 1
        self.size = max(self.minimum, size)
        self.hold = PROBE_AFTER


__all__ = ["INITIAL_RANGE", "PROBE_AFTER", "RangeSizer"]
