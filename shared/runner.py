"""``wgchain run``: listener + registry + ipam in one process, for small setups.

Stages are discovered through the ``wgchain.stages`` entry-point group, so this
module never imports ``producers`` or ``consumers``. Each stage runs in its own
thread with its own Redis connection and position; they still talk only through
streams, exactly as when they run as separate processes.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from importlib.metadata import entry_points

import click
import msgspec

from shared import health, metrics
from shared.cmdline import (
    ADDRESSES,
    CHAIN,
    LISTENER,
    METRICS,
    STREAM,
    stop_event,
    with_chain_id,
    with_settings,
)
from shared.devnet.redis_server import RedisServer
from shared.errors import ServiceUnavailable, SettingsError, WgchainError
from shared.logs import log
from shared.redis_log import keep_going
from shared.settings import Settings

StageFn = Callable[[Settings, threading.Event], None]


def _served_chain_id(cfg: Settings) -> Settings:
    """``cfg`` with the chain id the RPC node serves, its failures told to ``health.RPC``."""
    try:
        found = with_chain_id(cfg)
    except ServiceUnavailable as exc:
        health.RPC.failed(exc)
        raise
    health.RPC.ok()
    return found


def load_stages(names: list[str] | None = None) -> dict[str, StageFn]:
    found = {ep.name: ep for ep in entry_points(group="wgchain.stages")}
    wanted = names or ["listener", "registry", "ipam"]
    missing = [n for n in wanted if n not in found]
    if missing:
        raise WgchainError(f"stages not installed: {', '.join(missing)}")
    return {n: found[n].load() for n in wanted}


def run_stages(cfg: Settings, stop: threading.Event, names: list[str] | None = None) -> None:
    """Run the stages in threads until ``stop`` is set or one of them fails."""
    stages = load_stages(names)
    failures: list[str] = []

    def guarded(name: str, fn: StageFn) -> None:
        try:
            fn(cfg, stop)
        except WgchainError as exc:  # deliberate: reported in one line by the caller
            failures.append(f"{name}: {exc}")
            stop.set()
        except Exception as exc:
            failures.append(f"{name}: {exc}")
            log.bind(stage=name).exception("stage failed; stopping the others")
            stop.set()

    threads = [
        threading.Thread(target=guarded, args=(n, fn), name=f"wgchain-{n}", daemon=True)
        for n, fn in stages.items()
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        raise WgchainError("; ".join(failures))


@click.command()
@with_settings(
    *STREAM,
    *CHAIN,
    *LISTENER,
    *ADDRESSES,
    *METRICS,
    stage="run",
    ask_chain_id=False,  # asked below, waiting for the RPC node if need be
)
def run(cfg: Settings) -> None:
    """Run listener, registry and ipam in one process (embedded Redis when no URL is set).

    The chain id, when not set, is asked from the RPC node. Outages of Redis or the RPC
    node, at start-up or later, are waited out.
    """
    stop = stop_event()
    metrics.serve(cfg.metrics_port, cfg.metrics_listen)
    if cfg.chain_id == 0:
        if not cfg.contract:  # fail before any wait
            raise SettingsError("WGCHAIN_CONTRACT", "required (the contract address)")
        served = keep_going(functools.partial(_served_chain_id, cfg), stop)
        if served is None:
            return
        cfg = served
    cfg.keys()  # validates contract and chain id before anything starts
    embedded: RedisServer | None = None
    if not cfg.redis_url:
        embedded = RedisServer(appendonly=True).start()
        cfg = msgspec.structs.replace(cfg, redis_url=embedded.url)
        log.info("embedded redis-server at {} (data in {})", embedded.url, embedded.workdir)
    try:
        run_stages(cfg, stop)
    finally:
        if embedded is not None:
            embedded.stop()
