"""The listener against a real anvil and a real Redis.

The events stream is compared with an independent ``eth_getLogs`` scan (topic
hashes computed here, events decoded by web3), including after SIGKILLs of a
``wgchain listen`` subprocess at varying moments.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
import redis
from eth_utils.crypto import keccak
from factories import WGCHAIN, catch_up, clean_env, log_entries, make_listener, rpc

from producers.listener import ahead as ahead_module
from producers.listener import listener as listener_module
from producers.listener.listener import open_listener
from producers.listener.store import Cursor, ListenerStore
from shared.chain.rpc import RpcClient
from shared.contract.client import AccessNFT
from shared.devnet.anvil import ACCOUNTS, Anvil
from shared.devnet.proc import free_port, stop_process, wait_for
from shared.devnet.redis_server import RedisServer
from shared.errors import ChainError, CommitConflict, Fenced
from shared.events import GENESIS_DIGEST, LogEntry
from shared.keys import Keys
from shared.settings import Settings

pytestmark = pytest.mark.integration

SIGNATURES = {
    "NodeAccessGranted(uint256,string,address,string)": "NodeAccessGranted",
    "NodeAccessRevoked(uint256,string)": "NodeAccessRevoked",
    "NodeAccessTransferred(uint256,address,address)": "NodeAccessTransferred",
    "PublicKeyUpdated(address,string)": "PublicKeyUpdated",
}
TOPICS = {"0x" + keccak(text=sig).hex(): name for sig, name in SIGNATURES.items()}
KEYS = [f"{chr(65 + i)}" * 43 + "=" for i in range(8)]


# --- helpers ------------------------------------------------------------------------------


def scan(url: str, contract: str, to_block: int) -> list[tuple[int, int, str]]:
    """Independent scan: (block, logIndex, tx hash) of the contract's four events, chain order."""
    logs = rpc(
        url,
        "eth_getLogs",
        [
            {
                "address": contract,
                "topics": [list(TOPICS)],
                "fromBlock": "0x0",
                "toBlock": hex(to_block),
            }
        ],
    )
    found = [
        (int(x["blockNumber"], 16), int(x["logIndex"], 16), x["transactionHash"].lower())
        for x in logs
    ]
    return sorted(found)


def xrange(client: redis.Redis, key: str) -> list[tuple[bytes, dict[bytes, bytes]]]:
    raw: Any = client.xrange(key)
    return list(raw)


def positions(entries: list[LogEntry]) -> list[tuple[int, int, str]]:
    return [(e.block_number, e.log_index, e.tx_hash) for e in entries]


def assert_chain(entries: list[LogEntry], cursor: Cursor | None) -> None:
    prev = GENESIS_DIGEST
    for entry in entries:
        assert entry.prev == prev
        assert entry.digest_ok()
        prev = entry.digest
    assert cursor is not None
    assert cursor.digest == prev


def keys_of(anvil: Anvil, nft: AccessNFT) -> Keys:
    return Keys(anvil.chain_id, nft.address.lower())


def some_history(nft: AccessNFT) -> None:
    """Mints, a key change, a transfer and a revoke (each in its own block)."""
    holder, other = ACCOUNTS[1], ACCOUNTS[2]
    t1 = nft.mint(holder[0], "alpha", KEYS[0]).token_id
    nft.mint(other[0], "beta", KEYS[1])
    t3 = nft.mint(holder[0], "gamma", "")
    nft.with_signer(holder[1]).set_key(KEYS[2])
    assert t1 is not None
    nft.with_signer(holder[1]).transfer(t1, ACCOUNTS[3][0])
    assert t3.token_id is not None
    nft.revoke(t3.token_id)


# --- tests --------------------------------------------------------------------------------


