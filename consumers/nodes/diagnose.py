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

from typing import Final

from consumers.nodes import hosts
from consumers.nodes.facts import Facts
from consumers.nodes.findings import (
    INFO,
    OK,
    PROBLEM,
    RANK,
    WARNING,
    Add,
    Carrier,
    Diagnosis,
    Finding,
    Verdict,
    key_text,
)
from consumers.status.model import PENDING
from shared import reasons
from shared.validate import excerpt, is_valid_wg_key


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
    hosts.own_host(facts, host, add)
    if m.live and m.published:
        carriers = hosts.carriers(facts)
        hosts.carried(facts, carriers, add)
        hosts.endpoint(facts, host, add)
        hosts.tunnel(facts, host, add)
    return _done(facts, found, carriers)


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
        add("membership", OK, "live", f"live member: {token}, key {key_text(m.public_key)}")
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
    elif m.reason == reasons.EXPIRED:
        add(
            "membership",
            PROBLEM,
            reasons.EXPIRED,
            f"not live: the pass of {token} expired (unix time {m.expires}){caveat}",
            f"the contract owner renews it: `wgchain contract renew {m.token_id} --duration 30d`",
        )
    else:  # a reason this version has no advice for: its meaning
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
    return max((f.severity for f in diagnosis.findings), key=RANK.__getitem__, default=OK)


__all__ = ["diagnose", "worst"]
