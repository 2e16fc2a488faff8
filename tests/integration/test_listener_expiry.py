"""The listener reads ERC-5643's ``SubscriptionUpdate`` on a real anvil into a real Redis.

The real contract's mints with a duration, renewals and cancellations become
``SubscriptionUpdate`` entries in chain order; a contract that emits raw logs
(LOG2 of hand-made words) shows that hostile ones (an expiration wider than a
``uint64``, data of the wrong length, a missing token topic) are dead-lettered by
the listener, while the hostile values a ``uint64`` can hold (0, far future,
2^64 - 1) are appended as they are.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis
from eth_utils.crypto import keccak
from factories import catch_up, log_entries, make_listener, rpc, wg_key

from shared.contract.client import AccessNFT
from shared.devnet.anvil import ACCOUNTS, Anvil
from shared.devnet.proc import wait_for
from shared.events import LogEntry, NodeAccessGranted, SubscriptionUpdate
from shared.keys import Keys

pytestmark = pytest.mark.integration

SUBSCRIPTION = "0x" + keccak(text="SubscriptionUpdate(uint256,uint64)").hex()
#: A contract that emits LOG2(topic0 = calldata[0:32], topic1 = calldata[32:64], data = rest).
_EMITTER_RUNTIME = "366000600037602035600035604036036040a200"
_EMITTER_INIT = "6014600c60003960146000f3" + _EMITTER_RUNTIME
#: The same with LOG1 (topic0 only): a SubscriptionUpdate without its token topic.
_EMITTER1_RUNTIME = "366000600037600035602036036020a100"
_EMITTER1_INIT = "6011600c60003960116000f3" + _EMITTER1_RUNTIME


def word(n: int) -> str:
    return n.to_bytes(32, "big").hex()


def send(url: str, to: str | None, data: str) -> dict[str, Any]:
    tx: dict[str, Any] = {"from": ACCOUNTS[0][0], "data": data, "gas": hex(1_000_000)}
    if to:
        tx["to"] = to
    tx_hash = rpc(url, "eth_sendTransaction", [tx])
    receipt = wait_for(
        lambda: rpc(url, "eth_getTransactionReceipt", [tx_hash]), timeout=20, what="receipt"
    )
    assert receipt["status"] == "0x1", receipt
    return dict(receipt)


def listen(client: redis.Redis, url: str, contract: str) -> tuple[Keys, list[LogEntry]]:
    listener = make_listener(client, url, contract)
    catch_up(listener)
    keys = listener.store.keys
    return keys, log_entries(client, keys)


def test_the_contracts_subscription_updates_reach_the_events_stream_in_chain_order(
    anvil: Anvil, nft: AccessNFT, redis_client: redis.Redis
) -> None:
    alice, alice_key = ACCOUNTS[1]
    nft.mint(alice, "node-a", wg_key(1), duration=3600)
    nft.mint(alice, "node-b", wg_key(2))  # perpetual: no SubscriptionUpdate
    nft.renew(1, 2**64 - 1)  # saturates
    nft.with_signer(alice_key).cancel(2)  # a perpetual pass cancelled
    nft.with_signer(alice_key).transfer(1, ACCOUNTS[2][0])  # keeps the expiration: no update

    _, entries = listen(redis_client, anvil.url, nft.address)

    events = [e.event for e in entries]
    updates = [e for e in events if isinstance(e, SubscriptionUpdate)]
    first = nft.contract.events["SubscriptionUpdate"]().get_logs(from_block=0)[0]
    assert updates == [
        SubscriptionUpdate(1, int(first["args"]["expiration"])),
        SubscriptionUpdate(1, 2**64 - 1),
        SubscriptionUpdate(2, 0),
    ]
    assert isinstance(events[0], NodeAccessGranted)
    assert events[1] == updates[0]  # right after its grant, same transaction
    assert entries[1].tx_hash == entries[0].tx_hash
    assert entries[1].log_index > entries[0].log_index


def test_hostile_subscription_updates_are_dead_lettered_and_uint64_extremes_appended(
    anvil: Anvil, redis_client: redis.Redis
) -> None:
    emitter = send(anvil.url, None, "0x" + _EMITTER_INIT)["contractAddress"]
    calls = [
        word(1) + word(0),  # cancelled: fine
        word(2) + word(2**64),  # one past uint64: dead
        word(3) + word(2**64 - 1),  # the largest uint64: fine
        word(4) + word(2**256 - 1),  # a full word: dead
        word(5) + "",  # no data: dead
        word(6) + word(7) + word(8),  # two words: dead
        word(2**256 - 1) + word(10**12),  # the largest token, far future: fine
    ]
    for call in calls:
        send(anvil.url, emitter, "0x" + SUBSCRIPTION[2:] + call)

    keys, entries = listen(redis_client, anvil.url, emitter)

    assert [e.event for e in entries] == [
        SubscriptionUpdate(1, 0),
        SubscriptionUpdate(3, 2**64 - 1),
        SubscriptionUpdate(2**256 - 1, 10**12),
    ]
    dead: Any = redis_client.xrange(keys.dead("listener"))
    reasons = [fields[b"reason"].decode() for _, fields in dead]
    assert len(reasons) == 4, reasons
    assert "uint64" in reasons[0]
    assert "uint64" in reasons[1]
    assert "0 bytes" in reasons[2]
    assert "64 bytes" in reasons[3]


def test_a_subscription_update_without_its_token_topic_is_dead_lettered(
    anvil: Anvil, redis_client: redis.Redis
) -> None:
    emitter = send(anvil.url, None, "0x" + _EMITTER1_INIT)["contractAddress"]
    send(anvil.url, emitter, "0x" + SUBSCRIPTION[2:] + word(5))

    keys, entries = listen(redis_client, anvil.url, emitter)

    assert entries == []
    dead: Any = redis_client.xrange(keys.dead("listener"))
    assert [f[b"reason"].decode() for _, f in dead] == [
        "SubscriptionUpdate needs 2 topics, log has 1"
    ]
