"""Two real agents on real wireguard-go interfaces (network namespaces) through the
things a host meets: an agent restarted while Redis is down or right after Redis lost
its data, a host rebooted (the interface lost its peers) with Redis down, a ``wg set``
failing half way, a peer removed by hand, a burst of 1,000 changes. The ``peers``
stream is written directly here (no listener, registry or ipam)."""

from __future__ import annotations

import re
import time

import pytest
import redis
from test_agent_wireguard import PORT, Net, Node, expected_peer, net  # noqa: F401 - fixture
from uapiproxy import UapiProxy

from consumers.agent.desired import PeerTable, Policy, desired_state
from consumers.agent.keys import generate_private_key_file
from consumers.agent.render import endpoint_matches, render_config, wanted_peers
from shared.devnet.proc import stop_process
from shared.devnet.redis_server import RedisServer
from shared.events import PeerRemove, PeerUpsert, effective, from_fields, to_fields

pytestmark = pytest.mark.e2e

#: Seconds during which a restarted agent is watched keeping its peers.
WATCH_SECONDS = 4.0


def start(network: Net, node: Node, interval: float = 1.0) -> None:
    node.agent = node.host.start_agent(
        node=node.name,
        redis_url=network.redis_url,
        chain_id=network.keys.chain_id,
        contract=network.keys.contract,
        private_key_file=node.key_file,
        listen_port=PORT,
        endpoint=f"{node.host.underlay_ip}:{PORT}",
        config_dir=node.conf_dir,
        env={"WGCHAIN_RECONCILE_INTERVAL": str(interval), "WGCHAIN_LOG_LEVEL": "DEBUG"},
    )


def restart(network: Net, node: Node, interval: float = 1.0) -> int:
    """Stop the node's agent (it must exit cleanly) and start it again; where the new
    agent's lines begin in the node's agent log."""
    assert node.agent is not None
    stop_process(node.agent, timeout=15)
    assert node.agent.returncode == 0
    since = len(agent_log(network, node))
    start(network, node, interval)
    return since


def agent_log(network: Net, node: Node) -> str:
    return (network.lab.workdir / f"agent-{node.host.name}.log").read_text(errors="replace")


@pytest.fixture
def pair(net: Net) -> Net:  # noqa: F811 - the fixture imported above
    """Both agents up, each peering with the other, ping working."""
    network = net
    network.upsert(network.a)
    network.upsert(network.b)
    for node in (network.a, network.b):
        start(network, node)
    network.wait(
        lambda: network.a.peers() == {network.b.public_key: expected_peer(network.b)}, "a has b"
    )
    network.wait(
        lambda: network.b.peers() == {network.a.public_key: expected_peer(network.a)}, "b has a"
    )
    network.wait(lambda: network.a.host.ping(network.b.ipv4), "ping a -> b")
    return network


def keeps_its_peer(network: Net, seconds: float = WATCH_SECONDS) -> None:
    """For ``seconds``: a always has b, a's agent runs, and a reaches b through the tunnel."""
    a, b = network.a, network.b
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert a.peers() == {b.public_key: expected_peer(b)}
        assert a.agent is not None
        assert a.agent.poll() is None, agent_log(network, a)[-2000:]
        time.sleep(0.2)
    assert a.host.ping(b.ipv4, count=3)


def test_restarted_during_a_redis_outage_and_after_a_reboot(
    pair: Net, redis_server: RedisServer
) -> None:
    network, a, b = pair, pair.a, pair.b
    redis_server.stop()
    since = restart(network, a)
    keeps_its_peer(network)
    assert agent_log(network, a)[since:].count("Redis unreachable") == 1

    # the host reboots, Redis still down: wireguard-go starts with no peers
    assert a.agent is not None
    assert a.host.wg_proc is not None
    stop_process(a.agent, timeout=15)
    stop_process(a.host.wg_proc)
    a.host.start_wireguard()
    assert a.peers() == {}
    start(network, a)
    network.wait(lambda: a.peers() == {b.public_key: expected_peer(b)}, "b restored from the file")
    network.wait(lambda: "10.88.0.1/16" in a.addresses(), "a's address restored")
    network.wait(lambda: a.host.ping(b.ipv4), "ping a -> b after the reboot")
    keeps_its_peer(network)

    redis_server.start()  # Redis back (empty: this server keeps nothing): the pipeline refills
    network.upsert(a)
    network.upsert(b)
    network.wait(
        lambda: "Redis reachable again after" in agent_log(network, a), "a says Redis is back"
    )
    last = network.append(PeerRemove(b.name, "0-2", "0-2", 2))
    network.wait(lambda: a.peers() == {}, "a follows the stream again")
    network.wait(lambda: network.status(a).get("applied_position") == last, "a reports it")


def test_restarted_right_after_flushall(pair: Net) -> None:
    network, a, b = pair, pair.a, pair.b
    network.client.flushall()
    since = restart(network, a)
    keeps_its_peer(network)
    network.wait(lambda: network.status(a).get("held", "") != "", "a reports the hold")
    assert "held until the peers stream reaches that block" in agent_log(network, a)[since:]

    network.upsert(a)  # the pipeline refills the stream up to the applied block
    network.upsert(b)
    network.wait(lambda: network.status(a).get("held") == "", "the hold ends")
    keeps_its_peer(network, seconds=1.0)


