"""The completeness check of ``wgchain listen --verify-range B1 B2``.

The contract's logs of blocks ``B1..B2`` (its event topics) are read again
with ``eth_getLogs``, in ranges the provider accepts, and compared by chain
position (block number, log index) with the stream's effective entries (those
left once retractions are applied, :func:`~shared.events.effective`) of the same
blocks. An entry must carry its log's block hash, transaction hash, contract,
chain and decoded event, and a digest that covers its content. Every difference
is one line:

* ``missing``: a log on chain with no entry (unless the listener dead-lettered it
  because it does not decode);
* ``extra``: an entry with no such log on chain, a second entry for one log, or a
  stream entry that does not decode;
* ``mismatch``: an entry that differs from its log (each differing field named).

Then a summary line; :func:`check` returns the exit code (0 when the stream and
the chain agree). Everything read from Redis or the chain is hostile: shown
through :func:`~shared.validate.excerpt`.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from typing import Any, Final

import click
import msgspec
import redis

from shared import streams
from shared.chain.answers import split_urls
from shared.chain.compare import DUPLICATE, EXTRA, MISSING, UNDECODABLE, LogDiff, compare_logs
from shared.chain.oneshot import DEFAULT_TIMEOUT, bounded_rpc, within
from shared.chain.plan import Span, StagedDead
from shared.chain.ranges import INITIAL_RANGE
from shared.chain.read import read_range
from shared.chain.rpc import RpcClient
from shared.cmdline import with_chain_id
from shared.errors import DecodeError, SettingsError
from shared.events import AnyEntry, LogEntry, effective
from shared.keys import Keys
from shared.redis_log import as_str, connect
from shared.settings import Settings
from shared.validate import excerpt

_HASH: Final = re.compile(r"0x[0-9a-f]{64}")


@dataclass(frozen=True)
class Finding:
    """One difference between the stream and the chain."""

    kind: str
    block: int
    log_index: int
    tx_hash: str
    what: str

    def __str__(self) -> str:
        where = f"block {self.block} log {self.log_index}" if self.block >= 0 else "stream"
        tx = f" tx {_shown(self.tx_hash)}" if self.tx_hash else ""
        return f"{self.kind:<8} {where}{tx}: {self.what}"


@dataclass(frozen=True)
class Report:
    """The outcome of one check of blocks ``first..last``."""

    first: int
    last: int
    on_chain: int
    in_stream: int
    findings: list[Finding]
    #: Last block the listener has appended (None: nothing yet).
    cursor: int | None

    @property
    def ok(self) -> bool:
        """Whether the stream holds exactly the chain's logs."""
        return not self.findings

    def summary(self) -> str:
        """One line: the counts, and the verdict."""
        counts = {k: sum(f.kind == k for f in self.findings) for k in ("missing", "extra")}
        mismatched = len(self.findings) - sum(counts.values())
        line = (
            f"blocks {self.first}-{self.last}: {self.on_chain} logs on chain, "
            f"{self.in_stream} entries in the stream; {counts['missing']} missing, "
            f"{counts['extra']} extra, {mismatched} mismatched"
        )
        if self.cursor is None or self.cursor < self.last:
            appended = "nothing" if self.cursor is None else f"up to block {self.cursor}"
            line += f" (the listener has appended {appended})"
        return line + (": identical" if self.ok else ": DIFFERENT")


def _shown(value: str) -> str:
    """A hash as is, anything else escaped and cut short."""
    return value if _HASH.fullmatch(value) else f"'{excerpt(value)}'"


def _stream(client: redis.Redis, key: str) -> tuple[list[tuple[str, AnyEntry]], list[Finding]]:
    """Every entry of ``key`` in order (decoded), and a finding for each that does not decode."""
    bad: list[Finding] = []

    def undecodable(ident: str, exc: DecodeError) -> None:
        what = f"entry {ident} does not decode: {excerpt(str(exc))}"
        bad.append(Finding("extra", -1, -1, "", what))

    return streams.decoded(streams.read(client, key, retry=False), bad=undecodable), bad


def _dead_letters(client: redis.Redis, key: str) -> set[str]:
    """``block:index`` of the logs the listener dead-lettered."""
    raw: Any = client.xrange(key)
    return {as_str(fields.get(b"id", b"")) for _, fields in raw}


