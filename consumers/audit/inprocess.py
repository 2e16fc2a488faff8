"""The audit replay's fold: a stage's pure fold run in this process, as the stage would. Pure.

:func:`run_fold` folds a decoded input stream with the same rules the live
:class:`~consumers.stage.Stage` applies around its fold, and returns what a
comparison needs: the final state and the *effective* outputs (what is left of
the stage's output stream after retractions, ``compare.content``):

* an entry that does not decode, or is not an input of the stage, is dead-lettered
  live: skipped;
* an entry whose ``apply`` raises is dead-lettered live, the state as if it had
  never been applied: skipped, the state rebuilt without it;
* a run of ``Retracted`` entries voids entries at the end of the effective input
  (the listener appends them newest first right after the orphaned entries, and each
  stage forwards them the same way): those inputs and their outputs are dropped and
  the state is rebuilt from the effective input, as the live stage does.

A retraction of an entry that is not at the end of the effective input (never
written by wgchain) makes :func:`run_fold` return None: the caller then runs the
real stages instead (``consumers/audit/replay.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final

from consumers.audit.entries import Decoded
from shared.events import Retracted

if TYPE_CHECKING:
    from consumers.stage import Fold

#: Entries between two progress reports.
PROGRESS_EVERY: Final = 10_000


def run_fold(
    fold: Fold[Any], entries: Sequence[Decoded], progress: Callable[[int], None] | None = None
) -> tuple[Any, list[Decoded]] | None:
    """Fold ``entries`` (id, decoded entry) like the live stage; (state, effective outputs).

    Outputs get the ids ``1-0``, ``2-0``, ...: another stage's replay names them as
    its ``cause``, and the comparison replaces those by positions (``compare.content``).
    None when a retraction voids an entry that is not at the end of the effective input.
    """
    chunks = (entries[s : s + PROGRESS_EVERY] for s in range(0, len(entries), PROGRESS_EVERY))
    return run_fold_chunks(fold, chunks, progress)


def run_fold_chunks(
    fold: Fold[Any],
    chunks: Iterable[Sequence[Decoded]],
    progress: Callable[[int], None] | None = None,
) -> tuple[Any, list[Decoded]] | None:
    """:func:`run_fold` over the input in chunks, each folded as it comes (while the next
    one is read); ``progress`` is told the size of each."""
    accepts = fold.accepts
    apply = fold.apply
    state = fold.load({})
    #: Effective inputs applied (ids, entries) and the outputs of each (same index); the ids
    #: increase, and a retraction can only void the last one (else: None).
    kept_ids: list[str] = []
    kept: list[Any] = []
    produced: list[list[Any]] = []
    rebuild = False
    for chunk in chunks:
        for entry_id, entry in chunk:
            if isinstance(entry, accepts):  # the common case first: one check
                if rebuild:
                    state = _refold(fold, kept_ids, kept)
                    rebuild = False
                try:
                    state, out = apply(state, entry_id, entry)
                except Exception:  # dead-lettered live; the stage reloads as if never applied
                    state = _refold(fold, kept_ids, kept)
                    continue
                kept_ids.append(entry_id)
                kept.append(entry)
                produced.append(out)
            elif isinstance(entry, Retracted):
                voided = entry.entry_id
                if kept_ids and kept_ids[-1] == voided:
                    kept_ids.pop()
                    kept.pop()
                    produced.pop()
                    rebuild = True
                elif voided in set(kept_ids):  # rare: such a log is replayed by the real stages
                    return None
                # else a dead-lettered or unknown entry: nothing to undo
            # anything else (undecodable, not an input of this stage) is dead-lettered live
        if progress is not None:
            progress(len(chunk))
    if rebuild:
        state = _refold(fold, kept_ids, kept)
    # no take_changes: nothing commits the state's change marks (the registry's encoded
    # every changed token again, about 0.9 s per million events), callers dump it whole
    items = [item for out in produced for item in out]
    return state, [(f"{n}-0", item) for n, item in enumerate(items, 1)]


def _refold(fold: Fold[Any], kept_ids: list[str], kept: list[Any]) -> Any:
    """A clean fold of the ``kept`` entries (all of them applied without error before)."""
    state = fold.load({})
    for entry_id, entry in zip(kept_ids, kept, strict=True):
        state, _ = fold.apply(state, entry_id, entry)
    return state


__all__ = ["run_fold", "run_fold_chunks"]
