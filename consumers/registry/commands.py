"""``wgchain registry``: the registry stage (events -> registry) as a process or a thread."""

from __future__ import annotations

import threading

import click

from consumers.registry.fold import FOLD
from consumers.registry.warnings import ExpiryWarnings
from consumers.stage import run_stage
from shared import metrics
from shared.cmdline import METRICS, STREAM, stop_event, with_settings
from shared.logs import log
from shared.redis_log import connect
from shared.settings import Settings


def stage(cfg: Settings, stop: threading.Event) -> None:
    """Fold the events stream into the registry stream until ``stop`` is set."""
    keys = cfg.keys()
    client = connect(cfg.redis_url, wait=stop)
    warnings = ExpiryWarnings(
        cfg.expiry_warning, cfg.expiry_grace, log.bind(stage="registry", network=keys.tag)
    )
    try:
        run_stage(client, keys, FOLD, stop, after_step=warnings.check)
    finally:
        client.close()


@click.command()
@with_settings(*STREAM, *METRICS, stage="registry")
def registry(cfg: Settings) -> None:
    """Fold contract events into membership changes (the registry stream)."""
    stop = stop_event()
    metrics.serve(cfg.metrics_port, cfg.metrics_listen)
    stage(cfg, stop)
