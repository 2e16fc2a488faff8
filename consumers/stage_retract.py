"""Retractions (deep reorgs) in a :class:`~consumers.stage.Stage` (I/O): undo the voided
input entries, retract the outputs they caused, rebuild the state from the input.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final, TypeVar

from consumers import stage_reads as reads
from shared.events import Retracted, effective
from shared.redis_log import Batch

if TYPE_CHECKING:
    from consumers.stage import Stage

#: Entries per page when a retraction scans the input or output stream.
SCAN_PAGE: Final = 5000

S = TypeVar("S")


def retract(
    stage: Stage[Any],
    run: list[tuple[str, Retracted]],
    batch: Batch,
    links: list[str],
    poison: dict[str, str],
) -> None:
    """Undo the input entries that ``run`` retracts, and retract their outputs.

    The state becomes a clean fold of the effective input up to the end of
    ``run`` (rebuilt from the start of the input: deep reorgs are rare and
    this is exact whatever the fold). Outputs of retracted inputs that are
    still in this batch are dropped; committed ones get ``Retracted``
    entries of their own, newest first, so the next stage does the same.
    """
    void = {r.entry_id: (rid, r) for rid, r in run}
    kept = [(o, link) for o, link in zip(batch.outputs, links, strict=True) if link not in void]
    dropped = len(batch.outputs) - len(kept)
    batch.outputs[:] = [o for o, _ in kept]
    links[:] = [link for _, link in kept]
    retractions = [
        Retracted(
            entry_id=out_id,
            block_number=void[cause][1].block_number,
            block_hash=void[cause][1].block_hash,
            cause=void[cause][0],
            origin=void[cause][1].origin or void[cause][0],
        )
        for out_id, cause in reads.committed_outputs(
            stage.client, stage.store.output, set(void), page_size=SCAN_PAGE
        )
    ]
    batch.outputs.extend(retractions)
    links.extend(r.cause for r in retractions)
    stage.state = rebuild(stage, run[-1][0], poison)
    batch.replace = True
    stage.log.warning(
        "retracted {} input entries (from block {}): {} outputs retracted, {} unpublished",
        len(run),
        min(r.block_number for _, r in run),
        len(retractions),
        dropped,
    )


def rebuild(stage: Stage[S], until: str, poison: dict[str, str]) -> S:
    """A clean fold of the effective input up to ``until`` (dead letters skipped)."""
    skip = set(poison) | reads.dead_ids(stage.client, stage.store.dead)
    items = reads.input_entries(
        stage.client, stage.input, until, skip, stage._reads, page_size=SCAN_PAGE
    )
    state = stage.fold.load({})
    for entry_id, entry in effective(items):
        try:
            state, _ = stage.fold.apply(state, entry_id, entry)
        except Exception:  # dead-lettered when it was first seen; skip it again
            stage.log.exception("rebuild: cannot apply {}; skipped", entry_id)
    stage.fold.take_changes(state)
    return state
