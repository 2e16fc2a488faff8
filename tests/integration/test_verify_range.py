"""``wgchain listen --verify-range B1 B2`` against a real anvil and a real Redis.

The real listener fills the events stream; then the stream is checked as is
(identical), and after hand edits: an entry deleted (missing), a forged entry, a
duplicate and an entry with altered data (extra, mismatch), a retraction of an
entry (which the check folds away, as every reader does).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis

from producers.listener.listener import Listener, ListenerConfig
from producers.listener.store import ListenerStore
from shared.chain.rpc import RpcClient
from shared.cli import main
from shared.contract.client import AccessNFT
from shared.devnet.anvil import ACCOUNTS, Anvil
from shared.devnet.redis_server import RedisServer
from shared.events import LogEntry, NodeAccessGranted, Retracted, from_fields, to_fields
from shared.keys import Keys

pytestmark = pytest.mark.integration

WGCHAIN = Path(sys.executable).parent / "wgchain"
KEY = "D" * 43 + "="


@pytest.fixture
def network(
    anvil: Anvil,
    nft: AccessNFT,
    redis_server: RedisServer,
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> Keys:
    """A history of every event kind, appended to the stream by the real listener."""
    tokens = [nft.mint(ACCOUNTS[1 + i % 2][0], f"node-{i}", KEY).token_id for i in range(4)]
    anvil.mine(3)
    nft.with_signer(ACCOUNTS[1][1]).set_key("E" * 43 + "=")
    nft.revoke(tokens[3])
    anvil.mine(2)
    nft.with_signer(ACCOUNTS[2][1]).transfer(tokens[1], ACCOUNTS[3][0])
    keys = Keys(anvil.chain_id, nft.address.lower())
    config = ListenerConfig(
        chain_id=anvil.chain_id, contract=nft.address, confirmations=0, max_block_range=3
    )
    listener = Listener(RpcClient([anvil.url]), ListenerStore(redis_client, keys), config)
    while listener.step():
        pass
    for name in list(os.environ):
        if name.startswith("WGCHAIN_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("WGCHAIN_REDIS_URL", redis_server.url)
    monkeypatch.setenv("WGCHAIN_RPC_URL", anvil.url)
    monkeypatch.setenv("WGCHAIN_CONTRACT", nft.address)
    return keys


def verify(capsys: pytest.CaptureFixture[str], first: int, last: int) -> tuple[int, list[str]]:
    """``wgchain listen --verify-range first last`` in this process: (exit code, stdout lines)."""
    capsys.readouterr()
    code = main(["listen", "--verify-range", str(first), str(last)])
    return code, capsys.readouterr().out.splitlines()


def entries(client: redis.Redis, keys: Keys) -> list[tuple[str, LogEntry]]:
    raw: Any = client.xrange(keys.events)
    out = []
    for entry_id, fields in raw:
        entry = from_fields(fields)
        assert isinstance(entry, LogEntry)
        out.append((entry_id.decode(), entry))
    return out


def test_the_cli_exits_0_for_a_clean_stream_and_1_once_an_entry_is_deleted(
    network: Keys, anvil: Anvil, redis_client: redis.Redis
) -> None:
    head = anvil.block_number()
    command = [str(WGCHAIN), "listen", "--verify-range", "0", str(head)]
    clean = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert clean.returncode == 0, clean.stderr
    assert clean.stdout.splitlines() == [
        f"blocks 0-{head}: 7 logs on chain, 7 entries in the stream; "
        "0 missing, 0 extra, 0 mismatched: identical"
    ]

    victim_id, victim = entries(redis_client, network)[2]
    redis_client.xdel(network.events, victim_id)
    broken = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert broken.returncode == 1, broken.stderr
    lines = broken.stdout.splitlines()
    assert lines == [
        f"missing  block {victim.block_number} log {victim.log_index} tx {victim.tx_hash}: "
        f"NodeAccessGranted token 3",
        f"blocks 0-{head}: 7 logs on chain, 6 entries in the stream; "
        "1 missing, 0 extra, 0 mismatched: DIFFERENT",
    ]
    assert "Traceback" not in broken.stderr


def test_only_the_given_blocks_are_compared(
    network: Keys, redis_client: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    (first_id, first), *rest = entries(redis_client, network)
    redis_client.xdel(network.events, first_id)
    after = first.block_number + 1
    last = rest[-1][1].block_number
    code, lines = verify(capsys, after, last)
    assert code == 0, lines
    assert lines[-1].endswith("identical")
    code, lines = verify(capsys, first.block_number, first.block_number)
    assert code == 1
    assert lines[0].startswith(f"missing  block {first.block_number} log {first.log_index}")


def test_forged_duplicated_and_altered_entries_are_reported(
    network: Keys, anvil: Anvil, redis_client: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    head = anvil.block_number()
    stream = entries(redis_client, network)
    _, granted = stream[0]
    assert isinstance(granted.event, NodeAccessGranted)
    empty_block = head - 1  # the mined blocks after the last transaction hold no log
    forged = msgspec.structs.replace(granted, block_number=empty_block, log_index=0)
    redis_client.xadd(network.events, to_fields(forged.with_digest(stream[-1][1].digest)))
    redis_client.xadd(network.events, to_fields(stream[1][1]))  # the same log twice
    altered_id, altered = stream[4]
    assert altered.event.__class__.__name__ == "PublicKeyUpdated"
    evil = msgspec.structs.replace(altered.event, public_key="\x1b[31mevil\n")
    redis_client.xdel(network.events, altered_id)
    redis_client.xadd(network.events, to_fields(msgspec.structs.replace(altered, event=evil)))

    code, lines = verify(capsys, 0, head)
    assert code == 1
    assert len(lines) == 4, lines
    duplicate, mismatch, extra, summary = lines
    twice = stream[1][1]
    assert duplicate == (
        f"extra    block {twice.block_number} log {twice.log_index} tx {twice.tx_hash}: "
        "a second entry for this log"
    )
    assert mismatch.startswith(f"mismatch block {altered.block_number} log {altered.log_index}")
    assert "public_key '\\x1b[31mevil\\n' in the stream" in mismatch
    assert "digest does not cover its content" in mismatch
    assert extra == (
        f"extra    block {empty_block} log 0 tx {granted.tx_hash}: "
        "no such log on chain (NodeAccessGranted token 1)"
    )
    assert summary.endswith("9 entries in the stream; 0 missing, 2 extra, 1 mismatched: DIFFERENT")


def test_retractions_are_folded_away_before_comparing(
    network: Keys, anvil: Anvil, redis_client: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    head = anvil.block_number()
    stream = entries(redis_client, network)
    last = stream[-1][1]
    forged = msgspec.structs.replace(last, log_index=last.log_index + 5).with_digest(last.digest)
    forged_id = redis_client.xadd(network.events, to_fields(forged)).decode()
    code, lines = verify(capsys, 0, head)
    assert code == 1
    assert lines[0].startswith("extra")
    # A retraction voids the forged entry: the stream is whole again.
    void = Retracted(entry_id=forged_id, block_number=last.block_number, block_hash="0x" + "0" * 64)
    redis_client.xadd(network.events, to_fields(void))
    code, lines = verify(capsys, 0, head)
    assert code == 0, lines
    # Retracting a true entry makes it missing.
    redis_client.xadd(
        network.events, to_fields(msgspec.structs.replace(void, entry_id=stream[0][0]))
    )
    code, lines = verify(capsys, 0, head)
    assert code == 1
    assert lines[0].startswith(f"missing  block {stream[0][1].block_number}")


@pytest.mark.parametrize(("first", "last", "why"), [(5, 2, "5 is after 2"), (0, 10**6, "head")])
def test_a_bad_range_is_one_line_and_exit_code_2(
    network: Keys, first: int, last: int, why: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["listen", "--verify-range", str(first), str(last)])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert why in err[0]
