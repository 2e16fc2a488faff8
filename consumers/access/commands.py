"""``wgchain check``: one access check, answered from the registry (or from the log at a block).

Exit codes: 0 granted, 1 denied, 2 bad arguments or settings, 3 no answer (Redis
unreachable, or no data for this network in Redis: a wrong contract or chain id is
not an answer). Every failure is one line on stderr in the common style
(``wgchain: <what>``); an answer that may lag the chain (no listener holds the lease,
the listener reports a problem) gets a ``wgchain: note: …`` line.
"""

from __future__ import annotations

from typing import Final

import click
import msgspec
import redis

from consumers.access.checker import (
    CONSISTENCIES,
    STRICT,
    AccessChecker,
    InvalidArgument,
    valid_address,
    valid_key,
    valid_node,
)
from consumers.access.decide import Decision
from consumers.status.probe import no_data, probe, stale_note
from shared.cmdline import with_settings
from shared.errors import BadArgument, NoAnswer, WgchainError
from shared.redis_log import connect
from shared.settings import Settings

#: Exit code of a denied check.
EXIT_DENIED: Final = 1
#: Exit code of a bad argument or setting.
EXIT_USAGE: Final = 2


@click.command("check")
@click.option("--node", default="", help="Node id to check.")
@click.option("--key", default=None, help="WireGuard public key that wants to reach the node.")
@click.option("--address", default=None, help="0x address: does it hold an active pass?")
@click.option("--at-block", default=None, help="Answer for this past block (folded from the log).")
@click.option(
    "--consistency",
    type=click.Choice(CONSISTENCIES),
    default=STRICT,
    show_default=True,
    help="strict: never behind the registry stage's last commit; bounded: may miss "
    "commits of the last 50 ms (no difference for one check: it loads a fresh copy).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the decision as JSON.")
@with_settings("redis_url", "chain_id", "contract", stage="check")
@click.pass_context
def check(
    ctx: click.Context,
    *,
    cfg: Settings,
    node: str,
    key: str | None,
    address: str | None,
    at_block: str | None,
    consistency: str,
    as_json: bool,
) -> None:
    """Is KEY (or ADDRESS) allowed on NODE? Exit 0 granted, 1 denied, 2 bad arguments, 3 no answer."""
    if not node:
        raise BadArgument("--node", "required")
    if (key is None) == (address is None):
        raise click.UsageError("give exactly one of --key and --address")
    block = _block(at_block)
    try:  # arguments first: nothing is read for a malformed one
        valid_node(node)
        if key is not None:
            valid_key(key)
        else:
            valid_address(address or "")
    except InvalidArgument as exc:
        raise BadArgument(f"--{exc.param.replace('_', '-')}", exc.message) from None
    keys = cfg.keys()
    try:
        client = connect(cfg.redis_url)
    except WgchainError as exc:
        if exc.exit_code == EXIT_USAGE:  # no Redis URL set: a setting to fix
            raise
        raise NoAnswer(str(exc)) from None
    try:
        with AccessChecker(
            client, keys, consistency=consistency, expiry_grace=cfg.expiry_grace
        ) as checker:
            if key is not None:
                decision = checker.check_key(node, key, at_block=block)
            else:
                decision = checker.check_address(node, address or "", at_block=block)
        found = probe(client, keys)
    except InvalidArgument as exc:
        raise BadArgument(f"--{exc.param.replace('_', '-')}", exc.message) from None
    except (redis.RedisError, WgchainError) as exc:
        raise NoAnswer(f"no answer: {exc}") from None
    finally:
        client.close()
    if not found.has_data:
        raise NoAnswer(no_data(keys))
    note = stale_note(found) if block is None else ""
    if note:
        click.echo(f"wgchain: note: this answer may be stale: {note}", err=True)
    click.echo(msgspec.json.encode(decision).decode() if as_json else describe(decision))
    ctx.exit(0 if decision.granted else EXIT_DENIED)


def describe(decision: Decision) -> str:
    """One human line: ``granted — …`` or ``denied: <reason> — …`` (details escaped)."""
    verdict = "granted" if decision.granted else f"denied: {decision.reason}"
    parts = [verdict, f"node {decision.node}"]
    if decision.detail:
        parts.append(decision.detail)
    if decision.token_id is not None:
        parts.append(
            f"token {decision.token_id}" + (f" of {decision.owner}" if decision.owner else "")
        )
    if decision.at_block is not None:
        parts.append(f"at block {decision.at_block}")
    return " — ".join(parts)


def _block(text: str | None) -> int | None:
    if text is None:
        return None
    if not text.isdigit():
        raise BadArgument("--at-block", f"{text[:40]!r} is not a block number")
    return int(text)
