"""DstackAccessNFT on a real anvil: permissions, node uniqueness, events, views, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from shared.contract.client import AccessNFT
from shared.devnet.anvil import ACCOUNTS, Anvil
from shared.errors import ChainError

pytestmark = pytest.mark.integration

OWNER, ALICE, BOB, MALLORY = (a for a, _ in ACCOUNTS[:4])
ALICE_KEY, BOB_KEY, MALLORY_KEY = (k for _, k in ACCOUNTS[1:4])
WG_A = "YWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWE="
WG_B = "YmJiYmJiYmJiYmJiYmJiYmJiYmJiYmJiYmJiYmJiYmI="
WGCHAIN = str(Path(sys.executable).with_name("wgchain"))


def logs(nft: AccessNFT, event: str) -> list[dict[str, Any]]:
    """Every ``event`` the contract emitted, oldest first, as plain dicts of its arguments."""
    entries = nft.contract.events[event]().get_logs(from_block=0)
    return [dict(e["args"]) for e in entries]


def test_dev_accounts_are_anvils(anvil: Anvil) -> None:
    assert anvil.rpc("eth_accounts") == [a.lower() for a, _ in ACCOUNTS]


def test_mine_advances_the_head(anvil: Anvil) -> None:
    start = anvil.block_number()
    assert anvil.mine(3) == start + 3


def test_only_the_contract_owner_mints(nft: AccessNFT) -> None:
    with pytest.raises(ChainError, match="OwnableUnauthorizedAccount"):
        nft.with_signer(MALLORY_KEY).mint(MALLORY, "node-a", WG_A)
    assert nft.token_id_of("node-a") == 0

    first = nft.mint(ALICE, "node-a", WG_A, "ipfs://a")
    second = nft.mint(BOB, "node-b", WG_B)

    assert (first.token_id, second.token_id) == (1, 2)
    assert nft.owner_of(1) == ALICE
    assert nft.token_uri(1) == "ipfs://a"
    assert nft.contract_owner() == OWNER


def test_transfer_contract_ownership_moves_the_right_to_mint(nft: AccessNFT) -> None:
    nft.transfer_contract_ownership(ALICE)
    with pytest.raises(ChainError, match="OwnableUnauthorizedAccount"):
        nft.mint(BOB, "node-b", WG_B)
    assert nft.with_signer(ALICE_KEY).mint(BOB, "node-b", WG_B).token_id == 1


def test_one_active_token_per_node_until_revoked(nft: AccessNFT) -> None:
    nft.mint(ALICE, "node-a", WG_A)
    with pytest.raises(ChainError, match=r"NodeAlreadyActive\(tokenId=1\)"):
        nft.mint(BOB, "node-a", WG_B)

    nft.revoke(1)
    again = nft.mint(BOB, "node-a", WG_B)

    assert again.token_id == 2
    assert nft.token_id_of("node-a") == 2
    assert nft.get_node_access(1).is_active is False
    assert nft.get_node_access(2).is_active is True


@pytest.mark.parametrize("revoker", ["holder", "contract-owner"])
def test_holder_or_contract_owner_revokes(nft: AccessNFT, revoker: str) -> None:
    nft.mint(ALICE, "node-a", WG_A)
    signer = nft.with_signer(ALICE_KEY) if revoker == "holder" else nft

    result = signer.revoke(1)

    assert result.events == ("NodeAccessRevoked",)
    assert logs(nft, "NodeAccessRevoked") == [{"tokenId": 1, "nodeId": "node-a"}]
    assert nft.token_id_of("node-a") == 0
    assert nft.owner_of(1) == ALICE  # revoked, not burnt


def test_stranger_cannot_revoke_and_revoke_is_once(nft: AccessNFT) -> None:
    nft.mint(ALICE, "node-a", WG_A)
    with pytest.raises(ChainError, match="NotHolderOrOwner"):
        nft.with_signer(MALLORY_KEY).revoke(1)
    assert nft.get_node_access(1).is_active is True

    nft.revoke(1)
    with pytest.raises(ChainError, match="TokenNotActive"):
        nft.revoke(1)
    assert len(logs(nft, "NodeAccessRevoked")) == 1


def test_every_transfer_emits_node_access_transferred_but_mint_does_not(
    nft: AccessNFT,
) -> None:
    minted = nft.mint(ALICE, "node-a", WG_A)
    assert "NodeAccessTransferred" not in minted.events
    assert minted.events == ("Transfer", "NodeAccessGranted")

    with pytest.raises(ChainError, match="ERC721InsufficientApproval"):
        nft.with_signer(MALLORY_KEY).transfer(1, MALLORY)
    first = nft.with_signer(ALICE_KEY).transfer(1, BOB)
    second = nft.with_signer(BOB_KEY).transfer(1, ALICE)

    assert first.events == ("Transfer", "NodeAccessTransferred")
    assert second.events == ("Transfer", "NodeAccessTransferred")
    assert logs(nft, "NodeAccessTransferred") == [
        {"tokenId": 1, "from": ALICE, "to": BOB},
        {"tokenId": 1, "from": BOB, "to": ALICE},
    ]


def test_update_public_key_is_per_owner(nft: AccessNFT) -> None:
    nft.mint(ALICE, "node-a", WG_A)
    nft.mint(ALICE, "node-a2", "")  # an empty key leaves the owner's key alone
    assert nft.public_key_of(ALICE) == WG_A

    result = nft.with_signer(ALICE_KEY).set_key(WG_B)

    assert result.events == ("PublicKeyUpdated",)
    assert logs(nft, "PublicKeyUpdated") == [{"owner": ALICE, "wireguardPublicKey": WG_B}]
    assert nft.public_key_of(ALICE) == WG_B
    assert nft.get_node_access(1).public_key == WG_B
    assert nft.get_node_access(2).public_key == WG_B
    assert nft.public_key_of_token(2) == WG_B


def test_key_follows_the_token_owner_after_transfer(nft: AccessNFT) -> None:
    nft.mint(ALICE, "node-a", WG_A)
    nft.with_signer(BOB_KEY).set_key(WG_B)

    nft.with_signer(ALICE_KEY).transfer(1, BOB)

    assert nft.get_node_access(1).public_key == WG_B
    assert nft.public_key_of(ALICE) == WG_A


def test_views_agree_with_events(nft: AccessNFT) -> None:
    nft.mint(ALICE, "node-a", WG_A)
    granted = logs(nft, "NodeAccessGranted")
    assert granted == [
        {"tokenId": 1, "nodeId": "node-a", "owner": ALICE, "wireguardPublicKey": WG_A}
    ]
    access = nft.get_node_access(1)
    assert (access.node_id, access.public_key, access.is_active) == ("node-a", WG_A, True)
    assert access.created_at > 0
    assert nft.has_node_access(ALICE, "node-a")
    assert nft.verify_access(ALICE, "node-a")
    assert not nft.has_node_access(BOB, "node-a")
    assert nft.token_id_of("node-a") == 1

    nft.with_signer(ALICE_KEY).transfer(1, BOB)
    assert nft.has_node_access(BOB, "node-a")
    assert nft.verify_access(BOB, "node-a")
    assert not nft.has_node_access(ALICE, "node-a")
    assert nft.token_id_of("node-a") == 1

    nft.revoke(1)
    assert not nft.has_node_access(BOB, "node-a")
    assert not nft.verify_access(BOB, "node-a")
    assert nft.token_id_of("node-a") == 0


def test_hostile_strings_are_stored_verbatim(nft: AccessNFT) -> None:
    node_id = "../etc/passwd\n[Peer]"
    key = "x\nEndpoint = evil:1\n" + "A" * 10_000

    token_id = nft.mint(ALICE, node_id, key).token_id

    assert token_id == 1
    access = nft.get_node_access(1)
    assert (access.node_id, access.public_key) == (node_id, key)
    assert logs(nft, "NodeAccessGranted")[0]["wireguardPublicKey"] == key


def test_view_of_a_missing_token_is_a_chain_error(nft: AccessNFT) -> None:
    with pytest.raises(ChainError, match=r"ERC721NonexistentToken\(tokenId=7\)"):
        nft.get_node_access(7)


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [WGCHAIN, "contract", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_cli_deploys_and_mints(anvil: Anvil, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "WGCHAIN_RPC_URL": anvil.url,
        "WGCHAIN_PRIVATE_KEY": ACCOUNTS[0][1],
        "WGCHAIN_CONFIG": "",
    }
    deployed = run_cli(env, "deploy", "--json")
    assert deployed.returncode == 0, deployed.stderr
    address = json.loads(deployed.stdout)["address"]
    env["WGCHAIN_CONTRACT"] = address

    minted = run_cli(env, "mint", "--to", ALICE, "--node", "node-a", "--key", WG_A, "--json")
    assert minted.returncode == 0, minted.stderr
    out = json.loads(minted.stdout)
    assert out["token_id"] == 1
    assert out["address"] == address

    nft = AccessNFT(anvil.url, address)
    assert nft.token_id_of("node-a") == 1
    assert nft.owner_of(1) == ALICE
    assert nft.public_key_of(ALICE) == WG_A

    keyed = run_cli({**env, "WGCHAIN_PRIVATE_KEY": ALICE_KEY}, "set-key", WG_B, "--json")
    assert keyed.returncode == 0, keyed.stderr
    moved = run_cli({**env, "WGCHAIN_PRIVATE_KEY": ALICE_KEY}, "transfer", "1", "--to", BOB)
    assert moved.returncode == 0, moved.stderr
    revoked = run_cli(env, "revoke", "1", "--json")
    assert revoked.returncode == 0, revoked.stderr
    assert nft.public_key_of(ALICE) == WG_B
    assert nft.owner_of(1) == BOB
    assert nft.token_id_of("node-a") == 0


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["mint", "--to", "0x1234", "--node", "n"], "--to"),
        (["revoke", "1"], "WGCHAIN_CONTRACT"),
    ],
)
def test_cli_bad_arguments_are_one_line(anvil: Anvil, args: list[str], needle: str) -> None:
    env = {**os.environ, "WGCHAIN_RPC_URL": anvil.url, "WGCHAIN_PRIVATE_KEY": ACCOUNTS[0][1]}
    env.pop("WGCHAIN_CONTRACT", None)
    if args[0] == "mint":
        env["WGCHAIN_CONTRACT"] = AccessNFT.deploy(anvil.url, ACCOUNTS[0][1]).address

    result = run_cli(env, *args)

    assert result.returncode != 0
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert needle in lines[0]
    assert "Traceback" not in result.stderr


def test_cli_revert_is_one_line_and_never_shows_the_key(nft: AccessNFT, anvil: Anvil) -> None:
    env = {
        **os.environ,
        "WGCHAIN_RPC_URL": anvil.url,
        "WGCHAIN_CONTRACT": nft.address,
        "WGCHAIN_PRIVATE_KEY": MALLORY_KEY,
    }

    result = run_cli(env, "mint", "--to", MALLORY, "--node", "node-m")

    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"wgchain: mintNodeAccess reverted: OwnableUnauthorizedAccount(account={MALLORY.lower()})"
    ]
    assert MALLORY_KEY[2:] not in result.stderr + result.stdout
