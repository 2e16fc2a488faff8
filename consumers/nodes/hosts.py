"""``diagnose``'s steps on the hosts: the node's own agent, the hosts that should carry it,
its endpoint and the tunnel. Pure (``consumers/nodes/diagnose.py`` runs them in order)."""

from __future__ import annotations

from typing import Final

from consumers.nodes.facts import Facts, Tunnel
from consumers.nodes.findings import (
    HANDSHAKE_FRESH,
    INFO,
    NO,
    OK,
    PROBLEM,
    UNKNOWN,
    WARNING,
    YES,
    Add,
    Carrier,
    byte_text,
    fresh,
    key_text,
    lag_text,
)
from consumers.status.health import STALE_INTERVALS, is_stale
from consumers.status.model import HostInfo
from shared import reasons
from shared.durations import duration
from shared.ids import id_key
from shared.validate import excerpt, is_valid_wg_key

#: The ``mode`` of an agent that writes its config file and drives no WireGuard interface.
FILE_ONLY: Final = "file-only"


def own_host(facts: Facts, host: HostInfo | None, report: Add) -> None:
    node, m = facts.node, facts.membership
    trouble = False

    def add(area: str, severity: str, *rest: str) -> None:
        nonlocal trouble
        trouble = trouble or severity in {WARNING, PROBLEM}
        report(area, severity, *rest)

    agent = f"`wgchain agent --node {node}`"
    if host is None:
        add(
            "host",
            PROBLEM,
            "host-absent",
            f"no agent has reported for {node}",
            f"is {agent} running on its host, with this network's WGCHAIN_REDIS_URL, "
            "WGCHAIN_CONTRACT and WGCHAIN_CHAIN_ID?",
        )
        return
    if host.updated_at is None:
        add(
            "host",
            PROBLEM,
            "host-silent",
            f"{node}'s agent announced an endpoint but never reported its status",
            f"look at the log of {agent} on its host",
        )
        return
    interval = host.reconcile_interval or facts.reconcile_interval
    if is_stale(host, facts.now, facts.reconcile_interval):
        add(
            "host",
            PROBLEM,
            "host-stale",
            f"{node}'s agent has not reported for {duration(facts.now - host.updated_at)} "
            f"(more than {STALE_INTERVALS} reconcile intervals of {interval:g}s); its interface "
            "keeps its last configuration",
            f"is {agent} running, and can it reach Redis? (its log)",
        )
    if host.fail_closed:
        add("host", PROBLEM, host.fail_closed, *_fail_closed(facts, host))
    elif host.public_key and is_valid_wg_key(m.public_key) and host.public_key != m.public_key:
        add(
            "host",
            PROBLEM,
            reasons.KEY_MISMATCH,
            f"{node}'s host has the key {key_text(host.public_key)}, the chain {key_text(m.public_key)}",
            _key_fix(host.public_key, m.owner),
        )
    if host.last_error:
        add(
            "host",
            PROBLEM,
            "host-error",
            f"{node}'s agent's last apply failed: {excerpt(host.last_error)}",
            "its log has the whole story (`wg` and `ip` failures, permissions)",
        )
    own = facts.entry
    if (
        m.live
        and own.id
        and own.kind == "upsert"
        and id_key(host.applied_position) < id_key(own.id)
    ):
        add(
            "host",
            PROBLEM,
            "host-behind",
            f"{node}'s agent has not applied its own peers entry {own.id} yet "
            f"({lag_text(host)} entries behind)",
            "give it a moment; else its last error and log say why",
        )
    elif host.lag_entries:
        add(
            "host",
            WARNING,
            "host-behind",
            f"{node}'s agent has {lag_text(host)} peers entries to apply "
            f"({duration(host.lag_seconds)} behind the newest)",
            "give it a moment; else its last error and log say why",
        )
    if host.held:
        add(
            "host",
            WARNING,
            "host-held",
            f"{node}'s agent holds the configuration it applied before Redis was reset"
            + (f": {excerpt(host.held_reason)}" if host.held_reason else ""),
            "it resumes once the pipeline has refilled the peers stream",
        )
    where = ", ".join(p for p in (host.interface, host.mode, host.addresses) if p)
    block = "" if host.applied_block is None else f" (block {host.applied_block})"
    add(
        "host",
        INFO if trouble else OK,
        "host",
        f"{node}'s agent ({excerpt(where) or 'no interface reported'}) reported "
        f"{duration(facts.now - host.updated_at)} ago: applied {excerpt(host.applied_position)}"
        f"{block}, {host.peer_count} peers",
    )


