"""The listener's JSON-RPC client against a real anvil, behind a misbehaving HTTP proxy.

The proxy (:mod:`faultproxy`, a real HTTP server on a free port) forwards to anvil
but can answer the first requests with 503/429/garbage/silence, refuse wide
``eth_getLogs`` ranges the way hosted providers do (in their wordings, with or
without a suggested range), refuse batches, or answer a head (and safe/finalized
block) lower than the real one. Faults during a whole run: ``test_rpc_faults.py``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from faultproxy import REFUSALS, TOPICS, Delay, FaultProxy, RpcError, Trickle, chain_positions

from producers.listener.listener import Listener, ListenerConfig, open_listener
from producers.listener.store import ListenerStore
from shared.chain.ranges import RangeSizer
from shared.chain.rpc import RpcClient
from shared.contract.client import AccessNFT
from shared.devnet.anvil import ACCOUNTS, Anvil
from shared.devnet.proc import free_port, wait_for
from shared.errors import ChainError, LogRangeError, ServiceUnavailable
from shared.events import LogEntry, from_fields
from shared.keys import Keys
from shared.settings import Settings

pytestmark = pytest.mark.integration

KEY = "A" * 43 + "="


@pytest.fixture
def proxy(anvil: Anvil) -> Iterator[FaultProxy]:
    with FaultProxy(anvil.url) as p:
        yield p


def test_transient_failures_are_retried(proxy: FaultProxy, anvil: Anvil) -> None:
    proxy.script = [
        503,
        429,
        RpcError(-32005, "Your app has exceeded its capacity"),
        RpcError(-32000, "no backends available for method"),
        RpcError(-32000, "upstream request timeout"),
        502,
    ]
    client = RpcClient([proxy.url], retry_seconds=30, backoff=0.01, max_backoff=0.05)
    assert client.chain_id() == anvil.chain_id
    assert proxy.requests == 7


def test_a_silent_endpoint_times_out_and_is_retried(proxy: FaultProxy, anvil: Anvil) -> None:
    proxy.script = [Delay(3.0)]
    client = RpcClient([proxy.url], timeout=0.3, retry_seconds=30, backoff=0.01)
    assert client.chain_id() == anvil.chain_id
    assert proxy.requests == 2


def test_a_reply_that_trickles_in_is_abandoned_at_the_deadline(
    proxy: FaultProxy, anvil: Anvil
) -> None:
    # Bytes keep coming (never a silence as long as the timeout) for 5 s: only the
    # per-call deadline ends the wait; without it the blanks are "not JSON" after 5 s.
    proxy.script = [Trickle(5.0)]
    client = RpcClient([proxy.url], timeout=0.5, retry_seconds=30, backoff=0.01)
    assert client.chain_id() == anvil.chain_id
    assert proxy.requests == 2


@pytest.mark.parametrize("status", [400, 401, 403, 404])
def test_client_errors_are_not_retried(status: int, proxy: FaultProxy) -> None:
    proxy.always = status
    client = RpcClient([proxy.url], retry_seconds=30)
    with pytest.raises(ChainError, match=f"HTTP {status}") as info:
        client.block_number()
    assert proxy.requests == 1
    assert "secret-api-key" not in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("body", [b"<html>bad gateway</html>", b"[1, 2", b'"just a string"'])
def test_malformed_replies_are_one_line_chain_errors_not_retried(
    body: bytes, proxy: FaultProxy
) -> None:
    proxy.script = [body] * 10
    client = RpcClient([proxy.url], retry_seconds=30)
    with pytest.raises(ChainError) as info:
        client.block_number()
    assert not isinstance(info.value, ServiceUnavailable)
    assert proxy.requests == 1
    assert "\n" not in str(info.value)
    assert "secret-api-key" not in str(info.value)


def test_a_url_that_answers_garbage_fails_over_to_the_next(proxy: FaultProxy, anvil: Anvil) -> None:
    proxy.script = [b"<html>captive portal</html>"]
    client = RpcClient([proxy.url, anvil.url], retry_seconds=30)
    assert client.block_number() == anvil.block_number()
    assert proxy.requests == 1
    assert client.endpoint == anvil.url
    proxy.always = 401  # an expired key on the first URL: the second still serves
    client = RpcClient([proxy.url, anvil.url], retry_seconds=30)
    assert client.chain_id() == anvil.chain_id


def test_execution_reverted_is_not_retried(proxy: FaultProxy, nft: AccessNFT) -> None:
    client = RpcClient([proxy.url], retry_seconds=30)
    call = {"to": nft.address, "data": "0xdeadbeef"}  # no such function, no fallback
    with pytest.raises(ChainError, match="revert") as info:
        client.call("eth_call", [call, "latest"])
    assert proxy.requests == 1
    assert not isinstance(info.value, ServiceUnavailable)


def test_a_url_of_another_scheme_is_a_chain_error() -> None:
    with pytest.raises(ChainError, match="InvalidSchema"):
        RpcClient(["ftp://127.0.0.1:1/key"], retry_seconds=1).block_number()


def test_jsonrpc_errors_are_chain_errors(anvil: Anvil) -> None:
    client = RpcClient([anvil.url], retry_seconds=30)
    with pytest.raises(ChainError):
        client.call("eth_noSuchMethod", [])


def test_unreachable_endpoints_give_up_with_service_unavailable() -> None:
    dead = [f"http://127.0.0.1:{free_port()}/key-{i}" for i in range(2)]
    client = RpcClient(dead, retry_seconds=1, timeout=1)
    with pytest.raises(ServiceUnavailable) as info:
        client.block_number()
    assert "key-" not in str(info.value)


def test_failover_moves_to_the_next_url(proxy: FaultProxy, anvil: Anvil) -> None:
    proxy.always = 502
    client = RpcClient([proxy.url, anvil.url], retry_seconds=30)
    assert client.block_number() == anvil.block_number()
    assert proxy.requests == 1
    assert client.endpoint == anvil.url


def test_batches_fall_back_to_single_calls(proxy: FaultProxy, anvil: Anvil) -> None:
    anvil.mine(3)
    proxy.batches = False
    client = RpcClient([proxy.url], retry_seconds=30)
    headers = client.get_blocks([1, 3, 2])
    assert sorted(headers) == [1, 2, 3]
    assert headers[3].parent_hash == headers[2].hash
    assert headers[2].parent_hash == headers[1].hash


def test_refused_ranges_are_halved_and_nothing_is_lost(
    proxy: FaultProxy, anvil: Anvil, nft: AccessNFT, redis_client: redis.Redis
) -> None:
    for i in range(6):
        nft.mint(ACCOUNTS[1 + i % 3][0], f"node-{i}", KEY)
        anvil.mine(i)
    proxy.max_range = 3
    keys = Keys(anvil.chain_id, nft.address.lower())
    cfg = ListenerConfig(chain_id=anvil.chain_id, contract=nft.address, confirmations=0)
    listener = Listener(RpcClient([proxy.url]), ListenerStore(redis_client, keys), cfg)
    while listener.step():
        pass
    assert proxy.refused_ranges  # the provider did refuse the wide range
    raw: Any = redis_client.xrange(keys.events)
    entries = [from_fields(fields) for _, fields in raw]
    assert all(isinstance(e, LogEntry) for e in entries)
    minted = [e.event.node_id for e in entries if isinstance(e, LogEntry)]  # type: ignore[union-attr]
    assert minted == [f"node-{i}" for i in range(6)]


# --- adaptive ranges, a lagging head, finality tags ---------------------------------------


def scan(anvil: Anvil, contract: str, to_block: int) -> list[tuple[int, int, str]]:
    """Independent eth_getLogs scan of the contract's four events (block, index, tx)."""
    return chain_positions(anvil.url, contract, to_block)


