"""``wgchain status``: the fleet at a glance (rich tables, or ``--json`` for machines).

``--watch`` refreshes until interrupted and keeps going through a Redis outage or
restart: one line says Redis is unreachable, and the status resumes when it answers.

``--check`` is a monitoring plugin (Nagios, Icinga, Sensu...): it prints one summary
line, then one line per problem, and exits 0 (OK), 1 (warning), 2 (critical: Redis
unreachable included) or 3 (unknown: bad settings or arguments).
"""

from __future__ import annotations

import functools
import time
from typing import Any

import click
import msgspec
import redis
from redis.exceptions import RedisClusterException
from rich.console import Group, RenderableType
from rich.live import Live
from rich.text import Text

from consumers.access.cache import RegistryCache
from consumers.status.expiring import with_expiring
from consumers.status.health import Limits
from consumers.status.model import CRITICAL, EXIT_CODES, UNKNOWN, FleetStatus
from consumers.status.output import console
from consumers.status.render import check_lines, render
from consumers.status.snapshot import Snapshot
from shared.cmdline import FLEET, stop_event, with_settings
from shared.errors import ServiceUnavailable, SettingsError
from shared.keys import Keys
from shared.logs import brief
from shared.redis_log import client_for, connect, redacted
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
@with_settings(*FLEET, stage="status")
def status(cfg: Settings, as_json: bool, watch: float | None, check: bool) -> None:
    """Health, chain head, listener, stages, hosts and what needs attention now."""
    if check and watch is not None:
        raise click.UsageError("--check and --watch do not go together")
    keys = cfg.keys()
    limits = Limits.of(cfg)
    if watch is not None:
        _watch(cfg, keys, limits, as_json, watch)
        return
    try:
        client = connect(cfg.redis_url)
    except ServiceUnavailable as exc:
        if not check:
            raise
        _exit(CRITICAL, [f"wgchain CRITICAL: {exc}"])
    snapshot = Snapshot(client, keys)
    soon = _Expiring(client, keys, limits)
    try:
        if check:
            try:
                fleet = snapshot.fleet(cfg.rpc_urls, limits=limits)
            except redis.RedisError as exc:
                _exit(CRITICAL, [f"wgchain CRITICAL: Redis at {redacted(cfg.redis_url)}: {exc}"])
            _print(fleet, as_json, check=True)
            _exit(fleet.health, [])
        _print(soon.add(snapshot.fleet(cfg.rpc_urls, limits=limits)), as_json)
    finally:
        soon.close()
        client.close()


class _Expiring:
    """Adds the passes about to expire to a status, from a registry cache made on first use
    (a status of a network without data, or while Redis is down, makes none)."""

    def __init__(self, client: redis.Redis, keys: Keys, limits: Limits) -> None:
        self.client, self.keys, self.limits = client, keys, limits
        self.cache: RegistryCache | None = None

    def add(self, fleet: FleetStatus) -> FleetStatus:
        if not fleet.has_data:
            return fleet
        if self.cache is None:
            self.cache = RegistryCache(self.client, self.keys)
        return with_expiring(fleet, self.cache.fresh, self.limits)

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()


def _watch(cfg: Settings, keys: Keys, limits: Limits, as_json: bool, every: float) -> None:
    """Refresh every ``every`` seconds until interrupted, through Redis outages and restarts.

    While Redis does not answer, one line says so (on stderr with ``--json``, above the
    last status on a terminal); the status resumes as soon as it answers again.
    """
    stop = stop_event()
    client = _client(cfg.redis_url)
    snapshot = Snapshot(client, keys)
    soon = _Expiring(client, keys, limits)
    outage = _Outage(cfg.redis_url)

    def fleet() -> FleetStatus | None:
        try:
            status = soon.add(snapshot.fleet(cfg.rpc_urls, limits=limits))
        except (redis.RedisError, RedisClusterException) as exc:
            outage.down(exc)
            return None
        outage.up()
        return status

    try:
        if as_json:
            while True:
                status = fleet()
                if status is not None:
                    _print(status, as_json)
                elif outage.fresh:
                    click.echo(f"wgchain: {outage.line()}", err=True)
                if stop.wait(every):
                    return
        last: FleetStatus | None = fleet()
        with Live(_shown(last, outage), console=console(), auto_refresh=False) as live:
            while not stop.wait(every):
                last = fleet() or last
                live.update(_shown(last, outage), refresh=True)
    finally:
        soon.close()
        client.close()


class _Outage:
    """Whether Redis answered the last refresh of ``status --watch``, and since when not."""

    def __init__(self, url: str) -> None:
        self.url = redacted(url)
        self.since: float | None = None
        self.why = ""
        #: True right after Redis stopped answering (the one line to print).
        self.fresh = False

    def down(self, exc: Exception) -> None:
        self.fresh = self.since is None
        if self.since is None:
            self.since = time.time()
        self.why = brief(exc)

    def up(self) -> None:
        self.since, self.fresh = None, False

    def line(self) -> str:
        since = time.strftime("%H:%M:%S", time.localtime(self.since or time.time()))
        return f"Redis at {self.url} unreachable since {since} ({self.why}); still watching"


def _shown(status: FleetStatus | None, outage: _Outage) -> RenderableType:
    """The status (the last one while Redis is down), under the outage line if any."""
    parts: list[RenderableType] = []
    if outage.since is not None:
        parts.append(Text(outage.line(), style="bold red"))
    if status is not None:
        parts.append(render(status))
    return Group(*parts)


def _client(url: str) -> redis.Redis:
    """A client for ``url`` that may start while Redis is down (``--watch`` waits for it)."""
    try:
        return connect(url)
    except ServiceUnavailable:
        try:
            return client_for(url)
        except RedisClusterException as exc:  # a cluster client asks for its slots at once
            raise ServiceUnavailable(f"cannot reach Redis at {redacted(url)}: {exc}") from None


def _print(fleet: FleetStatus, as_json: bool, check: bool = False) -> None:
    if as_json:
        click.echo(msgspec.json.encode(fleet).decode())
    elif check:
        for line in check_lines(fleet):
            click.echo(line)
    else:
        console().print(render(fleet))


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
