"""``wgchain status``: the fleet at a glance (rich tables, or ``--json`` for machines)."""

from __future__ import annotations

import click
import msgspec
from rich.console import Console
from rich.live import Live

from consumers.status.model import FleetStatus
from consumers.status.render import render
from consumers.status.snapshot import Snapshot
from shared.cmdline import stop_event, with_settings
from shared.redis_log import connect
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
@with_settings("redis_url", "rpc_url", "chain_id", "contract", stage="status")
def status(cfg: Settings, as_json: bool, watch: float | None) -> None:
    """Chain head, listener, stages, hosts and what needs attention."""
    keys = cfg.keys()
    client = connect(cfg.redis_url)
    snapshot = Snapshot(client, keys)
    try:
        if watch is None:
            _print(snapshot.fleet(cfg.rpc_urls), as_json)
            return
        stop = stop_event()
        if as_json:
            while True:
                _print(snapshot.fleet(cfg.rpc_urls), as_json)
                if stop.wait(watch):
                    return
        with Live(render(snapshot.fleet(cfg.rpc_urls)), auto_refresh=False) as live:
            while not stop.wait(watch):
                live.update(render(snapshot.fleet(cfg.rpc_urls)), refresh=True)
    finally:
        client.close()


def _print(fleet: FleetStatus, as_json: bool) -> None:
    if as_json:
        click.echo(msgspec.json.encode(fleet).decode())
    else:
        Console().print(render(fleet))
