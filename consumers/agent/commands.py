"""``wgchain agent``: run the agent of one WireGuard host; ``wgchain agent init``: make a key."""

from __future__ import annotations

from pathlib import Path

import click

from consumers.agent.acl import agent_user, password_from_file, setuser
from consumers.agent.agent import Agent
from consumers.agent.config import AgentConfig, is_valid_ifname
from consumers.agent.desired import Policy, parse_endpoint
from consumers.agent.keys import generate_private_key_file, public_key_from_file
from consumers.agent.wg import Wg
from shared import metrics
from shared.cmdline import stop_event, with_settings
from shared.errors import ServiceUnavailable
from shared.logs import log
from shared.redis_log import client_for, connect
from shared.settings import Settings
from shared.validate import excerpt, is_valid_node_id


@click.group("agent", invoke_without_command=True)
@click.option("--node", help="This host's node id (as minted on chain).")
@click.option("--interface", "interface", help="WireGuard interface name, e.g. wg0.")
@click.option(
    "--private-key-file", type=click.Path(path_type=Path), help="Private key file (mode 0600)."
)
@click.option("--listen-port", type=click.IntRange(1, 65535), help="UDP port WireGuard listens on.")
@click.option("--endpoint", help="host:port other hosts should reach this one at (announced).")
@click.option(
    "--config-dir",
    type=click.Path(path_type=Path),
    default=Path("/etc/wireguard"),
    show_default=True,
    help="Where IF.conf (wg-quick style, no private key) is written.",
)
@click.option("--file-only", is_flag=True, help="Write the config file only; never run wg or ip.")
@click.option("--generate-key", is_flag=True, help="Create the private key file if it is missing.")
@with_settings(
    "redis_url",
    "chain_id",
    "contract",
    "pool",
    "pool6",
    "endpoint_template",
    "keepalive",
    "topology",
    "hubs",
    "reconcile_interval",
    "metrics_port",
    "metrics_listen",
    stage="agent",
)
@click.pass_context
def agent(
    ctx: click.Context,
    *,
    cfg: Settings,
    node: str | None,
    interface: str | None,
    private_key_file: Path | None,
    listen_port: int | None,
    endpoint: str | None,
    config_dir: Path,
    file_only: bool,
    generate_key: bool,
) -> None:
    """Keep this host's WireGuard interface equal to the chain's peer set."""
    if ctx.invoked_subcommand is not None:
        return
    if not node or not is_valid_node_id(node):
        raise click.BadParameter(
            f"{excerpt(node or '')!r} is not a node id ([A-Za-z0-9._-]{{1,64}})",
            param_hint="--node",
        )
    if not interface or not is_valid_ifname(interface):
        raise click.BadParameter("an interface name of 1-15 characters", param_hint="--interface")
    if private_key_file is None:
        raise click.BadParameter("required", param_hint="--private-key-file")
    if endpoint is not None and parse_endpoint(endpoint) is None:
        raise click.BadParameter("host:port or [v6]:port", param_hint="--endpoint")
    if not cfg.redis_url:
        raise ServiceUnavailable("the agent needs --redis-url (or WGCHAIN_REDIS_URL)")
    if generate_key and not private_key_file.exists():
        public = generate_private_key_file(private_key_file)
        log.bind(stage="agent", node=node).info(
            "generated {}; public key {}", private_key_file, public
        )
    config = AgentConfig(
        node_id=node,
        interface=interface,
        private_key_file=private_key_file,
        keys=cfg.keys(),
        policy=Policy.from_settings(cfg),
        listen_port=listen_port,
        endpoint=parse_endpoint(endpoint) if endpoint else None,
        config_dir=config_dir,
        file_only=file_only,
        reconcile_interval=cfg.reconcile_interval,
    )
    stop = stop_event()
    metrics.serve(cfg.metrics_port, cfg.metrics_listen)
    client = client_for(cfg.redis_url)  # not connected: the agent starts while Redis is down
    try:
        Agent(config, client, None if file_only else Wg()).run(stop)
    finally:
        client.close()


@agent.command("init")
@click.option(
    "--private-key-file", type=click.Path(path_type=Path), required=True, help="File to create."
)
@click.option("--force", is_flag=True, help="Replace an existing key file.")
def init(private_key_file: Path, force: bool) -> None:
    """Create a WireGuard key pair: the private key in a 0600 file, the public key printed."""
    click.echo(generate_private_key_file(private_key_file, overwrite=force))


@agent.command("pubkey")
@click.option(
    "--private-key-file",
    type=click.Path(path_type=Path),
    required=True,
    help="The host's private key file (mode 0600); it is read, never changed.",
)
def pubkey(private_key_file: Path) -> None:
    """Print the public key of an existing private key file (the key to mint on chain)."""
    click.echo(public_key_from_file(private_key_file))


@agent.command("acl")
@click.option("--node", "node_id", required=True, help="The host's node id.")
@click.option(
    "--password-file",
    type=click.Path(path_type=Path),
    required=True,
    help="The agent's Redis password (a random one is created, mode 0600, if missing).",
)
@with_settings("redis_url", "chain_id", "contract", stage="agent")
def acl(cfg: Settings, node_id: str, password_file: Path) -> None:
    """Print the ACL SETUSER command that confines this host's agent (run it as a Redis admin).

    With a Redis URL, that server's version is checked first: Redis 6 cannot confine an agent.
    """
    if not is_valid_node_id(node_id):
        raise click.BadParameter(f"{excerpt(node_id)!r} is not a node id", param_hint="--node")
    version = None
    if cfg.redis_url:  # the server's version first: Redis 6 cannot confine an agent
        with connect(cfg.redis_url) as admin:
            version = str(admin.info("server").get("redis_version", ""))
    rules = setuser(cfg.keys(), node_id, password_from_file(password_file), version)
    click.echo(" ".join(rules))
    click.echo(
        f"# the agent's URL: redis://{agent_user(node_id)}:<password in {password_file}>@HOST:PORT",
        err=True,
    )