def _fail_closed(facts: Facts, host: HostInfo) -> tuple[str, str]:
    """(message, next) for a host that fails closed."""
    node, m, why = facts.node, facts.membership, host.fail_closed
    head = f"{node}'s agent fails closed ({excerpt(why)}): no peers at all"
    if why == reasons.NOT_LIVE:
        if m.live and m.published:
            return (
                f"{head}; its peers stream has no entry for {node} yet, though the "
                "registry says it is live",
                "its agent is behind: its last error and log say why",
            )
        return f"{head}; {node} is not a live member (see above)", "fix the membership first"
    if why == reasons.KEY_MISMATCH:
        ours = f"its own key is {key_text(host.public_key)}, " if host.public_key else ""
        return f"{head}; {ours}the chain's is {key_text(m.public_key)}", _key_fix(
            host.public_key, m.owner
        )
    if why == reasons.NO_OWN_KEY:
        return (
            f"{head}; it has no usable private key",
            "check its --private-key-file (mode 0600); `wgchain agent init` makes one",
        )
    if why == reasons.OWN_ADDRESS_OUTSIDE_POOL:
        return (
            f"{head}; its address {m.ipv4 or ''} is outside its WGCHAIN_POOL",
            "give the ipam stage and every agent the same WGCHAIN_POOL",
        )
    if why == reasons.INVALID_OWN_NODE_ID:
        return f"{head}; its --node is not a node id", f"start it with --node {node}"
    return f"{head}; {reasons.meaning(why) or 'a reason this version does not know'}", ""


def _key_fix(host_key: str, owner: str | None) -> str:
    shown = host_key if is_valid_wg_key(host_key) else "PUBLIC_KEY"
    return (
        f"either the owner {owner or ''} sets the host's key on chain (`wgchain contract set-key "
        f"{shown}`), or the host gets the private key of the chain's key (--private-key-file)"
    )


def _expected(facts: Facts, other: str) -> bool:
    """Whether the topology peers host ``other`` with the node."""
    if facts.topology != "hub":
        return True
    return facts.node in facts.hubs or other in facts.hubs


def carriers(facts: Facts) -> list[Carrier]:
    entry, found = facts.entry, []
    for host in facts.hosts:
        if host.node == facts.node:
            continue
        expected = _expected(facts, host.node)
        state = reasons.SILENT if host.updated_at is None else reasons.ONLINE
        if host.updated_at is not None and is_stale(host, facts.now, facts.reconcile_interval):
            state = reasons.STALE
        if host.updated_at is None:
            carries, why = UNKNOWN, "never reported"
        elif host.fail_closed:
            carries, why = NO, f"fail closed: {excerpt(host.fail_closed)}"
        elif entry.id:
            if id_key(host.applied_position) >= id_key(entry.id):
                carries, why = YES, f"applied {facts.node}'s entry {entry.id}"
            else:
                carries, why = NO, f"has not applied {facts.node}'s entry {entry.id} yet"
        elif entry.oldest and id_key(host.applied_position) >= id_key(entry.oldest):
            carries, why = YES, f"applied the last {entry.examined} entries, and more"
        else:
            carries, why = UNKNOWN, "its position is older than the entries looked at"
        if not expected:
            why = f"a spoke: reaches {facts.node} through a hub; " + why
        if state == reasons.STALE and host.updated_at is not None:
            why += f" (reported {duration(facts.now - host.updated_at)} ago)"
        if host.held:
            why += " (holds an older configuration)"
        found.append(
            Carrier(node=host.node, host_state=state, expected=expected, carries=carries, why=why)
        )
    return found


def carried(facts: Facts, carriers: list[Carrier], add: Add) -> None:
    node = facts.node
    expected = [c for c in carriers if c.expected]
    if not carriers:
        add(
            "peers",
            WARNING,
            "no-other-hosts",
            f"no other host reported: {node} has no agent-run peer to connect to",
            "start the other hosts' agents against this network",
        )
        return
    inferred = " (inferred from their applied positions: agents report no peer list)"
    yes = [c for c in expected if c.carries == YES]
    missing = [c for c in expected if c.carries != YES]
    listed = ", ".join(f"{c.node} ({c.why})" for c in missing[:5])
    more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
    if expected and not yes:
        add(
            "peers",
            PROBLEM,
            "not-carried",
            f"none of the {len(expected)} hosts that should carry {node} has applied its "
            f"entry: {listed}{more}",
            "look at those hosts' agents (`wgchain status`)",
        )
    elif missing:
        add(
            "peers",
            WARNING,
            "partly-carried",
            f"{len(yes)} of {len(expected)} hosts that should carry {node} do{inferred}; "
            f"not: {listed}{more}",
            "look at those hosts' agents (`wgchain status`)",
        )
    else:
        add(
            "peers",
            OK,
            "carried",
            f"all {len(expected)} hosts that should carry {node} applied its entry{inferred}",
        )


