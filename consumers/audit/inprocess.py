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

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from consumers.audit.entries import Decoded, Undecodable
from shared.events import Retracted

if TYPE_CHECKING:
    from consumers.stage import Fold


def run_fold(
    fold: Fold[Any], entries: Sequence[Decoded], progress: Callable[[int], None] | None = None
) -> tuple[Any, list[Decoded]] | None:
    """Fold ``entries`` (id, decoded entry) like the live stage; (state, effective outputs).

    Outputs get the ids ``1-0``, ``2-0``, ...: another stage's replay names them as
    its ``cause``, and the comparison replaces those by positions (``compare.content``).
    None when a retraction voids an entry that is not at the end of the effective input.
    """
    accepts = fold.accepts
    apply = fold.apply
    state = fold.load({})
    #: Effective inputs applied, and the outputs of each (same index).
    kept: list[tuple[str, Any]] = []
    produced: list[list[Any]] = []
    positions: dict[str, int] = {}  # input id -> index in ``kept``
    poison: set[str] = set()
    rebuild = False
    done = 0
    for entry_id, entry in entries:
        done += 1
        if progress is not None and done % 10_000 == 0:
            progress(10_000)
        if isinstance(entry, Retracted):
            voided = positions.get(entry.entry_id)
            if voided is None:  # a dead-lettered or unknown entry: nothing to undo
                continue
            if voided != len(kept) - 1:
                return None
            del positions[entry.entry_id]
            kept.pop()
            produced.pop()
            rebuild = True
            continue
        if isinstance(entry, Undecodable) or not isinstance(entry, accepts):
            continue
        if rebuild:
            state, _ = _refold(fold, kept)
            rebuild = False
        try:
            state, out = apply(state, entry_id, entry)
        except Exception:  # dead-lettered live; the stage reloads as if never applied
            poison.add(entry_id)
            state, _ = _refold(fold, kept)
            continue
        positions[entry_id] = len(kept)
        kept.append((entry_id, entry))
        produced.append(out)
    if rebuild:
        state, _ = _refold(fold, kept)
    if progress is not None:
        progress(done % 10_000)
    fold.take_changes(state)
    items = [item for out in produced for item in out]
    return state, [(f"{n}-0", item) for n, item in enumerate(items, 1)]


def _refold(fold: Fold[Any], kept: list[tuple[str, Any]]) -> tuple[Any, int]:
    """A clean fold of ``kept`` (all of them applied without error before)."""
    state = fold.load({})
    for entry_id, entry in kept:
        state, _ = fold.apply(state, entry_id, entry)
    return state, len(kept)


__all__ = ["run_fold"]
