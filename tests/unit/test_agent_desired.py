"""The agent's desired state: peer table fold, fail-closed rules, mesh peers, endpoints."""

from __future__ import annotations

import base64
import json

import pytest
from factories import wg_key as key

from consumers.agent import desired as d
from consumers.agent.desired import (
    Desired,
    PeerRecord,
    PeerTable,
    Policy,
    announced_endpoint,
    desired_state,
    parse_endpoint,
)
from consumers.agent.render import RemovePeer, SetPeer, diff_peers, normalise_ips, wanted_peers
from shared import settings
from shared.errors import SettingsError
from shared.events import AllocationPending, PeerRemove, PeerUpsert


def upsert(node: str, n: int, ipv4: str, ipv6: str | None = None) -> PeerUpsert:
    return PeerUpsert(node, key(n), ipv4, cause="1-0", origin="1-0", block_number=1, ipv6=ipv6)


def table_of(*entries: object) -> dict[str, PeerRecord]:
    table = PeerTable()
    for entry in entries:
        table.apply(entry)
    return table.records


POLICY = Policy(pool="10.88.0.0/16", keepalive=25)
MESH = table_of(
    upsert("a", 1, "10.88.0.1"), upsert("b", 2, "10.88.0.2"), upsert("c", 3, "10.88.0.3")
)


def test_fold_upsert_then_remove_and_pending() -> None:
    table = PeerTable()
    assert table.apply(upsert("a", 1, "10.88.0.1/32")) is None
    assert table.apply(upsert("b", 2, "10.88.0.2")) is None
    assert table.records["a"] == PeerRecord("a", key(1), "10.88.0.1")
    table.apply(upsert("a", 9, "10.88.0.1"))
    assert table.records["a"].public_key == key(9)
    table.apply(PeerRemove("a", cause="2-0", origin="2-0", block_number=2))
    table.apply(AllocationPending("b", cause="3-0", origin="3-0", block_number=3))
    assert table.records == {}


@pytest.mark.parametrize(
    ("node", "pub", "ipv4"),
    [
        ("../etc", key(1), "10.88.0.1"),
        ("a\nb", key(1), "10.88.0.1"),
        ("a", "not-a-key\n[Peer]", "10.88.0.1"),
        ("a", base64.b64encode(bytes(32)).decode(), "10.88.0.1"),
        ("a", key(1), "10.88.0.1\nEndpoint = evil:1"),
        ("a", key(1), "fd00::1"),
    ],
)
def test_fold_ignores_hostile_upserts(node: str, pub: str, ipv4: str) -> None:
    table = PeerTable()
    reason = table.apply(PeerUpsert(node, pub, ipv4, "1-0", "1-0", 1))
    assert reason
    assert table.records == {}


def test_not_a_member_fails_closed() -> None:
    result = desired_state(MESH, "zed", key(26), {}, POLICY)
    assert result.peers == ()
    assert result.addresses == ()
    assert result.fail_closed == d.NOT_LIVE


def test_key_mismatch_fails_closed() -> None:
    result = desired_state(MESH, "a", key(77), {}, POLICY)
    assert result.peers == ()
    assert result.fail_closed == d.KEY_MISMATCH


def test_no_own_key_and_bad_node_id_fail_closed() -> None:
    assert desired_state(MESH, "a", None, {}, POLICY).fail_closed == d.NO_OWN_KEY
    assert desired_state(MESH, "../a", key(1), {}, POLICY).fail_closed == d.BAD_NODE_ID


def test_mesh_peers_everyone_else_with_address_of_pool_prefix() -> None:
    result = desired_state(MESH, "b", key(2), {}, POLICY)
    assert result.fail_closed is None
    assert result.addresses == ("10.88.0.2/16",)
    assert [p.node_id for p in result.peers] == ["a", "c"]
    a = result.peers[0]
    assert (a.public_key, a.allowed_ips, a.endpoint, a.keepalive) == (
        key(1),
        ("10.88.0.1/32",),
        None,
        25,
    )


