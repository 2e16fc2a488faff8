"""A backfill plan: consecutive block ranges covering ``[start, end]`` exactly. Pure.

Ranges are ``[start + i * size, start + (i + 1) * size - 1]``, the last one cut at
``end``: no gap, no overlap, so the range holding any block is found by arithmetic
and the plan itself is an id and three numbers. A :class:`Staged` range is what a worker
fetched for one range: its decoded entries (no digests yet: those are chained
when the listener appends), its dead letters, and the hashes that tie the range
to the chain (its first block's parent, its last block).
"""

from __future__ import annotations

from typing import NamedTuple

import msgspec

from shared.events import LogEntry


class Span(NamedTuple):
    """One block range of a plan, both ends included."""

    start: int
    end: int

    @property
    def name(self) -> str:
        """``"<start>-<end>"``: the range's field in the staging hash, and its job id part."""
        return f"{self.start}-{self.end}"

    @property
    def blocks(self) -> int:
        return self.end - self.start + 1


def split(start: int, end: int, size: int) -> list[Span]:
    """``[start, end]`` as consecutive ranges of ``size`` blocks (the last one may be shorter)."""
    if size < 1:
        raise ValueError(f"range size must be at least 1, not {size}")
    if start < 0 or end < start:
        raise ValueError(f"not a block range: {start}-{end}")
    return [Span(lo, min(lo + size - 1, end)) for lo in range(start, end + 1, size)]


class Plan(msgspec.Struct, frozen=True):
    """Which blocks a backfill covers and how they are cut into ranges; ``id`` names the run."""

    id: str
    start: int
    end: int
    size: int

    @property
    def spans(self) -> list[Span]:
        return split(self.start, self.end, self.size)

    @property
    def blocks(self) -> int:
        return self.end - self.start + 1

    def span_at(self, block: int) -> Span | None:
        """The range that holds ``block``; None outside the plan."""
        if not self.start <= block <= self.end:
            return None
        lo = self.start + (block - self.start) // self.size * self.size
        return Span(lo, min(lo + self.size - 1, self.end))


class StagedDead(msgspec.Struct, frozen=True):
    """A log of a staged range that did not decode: its block, position, reason and raw JSON."""

    block_number: int
    ident: str
    reason: str
    raw: bytes


class Staged(msgspec.Struct, frozen=True):
    """A fetched range: entries in chain order (undigested), dead letters, and its chain hashes."""

    start: int
    end: int
    #: Parent hash of block ``start`` (the hash the cursor must hold to append at ``start``).
    parent_hash: str
    #: Hash of block ``end`` (the cursor's hash after the append).
    end_hash: str
    entries: list[LogEntry]
    dead: list[StagedDead]

    @property
    def span(self) -> Span:
        return Span(self.start, self.end)


def encode_staged(staged: Staged) -> bytes:
    """``staged`` as JSON (deterministic: the same range fetched twice encodes the same)."""
    return msgspec.json.encode(staged)


def decode_staged(raw: bytes | str) -> Staged:
    """A staged range from its JSON; :class:`msgspec.DecodeError` if it is not one."""
    return msgspec.json.decode(raw, type=Staged)


__all__ = ["Plan", "Span", "Staged", "StagedDead", "decode_staged", "encode_staged", "split"]