def endpoint(facts: Facts, host: HostInfo | None, add: Add) -> None:
    if (host is not None and host.endpoint) or facts.endpoint_template:
        return
    add(
        "peers",
        WARNING,
        "no-endpoint",
        f"{facts.node} announces no endpoint and WGCHAIN_ENDPOINT_TEMPLATE is empty: other "
        "hosts cannot start a tunnel to it; it must reach them first",
        f"start its agent with --endpoint HOST:PORT (`wgchain agent --node {facts.node} ...`)",
    )


def tunnel(facts: Facts, host: HostInfo | None, add: Add) -> None:
    if facts.tunnel is not None:
        _local_tunnel(facts, facts.tunnel, host, add)
        return
    node = facts.node
    here = f"run `wgchain diagnose {node} --interface IF` on a host for the tunnel itself"
    if host is None or host.handshake_latest is None:
        add("tunnel", INFO, "tunnel-unknown", f"{node}'s agent reports no handshakes", here)
    elif host.mode == FILE_ONLY:
        add(
            "tunnel",
            INFO,
            "tunnel-unknown",
            f"{node}'s agent runs file-only (it writes the config, drives no interface)",
            here,
        )
    elif host.handshake_latest == 0:
        add(
            "tunnel",
            PROBLEM,
            "no-handshake",
            f"{node}'s interface never completed a WireGuard handshake with any peer",
            "UDP between the hosts (firewall, NAT, the endpoints announced); " + here,
        )
    elif facts.now - host.handshake_latest > HANDSHAKE_FRESH:
        add(
            "tunnel",
            WARNING,
            "old-handshake",
            f"{node}'s newest WireGuard handshake (with any peer) was "
            f"{duration(facts.now - host.handshake_latest)} ago",
            here,
        )
    else:
        add(
            "tunnel",
            OK,
            "handshake",
            f"{node}'s newest WireGuard handshake (with any peer) was "
            f"{duration(facts.now - host.handshake_latest)} ago",
        )


def _local_tunnel(facts: Facts, tunnel: Tunnel, host: HostInfo | None, add: Add) -> None:
    node, m, name = facts.node, facts.membership, excerpt(tunnel.interface)
    if tunnel.error:
        add("tunnel", INFO, "tunnel-unreadable", f"cannot read {name}: {excerpt(tunnel.error)}")
        return
    own_keys = {k for k in (m.public_key, host.public_key if host else "") if k}
    if tunnel.public_key is not None and tunnel.public_key in own_keys:  # on the node's host
        recent = [p for p in tunnel.peers if fresh(p.handshake, facts.now)]
        if not tunnel.peers:
            add("tunnel", PROBLEM, "no-handshake", f"{name} (this is {node}'s host) has no peers")
        elif not recent:
            newest = max(p.handshake for p in tunnel.peers)
            when = "never" if not newest else f"{duration(facts.now - newest)} ago"
            add(
                "tunnel",
                PROBLEM,
                "no-handshake" if not newest else "old-handshake",
                f"none of the {len(tunnel.peers)} peers of {name} (this is {node}'s host) "
                f"completed a handshake in the last 3 minutes (newest: {when})",
                "UDP to the peers' endpoints (firewall, NAT) and their agents",
            )
        else:
            rx, tx = sum(p.rx for p in recent), sum(p.tx for p in recent)
            add(
                "tunnel",
                OK,
                "handshake",
                f"{len(recent)} of {len(tunnel.peers)} peers of {name} (this is {node}'s host) "
                f"had a handshake within 3 minutes; {byte_text(rx)} received, {byte_text(tx)} sent",
            )
        return
    peer = next((p for p in tunnel.peers if p.public_key in own_keys), None)
    if peer is None:
        add(
            "tunnel",
            PROBLEM,
            "no-peer-here",
            f"{name} on this host has no peer with {node}'s key {key_text(m.public_key)}",
            "this host does not carry it: its agent (see the hosts above)",
        )
        return
    traffic = f"{byte_text(peer.rx)} received, {byte_text(peer.tx)} sent"
    endpoint = excerpt(peer.endpoint) if peer.endpoint else "no endpoint"
    if not peer.handshake:
        add(
            "tunnel",
            PROBLEM,
            "no-handshake",
            f"{name} never completed a handshake with {node} ({endpoint}; {traffic})",
            f"UDP to {endpoint} (firewall, NAT), and {node}'s agent",
        )
    elif not fresh(peer.handshake, facts.now):
        add(
            "tunnel",
            PROBLEM,
            "old-handshake",
            f"{name}'s last handshake with {node} was {duration(facts.now - peer.handshake)} "
            f"ago ({endpoint}; {traffic})",
            f"UDP to {endpoint} (firewall, NAT), and {node}'s agent",
        )
    else:
        add(
            "tunnel",
            OK,
            "handshake",
            f"{name}'s last handshake with {node} was {duration(facts.now - peer.handshake)} "
            f"ago ({endpoint}; {traffic})",
        )


__all__ = ["FILE_ONLY", "carried", "carriers", "endpoint", "own_host", "tunnel"]