def test_stream_equals_independent_scan_and_web3_decoding(
    anvil: Anvil, nft: AccessNFT, redis_client: redis.Redis
) -> None:
    some_history(nft)
    anvil.mine(5)
    listener = make_listener(redis_client, anvil.url, nft.address)
    catch_up(listener)

    head = anvil.block_number()
    keys = keys_of(anvil, nft)
    entries = log_entries(redis_client, keys)
    expected = scan(anvil.url, nft.address, head)
    assert len(expected) == 6  # 3 grants, a key update, a transfer, a revoke
    assert positions(entries) == expected
    assert_chain(entries, listener.store.load_cursor())
    cursor = listener.store.load_cursor()
    assert cursor is not None
    assert cursor.block == head
    assert cursor.hash == rpc(anvil.url, "eth_getBlockByNumber", [hex(head), False])["hash"]

    # Every decoded event equals web3's decoding of the same log.
    raw_logs = nft.w3.eth.get_logs(
        {"address": nft.contract.address, "fromBlock": 0, "toBlock": head}
    )
    by_position = {(e.block_number, e.log_index): e for e in entries}
    compared = 0
    for raw in raw_logs:
        name = TOPICS.get("0x" + bytes(raw["topics"][0]).hex())
        if name is None:
            continue
        args = getattr(nft.contract.events, name)().process_log(raw)["args"]
        event = by_position[(raw["blockNumber"], raw["logIndex"])].event
        assert type(event).__name__ == name
        values = {
            k: v.lower() if isinstance(v, str) and v.startswith("0x") else v
            for k, v in args.items()
        }
        mine = {
            "NodeAccessGranted": lambda e: {
                "tokenId": e.token_id,
                "nodeId": e.node_id,
                "owner": e.owner,
                "wireguardPublicKey": e.public_key,
            },
            "NodeAccessRevoked": lambda e: {"tokenId": e.token_id, "nodeId": e.node_id},
            "NodeAccessTransferred": lambda e: {
                "tokenId": e.token_id,
                "from": e.from_address,
                "to": e.to_address,
            },
            "PublicKeyUpdated": lambda e: {"owner": e.owner, "wireguardPublicKey": e.public_key},
        }[name](event)
        assert mine == values
        compared += 1
    assert compared == len(entries)


def test_no_duplicates_when_caught_up_and_stepped_again(
    anvil: Anvil, nft: AccessNFT, redis_client: redis.Redis
) -> None:
    some_history(nft)
    listener = make_listener(redis_client, anvil.url, nft.address, max_block_range=100)
    catch_up(listener)
    first = positions(log_entries(redis_client, keys_of(anvil, nft)))
    assert listener.step() == 0
    # A fresh listener (a restart) continues from the cursor, it does not re-append.
    again = make_listener(redis_client, anvil.url, nft.address)
    nft.mint(ACCOUNTS[4][0], "delta", KEYS[3])
    catch_up(again)
    after = positions(log_entries(redis_client, keys_of(anvil, nft)))
    assert after[: len(first)] == first
    assert after == scan(anvil.url, nft.address, anvil.block_number())
    assert len(after) == len(set(after)) == len(first) + 1


