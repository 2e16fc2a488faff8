"""Access checks on a real anvil, a real Redis and the real listener and registry stage.

The listener and the registry stage are driven step by step, so each test knows
exactly what the registry stage has committed when it asks.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgspec
import pytest
import redis
from factories import KEY_A, KEY_B, KEY_C, catch_up, clean_env, devnet_settings, wgchain

from consumers.access.checker import AccessChecker, InvalidArgument
from consumers.access.decide import Decision
from consumers.deadletters import letters
from consumers.registry.fold import FOLD, RegistryFold
from consumers.stage import Stage
from producers.listener.listener import Listener, open_listener
from shared.contract.client import AccessNFT
from shared.devnet.anvil import ACCOUNTS, Anvil
from shared.devnet.proc import free_port, wait_for
from shared.devnet.redis_server import RedisServer
from shared.events import (
    GENESIS_DIGEST,
    LogEntry,
    NodeAccessGranted,
    Retracted,
    from_fields,
    to_fields,
)
from shared.keys import Keys
from shared.settings import Settings

pytestmark = pytest.mark.integration


@dataclass
class Net:
    cfg: Settings
    keys: Keys
    client: redis.Redis
    listener: Listener
    registry: Stage[object]

    def append(self) -> None:
        """The listener appends everything final (confirmations 0)."""
        catch_up(self.listener)

    def fold(self) -> None:
        """The registry stage commits everything appended."""
        while self.registry.step(block_ms=None):
            pass

    def settle(self) -> None:
        self.append()
        self.fold()


@pytest.fixture
def net(anvil: Anvil, nft: AccessNFT, redis_server: RedisServer) -> Iterator[Net]:
    cfg = devnet_settings(anvil, nft, redis_server)
    client = redis.Redis.from_url(redis_server.url)
    listener = open_listener(cfg, client)
    try:
        yield Net(cfg, cfg.keys(), client, listener, Stage(client, cfg.keys(), FOLD))
    finally:
        listener.rpc.close()
        client.close()


def test_every_reason_from_the_chain(net: Net, nft: AccessNFT) -> None:
    (a, _), (b, _), (c, _), (d, _), (e, _), (f, _) = ACCOUNTS[1:7]
    nft.mint(a, "node-a", KEY_A)
    nft.mint(b, "node-b", KEY_B)
    nft.mint(c, "node-c", "")  # a member without a key
    nft.mint(d, "node-d", KEY_A)  # same key as node-a: the lower token keeps it
    revoked = nft.mint(e, "node-e", KEY_C).token_id
    nft.revoke(revoked or 0)
    nft.mint(f, "node-f", "x\n[Peer]\nAllowedIPs = 0.0.0.0/0")  # hostile key
    net.settle()

    with AccessChecker(net.client, net.keys) as checker:
        reasons = {
            "granted": checker.check_key("node-a", KEY_A),
            "key-mismatch": checker.check_key("node-a", KEY_B),
            "no-key": checker.check_key("node-c", KEY_C),
            "key-conflict": checker.check_key("node-d", KEY_A),
            "revoked": checker.check_key("node-e", KEY_C),
            "invalid-key": checker.check_key("node-f", KEY_C),
            "not-a-member": checker.check_key("node-z", KEY_A),
        }
        by_address = {
            "granted": checker.check_address("node-b", b),
            "not-owner": checker.check_address("node-b", a),
            "revoked": checker.check_address("node-e", e),
            "not-a-member": checker.check_address("node-z", a),
        }
    assert {name: d.reason for name, d in reasons.items()} == {
        "granted": "granted",
        "key-mismatch": "key-mismatch",
        "no-key": "no-key",
        "key-conflict": "key-conflict",
        "revoked": "revoked",
        "invalid-key": "invalid-key",
        "not-a-member": "not-a-member",
    }
    assert [n for n, d in reasons.items() if d.granted] == ["granted"]
    assert reasons["granted"].owner == a.lower()
    assert reasons["granted"].position == net.registry.position
    assert "\n" not in reasons["invalid-key"].detail
    assert {name: d.reason for name, d in by_address.items()} == {
        "granted": "granted",
        "not-owner": "not-owner",
        "revoked": "revoked",
        "not-a-member": "not-a-member",
    }
    # the contract agrees with every address answer
    for name, decision in by_address.items():
        owner = {"granted": b, "not-owner": a, "revoked": e, "not-a-member": a}[name]
        node = decision.node
        assert nft.has_node_access(owner, node) == decision.granted


def test_malformed_arguments_are_refused(net: Net) -> None:
    with AccessChecker(net.client, net.keys) as checker:
        for call in (
            lambda: checker.check_key("../etc", KEY_A),
            lambda: checker.check_key("node-a", "not a key"),
            lambda: checker.check_key("node-a", KEY_A[:-2] + "x="),
            lambda: checker.check_address("node-a", "0x1234"),
        ):
            with pytest.raises(InvalidArgument):
                call()


@pytest.mark.parametrize("follow", [False, True], ids=["no-follower", "follower"])
def test_a_revoke_shows_as_soon_as_the_registry_commits_it(
    net: Net, nft: AccessNFT, follow: bool
) -> None:
    token = nft.mint(ACCOUNTS[1][0], "node-a", KEY_A).token_id or 0
    net.settle()
    with AccessChecker(net.client, net.keys, follow=follow) as checker:
        assert checker.check_key("node-a", KEY_A).granted
        nft.revoke(token)
        net.append()  # in the log, not yet folded by the registry stage
        assert checker.check_key("node-a", KEY_A).granted, "answers follow the registry stage"
        net.fold()  # the registry stage commits the revoke ...
        decision = checker.check_key("node-a", KEY_A)  # ... and the very next check sees it
        assert (decision.granted, decision.reason) == (False, "revoked")
        assert decision.position == net.registry.position
        # it caught up by folding the new entries, not by reloading the whole state
        assert checker.cache.reloads == 1
        assert checker.cache.folded >= 1


def test_a_bounded_check_answers_from_the_copy_within_its_bound(net: Net, nft: AccessNFT) -> None:
    token = nft.mint(ACCOUNTS[1][0], "node-a", KEY_A).token_id or 0
    net.settle()
    # no follower: nothing refreshes the copy behind the checker's back
    with AccessChecker(net.client, net.keys, consistency="bounded", max_age=3600) as checker:
        assert checker.check_key("node-a", KEY_A).granted
        reads = checker.cache.reads
        nft.revoke(token)
        net.settle()
        stale = checker.check_key("node-a", KEY_A)
        assert stale.granted, "within its bound a bounded check makes no round trip"
        assert checker.cache.reads == reads
        assert stale.position != net.registry.position
        strict = checker.check_key("node-a", KEY_A, consistency="strict")
        assert (strict.granted, strict.reason) == (False, "revoked")
        assert strict.position == net.registry.position
        assert checker.cache.reads == reads + 1
    with AccessChecker(net.client, net.keys, consistency="bounded", max_age=0) as checker:
        checker.cache.verified_at -= 1  # a copy older than its bound is refreshed first
        assert checker.check_key("node-a", KEY_A).reason == "revoked"
    with pytest.raises(InvalidArgument, match="consistency"):
        AccessChecker(net.client, net.keys, consistency="eventual")
    with (
        AccessChecker(net.client, net.keys) as checker,
        pytest.raises(InvalidArgument, match="consistency"),
    ):
        checker.check_key("node-a", KEY_A, consistency="eventual")


def test_strict_checks_share_their_position_reads(net: Net, nft: AccessNFT) -> None:
    nft.mint(ACCOUNTS[1][0], "node-a", KEY_A)
    net.settle()
    callers, rounds = 16, 20
    with AccessChecker(net.client, net.keys) as checker:
        reads = checker.cache.reads
        start = threading.Barrier(callers)
        answers: list[Decision] = []

        def caller() -> None:
            start.wait()
            answers.extend(checker.check_key("node-a", KEY_A) for _ in range(rounds))

        threads = [threading.Thread(target=caller) for _ in range(callers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(answers) == callers * rounds
        assert all(a.granted and a.position == net.registry.position for a in answers)
        made = checker.cache.reads - reads
        assert 1 <= made < callers * rounds, "concurrent strict checks share position reads"


def test_a_strict_check_never_uses_a_read_that_began_before_it(net: Net, nft: AccessNFT) -> None:
    token = nft.mint(ACCOUNTS[1][0], "node-a", KEY_A).token_id or 0
    net.settle()
    nft.revoke(token)
    net.append()
    with AccessChecker(net.client, net.keys) as checker:
        cache = checker.cache
        mark = cache._stage_mark
        in_read, go_on = threading.Event(), threading.Event()

        def slow_mark() -> Any:
            found = mark()  # the stage has not folded the revoke yet: this read predates it
            if not in_read.is_set():
                in_read.set()
                go_on.wait(10)
            return found

        cache._stage_mark = slow_mark  # type: ignore[method-assign]
        early: list[Decision] = []
        first = threading.Thread(target=lambda: early.append(checker.check_key("node-a", KEY_A)))
        first.start()
        assert in_read.wait(10)
        net.fold()  # the registry commits the revoke while that read is in flight ...
        late: list[Decision] = []
        second = threading.Thread(target=lambda: late.append(checker.check_key("node-a", KEY_A)))
        second.start()  # ... and a check that starts now must not share the older read
        wait_for(lambda: cache._flight._waiters, timeout=10, what="the second check waiting")  # type: ignore[attr-defined]
        go_on.set()
        first.join(10)
        second.join(10)
        assert early[0].granted, "the first read began before the commit"
        assert (late[0].granted, late[0].reason) == (False, "revoked")


def test_the_follower_catches_up_without_being_asked(net: Net, nft: AccessNFT) -> None:
    nft.mint(ACCOUNTS[1][0], "node-a", KEY_A)
    with AccessChecker(net.client, net.keys, follow=True) as checker:
        start = checker.cache.position
        net.settle()
        wait_for(
            lambda: checker.cache.position == net.registry.position,
            timeout=10,
            what="the follower folding the grant",
        )
        assert checker.cache.position != start
        assert checker.cache.since_block("node-a") is not None


def test_at_block_answers_from_the_log(net: Net, nft: AccessNFT) -> None:
    owner, owner_key = ACCOUNTS[1]
    granted = nft.mint(owner, "node-a", KEY_A)
    rekeyed = nft.with_signer(owner_key).set_key(KEY_B)
    revoked = nft.revoke(granted.token_id or 0)
    net.append()  # the log alone: --at-block does not need the registry stage
    with AccessChecker(net.client, net.keys) as checker:
        at = checker.check_key
        assert at("node-a", KEY_A, at_block=granted.block_number - 1).reason == "not-a-member"
        assert at("node-a", KEY_A, at_block=granted.block_number).granted
        assert at("node-a", KEY_A, at_block=rekeyed.block_number).reason == "key-mismatch"
        assert at("node-a", KEY_B, at_block=rekeyed.block_number).granted
        assert at("node-a", KEY_B, at_block=revoked.block_number).reason == "revoked"
        assert at("node-a", KEY_B, at_block=revoked.block_number).at_block == revoked.block_number
        owned = checker.check_address("node-a", owner, at_block=rekeyed.block_number)
        assert owned.granted
        with pytest.raises(InvalidArgument, match="beyond the log"):
            at("node-a", KEY_A, at_block=revoked.block_number + 1000)
        # the live projection has not folded anything yet
        assert at("node-a", KEY_B).reason == "not-a-member"


def test_at_block_judges_an_expiration_at_that_blocks_time(net: Net, nft: AccessNFT) -> None:
    granted = nft.mint(ACCOUNTS[1][0], "node-a", KEY_A, duration=600)
    expires = nft.expires_at(granted.token_id or 0)
    nft.w3.provider.make_request("evm_increaseTime", [3600])  # type: ignore[arg-type]
    later = nft.mint(ACCOUNTS[2][0], "node-b", KEY_B)  # a block an hour on, chain time
    net.settle()
    with AccessChecker(net.client, net.keys) as checker:
        at = checker.check_key
        assert at("node-a", KEY_A, at_block=granted.block_number).granted
        old = at("node-a", KEY_A, at_block=later.block_number)
        assert (old.granted, old.reason, old.expires) == (False, "expired", expires)
        # Now, by this host's clock, the pass of 10 minutes has not expired yet.
        assert at("node-a", KEY_A).granted


def test_a_kept_answer_does_not_outlive_the_pass(net: Net, nft: AccessNFT) -> None:
    token = nft.mint(ACCOUNTS[1][0], "node-a", KEY_A, duration=4).token_id or 0
    net.settle()
    deadline = nft.expires_at(token) + 0.5
    with AccessChecker(net.client, net.keys, consistency="bounded", expiry_grace=0.5) as checker:
        assert checker.check_key("node-a", KEY_A).granted  # kept: nothing is folded after it
        assert time.time() < deadline, "too slow to check before the pass expires"
        wait_for(lambda: time.time() >= deadline, timeout=10, what="the pass's deadline")
        late = checker.check_key("node-a", KEY_A)
        assert (late.granted, late.reason) == (False, "expired")


def _check(net: Net, *args: str, redis_url: str | None = None) -> subprocess.CompletedProcess[str]:
    env = clean_env(
        WGCHAIN_REDIS_URL=redis_url or net.cfg.redis_url,
        WGCHAIN_CHAIN_ID=str(net.cfg.chain_id),
        WGCHAIN_CONTRACT=net.cfg.contract,
    )
    return wgchain(env, "check", *args)


def _one_line(res: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    return lines[0]


def test_cli_exit_codes(net: Net, nft: AccessNFT) -> None:
    owner = ACCOUNTS[1][0]
    minted = nft.mint(owner, "node-a", KEY_A)
    net.settle()

    granted = _check(net, "--node", "node-a", "--key", KEY_A)
    assert granted.returncode == 0, granted.stderr
    assert granted.stdout.startswith("granted — node node-a — live member")

    denied = _check(net, "--node", "node-a", "--key", KEY_B)
    assert denied.returncode == 1
    assert denied.stdout.startswith("denied: key-mismatch")

    by_address = _check(net, "--node", "node-a", "--address", owner, "--json")
    assert by_address.returncode == 0
    assert msgspec.json.decode(by_address.stdout)["reason"] == "granted"

    past = _check(
        net, "--node", "node-a", "--key", KEY_A, "--at-block", str(minted.block_number - 1)
    )
    assert past.returncode == 1
    assert "not-a-member" in past.stdout

    for args in (
        ["--node", "node-a", "--key", "nope"],
        ["--node", "../etc", "--key", KEY_A],
        ["--node", "node-a"],
        ["--node", "node-a", "--key", KEY_A, "--address", owner],
        ["--node", "node-a", "--key", KEY_A, "--at-block", "soon"],
        ["--node", "node-a", "--key", KEY_A, "--at-block", "99999999"],
    ):
        bad = _check(net, *args)
        assert bad.returncode == 2, (args, bad.stdout, bad.stderr)
        line = _one_line(bad)
        assert line.startswith("wgchain: "), line  # the common error style
        assert "--help" in line or line.startswith("wgchain: --"), line

    down = _check(
        net, "--node", "node-a", "--key", KEY_A, redis_url=f"redis://127.0.0.1:{free_port()}/0"
    )
    assert down.returncode == 3
    assert "Redis" in _one_line(down)


# --- the cache against what the stage does with retractions and dead letters ----------------

SYNTH = Keys(31337, "0x" + "ab" * 20)


def _append(client: redis.Redis, *entries: LogEntry | Retracted) -> list[str]:
    """Append digest-chained entries to the events stream, and move the cursor past them."""
    last: Any = client.xrevrange(SYNTH.events, count=1)
    prev = from_fields(last[0][1]).digest if last else GENESIS_DIGEST  # type: ignore[union-attr]
    ids = []
    for entry in entries:
        chained = entry.with_digest(prev)
        prev = chained.digest
        ids.append(client.xadd(SYNTH.events, to_fields(chained)).decode())  # type: ignore[arg-type,union-attr]
        client.hset(SYNTH.cursor, "block", entry.block_number)
    return ids


def _grant(block: int, token: int, node: str, key: str) -> LogEntry:
    owner = f"0x{token:040x}"
    event = NodeAccessGranted(token, node, owner, key)
    return LogEntry(31337, SYNTH.contract, block, f"0x{block:064x}", "0x01", 0, block, event)


def _drain(stage: Stage[Any]) -> None:
    while stage.step(block_ms=None):
        pass


def test_a_retraction_makes_the_cache_reload(redis_client: redis.Redis) -> None:
    [granted] = _append(redis_client, _grant(1, 1, "node-a", KEY_A))
    stage = Stage(redis_client, SYNTH, FOLD)
    _drain(stage)
    with AccessChecker(redis_client, SYNTH) as checker:
        assert checker.check_key("node-a", KEY_A).granted
        _append(
            redis_client, Retracted(entry_id=granted, block_number=1, block_hash="0x" + "1" * 64)
        )
        _drain(stage)  # the stage rebuilds from the effective log
        assert checker.check_key("node-a", KEY_A).reason == "not-a-member"
        assert checker.cache.reloads == 2
        assert checker.check_key("node-a", KEY_A, at_block=1).reason == "not-a-member"


class _Buggy(RegistryFold):
    """The registry rules as a stage of another version might run them: one entry fails."""

    def __init__(self, broken: set[str]) -> None:
        self.broken = broken

    def apply(self, state: Any, entry_id: str, entry: Any) -> Any:
        if entry_id in self.broken:
            raise RuntimeError("a bug in this version of the stage")
        return super().apply(state, entry_id, entry)


def test_the_cache_skips_what_the_stage_dead_lettered_and_follows_a_redrive(
    redis_client: redis.Redis,
) -> None:
    with AccessChecker(redis_client, SYNTH) as checker:
        _, b = _append(redis_client, _grant(1, 1, "node-a", KEY_A), _grant(2, 2, "node-b", KEY_B))
        fold = _Buggy({b})
        stage = Stage(redis_client, SYNTH, fold)
        _drain(stage)  # node-b's grant is dead-lettered by this stage
        assert checker.check_key("node-a", KEY_A).granted
        assert checker.check_key("node-b", KEY_B).reason == "not-a-member", "as the stage has it"

        fold.broken.clear()  # the bug is fixed; the operator re-drives the dead letter
        [(dead_id, _)] = redis_client.xrange(SYNTH.dead("registry"))  # type: ignore[misc]
        letters.queue(
            redis_client, SYNTH, letters.find(redis_client, SYNTH, dead_id.decode(), ("registry",))
        )
        position = stage.position
        _drain(stage)
        stage.redrive()
        assert stage.position == position  # the state changed, the position did not
        assert checker.check_key("node-b", KEY_B).granted
        assert checker.cache.reloads == 2
