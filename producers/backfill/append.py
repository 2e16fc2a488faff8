"""The listener's backfill hook: append staged ranges strictly in order, then go live.

:meth:`producers.listener.listener.Listener.step` calls :func:`append_staged` first. With the listener's
next block ``n`` and a running plan:

* ``n`` past the plan's end: the backfill is complete; the plan and any leftover
  staged field are dropped and the listener reads live.
* ``n`` before the plan's start: the listener reads live until it gets there.
* ``n`` inside range ``[a, b]`` of the plan: when ``[a, b]`` is staged, its
  entries of blocks ``>= n`` are digest-chained from the cursor and committed
  with the cursor moved to ``b``, through the listener's own atomic
  :meth:`ListenerStore.commit` (cursor CAS, lease fence). When it is not staged
  yet, the listener *waits* (returns 0) rather than read the range itself, so
  the work of the workers is never wasted and the live path never overtakes the
  plan. ``n > a`` happens only when the listener had read past ``a`` before
  the plan existed; the blocks it already appended are skipped.

No range is appended twice: the commit names the cursor it starts from, so a
second append of the same range (another listener, or this one after a crash
between the commit and the removal of the staged field) is refused, and a
staged range whose end is below the cursor is never appended again. None is
skipped: a commit always starts at ``n`` and ends at the end of a plan range
or, live, wherever the listener read to. If a staged range does not chain onto
the cursor (its first block's parent is not the cursor's hash: the chain changed
since it was fetched) or is unreadable, the plan is dropped and the listener
reads those blocks itself, with its own reorg handling.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Final

from producers.backfill.store import BackfillStore
from producers.listener.store import Cursor, DeadLetter
from shared.errors import DecodeError
from shared.events import GENESIS_DIGEST, LogEntry

if TYPE_CHECKING:  # the hook is handed its listener: its type, not a run-time import
    from producers.listener.listener import Listener


#: Seconds between "waiting for a range" log lines.
WAIT_LOG_EVERY: Final = 30.0


class _Every:
    """True at most once every ``seconds`` (throttles a repeated log line)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.last = -seconds

    def due(self) -> bool:
        moment = time.monotonic()
        if moment - self.last < self.seconds:
            return False
        self.last = moment
        return True


_waiting = _Every(WAIT_LOG_EVERY)


def append_staged(listener: Listener) -> int | None:
    """Append the staged range holding the listener's next block.

    Returns the number of blocks appended, 0 to wait for the range to be
    staged (or after a lost commit race), None when no backfill applies and
    the listener reads live.
    """
    store = BackfillStore(listener.store.client, listener.store.keys)
    plan = store.plan()
    if plan is None:
        return None
    start = listener.next_block
    plan_log = listener.log.bind(backfill=plan.id)
    if start > plan.end:
        store.drop(plan.id)
        plan_log.info("backfill of blocks {}-{} complete; reading live", plan.start, plan.end)
        return None
    span = plan.span_at(start)
    if span is None:
        return None
    try:
        staged = store.staged(span)
    except DecodeError as exc:
        plan_log.error("{}; dropping the backfill, reading its blocks live", exc)
        store.drop(plan.id)
        return None
    if staged is None:
        if _waiting.due():
            plan_log.info("waiting for blocks {} to be fetched by a backfill worker", span.name)
        return 0
    expected = listener.cursor
    if (
        expected is not None
        and expected.hash
        and start == staged.start
        and expected.hash != staged.parent_hash
    ):
        plan_log.error(
            "staged blocks {} do not follow block {} (parent {}, cursor {}); "
            "dropping the backfill, reading its blocks live",
            span.name,
            expected.block,
            staged.parent_hash,
            expected.hash,
        )
        store.drop(plan.id)
        return None
    prev = expected.digest if expected else GENESIS_DIGEST
    entries: list[LogEntry] = []
    for entry in staged.entries:
        if entry.block_number >= start:
            entries.append(entry.with_digest(prev))
            prev = entries[-1].digest
    dead = [DeadLetter(d.ident, d.reason, d.raw) for d in staged.dead if d.block_number >= start]
    cursor = (expected or Cursor(start - 1, "", GENESIS_DIGEST)).advanced(
        staged.end, staged.end_hash, prev, ((e.block_number, e.block_hash) for e in entries)
    )
    if not listener.commit(expected, cursor, entries, dead):
        return 0
    store.unstage(span)
    plan_log.info(
        "blocks {}-{} (backfill): appended {} entries, {} dead-lettered",
        start,
        staged.end,
        len(entries),
        len(dead),
    )
    return staged.end - start + 1


__all__ = ["append_staged"]