def test_a_large_read_is_committed_in_parts_of_whole_blocks(
    anvil: Anvil, nft: AccessNFT, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    some_history(nft)  # six logs in six blocks
    monkeypatch.setattr(listener_module, "COMMIT_PART", 2)
    monkeypatch.setattr(ahead_module, "FIRST_BLOCKS", 100)  # one read of the whole history
    listener = make_listener(redis_client, anvil.url, nft.address, max_block_range=100)
    commits: list[tuple[int, int]] = []
    commit = listener.store.commit

    def counted(expected: Any, cursor: Cursor, entries: Any, *args: Any, **kw: Any) -> Any:
        commits.append((cursor.block, len(entries)))
        if len(commits) == 2:  # another writer moves the cursor between two parts
            raise CommitConflict("cursor is at 99, expected ...")
        return commit(expected, cursor, entries, *args, **kw)

    listener.store.commit = counted  # type: ignore[method-assign]
    assert listener.step() == 0, "a lost race ends the step; the first part stays committed"
    first = log_entries(redis_client, keys_of(anvil, nft))
    assert len(first) == commits[0][1] == 2
    cursor = listener.store.load_cursor()
    assert cursor is not None
    assert cursor.block == first[-1].block_number
    assert_chain(first, cursor)
    assert listener.cursor == cursor, "reloaded after the lost race"

    catch_up(listener)
    entries = log_entries(redis_client, keys_of(anvil, nft))
    assert positions(entries) == scan(anvil.url, nft.address, anvil.block_number())
    assert_chain(entries, listener.store.load_cursor())
    parts = [n for _, n in commits[2:]]
    assert parts == [2, 2], commits
    assert len(entries) == 6
    assert commits[-1][0] == anvil.block_number(), "the last part ends at the range's end"


def test_confirmations_hold_back_the_last_blocks(
    anvil: Anvil, nft: AccessNFT, redis_client: redis.Redis
) -> None:
    confirmations = 3
    listener = make_listener(redis_client, anvil.url, nft.address, confirmations=confirmations)
    anvil.mine(5)
    minted = nft.mint(ACCOUNTS[1][0], "alpha", KEYS[0])
    catch_up(listener)
    keys = keys_of(anvil, nft)
    assert log_entries(redis_client, keys) == []
    cursor = listener.store.load_cursor()
    assert cursor is not None
    assert cursor.block == anvil.block_number() - confirmations

    anvil.mine(confirmations - 1)
    catch_up(listener)
    assert log_entries(redis_client, keys) == []

    anvil.mine(1)
    catch_up(listener)
    entries = log_entries(redis_client, keys)
    assert [e.block_number for e in entries] == [minted.block_number]
    assert entries[0].tx_hash == minted.tx_hash.lower()


def test_run_loop_appends_new_events_and_stops(
    anvil: Anvil, nft: AccessNFT, redis_client: redis.Redis
) -> None:
    listener = make_listener(redis_client, anvil.url, nft.address)
    stop = threading.Event()
    thread = threading.Thread(target=listener.run, args=(stop,), daemon=True)
    thread.start()
    try:
        keys = keys_of(anvil, nft)
        nft.mint(ACCOUNTS[1][0], "alpha", KEYS[0])
        wait_for(lambda: len(log_entries(redis_client, keys)) == 1, timeout=20, what="first entry")
        nft.mint(ACCOUNTS[2][0], "beta", KEYS[1])
        wait_for(lambda: len(log_entries(redis_client, keys)) == 2, timeout=20, what="second entry")
    finally:
        stop.set()
        thread.join(timeout=20)
    assert not thread.is_alive()


def test_commit_conflict_when_the_cursor_moved(
    anvil: Anvil, nft: AccessNFT, redis_client: redis.Redis
) -> None:
    some_history(nft)
    keys = keys_of(anvil, nft)
    store = ListenerStore(redis_client, keys)
    block1 = anvil.rpc("eth_getBlockByNumber", ["0x1", False])["hash"]  # a real parent
    store.commit(None, Cursor(1, block1, GENESIS_DIGEST), [])
    with pytest.raises(CommitConflict):
        store.commit(None, Cursor(2, "0x" + "22" * 32, GENESIS_DIGEST), [])
    with pytest.raises(CommitConflict):
        store.commit(Cursor(0, "", ""), Cursor(2, "0x" + "22" * 32, GENESIS_DIGEST), [])
    assert store.load_cursor() == Cursor(1, block1, GENESIS_DIGEST)

    # Two listeners on one network: the one whose cursor is stale appends nothing twice.
    first = make_listener(redis_client, anvil.url, nft.address, max_block_range=2)
    second = make_listener(redis_client, anvil.url, nft.address, max_block_range=2)
    assert first.step() == 2
    assert second.step() == 0  # conflict: it reloads the cursor instead of appending
    assert second.cursor == first.cursor
    catch_up(second)
    catch_up(first)
    entries = log_entries(redis_client, keys)
    expected = [p for p in scan(anvil.url, nft.address, anvil.block_number()) if p[0] >= 2]
    assert positions(entries) == expected


def test_fencing_token_is_checked_when_a_lease_key_is_given(
    anvil: Anvil, nft: AccessNFT, redis_client: redis.Redis
) -> None:
    store = ListenerStore(redis_client, keys_of(anvil, nft))
    lease = "test-lease"
    redis_client.set(lease, "token-2")
    with pytest.raises(Fenced, match="fenced"):
        store.commit(
            None, Cursor(1, "0x" + "11" * 32, GENESIS_DIGEST), [], fence=(lease, "token-1")
        )
    assert store.load_cursor() is None
    store.commit(None, Cursor(1, "0x" + "11" * 32, GENESIS_DIGEST), [], fence=(lease, "token-2"))
    assert store.load_cursor() is not None


# A contract that emits LOG2(topic0 = calldata[0:32], topic1 = calldata[32:64], data = rest).
_EMITTER_RUNTIME = "3660006000376020356000356040360360 40a200".replace(" ", "")
_EMITTER_INIT = "6014600c60003960146000f3" + _EMITTER_RUNTIME


def word(n: int) -> str:
    return n.to_bytes(32, "big").hex()


def _send(url: str, to: str | None, data: str) -> dict[str, Any]:
    tx: dict[str, Any] = {"from": ACCOUNTS[0][0], "data": data, "gas": hex(1_000_000)}
    if to:
        tx["to"] = to
    tx_hash = rpc(url, "eth_sendTransaction", [tx])
    receipt = wait_for(
        lambda: rpc(url, "eth_getTransactionReceipt", [tx_hash]), timeout=20, what="receipt"
    )
    assert receipt["status"] == "0x1", receipt
    return dict(receipt)


def test_undecodable_logs_are_dead_lettered_not_dropped(
    anvil: Anvil, redis_client: redis.Redis
) -> None:
    emitter = _send(anvil.url, None, "0x" + _EMITTER_INIT)["contractAddress"]
    revoked = next(t for t, n in TOPICS.items() if n == "NodeAccessRevoked")
    granted = next(t for t, n in TOPICS.items() if n == "NodeAccessGranted")
    good = word(32) + word(4) + b"node".hex().ljust(64, "0")
    calls = [
        revoked[2:] + word(1) + good,  # fine
        granted[2:] + word(2) + good,  # NodeAccessGranted with 2 topics: dead
        revoked[2:] + word(3) + word(2**200) + word(4),  # offset past the end: dead
        revoked[2:] + word(4) + word(32) + word(1) + "ff" + "00" * 31,  # bad UTF-8: fine
    ]
    for call in calls:
        _send(anvil.url, emitter, "0x" + call)

    listener = make_listener(redis_client, anvil.url, emitter, max_block_range=2)
    catch_up(listener)
    keys = Keys(anvil.chain_id, emitter.lower())
    entries = log_entries(redis_client, keys)
    assert [e.event.token_id for e in entries] == [1, 4]  # type: ignore[union-attr]
    assert [getattr(e.event, "node_id", None) for e in entries] == ["node", "\ufffd"]
    assert_chain(entries, listener.store.load_cursor())
    dead = xrange(redis_client, keys.dead("listener"))
    assert len(dead) == 2
    reasons = [fields[b"reason"].decode() for _, fields in dead]
    assert "needs 3 topics" in reasons[0]
    assert "offset" in reasons[1]
    assert all(fields[b"raw"].startswith(b"{") for _, fields in dead)
    all_logs = scan(anvil.url, emitter, anvil.block_number())
    assert len(all_logs) == len(entries) + len(dead)


def test_rpc_fails_over_to_the_next_url_and_checks_the_chain_id(
    anvil: Anvil, nft: AccessNFT, redis_client: redis.Redis
) -> None:
    nft.mint(ACCOUNTS[1][0], "alpha", KEYS[0])
    dead_url = f"http://127.0.0.1:{free_port()}"
    cfg = Settings(
        rpc_url=f"{dead_url},{anvil.url}", contract=nft.address, chain_id=0, confirmations=0
    )
    listener = open_listener(cfg, redis_client, RpcClient(cfg.rpc_urls, retry_seconds=20))
    assert listener.cfg.chain_id == anvil.chain_id
    catch_up(listener)
    assert len(log_entries(redis_client, keys_of(anvil, nft))) == 1
    wrong = Settings(rpc_url=anvil.url, contract=nft.address, chain_id=8453)
    with pytest.raises(ChainError, match="8453"):
        open_listener(wrong, redis_client)


# --- SIGKILL ------------------------------------------------------------------------------


def _spawn(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "ab") as out:
        return subprocess.Popen([WGCHAIN, "listen"], env=env, stdout=out, stderr=out)


def test_sigkill_at_any_moment_loses_and_duplicates_nothing(
    anvil: Anvil,
    nft: AccessNFT,
    redis_server: RedisServer,
    redis_client: redis.Redis,
    tmp_path: Path,
) -> None:
    rng = random.Random(7)
    for i in range(24):
        nft.mint(ACCOUNTS[1 + i % 5][0], f"node-{i}", KEYS[i % len(KEYS)])
        if i % 6 == 5:
            nft.with_signer(ACCOUNTS[1][1]).set_key(KEYS[(i + 1) % len(KEYS)])
        anvil.mine(rng.randint(0, 25))
    head = anvil.block_number()
    keys = keys_of(anvil, nft)
    env = clean_env(
        WGCHAIN_REDIS_URL=redis_server.url,
        WGCHAIN_RPC_URL=anvil.url,
        WGCHAIN_CONTRACT=nft.address,
        WGCHAIN_CONFIRMATIONS="0",
        WGCHAIN_MAX_BLOCK_RANGE="2",
        WGCHAIN_POLL_INTERVAL="0.1",
        WGCHAIN_LEASE_TTL="1",  # a SIGKILLed leader's lease expires before the restart
    )

    def cursor_block() -> int:
        raw = redis_client.hget(keys.cursor, "block")
        return int(raw) if raw else -1

    log_path = tmp_path / "listen.log"
    # Kill right after a start (during start-up or the first step), then each time the
    # cursor has moved a random number of blocks further: the SIGKILL lands at whatever
    # point of a step (RPC read, decode, commit) the process happens to be in.
    for attempt in range(8):
        proc = _spawn(env, log_path)
        try:
            if attempt > 0:
                past = cursor_block() + rng.randint(0, 12)
                wait_for(
                    lambda past=past: cursor_block() > past,  # type: ignore[misc]
                    timeout=60,
                    interval=0.01,
                    what=f"cursor past {past}",
                )
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    assert 0 < cursor_block() < head  # the kills did land mid-run

    proc = _spawn(env, log_path)
    try:
        wait_for(lambda: cursor_block() >= head, timeout=120, what="listener caught up")
    finally:
        stop_process(proc)

    entries = log_entries(redis_client, keys)
    expected = scan(anvil.url, nft.address, head)
    assert len(expected) == 24 + 4
    got = positions(entries)
    assert len(got) == len(set(got))
    assert got == expected
    assert_chain(entries, ListenerStore(redis_client, keys).load_cursor())
