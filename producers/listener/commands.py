"""``wgchain listen`` and the listener stage of ``wgchain run``: wiring only."""

from __future__ import annotations

import threading

import click

from producers.listener.listener import open_listener
from shared.cmdline import stop_event, with_settings
from shared.errors import SettingsError
from shared.redis_log import connect
from shared.settings import Settings


def stage(cfg: Settings, stop: threading.Event) -> None:
    """Run the listener until ``stop`` is set."""
    if not cfg.contract:
        raise SettingsError("WGCHAIN_CONTRACT", "required (the contract address)")
    client = connect(cfg.redis_url)
    try:
        listener = open_listener(cfg, client)
        try:
            listener.run(stop)
        finally:
            listener.rpc.close()
    finally:
        client.close()


@click.command("listen")
@with_settings(
    "redis_url",
    "rpc_url",
    "contract",
    "chain_id",
    "start_block",
    "confirmations",
    "finality",
    "max_block_range",
    "poll_interval",
    stage="listener",
)
def listen(cfg: Settings) -> None:
    """Append the contract's logs (final-enough blocks) to the events stream."""
    stage(cfg, stop_event())


__all__ = ["listen", "stage"]