def test_a_wg_set_failing_half_way_through_a_batch_is_rolled_back(pair: Net) -> None:
    network, a, b = pair, pair.a, pair.b
    restart(network, a, interval=60.0)  # no timer retry while the failure is looked at
    network.wait(lambda: network.status(a).get("reconcile_interval") == "60.0", "a restarted")
    before = a.peers()
    others = [f"node-{n}" for n in range(3, 9)]
    keys = {n: generate_private_key_file(a.conf_dir / f"{n}.key") for n in others}
    proxy = UapiProxy(a.host.ifname).start()
    try:
        proxy.fail_key = keys["node-6"]
        pipe = network.client.pipeline(transaction=True)  # one batch for the agent
        for i, node in enumerate(others, start=3):
            entry = PeerUpsert(node, keys[node], f"10.88.0.{i}", "0-1", "0-1", 3)
            pipe.xadd(network.keys.peers, to_fields(entry))  # type: ignore[arg-type]
        pipe.execute()
        network.wait(lambda: "refused" in network.status(a).get("last_error", ""), "a reports it")
        assert keys["node-3"] in proxy.passed_before_failure  # part of it was applied...
        assert a.peers() == before  # ... and rolled back
        assert a.host.ping(b.ipv4)

        proxy.fail_key = None
        network.upsert(b)  # any new entry: the next reconcile reads the interface whole
        network.wait(lambda: set(a.peers()) == {b.public_key, *keys.values()}, "all applied")
        network.wait(lambda: network.status(a).get("last_error") == "", "no error any more")
    finally:
        proxy.stop()


def test_a_peer_removed_by_hand_comes_back(pair: Net) -> None:
    network, a, b = pair, pair.a, pair.b
    a.host.exec(["wg", "set", a.host.ifname, "peer", b.public_key, "remove"])
    assert a.peers() == {}
    network.wait(lambda: a.peers() == {b.public_key: expected_peer(b)}, "b back on a")
    network.wait(lambda: a.host.ping(b.ipv4), "ping a -> b again")


def test_a_burst_of_1000_changes_ends_with_the_file_and_interface_as_desired(pair: Net) -> None:
    network, a = pair, pair.a
    nodes = [f"burst-{i:03d}" for i in range(400)]
    keys = [generate_private_key_file(a.conf_dir / f"k{i}.key") for i in range(600)]
    pipe = network.client.pipeline(transaction=False)
    changes = 0
    for i, node in enumerate(nodes):  # 400 joins
        ip = f"10.88.{1 + i // 200}.{1 + i % 200}"
        pipe.xadd(network.keys.peers, to_fields(PeerUpsert(node, keys[i], ip, "0-1", "0-1", 10)))  # type: ignore[arg-type]
        changes += 1
    for i, node in enumerate(nodes[:200]):  # 200 key rotations, 200 moves, 200 leaves
        ip = f"10.88.{1 + i // 200}.{1 + i % 200}"
        rotated = PeerUpsert(node, keys[400 + i], ip, "0-1", "0-1", 11)
        pipe.xadd(network.keys.peers, to_fields(rotated))  # type: ignore[arg-type]
        moved = PeerUpsert(nodes[200 + i], keys[200 + i], f"10.88.9.{1 + i}", "0-1", "0-1", 12)
        pipe.xadd(network.keys.peers, to_fields(moved))  # type: ignore[arg-type]
        pipe.xadd(network.keys.peers, to_fields(PeerRemove(node, "0-1", "0-1", 13)))  # type: ignore[arg-type]
        changes += 3
    pipe.execute()
    assert changes == 1000

    raw = network.client.xrange(network.keys.peers)
    table = PeerTable()
    for _, entry in effective([(i.decode(), from_fields(f)) for i, f in raw]):  # type: ignore[union-attr]
        table.apply(entry)
    nodes_now = sorted(table.records)
    announced = network.client.mget([network.keys.host_announce(n) for n in nodes_now])
    announcements = {n: v for n, v in zip(nodes_now, announced, strict=True) if v is not None}  # type: ignore[arg-type]
    desired = desired_state(table.records, a.name, a.public_key, announcements, Policy())
    assert len(desired.peers) == 201  # b and the 200 that moved
    want_text = render_config(
        desired, listen_port=PORT, private_key_file=str(a.key_file.absolute())
    )
    conf = a.conf_dir / f"{a.host.ifname}.conf"
    want = wanted_peers(desired)

    def interface_as_desired() -> bool:
        have = a.peers()
        return set(have) == set(want) and all(
            have[k].allowed_ips == s.allowed_ips
            and have[k].keepalive == s.keepalive
            and endpoint_matches(s.endpoint, have[k].endpoint, None)
            for k, s in want.items()
        )

    network.wait(interface_as_desired, "the interface as desired")
    network.wait(lambda: conf.read_text() == want_text, "the config file as desired")
    assert re.search(r"^Address = 10\.88\.0\.1/16$", conf.read_text(), re.M)
    assert isinstance(network.client, redis.Redis)