def appended(client: redis.Redis, keys: Keys) -> list[tuple[int, int, str]]:
    raw: Any = client.xrange(keys.events)
    out = []
    for _, fields in raw:
        entry = from_fields(fields)
        assert isinstance(entry, LogEntry)
        out.append((entry.block_number, entry.log_index, entry.tx_hash))
    return out


def spread_history(anvil: Anvil, nft: AccessNFT, count: int = 8) -> None:
    """``count`` mints spread over about 5 blocks each."""
    for i in range(count):
        nft.mint(ACCOUNTS[1 + i % 3][0], f"node-{i}", KEY)
        anvil.mine(1 + i % 7)


def listener_via(
    url: str, anvil: Anvil, nft: AccessNFT, client: redis.Redis, **cfg: Any
) -> Listener:
    config = ListenerConfig(chain_id=anvil.chain_id, contract=nft.address, **cfg)
    store = ListenerStore(client, Keys(anvil.chain_id, nft.address.lower()))
    return Listener(RpcClient([url], retry_seconds=30), store, config)


#: Refusals that suggest a smaller range starting at the asked block (taken at once).
SUGGESTING = ("alchemy", "alchemy_400", "infura", "reth")


@pytest.mark.parametrize("refusal", sorted(REFUSALS))
def test_refusals_in_each_wording_still_give_the_complete_stream(
    refusal: str, proxy: FaultProxy, anvil: Anvil, nft: AccessNFT, redis_client: redis.Redis
) -> None:
    spread_history(anvil, nft)
    proxy.max_range = 4
    proxy.refusal = refusal
    listener = listener_via(
        proxy.url, anvil, nft, redis_client, confirmations=0, max_block_range=64
    )
    steps = 0
    while listener.step():
        steps += 1
    head = anvil.block_number()
    cursor = listener.store.load_cursor()
    assert cursor is not None
    assert cursor.block == head  # reached the tip
    got = appended(redis_client, Keys(anvil.chain_id, nft.address.lower()))
    expected = scan(anvil, nft.address, head)
    assert len(expected) == 8
    assert got == expected  # complete, in chain order, no duplicates
    assert proxy.refused_ranges  # the provider did refuse
    # The learned size is kept across steps: the wide range is not asked again each step.
    assert steps > 4
    assert len(proxy.refused_ranges) <= (1 if refusal in SUGGESTING else 5)


