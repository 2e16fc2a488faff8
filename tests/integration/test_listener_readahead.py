"""The listener reading its next range ahead (``producers/listener/ahead.py``), on anvil.

Ranges are made tiny (one log each) so that the read ahead is used on a short history:
every log is appended once, in chain order, digest-chained; a reorg that replaces the
blocks of a read ahead is found and retracted like any deep reorg.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis
from factories import catch_up, log_entries, make_listener
from test_listener import KEYS, assert_chain, keys_of, positions, scan, some_history
from test_reorg import mint_call

from producers.listener import ahead as ahead_module
from producers.listener.listener import Listener
from shared.chain.read import Read
from shared.contract.client import AccessNFT
from shared.devnet.anvil import ACCOUNTS, Anvil
from shared.events import LogEntry, Retracted, effective, encode, from_fields

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def tiny_ranges(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ranges sized for one log, read ahead after any range that held one."""
    monkeypatch.setattr(ahead_module, "PIECE_LOGS", 1)
    monkeypatch.setattr(ahead_module, "AHEAD_FROM", 1)
    monkeypatch.setattr(ahead_module, "FIRST_BLOCKS", 1)


def taken(listener: Listener) -> list[tuple[int, int]]:
    """(start, end) of every read ahead the listener's steps used, filled in as they go."""
    used: list[tuple[int, int]] = []
    take = listener.ahead.take

    def counted(start: int, target: int) -> tuple[int, Read] | None:
        got = take(start, target)
        if got is not None:
            used.append((start, got[0]))
        return got

    listener.ahead.take = counted  # type: ignore[method-assign]
    return used


def test_ranges_read_ahead_are_appended_once_in_chain_order(
    anvil: Anvil, nft: AccessNFT, redis_client: redis.Redis
) -> None:
    some_history(nft)  # six logs in six blocks
    listener = make_listener(redis_client, anvil.url, nft.address, max_block_range=100)
    used = taken(listener)
    catch_up(listener)
    entries = log_entries(redis_client, keys_of(anvil, nft))
    assert positions(entries) == scan(anvil.url, nft.address, anvil.block_number())
    assert len(entries) == 6
    assert_chain(entries, listener.store.load_cursor())
    assert len(used) >= 3, "the later ranges were read ahead"
    assert all(start <= end for start, end in used)
    raw: Any = redis_client.xrange(keys_of(anvil, nft).events)
    for _, fields in raw:  # the stored JSON is what encode writes, byte for byte
        assert fields[b"data"] == encode(from_fields(fields))
        assert fields[b"v"] == b"1"
        assert fields[b"type"] == b"LogEntry"


def test_a_reorg_of_the_blocks_read_ahead_is_retracted(
    anvil: Anvil, nft: AccessNFT, redis_client: redis.Redis
) -> None:
    some_history(nft)
    listener = make_listener(redis_client, anvil.url, nft.address, max_block_range=100)
    used = taken(listener)
    while not used:  # until a step appended a range read ahead (and started the next one)
        assert listener.step()
    cursor = listener.store.load_cursor()
    assert cursor is not None
    listener.ahead.settle()  # the next range is read: now the chain changes under it
    depth = anvil.block_number() - cursor.block
    assert depth >= 1
    call = mint_call(nft, ACCOUNTS[3][0], "node-y", KEYS[3])
    anvil.rpc("anvil_reorg", [depth, [[call, 0]]])
    anvil.mine(1)
    catch_up(listener)
    raw: Any = redis_client.xrange(keys_of(anvil, nft).events)
    typed = [(i.decode(), from_fields(f)) for i, f in raw]
    kept = [e for _, e in effective(typed) if isinstance(e, LogEntry)]
    assert positions(kept) == scan(anvil.url, nft.address, anvil.block_number())
    assert any(isinstance(e, Retracted) for _, e in typed), "the orphaned range was retracted"
    assert any(e.event.node_id == "node-y" for e in kept if hasattr(e.event, "node_id"))
