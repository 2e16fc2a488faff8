"""``wgchain status``: the fleet at a glance (rich tables, or ``--json`` for machines).

``--check`` is a monitoring plugin (Nagios, Icinga, Sensu...): it prints one summary
line, then one line per problem, and exits 0 (OK), 1 (warning), 2 (critical: Redis
unreachable included) or 3 (unknown: bad settings or arguments).
"""

from __future__ import annotations

import functools
from typing import Any

import click
import msgspec
import redis
from rich.console import Console
from rich.live import Live

from consumers.status.health import Limits
from consumers.status.model import CRITICAL, EXIT_CODES, UNKNOWN, FleetStatus
from consumers.status.render import check_lines, render
from consumers.status.snapshot import Snapshot
from shared.cmdline import stop_event, with_settings
from shared.errors import ServiceUnavailable, SettingsError
from shared.redis_log import connect, redacted
from shared.settings import Settings


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document (one per refresh).")
@click.option(
    "--watch",
    type=click.FloatRange(min=0.5),
    default=None,
    metavar="SECONDS",
    help="Refresh every SECONDS until interrupted.",
)
@click.option(
    "--check",
    is_flag=True,
    help="Monitoring plugin: exit 0 OK, 1 warning, 2 critical, 3 unknown, with the reasons.",
)
@with_settings(
    "redis_url",
    "rpc_url",
    "chain_id",
    "contract",
    "max_lag",
    "max_listener_lag",
    "max_lag_seconds",
    "reconcile_interval",
    stage="status",
)
def status(cfg: Settings, as_json: bool, watch: float | None, check: bool) -> None:
    """Health, chain head, listener, stages, hosts and what needs attention now."""
    if check and watch is not None:
        raise click.UsageError("--check and --watch do not go together")
    keys = cfg.keys()
    limits = Limits.of(cfg)
    try:
        client = connect(cfg.redis_url)
    except ServiceUnavailable as exc:
        if not check:
            raise
        _exit(CRITICAL, [f"wgchain CRITICAL: {exc}"])
    snapshot = Snapshot(client, keys)
    try:
        if check:
            try:
                fleet = snapshot.fleet(cfg.rpc_urls, limits=limits)
            except redis.RedisError as exc:
                _exit(CRITICAL, [f"wgchain CRITICAL: Redis at {redacted(cfg.redis_url)}: {exc}"])
            _print(fleet, as_json, check=True)
            _exit(fleet.health, [])
        if watch is None:
            _print(snapshot.fleet(cfg.rpc_urls, limits=limits), as_json)
            return
        stop = stop_event()
        if as_json:
            while True:
                _print(snapshot.fleet(cfg.rpc_urls, limits=limits), as_json)
                if stop.wait(watch):
                    return
        with Live(render(snapshot.fleet(cfg.rpc_urls, limits=limits)), auto_refresh=False) as live:
            while not stop.wait(watch):
                live.update(render(snapshot.fleet(cfg.rpc_urls, limits=limits)), refresh=True)
    finally:
        client.close()


def _print(fleet: FleetStatus, as_json: bool, check: bool = False) -> None:
    if as_json:
        click.echo(msgspec.json.encode(fleet).decode())
    elif check:
        for line in check_lines(fleet):
            click.echo(line)
    else:
        Console().print(render(fleet))


def _exit(severity: str, lines: list[str]) -> None:
    for line in lines:
        click.echo(line)
    click.get_current_context().exit(EXIT_CODES[severity])


def _unknown_when_unusable(callback: Any) -> Any:
    """``--check``: bad settings are UNKNOWN (exit 3), as monitoring plugins say, not 2."""

    @functools.wraps(callback)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return callback(*args, **kwargs)
        except (SettingsError, click.UsageError) as exc:
            if not kwargs.get("check"):
                raise
            message = exc.format_message() if isinstance(exc, click.UsageError) else str(exc)
            click.echo(f"wgchain UNKNOWN: {message}")
            click.get_current_context().exit(EXIT_CODES[UNKNOWN])

    return wrapper


status.callback = _unknown_when_unusable(status.callback)
