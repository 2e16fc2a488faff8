"""``sealed``: one encoding of a chained entry gives the same digest and bytes as before."""

from __future__ import annotations

import gc

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.collector import collector_paused
from shared.events import (
    GENESIS_DIGEST,
    LogEntry,
    NodeAccessGranted,
    SubscriptionUpdate,
    encode,
    sealed,
)

#: Strings a hostile contract may emit: quotes, backslashes, controls, replacement and
#: astral characters, escapes that JSON must write out. No lone surrogates: the decoder
#: reads strings as UTF-8 with ``errors="replace"``, so a decoded string never holds one.
HOSTILE = st.text(
    alphabet=st.sampled_from(['"', "\\", "\n", "\x00", "\x1f", "\ufffd", "\U0001f600", "a", "/"])
    | st.characters(exclude_categories=("Cs",)),
    max_size=60,
)


def _entry(node_id: str, key: str, prev: str, token: int = 7) -> LogEntry:
    return LogEntry(
        chain_id=31337,
        contract="0x5fbdb2315678afecb367f032d93f642f64180aa3",
        block_number=12,
        block_hash="0x" + "ab" * 32,
        tx_hash="0x" + "cd" * 32,
        log_index=3,
        block_timestamp=1_700_000_000,
        event=NodeAccessGranted(
            token_id=token, node_id=node_id, owner="0x" + "11" * 20, public_key=key
        ),
        prev=prev,
    )


@given(
    node_id=HOSTILE,
    key=HOSTILE,
    prev=st.sampled_from([GENESIS_DIGEST, "f" * 64]),
    token=st.integers(0, 2**256 - 1),
)
def test_sealed_is_with_digest_then_encode(node_id: str, key: str, prev: str, token: int) -> None:
    entry = _entry(node_id, key, prev, token)
    chained, payload = sealed(entry)
    assert chained == entry.with_digest(prev)
    assert payload == encode(chained)
    assert chained.digest_ok()


def test_sealed_chains_like_with_digest() -> None:
    first, _ = sealed(_entry("a", "k", GENESIS_DIGEST))
    event = SubscriptionUpdate(token_id=1, expiration=2**64 - 1)
    second = msgspec.structs.replace(_entry("b", "k", first.digest), event=event)
    chained, payload = sealed(second)
    assert chained.prev == first.digest
    assert chained == second.with_digest(first.digest)
    assert msgspec.json.decode(payload)["digest"] == chained.digest


def test_sealed_refuses_an_entry_that_has_a_digest() -> None:
    chained, _ = sealed(_entry("a", "k", GENESIS_DIGEST))
    with pytest.raises(ValueError, match="without digest"):
        sealed(chained)


def test_collector_paused_restores_what_it_found() -> None:
    assert gc.isenabled()
    with collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # it was off before: it stays off
    finally:
        gc.enable()
