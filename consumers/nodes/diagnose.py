"""Why can't node X connect? Facts in, findings and a verdict out. Pure.

:func:`diagnose` walks the causes in the order they act: the network's data, the
node's membership (token, owner, key, conflicts), the pipeline's freshness
(listener, stages), its address in the ``peers`` stream, its own host agent, the
other hosts that should carry it, its endpoint, and the tunnel itself. Each step
adds findings (``ok``, ``info``, ``warning`` or ``problem``, each with a code
from the project's vocabulary: ``shared/reasons.py`` and the problem codes of
``consumers.status.health``); the verdict is the first problem (else "ok", with
the first warning as the next thing to look at).

Whether another host carries the node is inferred from its applied position: it
has applied the node's newest ``peers`` entry, or not yet (agents report a peer
count, not their peers). The tunnel comes from ``wg show`` when ``diagnose`` runs
on a host (``--interface``), else from the newest handshake the node's agent reports.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import msgspec

from consumers.nodes.facts import Facts, Tunnel
from consumers.status.health import STALE_INTERVALS, is_stale
from consumers.status.model import PENDING, HostInfo
from shared import reasons
from shared.durations import duration
from shared.validate import excerpt, is_valid_wg_key

#: Finding severities, in rising order.
OK: Final = "ok"
INFO: Final = "info"
WARNING: Final = "warning"
PROBLEM: Final = "problem"
#: Seconds after which a WireGuard session without a new handshake is dead (REJECT_AFTER_TIME).
HANDSHAKE_FRESH: Final = 180.0
#: Carries: the host applied the node's entry, has not yet, or nobody can tell.
YES: Final = "yes"
NO: Final = "no"
UNKNOWN: Final = "unknown"
#: Finding codes of this module (the others are reasons and health problem codes).
CODES: Final = {
    "live": "a live member",
    "published": "its address is in the peers stream",
    "not-published": "live, but the ipam stage has not published it (or its new key) yet",
    "listener": "the listener is keeping the log up to date",
    "host-absent": "no agent has reported for the node",
    "host-silent": "its agent announced an endpoint but never reported",
    "host-stale": "its agent has not reported for more than 3 reconcile intervals",
    "host-error": "its agent's last apply failed",
    "host-behind": "its agent has not applied the node's own entry (or others) yet",
    "host-held": "its agent holds an older configuration (Redis was reset)",
    "host": "its agent applied everything",
    "carried": "every host that should carry it has applied its entry",
    "partly-carried": "some hosts that should carry it have not applied its entry",
    "not-carried": "no host that should carry it has applied its entry",
    "no-other-hosts": "no other host reported",
    "no-endpoint": "its host announced no endpoint and there is no endpoint template",
    "handshake": "a WireGuard handshake within the last 3 minutes",
    "old-handshake": "no WireGuard handshake within the last 3 minutes",
    "no-handshake": "no WireGuard handshake, ever",
    "no-peer-here": "this host's interface has no peer with the node's key",
    "tunnel-unknown": "nobody reports the tunnel's handshakes",
    "tunnel-unreadable": "wg show failed",
    "ok": "nothing found that keeps the node from connecting",
}
_RANK: Final = {OK: 0, INFO: 1, WARNING: 2, PROBLEM: 3}


class Finding(msgspec.Struct, frozen=True, kw_only=True):
    """One thing ``diagnose`` found, in one line."""

    #: ``membership``, ``pipeline``, ``address``, ``host``, ``peers`` or ``tunnel``.
    area: str
    #: ``ok``, ``info``, ``warning`` or ``problem``.
    severity: str
    code: str
    #: The line shown (chain and host strings in it escaped).
    message: str
    #: The next thing to look at or do ("" when nothing).
    next: str = ""


class Carrier(msgspec.Struct, frozen=True, kw_only=True):
    """Another host, and whether it carries the node as a peer."""

    node: str
    #: ``online``, ``stale`` or ``silent``.
    host_state: str
    #: Whether the topology peers it with the node.
    expected: bool
    #: ``yes`` (it applied the node's newest entry), ``no`` or ``unknown``.
    carries: str
    why: str


class Verdict(msgspec.Struct, frozen=True, kw_only=True):
    """The answer, in one line, and the next thing to look at."""

    #: The code of the finding that decides it (``ok`` when none is a problem).
    code: str
    message: str
    next: str


class Diagnosis(msgspec.Struct, kw_only=True):
    """What ``wgchain diagnose NODE --json`` prints."""

    node: str
    verdict: Verdict
    findings: list[Finding]
    carriers: list[Carrier]
    facts: Facts


def diagnose(facts: Facts) -> Diagnosis:
    """Findings and a verdict for ``facts`` (see the module docstring)."""
    found: list[Finding] = []
    carriers: list[Carrier] = []

    def add(area: str, severity: str, code: str, message: str, next: str = "") -> None:
        found.append(Finding(area=area, severity=severity, code=code, message=message, next=next))

    if not facts.has_data:
        add(
            "pipeline",
            PROBLEM,
            "no-data",
            f"Redis holds nothing for network {facts.network}",
            "check WGCHAIN_CONTRACT and WGCHAIN_CHAIN_ID (`wgchain status` names the networks "
            "Redis holds)",
        )
        return _done(facts, found, carriers)
    _membership(facts, add)
    _pipeline(facts, add)
    m = facts.membership
    if m.live:
        _address(facts, add)
    host = facts.own_host()
    _own_host(facts, host, add)
    if m.live and m.published:
        carriers = _carriers(facts)
        _carried(facts, carriers, add)
        _endpoint(facts, host, add)
        _tunnel(facts, host, add)
    return _done(facts, found, carriers)


Add = Callable[..., None]


def _membership(facts: Facts, add: Add) -> None:
    m, node = facts.membership, facts.node
    stale = _stale_log(facts)
    caveat = f" (but {stale}: a recent change on chain may not be counted yet)" if stale else ""
    if not m.known:
        similar = f"; did you mean {', '.join(m.similar)}?" if m.similar else ""
        add(
            "membership",
            PROBLEM,
            reasons.NOT_A_MEMBER,
            f"no token has ever named {node}{similar}{caveat}",
            f"mint a pass: `wgchain contract mint --to OWNER --node {node} --key KEY`",
        )
        return
    if not m.member:
        tokens = ", ".join(map(str, m.tokens))
        add(
            "membership",
            PROBLEM,
            reasons.REVOKED,
            f"every token that named {node} is revoked (token{'s' * (len(m.tokens) > 1)} "
            f"{tokens}){caveat}",
            f"`wgchain audit history --node {node}` shows when and by which transaction",
        )
        return
    owner = m.owner or "nobody"
    token = f"token {m.token_id} of {owner}"
    own = facts.own_host()
    host_key = own.public_key if own is not None and is_valid_wg_key(own.public_key) else ""
    set_key = (
        f"the owner {owner} sets the host's key: `wgchain contract set-key "
        f"{host_key or 'PUBLIC_KEY'}`"
        + ("" if host_key else " (the key `wgchain agent init` printed on the host)")
    )
    if m.live:
        add("membership", OK, "live", f"live member: {token}, key {_key(m.public_key)}")
    elif m.reason == reasons.NO_KEY:
        add(
            "membership",
            PROBLEM,
            reasons.NO_KEY,
            f"not live: the owner of {token} has no WireGuard key on chain{caveat}",
            set_key,
        )
    elif m.reason == reasons.INVALID_KEY:
        why = m.key_problem or reasons.meaning(reasons.INVALID_KEY)
        add(
            "membership",
            PROBLEM,
            reasons.INVALID_KEY,
            f"not live: the key on chain for {token} is not usable: {why}{caveat}",
            set_key,
        )
    elif m.reason == reasons.KEY_CONFLICT:
        add(
            "membership",
            PROBLEM,
            reasons.KEY_CONFLICT,
            f"not live: {m.detail or reasons.meaning(reasons.KEY_CONFLICT)} ({token}){caveat}",
            f"give {node} its own key: `wgchain agent init` on its host, then {set_key}",
        )
    else:  # a reason this version has no advice for (``expired``...): its meaning
        meaning = reasons.meaning(m.reason) or "not live"
        add(
            "membership",
            PROBLEM,
            m.reason or "not-live",
            f"not live ({excerpt(m.reason)}): {meaning} ({token}){caveat}",
            f"`wgchain audit history --node {node}` shows how it came to this",
        )
    others = [t for t in m.active_tokens if t != m.token_id]
    if others:
        add(
            "membership",
            WARNING if m.live else INFO,
            reasons.DUPLICATE_NODE,
            f"token{'s' * (len(others) > 1)} {', '.join(map(str, others))} also name{'s' * (len(others) == 1)} "
            f"{node}; token {m.token_id} keeps it (the others' keys do not reach it)",
            "revoke the duplicate token(s) with `wgchain contract revoke TOKEN`",
        )


def _stale_log(facts: Facts) -> str:
    """Why the registry may be behind the chain ("" when nothing says so)."""
    for problem in facts.problems:
        if problem.code in {"no-lease", "listener-silent", "listener-lag", "head-below-cursor"}:
            return problem.message
        if problem.code in {"stage-lag", "stage-stalled"} and problem.subject == "registry":
            return problem.message
    return ""


def _pipeline(facts: Facts, add: Add) -> None:
    lst = facts.listener
    pipeline = [p for p in facts.problems if p.subject in {"listener", "registry", "ipam"}]
    for problem in pipeline:
        add(
            "pipeline", WARNING, problem.code, problem.message, _PIPELINE_NEXT.get(problem.code, "")
        )
    if pipeline:
        return
    cursor = "nothing appended yet" if lst.cursor_block is None else f"at block {lst.cursor_block}"
    head = "" if lst.chain_head is None else f", chain head {lst.chain_head}"
    holder = f", lease held by {excerpt(lst.lease_holder)}" if lst.lease_holder else ""
    add("pipeline", OK, "listener", f"listener {cursor}{head}{holder}; stages caught up")


_PIPELINE_NEXT: Final = {
    "no-lease": "start `wgchain listen` (or `wgchain run`)",
    "listener-silent": "look at the listener's log and its /healthz",
    "listener-trouble": "look at the listener's log and WGCHAIN_RPC_URL",
    "listener-lag": "give it time, or look at its RPC node (`wgchain status`)",
    "head-below-cursor": "the chain was reset: see the listener's log",
    "stage-lag": "is the stage running? (`wgchain status`)",
    "stage-stalled": "is the stage running? (`wgchain status`)",
}


def _address(facts: Facts, add: Add) -> None:
    m, node = facts.membership, facts.node
    if any(i.kind == PENDING and i.node == node for i in facts.issues):
        add(
            "address",
            PROBLEM,
            reasons.POOL_EXHAUSTED,
            f"{node} waits for an address: the pool is exhausted",
            "widen WGCHAIN_POOL (the ipam stage and every agent) or revoke passes not in use",
        )
        return
    ipam = next((s for s in facts.stages if s.name == "ipam"), None)
    behind = f" (the ipam stage is {ipam.lag_entries} entries behind)" if ipam else ""
    if not m.published:
        add(
            "address",
            PROBLEM,
            "not-published",
            f"the registry says {node} is live, but the ipam stage has not published it{behind}",
            "is `wgchain ipam` running? (`wgchain status`)",
        )
        return
    if m.published_key is not None and m.published_key != m.public_key:
        add(
            "address",
            PROBLEM,
            "not-published",
            f"the ipam stage has not published {node}'s new key yet{behind}",
            "is `wgchain ipam` running? (`wgchain status`)",
        )
        return
    six = f", {m.ipv6}" if m.ipv6 else ""
    entry = f" (entry {facts.entry.id})" if facts.entry.id else ""
    add("address", OK, "published", f"address {m.ipv4}{six}, in the peers stream{entry}")


def _own_host(facts: Facts, host: HostInfo | None, report: Add) -> None:
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
            f"{node}'s host has the key {_key(host.public_key)}, the chain {_key(m.public_key)}",
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
    if m.live and own.id and own.kind == "upsert" and _id(host.applied_position) < _id(own.id):
        add(
            "host",
            PROBLEM,
            "host-behind",
            f"{node}'s agent has not applied its own peers entry {own.id} yet "
            f"({_lag(host)} entries behind)",
            "give it a moment; else its last error and log say why",
        )
    elif host.lag_entries:
        add(
            "host",
            WARNING,
            "host-behind",
            f"{node}'s agent has {_lag(host)} peers entries to apply "
            f"({duration(host.lag_seconds)} behind the newest)",
            "give it a moment; else its last error and log say why",
        )
    if host.held:
        add(
            "host",
            WARNING,
            "host-held",
            f"{node}'s agent holds the configuration it applied before Redis was reset",
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
        ours = f"its own key is {_key(host.public_key)}, " if host.public_key else ""
        return f"{head}; {ours}the chain's is {_key(m.public_key)}", _key_fix(
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


def _carriers(facts: Facts) -> list[Carrier]:
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
            if _id(host.applied_position) >= _id(entry.id):
                carries, why = YES, f"applied {facts.node}'s entry {entry.id}"
            else:
                carries, why = NO, f"has not applied {facts.node}'s entry {entry.id} yet"
        elif entry.oldest and _id(host.applied_position) >= _id(entry.oldest):
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


def _carried(facts: Facts, carriers: list[Carrier], add: Add) -> None:
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


def _endpoint(facts: Facts, host: HostInfo | None, add: Add) -> None:
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


def _tunnel(facts: Facts, host: HostInfo | None, add: Add) -> None:
    if facts.tunnel is not None:
        _local_tunnel(facts, facts.tunnel, host, add)
        return
    node = facts.node
    here = f"run `wgchain diagnose {node} --interface IF` on a host for the tunnel itself"
    if host is None or host.handshake_latest is None:
        add("tunnel", INFO, "tunnel-unknown", f"{node}'s agent reports no handshakes", here)
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
        fresh = [p for p in tunnel.peers if _fresh(p.handshake, facts.now)]
        if not tunnel.peers:
            add("tunnel", PROBLEM, "no-handshake", f"{name} (this is {node}'s host) has no peers")
        elif not fresh:
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
            rx, tx = sum(p.rx for p in fresh), sum(p.tx for p in fresh)
            add(
                "tunnel",
                OK,
                "handshake",
                f"{len(fresh)} of {len(tunnel.peers)} peers of {name} (this is {node}'s host) "
                f"had a handshake within 3 minutes; {_bytes(rx)} received, {_bytes(tx)} sent",
            )
        return
    peer = next((p for p in tunnel.peers if p.public_key in own_keys), None)
    if peer is None:
        add(
            "tunnel",
            PROBLEM,
            "no-peer-here",
            f"{name} on this host has no peer with {node}'s key {_key(m.public_key)}",
            "this host does not carry it: its agent (see the hosts above)",
        )
        return
    traffic = f"{_bytes(peer.rx)} received, {_bytes(peer.tx)} sent"
    endpoint = excerpt(peer.endpoint) if peer.endpoint else "no endpoint"
    if not peer.handshake:
        add(
            "tunnel",
            PROBLEM,
            "no-handshake",
            f"{name} never completed a handshake with {node} ({endpoint}; {traffic})",
            f"UDP to {endpoint} (firewall, NAT), and {node}'s agent",
        )
    elif not _fresh(peer.handshake, facts.now):
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


def _done(facts: Facts, found: list[Finding], carriers: list[Carrier]) -> Diagnosis:
    problem = next((f for f in found if f.severity == PROBLEM), None)
    if problem is not None:
        verdict = Verdict(code=problem.code, message=problem.message, next=problem.next)
    else:
        warning = next((f for f in found if f.severity == WARNING), None)
        message = f"nothing found that keeps {facts.node} from connecting"
        if warning is not None:
            message += f"; but {warning.message}"
        follow = (
            warning.next
            if warning is not None and warning.next
            else f"run `wgchain diagnose {facts.node} --interface IF` on its host and on a "
            "peer's host (handshakes and traffic), and check UDP between them"
        )
        verdict = Verdict(code="ok", message=message, next=follow)
    return Diagnosis(
        node=facts.node, verdict=verdict, findings=found, carriers=carriers, facts=facts
    )


def worst(diagnosis: Diagnosis) -> str:
    """The highest severity among the findings."""
    return max((f.severity for f in diagnosis.findings), key=_RANK.__getitem__, default=OK)


def _fresh(handshake: int, now: float) -> bool:
    return bool(handshake) and now - handshake <= HANDSHAKE_FRESH


def _lag(host: HostInfo) -> str:
    return f"≥{host.lag_entries}" if host.lag_capped else str(host.lag_entries)


def _key(key: str) -> str:
    """A key as shown: whole when it is a WireGuard key, else an escaped excerpt."""
    if not key:
        return "(none)"
    return key if is_valid_wg_key(key) else repr(excerpt(key))


def _bytes(count: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count} B"


def _id(entry_id: str) -> tuple[int, int]:
    """A stream id as a comparable pair (``0-0`` for anything else)."""
    ms, _, seq = entry_id.partition("-")
    return (int(ms), int(seq or 0)) if ms.isdigit() and (seq or "0").isdigit() else (0, 0)


__all__ = ["CODES", "Carrier", "Diagnosis", "Finding", "Verdict", "diagnose", "worst"]
