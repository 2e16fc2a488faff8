"""``wgchain api``: serve the HTTP API with uvicorn on ``WGCHAIN_API_LISTEN``.

The bearer token comes from ``WGCHAIN_API_TOKEN`` (or the TOML file), never from a
flag: a flag would show it in the process list.
"""

from __future__ import annotations

import click
import uvicorn

from consumers.api.app import create_app
from consumers.status.health import Limits
from shared.cmdline import stop_event, with_settings
from shared.errors import SettingsError
from shared.logs import log
from shared.redis_log import client_for, redacted
from shared.settings import Settings


def split_listen(listen: str) -> tuple[str, int]:
    """``host:port`` (or ``[v6]:port``) as (host, port); settings validated the form."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


@click.command("api")
@with_settings(
    "redis_url",
    "rpc_url",
    "chain_id",
    "contract",
    "api_listen",
    "max_lag",
    "max_listener_lag",
    "max_lag_seconds",
    stage="api",
)
def api(cfg: Settings) -> None:
    """Serve the HTTP API (access checks, nodes, hosts, events, health, metrics, OpenAPI)
    and the read-only dashboard at ``/``.

    It starts and serves while Redis is down (reads answer 503 until Redis is back).
    """
    keys = cfg.keys()
    if not cfg.redis_url:
        raise SettingsError("WGCHAIN_REDIS_URL", "required (a redis://, rediss:// or unix:// URL)")
    client = client_for(cfg.redis_url)
    host, port = split_listen(cfg.api_listen)
    app = create_app(
        client,
        keys,
        token=cfg.api_token,
        limits=Limits.of(cfg),
        rpc_urls=cfg.rpc_urls,
        topology=cfg.topology,
        hubs=cfg.hub_list,
        endpoint_template=cfg.endpoint_template,
    )
    auth = "bearer token required" if cfg.api_token else "no token (open)"
    log.info(
        "API on http://{}:{} for {} via {}; {}", host, port, keys.tag, redacted(cfg.redis_url), auth
    )
    level = {"success": "info"}.get(cfg.log_level.lower(), cfg.log_level.lower())
    config = uvicorn.Config(
        app, host=host, port=port, log_level=level, access_log=False, log_config=None
    )
    stop = stop_event()  # uvicorn re-raises SIGTERM after its graceful stop: only log it, exit 0
    try:
        if not stop.is_set():  # a stop asked for before serving: nothing to serve
            uvicorn.Server(config).run()
    finally:
        client.close()
