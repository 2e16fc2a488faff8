"""The real listener through a faulty RPC, from genesis to the tip: nothing lost, nothing twice.

A :class:`~faultproxy.FaultProxy` in front of a real anvil injects faults all
along the run (bursts of 429, 5xx, silences longer than the per-call timeout, a
head that goes backwards, a first URL that is dead or dies mid-run); the events
stream in a real Redis must then equal an independent ``eth_getLogs`` scan of
anvil: complete, in chain order, without duplicates, without retractions.
Backoffs and timeouts are made small by parameters, so each test takes seconds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from faultproxy import Delay, Fault, FaultProxy, RpcError, Trickle, chain_positions

from producers.listener.listener import Listener, ListenerConfig
from producers.listener.store import ListenerStore
from shared.chain.rpc import RpcClient
from shared.contract.client import AccessNFT
from shared.devnet.anvil import ACCOUNTS, Anvil
from shared.devnet.proc import free_port, wait_for
from shared.events import LogEntry, from_fields
from shared.keys import Keys

pytestmark = pytest.mark.integration

KEY = "B" * 43 + "="


@pytest.fixture
def proxy(anvil: Anvil) -> Iterator[FaultProxy]:
    with FaultProxy(anvil.url) as p:
        yield p


def history(anvil: Anvil, nft: AccessNFT, count: int = 8, tag: str = "n") -> None:
    """``count`` grants (and a key update) spread over a few blocks each."""
    for i in range(count):
        nft.mint(ACCOUNTS[1 + i % 4][0], f"{tag}-{i}", KEY)
        if i == count // 2:
            nft.with_signer(ACCOUNTS[1][1]).set_key("C" * 43 + "=")
        anvil.mine(1 + i % 5)


def listener_for(
    urls: list[str], anvil: Anvil, nft: AccessNFT, client: redis.Redis, **rpc: Any
) -> Listener:
    """The real listener over ``urls``, with small ranges, short backoffs, no confirmations."""
    rpc = {"retry_seconds": 30, "backoff": 0.01, "max_backoff": 0.05, **rpc}
    config = ListenerConfig(
        chain_id=anvil.chain_id,
        contract=nft.address,
        confirmations=0,
        max_block_range=4,
        poll_interval=0.02,
    )
    store = ListenerStore(client, Keys(anvil.chain_id, nft.address.lower()))
    return Listener(RpcClient(urls, **rpc), store, config)


def cursor_block(listener: Listener) -> int:
    cursor = listener.store.load_cursor()
    return cursor.block if cursor else -1


def run_to_tip(listener: Listener, anvil: Anvil) -> None:
    """Step until the cursor is at anvil's head (a step at a stale head may do nothing)."""
    head = anvil.block_number()
    deadline = time.monotonic() + 60
    while cursor_block(listener) < head:
        assert time.monotonic() < deadline, f"stuck at block {cursor_block(listener)} of {head}"
        listener.step()


def assert_complete(client: redis.Redis, anvil: Anvil, nft: AccessNFT) -> None:
    """The events stream equals the chain's logs, in order, once each, and nothing else."""
    raw: Any = client.xrange(Keys(anvil.chain_id, nft.address.lower()).events)
    got = []
    for _, fields in raw:
        entry = from_fields(fields)
        assert isinstance(entry, LogEntry), entry  # no retraction, nothing else
        got.append((entry.block_number, entry.log_index, entry.tx_hash))
    expected = chain_positions(anvil.url, nft.address, anvil.block_number())
    assert len(expected) >= 9
    assert got == expected


def bursts(faults: list[Fault], every: int) -> Any:
    """A plan: ``faults`` one after the other, starting at each ``every``-th request."""
    return lambda n, method: faults[n % every] if n % every < len(faults) else None


def test_bursts_of_429_in_every_form(
    proxy: FaultProxy, anvil: Anvil, nft: AccessNFT, redis_client: redis.Redis
) -> None:
    history(anvil, nft)
    limited = [
        429,
        429,
        RpcError(429, "Your app has exceeded its compute units per second capacity"),
        RpcError(-32005, "daily request count exceeded, request rate limited"),
        RpcError(-32029, "Too Many Requests", status=429),
    ]
    proxy.plan = bursts(limited, every=9)
    listener = listener_for([proxy.url], anvil, nft, redis_client)
    run_to_tip(listener, anvil)
    assert proxy.faults >= 10
    assert_complete(redis_client, anvil, nft)


def test_bursts_of_5xx(
    proxy: FaultProxy, anvil: Anvil, nft: AccessNFT, redis_client: redis.Redis
) -> None:
    history(anvil, nft)
    proxy.plan = bursts([500, 502, 503, 504], every=7)
    listener = listener_for([proxy.url], anvil, nft, redis_client)
    run_to_tip(listener, anvil)
    assert proxy.faults >= 10
    assert_complete(redis_client, anvil, nft)


