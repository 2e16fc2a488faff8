"""The pure parts of ``audit verify`` (:mod:`consumers.audit.verify`): what a problem is, and
the first two checks, the digest chain of the ``events`` stream and its comparison with the
chain's logs. Pure: the entries and logs are read by the caller."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from consumers.audit.entries import Decoded, Undecodable, void_ids
from shared.chain.compare import (
    DUPLICATE,
    EXTRA,
    MISMATCH,
    MISSING,
    UNDECODABLE,
    LogDiff,
    compare_logs,
)
from shared.chain.plan import Staged
from shared.events import GENESIS_DIGEST, LogEntry, Retracted
from shared.keys import Keys
from shared.validate import excerpt


@dataclass(frozen=True)
class Problem:
    """Something that does not match: where (stream id, block, log index) and what."""

    entry_id: str
    block: int
    log_index: int
    what: str

    def __str__(self) -> str:
        where = [f"entry {self.entry_id}"] if self.entry_id else []
        if self.block >= 0:
            where.append(f"block {self.block}")
        if self.log_index >= 0:
            where.append(f"log {self.log_index}")
        return f"{', '.join(where) or 'log'}: {self.what}"


@dataclass
class Check:
    """One of the three checks: its name, a summary, and its problems in order."""

    name: str
    summary: str
    problems: list[Problem] = field(default_factory=list)


# --- 1. the digest chain (pure) ------------------------------------------------------


def check_digests(
    events: Sequence[Decoded], keys: Keys, cursor: dict[str, str] | None
) -> list[Problem]:
    """Problems of the digest chain of ``events`` and of the cursor that closes it."""
    problems: list[Problem] = []
    expected: str | None = GENESIS_DIGEST
    for entry_id, entry in events:
        if isinstance(entry, Undecodable):
            problems.append(Problem(entry_id, -1, -1, f"does not decode: {entry.reason}"))
            expected = None
            continue
        if not isinstance(entry, LogEntry | Retracted):
            kind = type(entry).__name__
            problems.append(Problem(entry_id, -1, -1, f"a {kind} has no place in events"))
            expected = None
            continue
        block = entry.block_number
        index = entry.log_index if isinstance(entry, LogEntry) else -1
        if not entry.digest_ok():
            problems.append(
                Problem(entry_id, block, index, "digest does not match the entry's content")
            )
        if expected is not None and entry.prev != expected:
            problems.append(
                Problem(
                    entry_id,
                    block,
                    index,
                    "prev is not the digest of the entry before it "
                    "(an entry was deleted, inserted or re-chained)",
                )
            )
        if isinstance(entry, LogEntry) and (
            entry.chain_id != keys.chain_id or entry.contract.lower() != keys.contract
        ):
            problems.append(
                Problem(
                    entry_id,
                    block,
                    index,
                    f"belongs to chain {entry.chain_id} contract {excerpt(entry.contract)}",
                )
            )
        expected = entry.digest
    if cursor:
        last_id = events[-1][0] if events else ""
        if expected is not None and cursor.get("digest", GENESIS_DIGEST) != expected:
            problems.append(
                Problem(
                    cursor.get("last_id", ""),
                    int(cursor.get("block", -1)),
                    -1,
                    "the listener cursor's digest is not the last entry's "
                    "(entries at the end were deleted or edited)",
                )
            )
        elif cursor.get("last_id", last_id) != last_id:
            problems.append(
                Problem(
                    cursor.get("last_id", ""),
                    -1,
                    -1,
                    f"the listener cursor names {cursor.get('last_id')} as the last entry, "
                    f"the stream ends at {last_id or 'nothing'}",
                )
            )
    return problems


# --- 2. the chain logs ---------------------------------------------------------------


def check_logs(
    events: Sequence[Decoded], fetched: Iterable[Staged], lo: int, hi: int
) -> list[Problem]:
    """Problems between the effective log entries of blocks ``lo``..``hi`` and the chain's logs."""
    void = void_ids(events)
    ours = [
        (entry_id, entry)
        for entry_id, entry in events
        if isinstance(entry, LogEntry) and entry_id not in void and lo <= entry.block_number <= hi
    ]
    logs: list[LogEntry] = []
    undecodable: set[str] = set()
    for staged in fetched:
        logs += staged.entries
        undecodable.update(d.ident for d in staged.dead)
    diffs = compare_logs(ours, logs, undecodable)
    # an edit the content does not show is a digest problem: part 1 names it
    return [_problem(d) for d in diffs if d.kind != MISMATCH or d.fields]


def _problem(diff: LogDiff) -> Problem:
    """A difference in the audit's words (its digests are checked in part 1)."""
    where = (diff.entry_id, diff.block, diff.log_index)
    if diff.kind == MISSING and diff.log is not None:
        tx = diff.log.tx_hash
        return Problem("", *where[1:], f"log of tx {tx} is on chain but not in the events stream")
    assert diff.entry is not None
    if diff.kind == DUPLICATE:
        return Problem(*where, f"duplicate of entry {diff.first_id}")
    if diff.kind == UNDECODABLE:
        return Problem(
            *where, "its log on chain does not decode (the listener sets such logs aside)"
        )
    if diff.kind == EXTRA:
        return Problem(*where, f"no such log on chain (tx {diff.entry.tx_hash})")
    return Problem(*where, "differs from the chain's log: " + ", ".join(diff.fields))


__all__ = ["Check", "Problem", "check_digests", "check_logs"]
