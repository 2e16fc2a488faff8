"""``wgchain diagnose``'s reasoning: facts in, findings and a verdict out, for many situations."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from factories import KEY_A, KEY_B, KEY_C

from consumers.nodes.diagnose import diagnose
from consumers.nodes.facts import Facts, Membership, PeersEntry, Tunnel, TunnelPeer
from consumers.nodes.findings import CODES, NO, PROBLEM, UNKNOWN, WARNING, YES
from consumers.status.health import PROBLEM_CODES
from consumers.status.model import HostInfo, Issue, ListenerInfo, Problem, StageInfo
from shared import reasons

NOW = 1_700_000_000.0
OWNER = "0x" + "ab" * 20
ENTRY = "1700000000000-5"


def host(node: str, **more: Any) -> HostInfo:
    base: dict[str, Any] = {
        "node": node,
        "endpoint": f"{node}.example:51820",
        "interface": "wg0",
        "mode": "wireguard",
        "applied_position": "1700000000000-9",
        "updated_at": NOW - 5,
        "reconcile_interval": 30.0,
        "peer_count": 2,
        "handshake_latest": NOW - 20,
        "addresses": "10.88.0.2/16",
    }
    base.update(more)
    return HostInfo(**base)


def facts(**more: Any) -> Facts:
    """A healthy node-a: live, published, its host and two others online and applied."""
    member = Membership(
        known=True,
        member=True,
        live=True,
        token_id=1,
        owner=OWNER,
        public_key=KEY_A,
        tokens=[1],
        active_tokens=[1],
        published=True,
        ipv4="10.88.0.2",
        published_key=KEY_A,
    )
    base: dict[str, Any] = {
        "node": "node-a",
        "network": "{31337:0x" + "12" * 20 + "}",
        "now": NOW,
        "membership": member,
        "listener": ListenerInfo(cursor_block=40, chain_head=42, lease_holder="listener-x"),
        "stages": [
            StageInfo(name="registry", position="1-0", lag_entries=0),
            StageInfo(name="ipam", position="1-0", lag_entries=0),
        ],
        "entry": PeersEntry(id=ENTRY, kind="upsert", examined=5, oldest="1700000000000-0"),
        "hosts": [
            host("node-a", public_key=KEY_A),
            host("node-b", public_key=KEY_B),
            host("node-c", public_key=KEY_C),
        ],
    }
    base.update(more)
    return Facts(**base)


def member(**more: Any) -> Membership:
    return msgspec.structs.replace(facts().membership, **more)


def hosts(**by_node: dict[str, Any]) -> list[HostInfo]:
    """The three hosts of :func:`facts`, with changes per node (None: that host is gone)."""
    found = []
    for h in facts().hosts:
        if h.node in by_node and by_node[h.node] is None:
            continue
        found.append(msgspec.structs.replace(h, **by_node.get(h.node, {})))
    return found


def codes(f: Facts) -> list[str]:
    return [x.code for x in diagnose(f).findings]


def verdict(f: Facts) -> tuple[str, str, str]:
    v = diagnose(f).verdict
    return v.code, v.message, v.next


def test_a_healthy_node_is_ok() -> None:
    found = diagnose(facts())
    assert found.verdict.code == "ok"
    assert "nothing found" in found.verdict.message
    assert [f.severity for f in found.findings] == ["ok"] * len(found.findings)
    assert {c.node: c.carries for c in found.carriers} == {"node-b": YES, "node-c": YES}
    assert "--interface" in found.verdict.next


def test_a_node_never_named_is_not_a_member_with_close_names() -> None:
    code, message, nxt = verdict(
        facts(membership=Membership(known=False, similar=["node-ab", "node-b"]))
    )
    assert code == reasons.NOT_A_MEMBER
    assert "did you mean node-ab, node-b" in message
    assert "wgchain contract mint" in nxt
    assert "but" not in message


def test_a_stale_log_qualifies_the_answer() -> None:
    stopped = Problem(code="no-lease", severity="critical", subject="listener", message="no lease")
    code, message, _ = verdict(facts(membership=Membership(known=False), problems=[stopped]))
    assert code == reasons.NOT_A_MEMBER
    assert "a recent change on chain may not be counted yet" in message
    assert "no lease" in message
    found = diagnose(facts(problems=[stopped]))  # a live node: a warning only
    assert found.verdict.code == "ok"
    assert ("pipeline", WARNING, "no-lease") in {
        (f.area, f.severity, f.code) for f in found.findings
    }


def test_a_revoked_node() -> None:
    code, message, nxt = verdict(
        facts(membership=Membership(known=True, tokens=[3, 7], active_tokens=[]))
    )
    assert code == reasons.REVOKED
    assert "tokens 3, 7" in message
    assert "wgchain audit history --node node-a" in nxt


def test_no_key_says_which_key_to_set_when_the_host_reports_it() -> None:
    f = facts(membership=member(live=False, reason=reasons.NO_KEY, public_key=""))
    code, message, nxt = verdict(f)
    assert code == reasons.NO_KEY
    assert f"token 1 of {OWNER}" in message
    assert f"wgchain contract set-key {KEY_A}" in nxt  # the key node-a's agent reports
    f = facts(
        membership=member(live=False, reason=reasons.NO_KEY, public_key=""),
        hosts=hosts(**{"node-a": {"public_key": ""}}),
    )
    assert "set-key PUBLIC_KEY" in verdict(f)[2]


def test_an_invalid_key_is_shown_escaped() -> None:
    hostile = "x\n[Peer]\nAllowedIPs = 0.0.0.0/0"
    f = facts(
        membership=member(
            live=False, reason=reasons.INVALID_KEY, public_key=hostile, key_problem="not a key"
        )
    )
    found = diagnose(f)
    assert found.verdict.code == reasons.INVALID_KEY
    assert "not a key" in found.verdict.message
    assert all("\n" not in x.message for x in found.findings)


def test_a_lost_key_conflict_names_the_winner() -> None:
    detail = "the key is also node-z's (token 1), which keeps it"
    f = facts(membership=member(live=False, reason=reasons.KEY_CONFLICT, token_id=4, detail=detail))
    code, message, nxt = verdict(f)
    assert code == reasons.KEY_CONFLICT
    assert "node-z" in message
    assert "its own key" in nxt


def test_a_reason_this_version_does_not_know_is_named() -> None:
    f = facts(membership=member(live=False, reason="frozen"))
    code, message, _ = verdict(f)
    assert code == "frozen"
    assert "not live (frozen)" in message


def test_an_expired_pass_is_named_with_its_renewal() -> None:
    f = facts(membership=member(live=False, reason="expired"))
    f.membership.expires = 1_700_000_000
    code, message, advice = verdict(f)
    assert code == "expired"
    assert "expired (unix time 1700000000)" in message
    assert "wgchain contract renew" in advice


def test_duplicate_tokens_of_a_live_node_are_a_warning() -> None:
    found = diagnose(facts(membership=member(tokens=[1, 5], active_tokens=[1, 5])))
    assert found.verdict.code == "ok"
    assert "token 5 also names node-a; token 1 keeps it" in found.verdict.message
    assert "wgchain contract revoke" in found.verdict.next


def test_an_exhausted_pool() -> None:
    pending = Issue(kind="pending", reason="pool-exhausted", node="node-a", block=9)
    f = facts(issues=[pending], membership=member(published=False, ipv4=None, published_key=None))
    code, _, nxt = verdict(f)
    assert code == reasons.POOL_EXHAUSTED
    assert "WGCHAIN_POOL" in nxt
    assert diagnose(f).carriers == []  # nothing to carry yet


def test_live_but_not_published_points_at_the_ipam_stage() -> None:
    stages = [
        StageInfo(name="registry", position="1-0", lag_entries=0),
        StageInfo(name="ipam", position="1-0", lag_entries=12),
    ]
    f = facts(membership=member(published=False, published_key=None), stages=stages)
    code, message, nxt = verdict(f)
    assert (code, "12 entries behind" in message) == ("not-published", True)
    assert "wgchain ipam" in nxt
    old_key = facts(membership=member(published_key=KEY_B))
    assert verdict(old_key)[0] == "not-published"
    unknown_key = facts(membership=member(published_key=None))  # an older ipam state
    assert verdict(unknown_key)[0] == "ok"


def test_no_agent_for_the_node() -> None:
    f = facts(hosts=hosts(**{"node-a": None}))
    code, _, nxt = verdict(f)
    assert code == "host-absent"
    assert "wgchain agent --node node-a" in nxt
    silent = facts(hosts=hosts(**{"node-a": {"updated_at": None}}))
    assert verdict(silent)[0] == "host-silent"


def test_a_stale_agent() -> None:
    f = facts(hosts=hosts(**{"node-a": {"updated_at": NOW - 91}}))
    code, message, _ = verdict(f)
    assert code == "host-stale"
    assert "1m31s" in message
    fresh = facts(hosts=hosts(**{"node-a": {"updated_at": NOW - 89}}))
    assert verdict(fresh)[0] == "ok"


@pytest.mark.parametrize(
    ("why", "said", "advice"),
    [
        (
            reasons.KEY_MISMATCH,
            f"its own key is {KEY_C}, the chain's is {KEY_A}",
            "set-key " + KEY_C,
        ),
        (reasons.NO_OWN_KEY, "no usable private key", "--private-key-file"),
        (reasons.OWN_ADDRESS_OUTSIDE_POOL, "10.88.0.2 is outside", "same WGCHAIN_POOL"),
        (reasons.INVALID_OWN_NODE_ID, "not a node id", "--node node-a"),
        (reasons.NOT_LIVE, "though the registry says it is live", "behind"),
    ],
)
def test_a_host_that_fails_closed(why: str, said: str, advice: str) -> None:
    f = facts(hosts=hosts(**{"node-a": {"fail_closed": why, "public_key": KEY_C}}))
    code, message, nxt = verdict(f)
    assert code == why
    assert said in message
    assert advice in nxt


def test_an_older_agent_with_another_key_is_a_key_mismatch() -> None:
    f = facts(hosts=hosts(**{"node-a": {"public_key": KEY_B}}))
    code, message, nxt = verdict(f)
    assert code == reasons.KEY_MISMATCH
    assert KEY_B in message
    assert KEY_A in message
    assert f"set-key {KEY_B}" in nxt


def test_an_agent_whose_last_apply_failed() -> None:
    f = facts(hosts=hosts(**{"node-a": {"last_error": "wg set failed:\nRTNETLINK"}}))
    code, message, _ = verdict(f)
    assert code == "host-error"
    assert "\n" not in message


def test_an_agent_behind_its_own_entry() -> None:
    behind = {"applied_position": "1700000000000-2", "lag_entries": 7}
    code, message, _ = verdict(facts(hosts=hosts(**{"node-a": behind})))
    assert code == "host-behind"
    assert f"own peers entry {ENTRY}" in message
    past = {"applied_position": "1700000000000-9", "lag_entries": 3}  # others' entries only
    found = diagnose(facts(hosts=hosts(**{"node-a": past})))
    assert found.verdict.code == "ok"
    assert ("host-behind", WARNING) in {(x.code, x.severity) for x in found.findings}


def test_a_held_configuration_is_a_warning() -> None:
    found = diagnose(facts(hosts=hosts(**{"node-a": {"held": True}})))
    assert found.verdict.code == "ok"
    assert "host-held" in codes(facts(hosts=hosts(**{"node-a": {"held": True}})))


def test_which_hosts_carry_the_node() -> None:
    one_behind = hosts(**{"node-b": {"applied_position": "1700000000000-1"}})
    found = diagnose(facts(hosts=one_behind))
    assert {c.node: c.carries for c in found.carriers} == {"node-b": NO, "node-c": YES}
    assert found.verdict.code == "ok"
    assert "1 of 2 hosts that should carry node-a do" in found.verdict.message
    both = hosts(
        **{
            "node-b": {"applied_position": "1700000000000-1"},
            "node-c": {"fail_closed": reasons.NOT_LIVE},
        }
    )
    code, message, _ = verdict(facts(hosts=both))
    assert code == "not-carried"
    assert "fail closed: not-live" in message
    alone = diagnose(facts(hosts=hosts(**{"node-b": None, "node-c": None})))
    assert "no-other-hosts" in [x.code for x in alone.findings]
    assert alone.verdict.code == "ok"


def test_carriers_when_the_entry_is_older_than_the_walk() -> None:
    entry = PeersEntry(examined=10_000, oldest="1700000000000-3")
    f = facts(
        entry=entry,
        hosts=hosts(**{"node-c": {"applied_position": "1600000000000-0", "updated_at": None}}),
    )
    found = diagnose(f)
    by = {c.node: (c.carries, c.host_state) for c in found.carriers}
    assert by == {"node-b": (YES, "online"), "node-c": (UNKNOWN, "silent")}
    f = facts(entry=entry, hosts=hosts(**{"node-c": {"applied_position": "1600000000000-0"}}))
    assert {c.node: c.carries for c in diagnose(f).carriers}["node-c"] == UNKNOWN


def test_hub_topology_expects_only_hubs_to_carry_a_spoke() -> None:
    f = facts(topology="hub", hubs=["node-b"])
    found = diagnose(f)
    assert {c.node: c.expected for c in found.carriers} == {"node-b": True, "node-c": False}
    spokes_behind = hosts(**{"node-c": {"applied_position": "1700000000000-1"}})
    assert (
        diagnose(facts(topology="hub", hubs=["node-b"], hosts=spokes_behind)).verdict.code == "ok"
    )
    hub_behind = hosts(**{"node-b": {"applied_position": "1700000000000-1"}})
    assert verdict(facts(topology="hub", hubs=["node-b"], hosts=hub_behind))[0] == "not-carried"
    as_hub = diagnose(facts(topology="hub", hubs=["node-a"]))
    assert all(c.expected for c in as_hub.carriers)


def test_no_endpoint_and_no_template() -> None:
    f = facts(hosts=hosts(**{"node-a": {"endpoint": None}}))
    assert "no-endpoint" in codes(f)
    assert "--endpoint" in diagnose(f).verdict.next
    templated = facts(
        hosts=hosts(**{"node-a": {"endpoint": None}}), endpoint_template="{node}.vpn:1"
    )
    assert "no-endpoint" not in codes(templated)


def test_handshakes_the_agent_reports() -> None:
    never = facts(hosts=hosts(**{"node-a": {"handshake_latest": 0.0}}))
    assert verdict(never)[0] == "no-handshake"
    old = diagnose(facts(hosts=hosts(**{"node-a": {"handshake_latest": NOW - 600}})))
    assert (old.verdict.code, "10m00s ago" in old.verdict.message) == ("ok", True)
    unknown = diagnose(facts(hosts=hosts(**{"node-a": {"handshake_latest": None}})))
    assert "tunnel-unknown" in [x.code for x in unknown.findings]
    file_only = {"handshake_latest": 0.0, "mode": "file-only"}  # no interface: no handshake
    found = diagnose(facts(hosts=hosts(**{"node-a": file_only})))
    assert found.verdict.code == "ok"
    assert "file-only" in next(x.message for x in found.findings if x.area == "tunnel")


def tunnel(public: str | None, *peers: TunnelPeer, error: str = "") -> Tunnel:
    return Tunnel(interface="wg0", public_key=public, peers=list(peers), error=error)


def test_the_tunnel_from_the_nodes_own_host() -> None:
    fresh = TunnelPeer(public_key=KEY_B, handshake=int(NOW) - 30, rx=2048, tx=4096)
    stale = TunnelPeer(public_key=KEY_C, handshake=int(NOW) - 900)
    found = diagnose(facts(tunnel=tunnel(KEY_A, fresh, stale)))
    assert found.verdict.code == "ok"
    line = next(x.message for x in found.findings if x.area == "tunnel")
    assert "1 of 2 peers of wg0" in line
    assert "2.0 KiB received" in line
    code, message, _ = verdict(facts(tunnel=tunnel(KEY_A, stale)))
    assert (code, "newest: 15m00s ago" in message) == ("old-handshake", True)
    assert verdict(facts(tunnel=tunnel(KEY_A)))[0] == "no-handshake"


def test_the_tunnel_from_another_host() -> None:
    assert verdict(facts(tunnel=tunnel(KEY_B)))[0] == "no-peer-here"
    never = TunnelPeer(public_key=KEY_A, endpoint="203.0.113.9:51820", tx=148)
    code, message, nxt = verdict(facts(tunnel=tunnel(KEY_B, never)))
    assert code == "no-handshake"
    assert "148 B sent" in message
    assert "203.0.113.9:51820" in nxt
    ok = TunnelPeer(public_key=KEY_A, handshake=int(NOW) - 10)
    assert verdict(facts(tunnel=tunnel(KEY_B, ok)))[0] == "ok"
    broken = diagnose(facts(tunnel=tunnel(None, error="wg is not installed")))
    assert broken.verdict.code == "ok"
    assert "tunnel-unreadable" in [x.code for x in broken.findings]


def test_no_data_for_the_network_is_the_only_finding() -> None:
    found = diagnose(facts(has_data=False))
    assert [x.code for x in found.findings] == ["no-data"]
    assert "WGCHAIN_CONTRACT" in found.verdict.next


def test_problems_come_in_causal_order() -> None:
    """A revoked node whose host is also stale: the membership is the verdict."""
    f = facts(
        membership=Membership(known=True, tokens=[1]),
        hosts=hosts(**{"node-a": {"updated_at": NOW - 3600}}),
    )
    found = diagnose(f)
    assert found.verdict.code == reasons.REVOKED
    assert [x.code for x in found.findings if x.severity == PROBLEM] == ["revoked", "host-stale"]


def test_every_code_is_in_the_vocabulary_and_the_json_round_trips() -> None:
    situations = [
        facts(),
        facts(membership=Membership(known=False)),
        facts(hosts=hosts(**{"node-a": {"fail_closed": reasons.NO_OWN_KEY}})),
        facts(tunnel=tunnel(KEY_B)),
        facts(hosts=hosts(**{"node-b": None, "node-c": None, "node-a": {"endpoint": None}})),
        facts(
            problems=[Problem(code="stage-lag", severity="critical", subject="ipam", message="m")]
        ),
    ]
    known = set(CODES) | set(reasons.MEANINGS) | set(PROBLEM_CODES) | {"no-data"}
    for f in situations:
        found = diagnose(f)
        assert {x.code for x in found.findings} <= known
        again = msgspec.json.decode(msgspec.json.encode(found))
        assert again["verdict"]["code"] == found.verdict.code
        assert again["facts"]["node"] == "node-a"