def test_a_provider_that_refuses_a_single_block_is_a_hard_error(
    proxy: FaultProxy, anvil: Anvil, nft: AccessNFT, redis_client: redis.Redis
) -> None:
    nft.mint(ACCOUNTS[1][0], "alpha", KEY)
    proxy.max_range = 0
    proxy.refusal = "same_back"
    listener = listener_via(proxy.url, anvil, nft, redis_client, confirmations=0)
    with pytest.raises(LogRangeError, match="even for blocks 0-0"):
        listener.step()
    assert listener.store.load_cursor() is None


@pytest.mark.parametrize("finality", [{"confirmations": 0}, {"finality_tag": "safe"}])
def test_a_head_below_the_cursor_just_waits_and_catches_up_later(
    finality: dict[str, Any],
    proxy: FaultProxy,
    anvil: Anvil,
    nft: AccessNFT,
    redis_client: redis.Redis,
) -> None:
    spread_history(anvil, nft, count=3)
    anvil.mine(40)  # so the safe block (head - 32) is past the first mints
    listener = listener_via(
        proxy.url, anvil, nft, redis_client, max_block_range=8, poll_interval=0.05, **finality
    )
    while listener.step():
        pass
    keys = Keys(anvil.chain_id, nft.address.lower())
    before = appended(redis_client, keys)
    assert before
    cursor = listener.store.load_cursor()
    assert cursor is not None

    nft.mint(ACCOUNTS[2][0], "late", KEY)
    anvil.mine(40)
    proxy.behind = cursor.block - 5  # the node we now reach lags behind our cursor
    stop = threading.Event()
    thread = threading.Thread(target=listener.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_for(lambda: proxy.behind_answers >= 3, timeout=20, what="polls of a lagging head")
        assert thread.is_alive()  # no error: it waits
        assert appended(redis_client, keys) == before  # nothing appended, nothing retracted
        assert listener.store.load_cursor() == cursor
        proxy.behind = None  # the node catches up
        head = anvil.block_number()
        final = head if "confirmations" in finality else head - 32
        wait_for(
            lambda: (listener.store.load_cursor() or cursor).block >= final,
            timeout=30,
            what="listener caught up",
        )
    finally:
        stop.set()
        thread.join(timeout=20)
    assert not thread.is_alive()
    assert appended(redis_client, keys) == scan(anvil, nft.address, final)
    assert len(appended(redis_client, keys)) == len(before) + 1


@pytest.mark.parametrize(("tag", "depth"), [("safe", 32), ("finalized", 64)])
def test_safe_and_finalized_append_only_up_to_the_tagged_block(
    tag: str, depth: int, anvil: Anvil, nft: AccessNFT, redis_client: redis.Redis
) -> None:
    early = nft.mint(ACCOUNTS[1][0], "early", KEY)
    anvil.mine(depth + 5)
    late = nft.mint(ACCOUNTS[2][0], "late", KEY)
    cfg = Settings(rpc_url=anvil.url, contract=nft.address, finality=tag, confirmations=0)
    listener = open_listener(cfg, redis_client, RpcClient(cfg.rpc_urls, retry_seconds=30))
    while listener.step():
        pass
    keys = Keys(anvil.chain_id, nft.address.lower())
    tagged = int(anvil.rpc("eth_getBlockByNumber", [tag, False])["number"], 16)
    assert tagged == anvil.block_number() - depth
    cursor = listener.store.load_cursor()
    assert cursor is not None
    assert cursor.block == tagged  # not the head, although confirmations=0
    assert [p[2] for p in appended(redis_client, keys)] == [early.tx_hash.lower()]

    anvil.mine(depth)  # now the late mint is behind the tag too
    while listener.step():
        pass
    got = appended(redis_client, keys)
    assert [p[2] for p in got] == [early.tx_hash.lower(), late.tx_hash.lower()]
    assert got == scan(anvil, nft.address, anvil.block_number() - depth)


def test_get_logs_covers_the_whole_range_through_refusals(
    proxy: FaultProxy, anvil: Anvil, nft: AccessNFT
) -> None:
    spread_history(anvil, nft, count=5)
    proxy.max_range = 3
    proxy.refusal = "plain"
    client = RpcClient([proxy.url], retry_seconds=30)
    head = anvil.block_number()
    sizer = RangeSizer(100)
    logs = client.get_logs(nft.address.lower(), TOPICS, 0, head, sizer)
    got = sorted(
        (int(x["blockNumber"], 16), int(x["logIndex"], 16), x["transactionHash"].lower())
        for x in logs
    )
    assert got == scan(anvil, nft.address, head)
    assert len(got) == len(logs) == 5
    assert proxy.refused_ranges
    assert sizer.size <= 3  # the sizer learned the provider's limit
