"""``wgchain ipam``: the address stage (registry -> peers) as a process or a thread."""

from __future__ import annotations

import threading

import click

from consumers.ipam.allocate import IpamFold
from consumers.stage import run_stage
from shared import metrics
from shared.cmdline import ADDRESSES, METRICS, STREAM, stop_event, with_settings
from shared.redis_log import connect
from shared.settings import Settings


def stage(cfg: Settings, stop: threading.Event) -> None:
    """Fold the registry stream into the peers stream until ``stop`` is set."""
    keys = cfg.keys()
    ipam = IpamFold.from_settings(cfg)
    client = connect(cfg.redis_url, wait=stop)
    try:
        run_stage(client, keys, ipam, stop, retention=cfg.peers_retention)
    finally:
        client.close()


@click.command()
@with_settings(*STREAM, *ADDRESSES, "peers_retention", *METRICS, stage="ipam")
def ipam(cfg: Settings) -> None:
    """Give every live member an address (the peers stream)."""
    stop = stop_event()
    metrics.serve(cfg.metrics_port, cfg.metrics_listen)
    stage(cfg, stop)
