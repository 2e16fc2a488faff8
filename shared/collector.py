"""Pausing Python's cyclic garbage collector around work that builds many objects at once.

Every container object that stays alive (a decoded log, an entry) counts towards the next
collection, and each full collection walks every tracked object of the process again: a
loop that builds tens of thousands of them spends much of its time there, though it makes
no reference cycles. Pausing the collector for such a loop is safe; reference counting
still frees everything as usual, and the collector runs again as soon as it is enabled.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """The cyclic collector off inside the block (and back on after it, if it was on)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


__all__ = ["collector_paused"]
