"""DstackAccessNFT's time-limited passes (ERC-5643) on a real anvil.

Who may do what: the contract owner mints (with or without a duration) and renews; the
contract owner or the token's holder cancels. Block timestamps are pinned with
``evm_setNextBlockTimestamp`` so every expiration is exact.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from web3 import Web3
from web3.exceptions import ContractLogicError

from shared.chain.decode import SUBSCRIPTION, TOPICS, decode_log
from shared.contract.client import ERC5643_INTERFACE_ID, PERPETUAL, AccessNFT
from shared.devnet.anvil import ACCOUNTS, Anvil
from shared.errors import ChainError, SettingsError
from shared.events import NodeAccessGranted, SubscriptionUpdate

pytestmark = pytest.mark.integration

OWNER, ALICE, BOB, MALLORY = (a for a, _ in ACCOUNTS[:4])
ALICE_KEY, BOB_KEY, MALLORY_KEY = (k for _, k in ACCOUNTS[1:4])
WG_A = "YWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWE="
DAY = 86_400
U64_MAX = 2**64 - 1


class Clock:
    """The timestamps of the next blocks, set on anvil before each transaction."""

    def __init__(self, anvil: Anvil) -> None:
        self.anvil = anvil
        self.now = int(time.time()) + 1_000

    def next_block_at(self, seconds_later: int = 1) -> int:
        self.now += seconds_later
        self.anvil.rpc("evm_setNextBlockTimestamp", [self.now])
        return self.now


@pytest.fixture
def clock(anvil: Anvil) -> Clock:
    return Clock(anvil)


def updates(nft: AccessNFT) -> list[tuple[int, int]]:
    """Every SubscriptionUpdate of the contract: (token id, expiration), oldest first."""
    entries = nft.contract.events["SubscriptionUpdate"]().get_logs(from_block=0)
    return [(int(e["args"]["tokenId"]), int(e["args"]["expiration"])) for e in entries]


def test_answers_supports_interface_for_erc5643_and_still_erc721(nft: AccessNFT) -> None:
    assert nft.supports_interface(ERC5643_INTERFACE_ID) is True
    assert nft.supports_expiry() is True
    assert nft.supports_interface(bytes.fromhex("80ac58cd")) is True  # ERC-721
    assert nft.supports_interface(bytes.fromhex("01ffc9a7")) is True  # ERC-165
    assert nft.supports_interface(bytes.fromhex("49064906")) is True  # ERC-4906 (URI storage)
    assert nft.supports_interface(bytes.fromhex("deadbeef")) is False


def test_a_pass_minted_without_duration_is_perpetual_and_announces_nothing(
    nft: AccessNFT,
) -> None:
    result = nft.mint(ALICE, "node-a", WG_A)

    assert "NodeAccessGranted" in result.events
    assert "SubscriptionUpdate" not in result.events
    assert nft.expires_at(1) == PERPETUAL == U64_MAX
    assert nft.is_renewable(1) is False
    assert updates(nft) == []
    with pytest.raises(ChainError, match=r"renewSubscription reverted: NotRenewable\(tokenId=1\)"):
        nft.renew(1, DAY)


def test_mint_with_a_duration_expires_that_long_after_the_mint_block(
    nft: AccessNFT, clock: Clock, anvil: Anvil
) -> None:
    at = clock.next_block_at()
    result = nft.mint(ALICE, "node-a", WG_A, duration=30 * DAY)

    assert result.token_id == 1
    assert result.events[-2:] == ("NodeAccessGranted", "SubscriptionUpdate")
    assert result.args["expiration"] == at + 30 * DAY
    assert nft.expires_at(1) == at + 30 * DAY
    assert nft.is_renewable(1) is True
    assert updates(nft) == [(1, at + 30 * DAY)]

    # the listener's own decoder reads the real logs, in this order
    raws = anvil.rpc(
        "eth_getLogs", [{"address": nft.address, "fromBlock": "0x0", "toBlock": "latest"}]
    )
    ours = [raw for raw in raws if raw["topics"][0] in TOPICS]
    events = [decode_log(raw, 31337, at).event for raw in ours]
    assert isinstance(events[0], NodeAccessGranted)
    assert events[1] == SubscriptionUpdate(token_id=1, expiration=at + 30 * DAY)
    assert ours[1]["topics"][0] == SUBSCRIPTION


def test_renewal_extends_from_the_expiration_or_from_now_when_it_is_past(
    nft: AccessNFT, clock: Clock
) -> None:
    minted_at = clock.next_block_at()
    nft.mint(ALICE, "node-a", WG_A, duration=100)

    clock.next_block_at(10)  # still 90 s to go: extends the expiration
    result = nft.renew(1, 50)
    assert result.events == ("SubscriptionUpdate",)
    assert nft.expires_at(1) == minted_at + 150

    renewed_at = clock.next_block_at(1_000)  # long expired: counts from now
    nft.renew(1, 60)
    assert nft.expires_at(1) == renewed_at + 60
    assert updates(nft) == [(1, minted_at + 100), (1, minted_at + 150), (1, renewed_at + 60)]


def test_only_the_contract_owner_renews(nft: AccessNFT) -> None:
    nft.mint(ALICE, "node-a", WG_A, duration=DAY)
    for key, who in ((ALICE_KEY, ALICE), (MALLORY_KEY, MALLORY)):
        with pytest.raises(ChainError, match=rf"OwnableUnauthorizedAccount\(account={who.lower()}"):
            nft.with_signer(key).renew(1, DAY)
    assert len(updates(nft)) == 1


def test_renewal_needs_a_duration_and_takes_no_ether(nft: AccessNFT) -> None:
    nft.mint(ALICE, "node-a", WG_A, duration=DAY)
    with pytest.raises(SettingsError, match="--duration"):
        nft.renew(1, 0)  # refused before anything is sent
    with pytest.raises(SettingsError, match="--duration"):
        nft.renew(1, 2**64)
    fn = nft.contract.functions.renewSubscription
    with pytest.raises(ContractLogicError) as zero:
        fn(1, 0).call({"from": OWNER})
    assert nft._reason(zero.value) == "ZeroDuration()"
    with pytest.raises(ContractLogicError) as paid:
        fn(1, 5).call({"from": OWNER, "value": 1})
    assert nft._reason(paid.value) == "PaymentNotAccepted(value=1)"
    with pytest.raises(ContractLogicError) as paid_cancel:
        nft.contract.functions.cancelSubscription(1).call({"from": OWNER, "value": 7})
    assert nft._reason(paid_cancel.value) == "PaymentNotAccepted(value=7)"


@pytest.mark.parametrize("canceller", ["holder", "contract-owner"])
def test_holder_or_contract_owner_cancels_and_a_renewal_brings_it_back(
    nft: AccessNFT, clock: Clock, canceller: str
) -> None:
    nft.mint(ALICE, "node-a", WG_A, duration=30 * DAY)
    signer = nft.with_signer(ALICE_KEY) if canceller == "holder" else nft

    clock.next_block_at()
    result = signer.cancel(1)

    assert result.events == ("SubscriptionUpdate",)
    assert result.args["expiration"] == 0
    assert nft.expires_at(1) == 0
    assert nft.is_renewable(1) is True
    renewed_at = clock.next_block_at(5)
    nft.renew(1, DAY)
    assert nft.expires_at(1) == renewed_at + DAY
    assert [e for _, e in updates(nft)][1:] == [0, renewed_at + DAY]


def test_a_stranger_cannot_cancel(nft: AccessNFT) -> None:
    nft.mint(ALICE, "node-a", WG_A, duration=DAY)
    with pytest.raises(ChainError, match=r"NotHolderOrOwner\(tokenId=1, caller="):
        nft.with_signer(MALLORY_KEY).cancel(1)
    assert nft.expires_at(1) > 0


def test_cancelling_a_perpetual_pass_puts_it_on_a_subscription(
    nft: AccessNFT, clock: Clock
) -> None:
    nft.mint(ALICE, "node-a", WG_A)
    nft.cancel(1)
    assert nft.expires_at(1) == 0
    assert nft.is_renewable(1) is True
    at = clock.next_block_at()
    nft.renew(1, 7 * DAY)
    assert nft.expires_at(1) == at + 7 * DAY
    assert updates(nft) == [(1, 0), (1, at + 7 * DAY)]


def test_sums_saturate_at_the_largest_uint64(nft: AccessNFT) -> None:
    nft.mint(ALICE, "node-a", WG_A, duration=U64_MAX)
    assert nft.expires_at(1) == U64_MAX
    nft.renew(1, U64_MAX)
    nft.renew(1, 1)
    assert nft.expires_at(1) == U64_MAX
    assert updates(nft) == [(1, U64_MAX)] * 3


def test_a_revoked_pass_is_neither_renewed_nor_cancelled(nft: AccessNFT) -> None:
    nft.mint(ALICE, "node-a", WG_A, duration=DAY)
    nft.revoke(1)
    assert nft.is_renewable(1) is False
    with pytest.raises(ChainError, match=r"renewSubscription reverted: TokenNotActive"):
        nft.renew(1, DAY)
    with pytest.raises(ChainError, match=r"cancelSubscription reverted: TokenNotActive"):
        nft.cancel(1)


def test_the_expiration_stays_with_the_token_through_a_transfer(
    nft: AccessNFT, clock: Clock
) -> None:
    at = clock.next_block_at()
    nft.mint(ALICE, "node-a", WG_A, duration=DAY)
    result = nft.with_signer(ALICE_KEY).transfer(1, BOB)

    assert "SubscriptionUpdate" not in result.events
    assert nft.expires_at(1) == at + DAY
    # the new holder may cancel it, the old one no longer
    with pytest.raises(ChainError, match="NotHolderOrOwner"):
        nft.with_signer(ALICE_KEY).cancel(1)
    nft.with_signer(BOB_KEY).cancel(1)
    assert nft.expires_at(1) == 0


def test_expires_at_a_past_block_and_of_a_missing_token(nft: AccessNFT, clock: Clock) -> None:
    at = clock.next_block_at()
    minted = nft.mint(ALICE, "node-a", WG_A, duration=DAY)
    nft.cancel(1)

    assert nft.expires_at(1, block=minted.block_number) == at + DAY
    assert nft.expires_at(1) == 0
    with pytest.raises(ChainError, match="ERC721NonexistentToken"):
        nft.expires_at(9)
    with pytest.raises(ChainError, match="ERC721NonexistentToken"):
        nft.is_renewable(9)


def test_the_perpetual_mint_keeps_its_abi(nft: AccessNFT) -> None:
    """``mintNodeAccess`` (docs/design.md §3.1) is unchanged: a client that knows only it still mints."""
    abi: list[dict[str, Any]] = nft.abi
    mints = [f for f in abi if f.get("name") == "mintNodeAccess"]
    assert len(mints) == 1
    assert [i["type"] for i in mints[0]["inputs"]] == ["address", "string", "string", "string"]
    assert nft.mint(ALICE, "node-a", WG_A).token_id == 1


# --- the command line -----------------------------------------------------------------------

WGCHAIN = str(Path(sys.executable).with_name("wgchain"))


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [WGCHAIN, "contract", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def cli_env(anvil: Anvil, nft: AccessNFT, key: str = ACCOUNTS[0][1]) -> dict[str, str]:
    return {
        **os.environ,
        "WGCHAIN_RPC_URL": anvil.url,
        "WGCHAIN_CONTRACT": nft.address,
        "WGCHAIN_PRIVATE_KEY": key,
        "WGCHAIN_CONFIG": "",
    }


def test_cli_mints_renews_and_cancels_a_pass(nft: AccessNFT, anvil: Anvil, clock: Clock) -> None:
    env = cli_env(anvil, nft)
    at = clock.next_block_at()
    minted = run_cli(env, "mint", "--to", ALICE, "--node", "node-a", "--duration", "30d", "--json")
    assert minted.returncode == 0, minted.stderr
    out = json.loads(minted.stdout)
    assert (out["token_id"], out["expiration"]) == (1, at + 30 * DAY)
    assert out["events"][-2:] == ["NodeAccessGranted", "SubscriptionUpdate"]

    renewed = run_cli(env, "renew", "1", "--duration", "1d12h", "--json")
    assert renewed.returncode == 0, renewed.stderr
    out = json.loads(renewed.stdout)
    assert out["expiration"] == at + 30 * DAY + 129_600
    assert (out["token_id"], out["duration"], out["events"]) == (1, 129_600, ["SubscriptionUpdate"])
    assert nft.expires_at(1) == at + 30 * DAY + 129_600

    text = run_cli(env, "renew", "1", "--duration", "3600")
    assert text.returncode == 0, text.stderr
    assert text.stdout.startswith("renewed token 1: expires 20")
    assert " UTC in block " in text.stdout

    cancelled = run_cli(cli_env(anvil, nft, ALICE_KEY), "cancel", "1", "--json")  # the holder
    assert cancelled.returncode == 0, cancelled.stderr
    assert json.loads(cancelled.stdout)["expiration"] == 0
    assert nft.expires_at(1) == 0
    human = run_cli(env, "cancel", "1")
    assert human.stdout.startswith("cancelled the pass of token 1 (expired now) in block ")

    perpetual = run_cli(env, "mint", "--to", BOB, "--node", "node-b", "--json")
    assert perpetual.returncode == 0, perpetual.stderr
    assert json.loads(perpetual.stdout)["expiration"] is None
    assert nft.expires_at(2) == PERPETUAL


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["renew", "1", "--duration", "soon"], "--duration: 'soon' is not a duration"),
        (["renew", "1", "--duration", "0"], "--duration: '0' is zero"),
        (["renew", "1"], "--duration"),
        (["renew", "0", "--duration", "1d"], "TOKEN_ID"),
        (["mint", "--to", ALICE, "--node", "n", "--duration", "-1d"], "--duration"),
        (["mint", "--to", ALICE, "--node", "n", "--duration", "2" * 21], "--duration"),
        (["cancel", "x"], "TOKEN_ID"),
    ],
)
def test_cli_bad_durations_are_one_line_and_send_nothing(
    nft: AccessNFT, anvil: Anvil, args: list[str], needle: str
) -> None:
    head = anvil.block_number()
    result = run_cli(cli_env(anvil, nft), *args)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert needle in lines[0]
    assert anvil.block_number() == head


@pytest.mark.parametrize(
    ("args", "signer", "line"),
    [
        (
            ["renew", "1", "--duration", "1d"],
            MALLORY_KEY,
            f"wgchain: renewSubscription reverted: OwnableUnauthorizedAccount(account={MALLORY.lower()})",
        ),
        (
            ["cancel", "1"],
            MALLORY_KEY,
            f"wgchain: cancelSubscription reverted: NotHolderOrOwner(tokenId=1, caller={MALLORY.lower()})",
        ),
        (
            ["renew", "2", "--duration", "1d"],
            ACCOUNTS[0][1],
            "wgchain: renewSubscription reverted: NotRenewable(tokenId=2)",
        ),
        (
            ["cancel", "9"],
            ACCOUNTS[0][1],
            "wgchain: cancelSubscription reverted: ERC721NonexistentToken(tokenId=9)",
        ),
    ],
)
def test_cli_reverts_are_one_line(
    nft: AccessNFT, anvil: Anvil, args: list[str], signer: str, line: str
) -> None:
    nft.mint(ALICE, "node-a", WG_A, duration=DAY)
    nft.mint(BOB, "node-b", WG_A)
    result = run_cli(cli_env(anvil, nft, signer), *args)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [line]
    assert signer[2:] not in result.stderr + result.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["renew", "1", "--duration", "1d"],
        ["cancel", "1"],
        ["mint", "--to", ALICE, "--node", "node-a", "--duration", "1d"],
    ],
)
def test_cli_on_a_contract_without_erc5643_says_so_and_sends_nothing(
    nft: AccessNFT, anvil: Anvil, args: list[str]
) -> None:
    legacy = "0x" + "5a" * 20
    anvil.rpc("anvil_setCode", [legacy, "0x60006000fd"])  # reverts every call
    assert AccessNFT(anvil.url, legacy).supports_expiry() is False
    head = anvil.block_number()
    env = {**cli_env(anvil, nft), "WGCHAIN_CONTRACT": legacy}
    result = run_cli(env, *args)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"wgchain: the contract at {Web3.to_checksum_address(legacy)} does not implement "
        "ERC-5643 (supportsInterface(0x8c65f84d) is not true): its passes never expire; "
        "nothing was sent"
    ]
    assert anvil.block_number() == head
