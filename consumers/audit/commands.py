"""``wgchain audit replay|history|verify|export``."""

from __future__ import annotations

import dataclasses
import json
import sys
from contextlib import AbstractContextManager, nullcontext
from typing import IO, Any

import click
import msgspec
import redis

from consumers.audit import entries
from consumers.audit import export as export_rows
from consumers.audit import history as timeline
from consumers.audit.entries import START, Decoded, decode, parse_id
from consumers.audit.progress import enabled
from consumers.audit.replay import Replay, render
from consumers.audit.streams import read_stream
from consumers.ipam.allocate import IpamFold
from shared.cmdline import ADDRESSES, STREAM, with_chain_id, with_settings
from shared.errors import SettingsError, WgchainError
from shared.keys import Keys
from shared.redis_log import as_str, connect
from shared.settings import Settings

#: ``verify``'s default ``--timeout`` (``shared.chain.oneshot.DEFAULT_TIMEOUT``, which is not
#: imported here: ``verify``'s chain client, ABI codec and job queue are imported when it
#: runs, so ``audit replay`` and the other commands start without them, docs/design.md §12.3).
RPC_TIMEOUT = 30.0


@click.group()
def audit() -> None:
    """Audit the log and the projections: replay, history, verify, export."""


def _until(until: str | None, block: int | None) -> str | None:
    """``--until`` checked (at most one of ``--until`` and ``--until-block``)."""
    if until is not None and block is not None:
        raise SettingsError("--until/--until-block", "give at most one of them")
    return None if until is None else parse_id(until, "--until")


def _bound(client: redis.Redis, keys: Keys, until: str | None, block: int | None) -> str | None:
    """The last events id a run covers (None: no bound given); ``until`` already checked."""
    if until is not None:
        last: Any = client.xrevrange(keys.events, max=until, count=1)
        return as_str(last[0][0]) if last else START
    if block is not None:
        return entries.until_block(decode(read_stream(client, keys.events)), block)
    return None


_UNTIL = click.option("--until", default=None, help="Last events entry id (MS-SEQ) covered.")
_UNTIL_BLOCK = click.option(
    "--until-block",
    type=click.IntRange(min=0),
    default=None,
    help="Cover the log up to the last entry of this block.",
)
_JSON = click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
_WAIT = click.option(
    "--wait",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="Seconds to wait for the live stages to catch up.",
)


@audit.command()
@_UNTIL
@_UNTIL_BLOCK
@_WAIT
@click.option("--max-diff", type=click.IntRange(min=1), default=20, show_default=True,
              help="Difference lines shown per projection.")  # fmt: skip
@_JSON
@with_settings(*STREAM, *ADDRESSES, stage="audit")
def replay(
    *,
    cfg: Settings,
    until: str | None,
    until_block: int | None,
    wait: float,
    max_diff: int,
    as_json: bool,
) -> None:
    """Rebuild the projections from the log (folded in this process) and compare digests.

    Compares the registry and ipam state hashes and the effective content of the
    registry and peers streams; exits 1 on any difference. With --until or
    --until-block, the streams are compared up to the entries caused by the events
    covered, and a state only when its live stage stands exactly at the bound.
    """
    until = _until(until, until_block)
    keys = cfg.keys()
    ipam = IpamFold.from_settings(cfg)
    client = connect(cfg.redis_url)
    try:
        bound = _bound(client, keys, until, until_block)
        run = Replay(
            client,
            keys,
            ipam,
            wait=wait,
            max_diff=max_diff,
            show=enabled(cfg.log_json),
        )
        report = run.run(bound)
    finally:
        client.close()
    if as_json:
        document = {"ok": report.ok, **dataclasses.asdict(report)}
        click.echo(json.dumps(document, sort_keys=True))
    else:
        for line in render(report):
            click.echo(line)
    if not report.ok:
        names = ", ".join(o.name for o in report.outcomes if o.status == "DIFF")
        raise WgchainError(f"the replay differs from the live projections: {names}")


