"""``wgchain deadletters list|show|retry``: inspect and re-drive what the stages set aside.

Everything printed from an entry (reasons, raw fields) is escaped to one line of
printable ASCII: a dead letter is, by definition, input nobody could make sense of.
"""

from __future__ import annotations

import json
import time
from typing import Any, Final

import click
import redis

from consumers.deadletters.letters import (
    REDRIVABLE,
    STAGES,
    Letter,
    count,
    escape,
    failed_again,
    find,
    letters,
    pending,
    queue,
    queued,
)
from shared.cmdline import STREAM, with_settings
from shared.errors import WgchainError
from shared.keys import Keys
from shared.redis_log import connect
from shared.settings import Settings
from shared.validate import excerpt

#: Characters of one field ``show`` prints unless ``--full``.
SHOW_CHARS: Final = 2000
#: Seconds between checks while waiting for a stage to apply re-drive requests.
WAIT_POLL: Final = 0.2

_STAGE = click.Choice(STAGES)


@click.group("deadletters")
def deadletters() -> None:
    """Entries a stage could not decode or apply: list, show, re-drive."""


def _open(cfg: Settings) -> tuple[redis.Redis, Keys]:
    keys = cfg.keys()
    return connect(cfg.redis_url), keys


_JSON = click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")


def _as_json(letter: Letter, state: str, limit: int | None = None) -> dict[str, Any]:
    """A dead letter for ``--json``: strings escaped like the text output (one line each)."""
    return {
        "stage": letter.stage,
        "id": letter.ident,
        "time": letter.time + "Z",
        "entry": letter.original,
        "type": letter.entry_type,
        "state": state,
        "reason": escape(letter.reason, limit),
    }


@deadletters.command("list")
@click.option("--stage", type=_STAGE, help="Only this stage.")
@click.option("--limit", type=click.IntRange(1), default=100, show_default=True,
              help="Newest dead letters shown per stage.")  # fmt: skip
@_JSON
@with_settings(*STREAM, stage="deadletters")
def list_(cfg: Settings, stage: str | None, limit: int, as_json: bool) -> None:
    """One line per dead letter: stage, id, time, original entry, state, reason."""
    client, keys = _open(cfg)
    rows: list[dict[str, Any]] = []
    older: dict[str, int] = {}
    try:
        total = 0
        for name in (stage,) if stage else STAGES:
            waiting = queued(client, keys, name)
            shown = letters(client, keys, name, limit)
            for letter in shown:
                state = "queued" if letter.ident in waiting else "dead"
                rows.append(_as_json(letter, state, SHOW_CHARS))
                if not as_json:
                    click.echo(
                        f"{name:<8} {letter.ident:<16} {letter.time}  entry {letter.original:<16}"
                        f" {state:<6} {excerpt(letter.reason)}"
                    )
            more = count(client, keys, name) - len(shown)
            if more > 0:
                older[name] = more
                if not as_json:
                    click.echo(f"{name:<8} ... {more} older not shown (--limit)")
            total += len(shown) + max(more, 0)
    finally:
        client.close()
    if as_json:
        document = {"total": total, "letters": rows, "not_shown": older}
        click.echo(json.dumps(document, sort_keys=True))
    else:
        click.echo(f"{total} dead letter(s)" if total else "no dead letters")


@deadletters.command("show")
@click.argument("ident", help="The dead letter's id (as `deadletters list` prints it).")
@click.option("--stage", type=_STAGE, help="Look only in this stage's dead letters.")
@click.option("--full", is_flag=True, help=f"Print whole fields (else {SHOW_CHARS} characters).")
@_JSON
@with_settings(*STREAM, stage="deadletters")
def show(cfg: Settings, ident: str, stage: str | None, full: bool, as_json: bool) -> None:
    """Print one dead letter with its original entry (escaped)."""
    client, keys = _open(cfg)
    try:
        letter = find(client, keys, ident, (stage,) if stage else STAGES)
        state = "queued" if letter.ident in queued(client, keys, letter.stage) else "dead"
    finally:
        client.close()
    limit = None if full else SHOW_CHARS
    if as_json:
        document = _as_json(letter, state, limit)
        document["fields"] = {escape(k, 40): escape(v, limit) for k, v in letter.fields()}
        click.echo(json.dumps(document, sort_keys=True))
        return
    click.echo(f"stage    {letter.stage}")
    click.echo(f"id       {letter.ident}")
    click.echo(f"time     {letter.time} UTC")
    click.echo(f"entry    {letter.original}")
    click.echo(f"reason   {escape(letter.reason, limit)}")
    for name, value in letter.fields():
        click.echo(f"field    {escape(name, 40)} = {escape(value, limit)}")