def test_silences_longer_than_the_call_timeout(
    proxy: FaultProxy, anvil: Anvil, nft: AccessNFT, redis_client: redis.Redis
) -> None:
    history(anvil, nft)
    # Without a per-call timeout each silence would hold the listener for 20 s.
    proxy.plan = bursts([Delay(20.0), Trickle(20.0)], every=6)
    listener = listener_for([proxy.url], anvil, nft, redis_client, timeout=0.25)
    run_to_tip(listener, anvil)
    assert proxy.faults >= 6
    assert_complete(redis_client, anvil, nft)


def test_a_head_that_goes_backwards_is_waited_out(
    proxy: FaultProxy, anvil: Anvil, nft: AccessNFT, redis_client: redis.Redis
) -> None:
    history(anvil, nft)
    head = anvil.block_number()
    assert head > 30
    # A load-balanced pool: the head seen first, then nodes further and further behind
    # (some behind what was already appended), then one a little behind, then the truth.
    lagging = [head - 12, head - 20, 3, 1, head - 16, head - 30, head - 6]
    proxy.heads = list(lagging)
    listener = listener_for([proxy.url], anvil, nft, redis_client)
    seen = []
    while cursor_block(listener) < head:
        listener.step()
        seen.append(cursor_block(listener))
        assert len(seen) < 200
    assert proxy.heads == []  # every lagging head was answered
    assert proxy.behind_answers == len(lagging)
    assert seen == sorted(seen)  # the cursor never went back
    history(anvil, nft, count=2, tag="late")  # and it keeps following the chain
    proxy.heads = [3, anvil.block_number() - 2]
    run_to_tip(listener, anvil)
    assert_complete(redis_client, anvil, nft)


def test_a_dead_first_url_is_skipped(
    proxy: FaultProxy, anvil: Anvil, nft: AccessNFT, redis_client: redis.Redis
) -> None:
    history(anvil, nft)
    dead = f"http://127.0.0.1:{free_port()}/v2/dead-key"
    listener = listener_for([dead, proxy.url], anvil, nft, redis_client)
    run_to_tip(listener, anvil)
    assert listener.rpc.endpoint == proxy.url.rsplit("/v2", 1)[0]
    assert proxy.requests > 0
    assert_complete(redis_client, anvil, nft)


def test_the_first_url_dying_mid_run_fails_over_without_a_gap(
    anvil: Anvil, nft: AccessNFT, redis_client: redis.Redis
) -> None:
    first, second = FaultProxy(anvil.url).start(), FaultProxy(anvil.url).start()
    listener = listener_for([first.url, second.url], anvil, nft, redis_client)
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            listener.run(stop)
        except BaseException as exc:  # reported by the test, not lost in the thread
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    history(anvil, nft, count=5, tag="before")
    thread.start()
    try:
        head = anvil.block_number()
        wait_for(lambda: cursor_block(listener) >= head, timeout=30, what="first half")
        assert second.requests == 0  # so far all on the first URL
        first.stop()  # the provider dies: its port now refuses connections
        history(anvil, nft, count=5, tag="after")
        head = anvil.block_number()
        wait_for(lambda: errors or cursor_block(listener) >= head, timeout=30, what="second half")
    finally:
        stop.set()
        thread.join(timeout=20)
        second.stop()
    assert not errors
    assert second.requests > 0
    assert_complete(redis_client, anvil, nft)


def test_a_lagging_backend_answering_no_logs_near_the_tip_is_not_believed(
    proxy: FaultProxy, anvil: Anvil, nft: AccessNFT, redis_client: redis.Redis
) -> None:
    """Behind a load balancer, a node that lacks the newest blocks answers ``[]`` for them.

    Its empty answer must not be appended as "no logs": the listener asks for the
    range's last header in the same request, sees the node lacks it, and asks again.
    """
    history(anvil, nft)
    listener = listener_for([proxy.url], anvil, nft, redis_client)
    run_to_tip(listener, anvil)
    lagging_from = anvil.block_number()
    for i in range(3):  # new logs near the tip, which the lagging backend does not have
        nft.mint(ACCOUNTS[5][0], f"tip-{i}", KEY)
    proxy.stale_head = lagging_from
    proxy.stale_requests = 3
    listener.sizer.size = 8  # the new blocks fit one range
    run_to_tip(listener, anvil)
    assert proxy.stale_requests == 0, "the lagging backend answered"
    assert_complete(redis_client, anvil, nft)
