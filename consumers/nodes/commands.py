"""``wgchain nodes`` (every node, its address, key, owner, liveness and host) and
``wgchain diagnose NODE`` (why can't it connect?), as tables or ``--json``.

Both are reads: exit 0 with an answer, 2 for bad arguments or settings, 3 when there
is no answer (Redis unreachable, or no data for this network). ``diagnose`` exits 0
whatever its verdict: the verdict is the answer.
"""

from __future__ import annotations

import click
import msgspec
import redis

from consumers.agent.config import is_valid_ifname
from consumers.nodes.diagnose import diagnose as reason
from consumers.nodes.gather import node_facts, nodes_report
from consumers.nodes.listing import Filter
from consumers.nodes.render import render_diagnosis, render_nodes
from consumers.status.health import Limits
from consumers.status.output import console
from consumers.status.probe import no_data, probe
from consumers.status.snapshot import Snapshot
from shared.cmdline import FLEET, STREAM, with_settings
from shared.errors import BadArgument, NoAnswer, WgchainError
from shared.redis_log import connect
from shared.settings import Settings
from shared.validate import is_valid_address, is_valid_node_id, node_id_problem


@click.command("nodes")
@click.option("--live", "live", flag_value=True, default=None, help="Live members only.")
@click.option("--not-live", "live", flag_value=False, help="Nodes that are not live (revoked too).")
@click.option(
    "--host-offline", is_flag=True, help="Nodes whose host is not online (stale, silent or absent)."
)
@click.option("--owner", default=None, metavar="0xADDRESS", help="Tokens of this owner only.")
@click.option(
    "--search",
    default=None,
    metavar="TEXT",
    help="Text in the node id, address, key, owner or reason.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@with_settings(*STREAM, "rpc_url", "reconcile_interval", stage="nodes")
def nodes(
    *,
    cfg: Settings,
    live: bool | None,
    host_offline: bool,
    owner: str | None,
    search: str | None,
    as_json: bool,
) -> None:
    """Every node: address, key, owner, token, live or why not, and whether its host is online.

    A host is online while its agent reports (stale after 3 reconcile intervals of
    silence). The current conflicts, anomalies and pending allocations follow the
    table, each with the contract log that caused it. Reads O(members) from Redis,
    never a whole stream.
    """
    if owner is not None and not is_valid_address(owner):
        raise BadArgument("--owner", f"{owner[:50]!r} is not a 0x address (0x and 40 hex digits)")
    if search is not None and not search.isprintable():
        raise BadArgument("--search", "printable text only")
    wanted = Filter(live=live, host_offline=host_offline, owner=owner, search=search or None)
    keys = cfg.keys()
    client = _connect(cfg)
    try:
        report = nodes_report(client, keys, wanted, cfg.reconcile_interval, cfg.expiry_grace)
        if not report.total and not probe(client, keys).has_data:
            raise NoAnswer(no_data(keys))
    except redis.RedisError as exc:
        raise NoAnswer(f"no answer: Redis failed: {exc}") from None
    finally:
        client.close()
    if as_json:
        click.echo(msgspec.json.encode(report).decode())
    else:
        console().print(render_nodes(report))


@click.command("diagnose")
@click.argument("node", help="The node id (as minted on chain).")
@click.option(
    "--interface",
    default=None,
    metavar="IF",
    help="Also read this WireGuard interface with `wg show` (run on a host: the node's own, "
    "or one that should reach it) for handshakes and traffic.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document (facts included).")
@with_settings(*FLEET, "topology", "hubs", "endpoint_template", stage="diagnose")
def diagnose(cfg: Settings, node: str, interface: str | None, as_json: bool) -> None:
    """Why can't NODE connect? Its membership, the pipeline, its host, its peers and the tunnel.

    Looks at the registry (token, owner, key, conflicts), the listener's freshness
    and the stages, the node's address in the peers stream, its own host agent
    (applied position, last error, fail closed, held, stale), which other hosts have
    applied its entry, and the tunnel (handshakes and traffic from `wg show` with
    --interface, else the newest handshake its agent reports). Ends with a verdict
    and the next thing to look at.
    """
    problem = node_id_problem(node)
    if problem or not is_valid_node_id(node):
        raise BadArgument("NODE", problem or "not a node id")
    if interface is not None and not is_valid_ifname(interface):
        raise BadArgument("--interface", "an interface name of 1-15 letters, digits, '_=+-.'")
    client = _connect(cfg)
    keys = cfg.keys()
    limits = Limits.of(cfg)
    try:
        fleet = Snapshot(client, keys).fleet(cfg.rpc_urls, limits=limits)
        facts = node_facts(
            client,
            keys,
            node,
            fleet,
            limits=limits,
            topology=cfg.topology,
            hubs=cfg.hub_list,
            endpoint_template=cfg.endpoint_template,
            interface=interface,
        )
    except redis.RedisError as exc:
        raise NoAnswer(f"no answer: Redis failed: {exc}") from None
    finally:
        client.close()
    if not facts.has_data:
        raise NoAnswer(no_data(keys))
    found = reason(facts)
    if as_json:
        click.echo(msgspec.json.encode(found).decode())
    else:
        console().print(render_diagnosis(found))


def _connect(cfg: Settings) -> redis.Redis:
    cfg.keys()  # a bad contract or chain id is a setting error (exit 2), before any I/O
    try:
        return connect(cfg.redis_url)
    except WgchainError as exc:
        if exc.exit_code == 2:
            raise
        raise NoAnswer(str(exc)) from None
