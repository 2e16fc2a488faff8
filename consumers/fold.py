"""What a stage needs of a projection: the :class:`Fold` protocol. Pure.

``consumers/registry/fold.py`` and ``consumers/ipam/allocate.py`` implement it; the loop
around it (read, apply, commit) is :class:`consumers.stage.Stage`, and the audit replay
runs the same folds in process.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol, TypeVar

S = TypeVar("S")


class Fold(Protocol[S]):
    """A pure projection: the rules of one stage, with no I/O."""

    #: Stage name: "registry" or "ipam" (names its keys).
    name: str
    #: Entry types this stage consumes; anything else in its input is dead-lettered.
    accepts: tuple[type, ...]

    def load(self, fields: Mapping[str, bytes] | Iterable[tuple[str, bytes]]) -> S:
        """Rebuild the state from its persisted fields, a mapping or (name, value) pairs in
        any order (empty: initial state)."""

    def apply(self, state: S, entry_id: str, entry: Any) -> tuple[S, list[Any]]:
        """Apply one input entry; returns the state and the output entries."""

    def take_changes(self, state: S) -> tuple[dict[str, bytes], set[str]]:
        """Persisted fields changed since the last call: (fields to set, fields to delete)."""

    def dump(self, state: S) -> dict[str, bytes]:
        """Every persisted field of ``state`` (what the state hash holds after all commits)."""
