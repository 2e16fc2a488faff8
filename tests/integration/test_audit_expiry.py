"""``wgchain audit history`` and ``audit verify`` of time-limited passes (ERC-5643).

A real anvil and a real redis-server; the real listener, registry and ipam stages run in
a thread; the audit commands run as ``wgchain`` processes. Block timestamps are pinned
(``evm_setNextBlockTimestamp``) so every expiration is exact.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import redis
from factories import devnet_env, devnet_settings, running_pipeline, wg_key, wgchain

from consumers.audit.entries import utc
from consumers.audit.views import check_views
from consumers.registry.fold import TOKEN_FIELD, RegistryFold
from shared.chain.rpc import RpcClient
from shared.contract.client import AccessNFT
from shared.devnet.anvil import ACCOUNTS, Anvil
from shared.devnet.proc import wait_for
from shared.devnet.redis_server import RedisServer
from shared.keys import Keys

pytestmark = pytest.mark.integration

DAY = 86_400
ALICE, ALICE_KEY = ACCOUNTS[1]
BOB = ACCOUNTS[2][0]


@dataclass
class World:
    keys: Keys
    client: redis.Redis
    env: dict[str, str]
    anvil: Anvil
    nft: AccessNFT
    #: Timestamps of the scenario's blocks: mint, renewal, cancel, renewal after the cancel.
    times: dict[str, int]

    def audit(self, *args: str) -> subprocess.CompletedProcess[str]:
        return wgchain(self.env, "audit", *args, timeout=120)


def _at(anvil: Anvil, when: int) -> int:
    anvil.rpc("evm_setNextBlockTimestamp", [when])
    return when


@pytest.fixture
def world(anvil: Anvil, nft: AccessNFT, redis_server: RedisServer) -> Iterator[World]:
    cfg = devnet_settings(anvil, nft, redis_server, poll_interval=0.05, pool="10.77.0.0/24")
    with running_pipeline(cfg) as pipeline:
        yield _scenario(
            anvil, nft, pipeline.client, cfg.keys(), devnet_env(anvil, nft, redis_server)
        )


def _scenario(
    anvil: Anvil, nft: AccessNFT, client: redis.Redis, keys: Keys, env: dict[str, str]
) -> World:
    """Mints, renewals and a cancel at pinned times, folded by the running pipeline."""
    t0 = int(time.time()) + 1_000
    times = {"mint": _at(anvil, t0)}
    nft.mint(ALICE, "node-a", wg_key(1), duration=30 * DAY)  # token 1: 1 grant + 1 update
    _at(anvil, t0 + 1)
    nft.mint(BOB, "node-b", wg_key(2))  # token 2: perpetual, never named
    times["renew"] = _at(anvil, t0 + 10)
    nft.renew(1, DAY)
    times["cancel"] = _at(anvil, t0 + 20)
    nft.with_signer(ALICE_KEY).cancel(1)
    times["again"] = _at(anvil, t0 + 30)
    nft.renew(1, 60)
    _at(anvil, t0 + 10_000)  # the log's clock passes the last expiration
    nft.with_signer(ALICE_KEY).set_key(wg_key(3))
    w = World(keys, client, env, anvil, nft, times)

    def settled() -> bool:
        last = client.xrevrange(keys.events, count=1)
        return (
            client.xlen(keys.events) >= 7
            and bool(last)
            and client.get(keys.position("registry")) == last[0][0]
        )

    wait_for(settled, timeout=60, what="the pipeline to fold the scenario")
    return w


def test_history_shows_the_subscription_renewals_cancellation_and_expiry(world: World) -> None:
    res = world.audit("history", "--node", "node-a", "--json")
    assert res.returncode == 0, res.stderr
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    t = world.times
    events = [r["event"] for r in rows]
    assert events == [
        "NodeAccessGranted",
        "SubscriptionUpdate",
        "SubscriptionUpdate",
        "SubscriptionUpdate",
        "SubscriptionUpdate",
        "Expired",
        "PublicKeyUpdated",
    ]
    changes = [r["fields"].get("change") for r in rows[1:5]]
    assert changes == ["subscribed", "renewed", "cancelled", "renewed"]
    assert rows[1]["fields"]["expiration"] == t["mint"] + 30 * DAY
    assert rows[2]["fields"]["expiration"] == t["mint"] + 31 * DAY  # from the expiration
    assert rows[3]["fields"]["expiration"] == 0
    assert rows[4]["fields"]["expiration"] == t["again"] + 60  # from now, after the cancel
    assert rows[5]["time"] == utc(t["again"] + 60)
    assert rows[5]["fields"] == {"token_id": 1, "expiration": t["again"] + 60}
    assert rows[4]["state"]["expires"] == utc(t["again"] + 60)

    text = world.audit("history", "--node", "node-a")
    assert text.returncode == 0, text.stderr
    assert "SubscriptionUpdate token_id=1 expiration=0 change=cancelled expires=cancelled" in (
        text.stdout
    )
    assert " Expired token_id=1 " in text.stdout

    perpetual = world.audit("history", "--node", "node-b", "--json")
    rows_b = [json.loads(line) for line in perpetual.stdout.splitlines()]
    assert [r["event"] for r in rows_b] == ["NodeAccessGranted"]
    assert "expires" not in rows_b[0]["state"]


def test_verify_compares_expires_at_with_the_expirations_it_holds(world: World) -> None:
    res = world.audit("verify", "--wait", "5")
    assert res.returncode == 0, res.stdout + res.stderr
    assert [ln.split()[0] for ln in res.stdout.splitlines()] == ["OK", "OK", "OK"]
    assert "2 tokens, 2 owners, 1 expirations" in res.stdout  # node-b's token is never asked

    # the same check, fed a wrong expiration: it names the token and both values
    state = RegistryFold().load(
        {k.decode(): v for k, v in world.client.hgetall(world.keys.state("registry")).items()}
    )
    block = world.anvil.block_number()
    rpc = RpcClient([world.anvil.url])
    right = world.times["again"] + 60
    problems, _, _ = check_views(rpc, world.nft.address.lower(), block, state, {1: right})
    assert problems == []
    problems, _, _ = check_views(rpc, world.nft.address.lower(), block, state, {1: right + 1})
    assert [p.what for p in problems] == [
        f"registry token 1: expires {right + 1} in the registry, the contract says {right}"
    ]
    # a token the contract never put on a subscription answers PERPETUAL, not the registry's
    problems, _, _ = check_views(rpc, world.nft.address.lower(), block, state, {2: 5})
    assert [p.what for p in problems] == [
        f"registry token 2: expires 5 in the registry, the contract says {2**64 - 1}"
    ]


def test_verify_names_a_registry_expiration_the_contract_does_not_have(world: World) -> None:
    field = f"{TOKEN_FIELD}1"
    state_key = world.keys.state("registry")
    record = json.loads(world.client.hget(state_key, field))  # type: ignore[arg-type]
    right = world.times["again"] + 60
    assert record["expires"] == right  # the registry holds the fact
    record["expires"] = right + 3600  # an intruder extends a pass in Redis
    world.client.hset(state_key, field, json.dumps(record))

    res = world.audit("verify", "--wait", "5")

    assert res.returncode == 1
    assert (
        f"registry token 1: expires {right + 3600} in the registry, the contract says {right}"
        in res.stdout
    )