@deadletters.command("retry")
@click.argument("idents", nargs=-1, help="Dead-letter ids (or --all).")
@click.option("--all", "every", is_flag=True, help="Every dead letter (of --stage, or of all).")
@click.option("--stage", type=click.Choice(REDRIVABLE), help="Only this stage.")
@click.option("--wait", type=click.FloatRange(0), default=10.0, show_default=True,
              help="Seconds to wait for the stage to apply them (0: queue and return).")  # fmt: skip
@_JSON
@with_settings(*STREAM, stage="deadletters")
def retry(
    *,
    cfg: Settings,
    idents: tuple[str, ...],
    every: bool,
    stage: str | None,
    wait: float,
    as_json: bool,
) -> None:
    """Apply dead letters again through their stage (registry, ipam), exactly once each.

    The stage applies them before its next batch; each is deleted once applied, or
    replaced by a new dead letter with the new reason if it fails again. With --json,
    one document: each letter with its result (``already-queued``, ``queued``,
    ``applied``, ``failed-again`` with the new id and reason, or ``not-applied``).
    """
    if bool(idents) == every:
        raise click.UsageError("give dead-letter ids or --all (not both)")
    client, keys = _open(cfg)
    results = _Results(as_json)
    try:
        chosen = _chosen(client, keys, idents, stage)
        requests = []
        for letter in chosen:
            if letter.ident in queued(client, keys, letter.stage):
                results.add(
                    letter, "already-queued", f"{letter.stage} {letter.ident}: already queued"
                )
                continue
            requests.append((letter, queue(client, keys, letter)))
        if not requests:
            results.done("nothing to re-drive")
            return
        if wait == 0:
            for letter, _ in requests:
                results.add(letter, "queued", "")
            results.done(f"queued {len(requests)}; the stages apply them before their next batch")
            return
        try:
            _report(client, keys, requests, wait, results)
        finally:
            results.done("")
    finally:
        client.close()


class _Results:
    """What ``retry`` says of each letter: a line each, or one JSON document at the end."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.rows: list[dict[str, Any]] = []

    def add(self, letter: Letter, result: str, line: str, **more: str) -> None:
        row = {"stage": letter.stage, "id": letter.ident, "entry": letter.original}
        self.rows.append({**row, "result": result, **more})
        if line and not self.as_json:
            click.echo(line)

    def done(self, line: str) -> None:
        if self.as_json:
            click.echo(json.dumps({"letters": self.rows}, sort_keys=True))
        elif line:
            click.echo(line)


def _chosen(
    client: redis.Redis, keys: Keys, idents: tuple[str, ...], stage: str | None
) -> list[Letter]:
    stages = (stage,) if stage else REDRIVABLE
    if idents:
        return [find(client, keys, ident, (stage,) if stage else STAGES) for ident in idents]
    chosen: list[Letter] = []
    for name in stages:
        chosen += [
            letter
            for letter in letters(client, keys, name, count(client, keys, name) or 1)
            if letter.entry_type != "Retracted"
        ]
    return chosen


def _report(
    client: redis.Redis,
    keys: Keys,
    requests: list[tuple[Letter, str]],
    wait: float,
    results: _Results,
) -> None:
    deadline = time.monotonic() + wait
    left = list(requests)
    failures = 0
    while left:
        still = []
        for letter, request in left:
            if pending(client, keys, letter.stage, request):
                still.append((letter, request))
                continue
            again = failed_again(client, keys, letter, request)
            head = f"{letter.stage} {letter.ident} (entry {letter.original})"
            if again is None:
                results.add(letter, "applied", f"{head}: applied")
            else:
                failures += 1
                why = excerpt(again.reason)
                line = f"{head}: failed again, now {again.ident}: {why}"
                results.add(letter, "failed-again", line, new_id=again.ident, reason=why)
        left = still
        if left and time.monotonic() >= deadline:
            for letter, _ in left:
                results.add(letter, "not-applied", "")
            stages = ", ".join(sorted({letter.stage for letter, _ in left}))
            raise WgchainError(
                f"{len(left)} re-drive request(s) not applied within {wait:g}s: is the {stages}"
                " stage running? They stay queued and apply when it runs"
            )
        if left:
            time.sleep(WAIT_POLL)
    if failures:
        raise WgchainError(f"{failures} of {len(requests)} dead letter(s) failed again")