@audit.command()
@click.option("--node", default=None, help="Node id.")
@click.option("--key", default=None, help="WireGuard public key.")
@click.option("--owner", default=None, help="Owner address (0x...).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@with_settings(*STREAM, stage="audit")
def history(
    cfg: Settings, node: str | None, key: str | None, owner: str | None, as_json: bool
) -> None:
    """The timeline of a node, a key or an owner: block, time, tx, event, resulting state.

    Folded from the effective log; entries voided by a retraction are shown
    marked RETRACTED and change nothing.
    """
    who = timeline.subject(node, key, owner)
    keys = cfg.keys()
    client = connect(cfg.redis_url)
    try:
        events = decode(read_stream(client, keys.events))
    finally:
        client.close()
    rows = timeline.timeline(events, who)
    for row in rows:
        if as_json:
            click.echo(msgspec.json.encode(row.as_json()).decode())
        else:
            click.echo(timeline.render(row))
    if not rows and not as_json:
        click.echo(f"no entry of the log ({len(events)} entries) concerns it")


@audit.command()
@click.option("--from", "from_block", type=click.IntRange(min=0), default=None,
              help="First block to re-read [default: the first logged block].")  # fmt: skip
@click.option("--to", "to_block", type=click.IntRange(min=0), default=None,
              help="Last block to re-read [default: the listener cursor's block].")  # fmt: skip
@click.option("--max-problems", type=click.IntRange(min=1), default=20, show_default=True,
              help="Problem lines shown per check.")  # fmt: skip
@click.option("--timeout", type=click.FloatRange(min=0.1), default=RPC_TIMEOUT,
              show_default=True, metavar="SECONDS",
              help="Give up (one line, exit 1) when an RPC call gets no answer within SECONDS, "
                   "retries included.")  # fmt: skip
@_WAIT
@_JSON
@with_settings(
    *STREAM,
    "rpc_url",
    "max_block_range",
    stage="audit",
    ask_chain_id=False,  # asked through its RPC client (retries, failover)
)
def verify(
    *,
    cfg: Settings,
    from_block: int | None,
    to_block: int | None,
    max_problems: int,
    timeout: float,
    wait: float,
    as_json: bool,
) -> None:
    """Re-read the chain: logs, digest chain and contract views; exits 1 on any mismatch."""
    from consumers.audit.jobs import fetcher
    from consumers.audit.verify import Verify
    from shared.chain.oneshot import bounded_rpc, within

    if from_block is not None and to_block is not None and to_block < from_block:
        raise SettingsError("--to", f"{to_block} is before --from {from_block}")
    if not cfg.contract:
        raise SettingsError("WGCHAIN_CONTRACT", "required (the contract address)")
    client = connect(cfg.redis_url)
    rpc = bounded_rpc(cfg.rpc_urls, timeout)
    try:
        with within(timeout):
            keys = with_chain_id(cfg, rpc.chain_id).keys()
            show = enabled(cfg.log_json)
            checks = Verify(
                client,
                keys,
                rpc,
                fetch=fetcher(client, keys, rpc, cfg.max_block_range, show),
                max_block_range=cfg.max_block_range,
                wait=wait,
                show_progress=show,
            ).run(from_block, to_block)
    finally:
        rpc.close()
        client.close()
    first = next((c.problems[0] for c in checks if c.problems), None)
    if as_json:
        document = {"ok": first is None, "checks": [dataclasses.asdict(c) for c in checks]}
        click.echo(json.dumps(document, sort_keys=True))
    for check in [] if as_json else checks:
        status = "BAD" if check.problems else "OK"
        click.echo(f"{status:<5} {check.name:<15} {check.summary}")
        for problem in check.problems[:max_problems]:
            click.echo(f"      {problem}")
        if len(check.problems) > max_problems:
            click.echo(f"      ... and {len(check.problems) - max_problems} more")
    if first is not None:
        total = sum(len(c.problems) for c in checks)
        raise WgchainError(f"verify found {total} problem(s); the first: {first}")


@audit.command("export")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl",
              show_default=True, help="Output format.")  # fmt: skip
@_UNTIL
@_UNTIL_BLOCK
@click.option("--output", type=click.Path(dir_okay=False, writable=True), default=None,
              help="File to write [default: stdout].")  # fmt: skip
@with_settings(*STREAM, stage="audit")
def export(
    cfg: Settings, fmt: str, until: str | None, until_block: int | None, output: str | None
) -> None:
    """One row per events entry (id, block, time, tx, log index, event, fields, retracted)."""
    until = _until(until, until_block)
    keys = cfg.keys()
    client = connect(cfg.redis_url)
    events: list[Decoded] = []
    try:
        bound = _bound(client, keys, until, until_block)
        if bound != START:
            events = decode(read_stream(client, keys.events, high=bound or "+"))
    finally:
        client.close()
    write = export_rows.write_csv if fmt == "csv" else export_rows.write_jsonl
    target: AbstractContextManager[IO[str]] = nullcontext(sys.stdout)
    if output:
        try:
            target = open(output, "w", encoding="utf-8", newline="")  # noqa: SIM115
        except OSError as exc:
            raise SettingsError("--output", f"cannot write {output}: {exc.strerror}") from None
    with target as out:
        write(out, events)


__all__ = ["audit"]