def test_ipv6_allowed_when_pool6_set() -> None:
    table = table_of(upsert("a", 1, "10.88.0.1", "fd00::1"), upsert("b", 2, "10.88.0.2", "fd00::2"))
    policy = Policy(pool="10.88.0.0/16", pool6="fd00::/64")
    result = desired_state(table, "a", key(1), {}, policy)
    assert result.addresses == ("10.88.0.1/16", "fd00::1/64")
    assert result.peers[0].allowed_ips == ("10.88.0.2/32", "fd00::2/128")
    # without a v6 pool, v6 addresses are not used
    assert desired_state(table, "a", key(1), {}, POLICY).peers[0].allowed_ips == ("10.88.0.2/32",)


def test_endpoint_announcement_then_template_then_none() -> None:
    announced = {"a": json.dumps({"endpoint": "192.168.77.1:51820", "listen_port": 51820})}
    policy = Policy(endpoint_template="{node}.vpn.example:51820")
    result = desired_state(MESH, "b", key(2), announced, policy)
    endpoints = {p.node_id: p.endpoint for p in result.peers}
    assert endpoints == {"a": "192.168.77.1:51820", "c": "c.vpn.example:51820"}
    result = desired_state(MESH, "b", key(2), announced, POLICY)
    assert {p.node_id: p.endpoint for p in result.peers} == {"a": "192.168.77.1:51820", "c": None}


@pytest.mark.parametrize(
    "raw",
    [
        json.dumps({"endpoint": "1.2.3.4:51820\n[Peer]"}),
        json.dumps({"endpoint": "-oProxyCommand=x:1"}),
        json.dumps({"endpoint": "host:99999"}),
        json.dumps({"endpoint": "host"}),
        json.dumps({"endpoint": ["1.2.3.4:1"]}),
        json.dumps({"endpoint": "a b:1"}),
        json.dumps({"endpoint": "[not-v6]:1"}),
        json.dumps(["1.2.3.4:1"]),
        json.dumps({"endpoint": "x" * 5000 + ".example:1"}),
        "not json {",
        b"\xff\xfe",
    ],
)
def test_hostile_announcements_are_ignored(raw: str | bytes) -> None:
    assert announced_endpoint(raw) is None
    policy = Policy(endpoint_template="{node}.vpn.example:51820")
    result = desired_state(MESH, "b", key(2), {"a": raw}, policy)
    assert result.peers[0].endpoint == "a.vpn.example:51820"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("192.168.1.1:51820", "192.168.1.1:51820"),
        ("[fd00::0001]:51820", "[fd00::1]:51820"),
        ("VPN.Example.com:443", "vpn.example.com:443"),
        ("fd00::1:51820", None),
        ("host:0", None),
        ("host:", None),
        ("", None),
        ("hóst:1", None),
    ],
)
def test_parse_endpoint(text: str, expected: str | None) -> None:
    assert parse_endpoint(text) == expected


def test_members_with_bad_data_are_skipped_not_peered() -> None:
    records = dict(MESH)
    records["x"] = PeerRecord("x", key(1), "10.88.0.9")  # same key as a
    records["y"] = PeerRecord("y", key(5), "192.168.0.1")  # outside the pool
    records["z"] = PeerRecord("z", key(6), "10.88.0.3")  # c's address
    result = desired_state(records, "a", key(1), {}, POLICY)
    assert [p.node_id for p in result.peers] == ["b", "c"]
    assert {node for node, _ in result.skipped} == {"x", "y", "z"}


def test_own_address_outside_pool_fails_closed() -> None:
    result = desired_state(MESH, "a", key(1), {}, Policy(pool="10.99.0.0/16"))
    assert result.fail_closed == d.ADDRESS_OUTSIDE_POOL
    assert result.peers == ()


def allowed(result: Desired) -> dict[str, tuple[str, ...]]:
    return {p.node_id: normalise_ips(p.allowed_ips) for p in result.peers}


def test_hub_topology_spokes_see_only_hubs_and_route_the_pool_through_it() -> None:
    policy = Policy(topology="hub", hubs=("a",))
    spoke = desired_state(MESH, "b", key(2), {}, policy)
    hub = desired_state(MESH, "a", key(1), {}, policy)
    assert allowed(spoke) == {"a": ("10.88.0.0/16", "10.88.0.1/32")}
    assert allowed(hub) == {"b": ("10.88.0.2/32",), "c": ("10.88.0.3/32",)}
    assert spoke.addresses == ("10.88.0.2/16",)


