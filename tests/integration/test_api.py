"""``wgchain api`` as a real uvicorn process, over a real chain, Redis and pipeline stages.

One world per module (Redis, anvil, the stages driven step by step, one file-only
agent), one API process with a bearer token; every route is exercised with requests.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from conftest import require
from factories import KEY_B, KEY_C
from prometheus_client.parser import text_string_to_metric_families

from consumers.agent.agent import Agent, AgentConfig
from consumers.agent.desired import Policy
from consumers.agent.keys import generate_private_key_file
from consumers.ipam.allocate import IpamFold
from consumers.registry.fold import FOLD
from consumers.stage import Stage
from producers.listener.lease import Lease
from producers.listener.listener import Listener, open_listener
from shared.contract.client import AccessNFT, TxResult
from shared.devnet.anvil import ACCOUNTS, Anvil
from shared.devnet.proc import free_port, stop_process, wait_for
from shared.devnet.redis_server import RedisServer
from shared.errors import ServiceUnavailable
from shared.settings import Settings, load

pytestmark = pytest.mark.integration

TOKEN = "s3cret-token"
WGCHAIN = str(Path(sys.executable).parent / "wgchain")
ROUTES = {
    "/v1/access",
    "/v1/nodes",
    "/v1/nodes/{node}",
    "/v1/hosts",
    "/v1/issues",
    "/v1/status",
    "/v1/events",
    "/v1/topology",
    "/v1/nodes/{node}/history",
    "/v1/nodes/{node}/diagnosis",
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
}


@dataclass
class World:
    cfg: Settings
    client: redis.Redis
    nft: AccessNFT
    listener: Listener
    stages: list[Stage[Any]]
    url: str
    key_a: str
    minted_a: TxResult
    applied: str
    #: Whether the API answers yet (the fixture settles before it starts it).
    serving: bool = False

    def settle(self) -> None:
        while self.listener.step():
            pass
        for stage in self.stages:
            while stage.step(block_ms=None):
                pass
        # A strict check brings the API's registry copy up to the stage's last commit, so
        # what a test reads next (bounded by default) is not up to its bound behind.
        if self.serving:
            self.get("/v1/access", node="node-a", key=self.key_a, consistency="strict")

    def get(self, path: str, token: str | None = TOKEN, **params: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return requests.get(self.url + path, params=params, headers=headers, timeout=30)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    try:
        server = RedisServer().start()
    except ServiceUnavailable as exc:
        require(False, str(exc))
        raise
    try:
        chain = Anvil().start()
    except ServiceUnavailable as exc:
        server.cleanup()
        require(False, str(exc))
        raise
    api: subprocess.Popen[bytes] | None = None
    try:
        nft = AccessNFT.deploy(chain.url, ACCOUNTS[0][1])
        cfg = load(
            {
                "redis_url": server.url,
                "rpc_url": chain.url,
                "contract": nft.address,
                "chain_id": chain.chain_id,
                "confirmations": 0,
                "pool": "10.66.0.0/24",
            },
            environ={},
        )
        keys = cfg.keys()
        client = redis.Redis.from_url(server.url)
        tmp = tmp_path_factory.mktemp("api")
        key_file = tmp / "a.key"
        key_a = generate_private_key_file(key_file)
        minted_a = nft.mint(ACCOUNTS[1][0], "node-a", key_a)
        nft.mint(ACCOUNTS[2][0], "node-b", KEY_B)
        nft.revoke(nft.mint(ACCOUNTS[3][0], "node-c", KEY_C).token_id or 0)
        listener = open_listener(cfg, client)
        stages: list[Stage[Any]] = [
            Stage(client, keys, FOLD),
            Stage(client, keys, IpamFold.from_settings(cfg)),
        ]
        agent_cfg = AgentConfig(
            node_id="node-a",
            interface="wgapi0",
            private_key_file=key_file,
            keys=keys,
            endpoint="198.51.100.9:51820",
            config_dir=tmp / "conf",
            policy=Policy(pool=cfg.pool),
        )
        port = free_port()
        w = World(
            cfg, client, nft, listener, stages, f"http://127.0.0.1:{port}", key_a, minted_a, ""
        )
        w.settle()
        assert Lease(client, keys, "listener-api", 3600).acquire()  # a listener holds it
        agent = Agent(agent_cfg, client, None)
        agent.start()  # file-only: announce, reconcile once, report
        w.applied = agent.applied_position
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("WGCHAIN_")},
            "WGCHAIN_REDIS_URL": server.url,
            "WGCHAIN_RPC_URL": chain.url,
            "WGCHAIN_CHAIN_ID": str(chain.chain_id),
            "WGCHAIN_CONTRACT": nft.address,
            "WGCHAIN_API_LISTEN": f"127.0.0.1:{port}",
            "WGCHAIN_API_TOKEN": TOKEN,
            "WGCHAIN_MAX_LAG": "0",
            # the world is stepped by hand: its listener and agent are not at work all along
            "WGCHAIN_MAX_LAG_SECONDS": "3600",
            "WGCHAIN_RECONCILE_INTERVAL": "3600",
        }
        api = subprocess.Popen([WGCHAIN, "api"], env=env, stderr=subprocess.DEVNULL)

        def healthy() -> bool:
            try:
                return requests.get(w.url + "/healthz", timeout=2).status_code == 200
            except requests.ConnectionError:
                assert api is not None
                assert api.poll() is None, "wgchain api exited"
                return False

        wait_for(healthy, timeout=30, what="wgchain api answering /healthz")
        w.serving = True
        yield w
        listener.rpc.close()
        client.close()
    finally:
        if api is not None:
            stop_process(api)
        chain.cleanup()
        server.cleanup()


def test_health_answers_without_a_token(world: World) -> None:
    health = world.get("/healthz", token=None)
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    ready = world.get("/readyz", token=None)
    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert body["ready"]
    assert body["redis"]
    assert {s["name"] for s in body["stages"]} == {"registry", "ipam"}


def test_readyz_reports_a_stage_behind(world: World) -> None:
    world.client.xadd(world.cfg.keys().events, {"v": "1", "type": "Nonsense", "data": "{}"})
    behind = world.get("/readyz", token=None)
    assert behind.status_code == 503
    assert not behind.json()["ready"]
    assert "registry" in behind.json()["detail"]
    world.settle()  # the registry stage dead-letters it and moves on
    assert world.get("/readyz", token=None).status_code == 200


@pytest.mark.parametrize("path", [*sorted(ROUTES - {"/healthz", "/readyz"}), "/nowhere"])
def test_everything_else_needs_the_token(world: World, path: str) -> None:
    path = path.replace("{node}", "node-a")
    for token in (None, "wrong"):
        res = world.get(path, token=token, node="node-a", key=world.key_a)
        assert res.status_code == 401
        assert res.headers["WWW-Authenticate"].startswith("Bearer")
        assert "token" in res.json()["error"]


def test_access(world: World) -> None:
    granted = world.get("/v1/access", node="node-a", key=world.key_a)
    assert granted.status_code == 200
    assert granted.json()["granted"] is True
    assert granted.json()["reason"] == "granted"
    denied = world.get("/v1/access", node="node-a", key=KEY_B).json()
    assert (denied["granted"], denied["reason"]) == (False, "key-mismatch")
    assert world.get("/v1/access", node="node-c", key=KEY_C).json()["reason"] == "revoked"
    assert world.get("/v1/access", node="node-a", address=ACCOUNTS[1][0]).json()["granted"]
    other = world.get("/v1/access", node="node-a", address=ACCOUNTS[2][0]).json()
    assert other["reason"] == "not-owner"
    before = world.get(
        "/v1/access", node="node-a", key=world.key_a, at_block=world.minted_a.block_number - 1
    ).json()
    assert (before["reason"], before["at_block"]) == (
        "not-a-member",
        world.minted_a.block_number - 1,
    )


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({}, "node"),
        ({"node": "node-a"}, "key"),
        ({"node": "../etc", "key": KEY_B}, "node"),
        ({"node": "node-a", "key": "nope"}, "key"),
        ({"node": "node-a", "key": KEY_B, "address": ACCOUNTS[1][0]}, "key"),
        ({"node": "node-a", "address": "0x12"}, "address"),
        ({"node": "node-a", "key": KEY_B, "at_block": "-1"}, "at_block"),
        ({"node": "node-a", "key": KEY_B, "at_block": "99999999"}, "at_block"),
        ({"node": "node-a", "key": KEY_B, "consistency": "eventual"}, "consistency"),
    ],
)
def test_access_rejects_bad_parameters(world: World, params: dict[str, str], param: str) -> None:
    res = world.get("/v1/access", **params)
    assert res.status_code == 400
    assert res.json()["param"] == param
    assert res.json()["error"]


def test_a_revoke_is_visible_as_soon_as_the_registry_commits(world: World) -> None:
    token = world.nft.mint(ACCOUNTS[4][0], "node-r", KEY_C).token_id or 0
    world.settle()
    # strict: a bounded answer may still be up to its bound older than the stage's commit
    assert world.get("/v1/access", node="node-r", key=KEY_C, consistency="strict").json()["granted"]
    world.nft.revoke(token)
    while world.listener.step():
        pass
    registry = world.stages[0]
    while registry.step(block_ms=None):
        pass
    after = world.get("/v1/access", node="node-r", key=KEY_C, consistency="strict").json()
    assert (after["granted"], after["reason"]) == (False, "revoked")
    assert after["position"] == registry.position
    # bounded (the default): within 50 ms of the commit at the latest
    wait_for(
        lambda: world.get("/v1/access", node="node-r", key=KEY_C).json()["reason"] == "revoked",
        timeout=10,
        what="a bounded answer denying the revoked node",
    )
    world.settle()


def test_nodes(world: World) -> None:
    listing = world.get("/v1/nodes").json()
    nodes = {n["node"]: n for n in listing["nodes"]}
    assert {"node-a", "node-b", "node-c"} <= set(nodes)
    assert listing["next"] is None
    a = nodes["node-a"]
    assert (a["member"], a["live"], a["public_key"]) == (True, True, world.key_a)
    assert ipaddress.IPv4Address(a["ipv4"]) in ipaddress.IPv4Network(world.cfg.pool)
    assert (nodes["node-c"]["member"], nodes["node-c"]["reason"]) == (False, "revoked")
    assert nodes["node-c"]["ipv4"] is None

    first = world.get("/v1/nodes", limit=1).json()
    assert [n["node"] for n in first["nodes"]] == ["node-a"]
    second = world.get("/v1/nodes", limit=1, after=first["next"]).json()
    assert [n["node"] for n in second["nodes"]] == ["node-b"]
    assert world.get("/v1/nodes", limit=0).status_code == 400


def test_nodes_filters_and_host_states(world: World) -> None:
    """``/v1/nodes`` has the filters and the host states of ``wgchain nodes``."""

    def names(**params: str) -> list[str]:
        res = world.get("/v1/nodes", **params)
        assert res.status_code == 200, res.text
        return [
            n["node"] for n in res.json()["nodes"] if n["node"] in {"node-a", "node-b", "node-c"}
        ]

    states = {n["node"]: n["host_state"] for n in world.get("/v1/nodes").json()["nodes"]}
    assert (states["node-a"], states["node-b"], states["node-c"]) == ("online", "absent", "absent")
    assert names(live="true") == ["node-a", "node-b"]
    assert names(live="false") == ["node-c"]
    assert names(host_offline="true") == ["node-b", "node-c"]
    assert names(owner=ACCOUNTS[2][0].lower()) == ["node-b"]
    assert names(search=world.key_a[:12]) == ["node-a"]
    assert names(live="true", host_offline="true", limit="1") == ["node-b"]
    for params, param in (({"live": "maybe"}, "live"), ({"owner": "0x1"}, "address"),
                          ({"search": "x\n"}, "search")):  # fmt: skip
        res = world.get("/v1/nodes", **params)
        assert (res.status_code, res.json()["param"]) == (400, param)


def test_diagnosis(world: World) -> None:
    """``/v1/nodes/{node}/diagnosis`` is ``wgchain diagnose NODE --json`` without the tunnel."""
    b = world.get("/v1/nodes/node-b/diagnosis").json()
    assert b["verdict"]["code"] == "host-absent"  # no agent runs for node-b
    assert "wgchain agent --node node-b" in b["verdict"]["next"]
    assert world.get("/v1/nodes/node-c/diagnosis").json()["verdict"]["code"] == "revoked"
    a = world.get("/v1/nodes/node-a/diagnosis").json()
    assert a["facts"]["tunnel"] is None
    assert a["facts"]["membership"]["public_key"] == world.key_a
    assert world.get("/v1/nodes/zz$/diagnosis").status_code == 400


def test_node_detail(world: World) -> None:
    res = world.get("/v1/nodes/node-a")
    assert res.status_code == 200
    a = res.json()
    assert (a["member"], a["live"], a["reason"]) == (True, True, "")
    assert (a["token_id"], a["owner"]) == (1, ACCOUNTS[1][0].lower())
    assert a["since_block"] == world.minted_a.block_number
    assert a["endpoint"] == "198.51.100.9:51820"
    assert a["host"]["applied_position"] == world.applied
    assert a["host"]["node"] == "node-a"
    assert ipaddress.IPv4Address(a["ipv4"]) in ipaddress.IPv4Network(world.cfg.pool)
    c = world.get("/v1/nodes/node-c").json()
    assert (c["member"], c["since_block"], c["host"]) == (False, None, None)
    missing = world.get("/v1/nodes/node-zz")
    assert missing.status_code == 404
    assert "node-zz" in missing.json()["error"]
    bad = world.get("/v1/nodes/bad$node")
    assert bad.status_code == 400
    assert bad.json()["param"] == "node"


def test_hosts(world: World) -> None:
    hosts = world.get("/v1/hosts").json()["hosts"]
    [a] = [h for h in hosts if h["node"] == "node-a"]
    assert a["endpoint"] == "198.51.100.9:51820"
    assert a["interface"] == "wgapi0"
    assert a["last_error"] == ""
    assert a["last_apply"] > 0
    peers: Any = world.client.xrange(world.cfg.keys().peers, min=f"({world.applied}")
    assert a["lag_entries"] == len(peers)


def test_events_are_paged(world: World) -> None:
    total = world.client.xlen(world.cfg.keys().events)
    seen: list[dict[str, Any]] = []
    after = "0-0"
    while True:
        page = world.get("/v1/events", after=after, limit=2).json()
        seen.extend(page["entries"])
        if page["next"] is None:
            break
        after = page["next"]
    assert len(seen) == total
    assert len({e["id"] for e in seen}) == total
    first = seen[0]["entry"]
    assert first["type"] == "LogEntry"
    assert first["event"]["type"] == "NodeAccessGranted"
    assert first["event"]["node_id"] == "node-a"
    assert any(e["error"] for e in seen), "the garbage entry shows as an error"
    assert world.get("/v1/events", after="yesterday").status_code == 400
    assert world.get("/v1/events", limit=5000).status_code == 400


def test_metrics_are_prometheus_text(world: World) -> None:
    world.get("/v1/access", node="node-a", key=world.key_a)
    res = world.get("/metrics")
    assert res.status_code == 200
    assert res.headers["content-type"].startswith("text/plain")
    assert "# TYPE wgchain_api_requests_total counter" in res.text
    assert 'wgchain_access_decisions_total{reason="granted"}' in res.text


def test_the_fleet_gauges_come_with_the_metrics(world: World) -> None:
    samples = {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(world.get("/metrics").text)
        for s in family.samples
    }
    net = ("network", f"{world.cfg.chain_id}:{world.cfg.contract.lower()}")

    def value(name: str, **labels: str) -> float | None:
        return samples.get((name, frozenset({net, *labels.items()})))

    assert value("wgchain_fleet_up") == 1
    assert value("wgchain_network_has_data") == 1
    assert value("wgchain_listener_lease_held") == 1
    assert value("wgchain_health_problems", code="no-lease", severity="critical") == 0
    assert value("wgchain_health_problems", code="host-stale", severity="warning") == 0
    assert value("wgchain_live_members") == 2  # node-a and node-b
    assert value("wgchain_host_lag_entries", node="node-a") is not None
    assert value("wgchain_host_stale", node="node-a") == 0
    assert value("wgchain_host_fail_closed", node="node-a") == 0
    assert value("wgchain_fail_closed_hosts") == 0
    age = value("wgchain_host_apply_age_seconds", node="node-a")
    assert age is not None
    assert age >= 0


def test_issues_and_status_are_the_current_ones(world: World) -> None:
    assert world.get("/v1/issues").json() == {"issues": []}
    status = world.get("/v1/status").json()
    assert status["network"] == world.cfg.keys().tag
    assert status["health"] == "ok", status["problems"]
    assert status["counts"]["conflicts"] == 0
    assert {h["node"] for h in status["hosts"]} == {"node-a"}


def test_readyz_names_every_problem_and_access_says_when_there_is_no_data(world: World) -> None:
    keys = world.cfg.keys()
    holder: Any = world.client.get(keys.lease)
    world.client.delete(keys.lease)
    try:
        res = world.get("/readyz", token=None)
        assert res.status_code == 503
        body = res.json()
        assert [p["code"] for p in body["problems"]] == ["no-lease"]
        assert body["health"] == "critical"
        assert "no listener holds the lease" in body["detail"]
    finally:
        world.client.set(keys.lease, holder)
    assert world.get("/readyz", token=None).status_code == 200


def test_openapi_lists_every_route(world: World) -> None:
    doc = world.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.1")
    assert set(doc["paths"]) == ROUTES
    schemas = doc["components"]["schemas"]
    for path, item in doc["paths"].items():
        for code, response in item["get"]["responses"].items():
            for content in response.get("content", {}).values():
                ref = content.get("schema", {}).get("$ref", "")
                if ref:
                    assert ref.rsplit("/", 1)[-1] in schemas, (path, code, ref)
    assert {"Decision", "NodeDetail", "HostInfo", "EventsPage", "LogEntry"} <= set(schemas)
    assert doc["paths"]["/healthz"]["get"]["security"] == []


def test_status_is_the_fleet_snapshot(world: World) -> None:
    res = world.get("/v1/status")
    assert res.status_code == 200
    status = res.json()
    keys = world.cfg.keys()
    assert status["network"] == keys.tag
    last: Any = world.client.xrevrange(keys.peers, count=1)
    assert status["peers_head"] == last[0][0].decode()
    [a] = [h for h in status["hosts"] if h["node"] == "node-a"]
    assert a["applied_position"] == world.applied
    assert a["endpoint"] == "198.51.100.9:51820"
    listener = status["listener"]
    assert listener["chain_head"] >= listener["cursor_block"] > 0, "the head comes from anvil"
    assert listener["lag_blocks"] == listener["chain_head"] - listener["cursor_block"]
    assert {s["name"] for s in status["stages"]} == {"registry", "ipam"}
    assert status["counts"]["dead_letters"] >= 0


def test_topology_lists_the_live_members(world: World) -> None:
    topo = world.get("/v1/topology").json()
    live = {n["node"] for n in world.get("/v1/nodes").json()["nodes"] if n["live"]}
    assert "node-a" in live
    assert {m["node"] for m in topo["members"]} == live
    assert (topo["topology"], topo["hubs"], topo["live"]) == ("mesh", [], len(live))
    assert topo["tunnels"] == len(live) * (len(live) - 1) // 2
    pool = ipaddress.IPv4Network(world.cfg.pool)
    assert all(ipaddress.IPv4Address(m["ipv4"]) in pool for m in topo["members"])


def test_a_nodes_history(world: World) -> None:
    a = world.get("/v1/nodes/node-a/history").json()
    first = a["rows"][0]
    assert (first["event"], first["block"]) == ("NodeAccessGranted", world.minted_a.block_number)
    assert first["tx"] == world.minted_a.tx_hash
    assert first["fields"]["node_id"] == "node-a"
    assert first["state"]["live"] is True
    assert a["events"] == world.client.xlen(world.cfg.keys().events)
    c = world.get("/v1/nodes/node-c/history").json()
    events = [r["event"] for r in c["rows"]]
    # an entry that does not decode concerns every subject (wgchain audit history shows it too)
    assert [e for e in events if e != "Undecodable"] == ["NodeAccessGranted", "NodeAccessRevoked"]
    revoked = c["rows"][events.index("NodeAccessRevoked")]
    assert revoked["state"]["live"] is False
    newest = world.get("/v1/nodes/node-c/history", limit=1).json()
    assert newest["rows"] == c["rows"][-1:]
    assert newest["total"] == len(events)
    assert world.get("/v1/nodes/node-zz/history").status_code == 404
    assert world.get("/v1/nodes/bad$node/history").json()["param"] == "node"
    assert world.get("/v1/nodes/node-a/history", limit=0).json()["param"] == "limit"


def test_the_dashboard_files_need_no_token_and_hold_no_data(world: World) -> None:
    page = world.get("/", token=None)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert '<meta name="wgchain-auth" content="bearer">' in page.text
    assert "node-a" not in page.text
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp
    assert "connect-src 'self'" in csp
    script = world.get("/ui/app.js", token=None)
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    assert world.get("/ui/nothing.js", token=None).status_code == 404
    assert world.get("/uix", token=None).status_code == 401, "only / and /ui/ are open"


def test_expiring_passes_are_listed_counted_and_judged_now(world: World) -> None:
    """Last in this module: it adds node-e (ERC-5643 pass of an hour), then cancels it."""
    key_e = base64.b64encode(bytes([0xE]) * 32).decode()
    token = world.nft.mint(ACCOUNTS[4][0], "node-e", key_e, duration=3600).token_id or 0
    world.settle()
    expires = world.nft.expires_at(token)
    node = world.get("/v1/nodes/node-e").json()
    assert (node["live"], node["expires"]) == (True, expires)
    assert world.get("/v1/nodes/node-a").json()["expires"] is None
    time.sleep(0.6)  # the status answer is shared for 0.5 s
    status = world.get("/v1/status").json()
    assert [(e["node"], e["expires"]) for e in status["expiring"]] == [("node-e", expires)]
    metrics = text_string_to_metric_families(world.get("/metrics").text)
    values = {s.name: s.value for f in metrics for s in f.samples}
    assert values["wgchain_passes_expiring"] == 1

    world.nft.cancel(token)
    world.settle()
    node = world.get("/v1/nodes/node-e").json()
    assert (node["live"], node["reason"], node["expires"]) == (False, "expired", 0)
    decision = world.get("/v1/access", node="node-e", key=key_e).json()
    assert (decision["granted"], decision["reason"]) == (False, "expired")
    time.sleep(0.6)  # the status answer is shared for 0.5 s
    assert world.get("/v1/status").json()["expiring"] == []
