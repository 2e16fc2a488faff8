"""contract -> listener -> registry -> ipam on a real anvil and a real Redis."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

import msgspec
import pytest
import redis
from factories import KEY_A, KEY_B, KEY_C, KEY_D, decoded, devnet_settings, running_pipeline

from consumers.ipam import allocate
from consumers.registry import fold as registry_fold
from shared.contract.client import AccessNFT
from shared.devnet.anvil import ACCOUNTS, Anvil
from shared.devnet.proc import wait_for
from shared.devnet.redis_server import RedisServer
from shared.events import (
    Anomaly,
    LogEntry,
    NodeChanged,
    NodeJoined,
    NodeLeft,
    PeerRemove,
    PeerUpsert,
)
from shared.keys import Keys
from shared.settings import Settings


@pytest.fixture
def pipeline(
    anvil: Anvil, nft: AccessNFT, redis_server: RedisServer
) -> Iterator[tuple[Settings, redis.Redis]]:
    cfg = devnet_settings(anvil, nft, redis_server, poll_interval=0.05, pool="10.77.0.0/24")
    with running_pipeline(cfg) as running:
        yield cfg, running.client


def _upserts(client: redis.Redis, keys: Keys) -> dict[str, PeerUpsert]:
    out: dict[str, PeerUpsert] = {}
    for _, e in decoded(client, keys.peers):
        if isinstance(e, PeerUpsert):
            out[e.node_id] = e
        elif isinstance(e, PeerRemove):
            out.pop(e.node_id, None)
    return out


def test_chain_to_peers(pipeline, nft):
    cfg, client = pipeline
    keys = cfg.keys()
    (a_owner, _), (b_owner, b_key), (c_owner, c_key) = ACCOUNTS[1], ACCOUNTS[2], ACCOUNTS[3]
    nft.mint(a_owner, "node-a", KEY_A)
    nft.mint(b_owner, "node-b", KEY_B)
    tok_c = nft.mint(c_owner, "node-c", "").token_id  # no key yet: a member, not live
    nft.mint(ACCOUNTS[4][0], "../etc", "x\n[Peer]\nAllowedIPs = 0.0.0.0/0")  # hostile

    def peers_when(check):
        def probe():
            upserts = _upserts(client, keys)
            return upserts if check(upserts) else None

        return probe

    live = wait_for(
        peers_when(lambda u: set(u) == {"node-a", "node-b"}),
        timeout=30,
        what="peers for node-a and node-b",
    )
    pool = ipaddress.IPv4Network(cfg.pool)
    addresses = {p.ipv4 for p in live.values()}
    assert len(addresses) == 2
    assert all(ipaddress.IPv4Address(a) in pool for a in addresses)
    assert live["node-a"].public_key == KEY_A

    nft.with_signer(c_key).set_key(KEY_C)  # node-c becomes live through its owner's key
    nft.with_signer(b_key).set_key(KEY_D)  # node-b re-keyed, keeps its address
    nft.with_signer(ACCOUNTS[1][1]).transfer(1, ACCOUNTS[9][0])  # to a keyless owner
    nft.revoke(tok_c or 0)

    final = wait_for(
        peers_when(lambda u: set(u) == {"node-b"} and u["node-b"].public_key == KEY_D),
        timeout=30,
        what="only node-b left, with its new key",
    )
    assert final["node-b"].ipv4 == live["node-b"].ipv4  # sticky across the key change

    registry = decoded(client, keys.registry)
    kinds = [(type(e).__name__, getattr(e, "node_id", "")) for _, e in registry]
    assert ("NodeJoined", "node-c") in kinds
    assert ("NodeChanged", "node-b") in kinds
    left = {e.node_id: e.reason for _, e in registry if isinstance(e, NodeLeft)}
    assert left == {"node-a": "transferred", "node-c": "revoked"}
    anomalies = [e for _, e in registry if isinstance(e, Anomaly)]
    assert anomalies, "the hostile grant must be recorded"
    for _, e in registry:
        if isinstance(e, NodeJoined | NodeChanged):
            assert "\n" not in e.public_key
            assert e.node_id != "../etc"

    # every output names its cause, and the streams equal a clean fold of the events
    events = decoded(client, keys.events)
    event_ids = {i for i, _ in events}
    assert all(getattr(e, "cause", None) in event_ids for _, e in registry)
    _, expected_registry = registry_fold.fold((i, e) for i, e in events if isinstance(e, LogEntry))
    assert [msgspec.json.encode(e) for _, e in registry] == [
        msgspec.json.encode(e) for e in expected_registry
    ]
    ipam = allocate.IpamFold.from_settings(cfg)
    _, expected_peers = allocate.fold(registry, ipam=ipam)
    assert [msgspec.json.encode(e) for _, e in decoded(client, keys.peers)] == [
        msgspec.json.encode(e) for e in expected_peers
    ]