def test_mesh_routes_no_pool() -> None:
    result = desired_state(MESH, "b", key(2), {}, POLICY)
    assert allowed(result) == {"a": ("10.88.0.1/32",), "c": ("10.88.0.3/32",)}


def test_first_live_hub_in_listed_order_carries_the_pool() -> None:
    table = table_of(*(upsert(n, i, f"10.88.0.{i}") for i, n in enumerate("abcd", start=1)))
    policy = Policy(topology="hub", hubs=("c", "a"))
    spoke = desired_state(table, "b", key(2), {}, policy)
    assert allowed(spoke) == {"a": ("10.88.0.1/32",), "c": ("10.88.0.0/16", "10.88.0.3/32")}
    hub = desired_state(table, "c", key(3), {}, policy)
    assert allowed(hub) == {n: (f"10.88.0.{i}/32",) for i, n in ((1, "a"), (2, "b"), (4, "d"))}
    # hub c leaves: the pool moves to a, the next listed hub
    del table["c"]
    spoke = desired_state(table, "b", key(2), {}, policy)
    assert allowed(spoke) == {"a": ("10.88.0.0/16", "10.88.0.1/32")}


def test_spoke_without_a_live_hub_has_no_peers() -> None:
    policy = Policy(topology="hub", hubs=("x",))
    result = desired_state(MESH, "b", key(2), {}, policy)
    assert result.peers == ()
    assert result.fail_closed is None


def test_hub_carries_the_ipv6_pool_too() -> None:
    table = table_of(upsert("a", 1, "10.88.0.1", "fd00::1"), upsert("b", 2, "10.88.0.2", "fd00::2"))
    policy = Policy(pool6="fd00::/64", topology="hub", hubs=("a",))
    spoke = desired_state(table, "b", key(2), {}, policy)
    assert allowed(spoke) == {"a": ("10.88.0.0/16", "10.88.0.1/32", "fd00::/64", "fd00::1/128")}


def test_switching_topology_updates_peers_in_place() -> None:
    """mesh -> hub on a spoke: the other spoke goes, the hub is updated, never re-added."""
    before = wanted_peers(desired_state(MESH, "b", key(2), {}, POLICY))
    after = wanted_peers(desired_state(MESH, "b", key(2), {}, Policy(topology="hub", hubs=("a",))))
    ops = diff_peers(before, after)
    assert ops == [
        RemovePeer(key(3), "c"),
        SetPeer(key(1), ("10.88.0.0/16", "10.88.0.1/32"), None, 25, "a"),
    ]
    assert diff_peers(after, before) == [
        SetPeer(key(1), ("10.88.0.1/32",), None, 25, "a"),
        SetPeer(key(3), ("10.88.0.3/32",), None, 25, "c"),
    ]


@pytest.mark.parametrize(
    ("kwargs", "setting"),
    [
        ({"topology": "star"}, "WGCHAIN_TOPOLOGY"),
        ({"topology": "hub"}, "WGCHAIN_HUBS"),
        ({"topology": "hub", "hubs": ("a", "../etc")}, "WGCHAIN_HUBS"),
        ({"pool": "0.0.0.0/4"}, "WGCHAIN_POOL"),
        ({"keepalive": 70000}, "WGCHAIN_KEEPALIVE"),
    ],
)
def test_bad_policy_rejected_by_the_settings_rules(kwargs: dict[str, object], setting: str) -> None:
    """A policy built from bare values breaks the same rules, with the same error, as the
    settings it is normally built from."""
    with pytest.raises(SettingsError, match=setting):
        Policy(**kwargs)  # type: ignore[arg-type]
    env = {k: ",".join(v) if isinstance(v, tuple) else str(v) for k, v in kwargs.items()}
    with pytest.raises(SettingsError, match=setting):
        settings.load(environ={settings.env_name(k): v for k, v in env.items()})


def test_policy_from_settings() -> None:
    env = {"WGCHAIN_TOPOLOGY": "hub", "WGCHAIN_HUBS": "h1,h2", "WGCHAIN_KEEPALIVE": "5"}
    cfg = settings.load(environ=env)
    assert Policy.from_settings(cfg) == Policy(topology="hub", hubs=("h1", "h2"), keepalive=5)


def test_desired_is_plain_data() -> None:
    assert Desired("a").peers == ()