def verify_range(
    rpc: RpcClient,
    client: redis.Redis,
    keys: Keys,
    first: int,
    last: int,
    *,
    max_block_range: int = INITIAL_RANGE,
) -> Report:
    """Compare the effective stream entries of blocks ``first..last`` with the chain's logs."""
    entries, findings = _stream(client, keys.events)
    ours = [
        (entry_id, entry)
        for entry_id, entry in effective(entries)
        if isinstance(entry, LogEntry) and first <= entry.block_number <= last
    ]
    dead = _dead_letters(client, keys.dead("listener"))
    staged = read_range(rpc, keys.contract, keys.chain_id, Span(first, last), max_block_range)
    undecodable = {d.ident: d for d in staged.dead}
    diffs = compare_logs(ours, staged.entries, undecodable)
    findings += [_finding_of(diff, undecodable) for diff in diffs]
    answered = {f"{d.block}:{d.log_index}" for d in diffs if d.kind == UNDECODABLE}
    for ident, letter in undecodable.items():  # no entry: right if the listener set it aside
        if ident not in dead and ident not in answered:
            block, _, index = ident.partition(":")
            what = f"does not decode ({excerpt(letter.reason)})"
            findings.append(Finding("missing", int(block), int(index), "", what))
    findings.sort(key=lambda f: (f.block, f.log_index, f.kind))
    cursor = client.hget(keys.cursor, "block")
    on_chain = len(staged.entries) + len(staged.dead)
    return Report(
        first, last, on_chain, len(ours), findings, int(cursor) if cursor is not None else None
    )


def _finding_of(diff: LogDiff, undecodable: dict[str, StagedDead]) -> Finding:
    """A difference in this command's words."""
    entry = diff.entry
    if diff.kind == MISSING and diff.log is not None:
        return _finding("missing", diff.log, _describe(diff.log))
    assert entry is not None
    if diff.kind == DUPLICATE:
        return _finding("extra", entry, "a second entry for this log")
    if diff.kind == EXTRA:
        return _finding("extra", entry, f"no such log on chain ({_describe(entry)})")
    if diff.kind == UNDECODABLE:
        reason = undecodable[f"{entry.block_number}:{entry.log_index}"].reason
        what = f"its log on chain does not decode ({excerpt(reason)})"
        return _finding("mismatch", entry, what)
    ours, theirs = msgspec.to_builtins(entry), msgspec.to_builtins(diff.log)
    problems = [
        f"{path} {_shown(str(_at(ours, path)))} in the stream, "
        f"{_shown(str(_at(theirs, path)))} on chain"
        for path in diff.fields
    ]
    if diff.edited:
        problems.append("its digest does not cover its content (edited)")
    return _finding("mismatch", entry, "; ".join(problems))


def _at(doc: Any, path: str) -> Any:
    for part in path.split("."):
        doc = doc.get(part) if isinstance(doc, dict) else None
    return doc


def _finding(kind: str, entry: LogEntry, what: str) -> Finding:
    return Finding(kind, entry.block_number, entry.log_index, entry.tx_hash, what)


def _describe(entry: LogEntry) -> str:
    """The event in a few words: its type and token or owner."""
    event = entry.event
    token = getattr(event, "token_id", None)
    who = f"token {token}" if token is not None else f"owner {excerpt(getattr(event, 'owner', ''))}"
    return f"{type(event).__name__} {who}"


def check(
    cfg: Settings, first: int, last: int, timeout: float = DEFAULT_TIMEOUT, as_json: bool = False
) -> int:
    """Run the check for ``cfg``'s contract, print its lines (or one JSON document); the exit
    code (0: identical). RPC calls give up after ``timeout`` seconds (one line)."""
    if not cfg.contract:
        raise SettingsError("WGCHAIN_CONTRACT", "required (the contract address)")
    if first > last:
        raise SettingsError("--verify-range", f"{first} is after {last}")
    client = connect(cfg.redis_url)
    rpc = bounded_rpc(split_urls(cfg.rpc_urls)[0], timeout)
    try:
        with within(timeout):
            keys = with_chain_id(cfg, rpc.chain_id).keys()
            head = rpc.block_number()
            if last > head:
                raise SettingsError(
                    "--verify-range", f"block {last} is after the chain's head {head}"
                )
            report = verify_range(
                rpc, client, keys, first, last, max_block_range=cfg.max_block_range
            )
    finally:
        rpc.close()
        client.close()
    if as_json:
        document = {"ok": report.ok, "summary": report.summary(), **dataclasses.asdict(report)}
        click.echo(json.dumps(document, sort_keys=True))
        return 0 if report.ok else 1
    for finding in report.findings:
        click.echo(str(finding))
    click.echo(report.summary())
    return 0 if report.ok else 1


__all__ = ["DEFAULT_TIMEOUT", "Finding", "Report", "bounded_rpc", "check", "verify_range", "within"]
