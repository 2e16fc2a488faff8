"""``wgchain contract`` never sends what the pipeline will reject (unless --force), and its
--json says everything about the transaction: hash, block, token, node, owner, key."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from factories import KEY_A

from shared.contract.client import AccessNFT
from shared.devnet.anvil import ACCOUNTS, Anvil

pytestmark = pytest.mark.integration

WGCHAIN = str(Path(sys.executable).parent / "wgchain")
(OWNER, OWNER_KEY), (ALICE, ALICE_KEY), (BOB, _) = ACCOUNTS[:3]
ZERO_KEY = "A" * 43 + "="


def contract(
    nft: AccessNFT, anvil: Anvil, *args: str, signer: str = OWNER_KEY
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("WGCHAIN_")}
    environ = {
        **clean,
        "WGCHAIN_RPC_URL": anvil.url,
        "WGCHAIN_CONTRACT": nft.address,
        "WGCHAIN_PRIVATE_KEY": signer,
    }
    return subprocess.run(
        [WGCHAIN, "contract", *args], env=environ, capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip


def sent(anvil: Anvil) -> tuple[int, int]:
    """(head block, transactions sent by the two signers): what changes when anything is sent."""
    nonces = sum(
        int(anvil.rpc("eth_getTransactionCount", [a, "latest"]), 16) for a in (OWNER, ALICE)
    )
    return anvil.block_number(), nonces


@pytest.mark.parametrize(
    ("args", "signer", "option", "why"),
    [
        (["set-key", "notakey"], ALICE_KEY, "KEY", "'notakey' is not a WireGuard public key"),
        (["set-key", ZERO_KEY], ALICE_KEY, "KEY", "is the all-zero key"),
        (["set-key", ""], ALICE_KEY, "KEY", "a WireGuard public key must not be empty"),
        (["mint", "--to", ALICE, "--node", "node-x", "--key", "xyz"], OWNER_KEY, "--key", "'xyz' is not a WireGuard public key"),
        (["mint", "--to", ALICE, "--node", "bad node!", "--key", KEY_A], OWNER_KEY, "--node", "'bad node!' is not a node id"),
        (["mint", "--to", ALICE, "--node", "a\n[Peer]", "--key", KEY_A], OWNER_KEY, "--node", r"'a\\n[Peer]' is not a node id"),
        (["mint", "--to", ALICE, "--node", "x" * 65], OWNER_KEY, "--node", "65 characters long"),
    ],
    ids=lambda v: " ".join(v)[:30] if isinstance(v, list) else None,
)  # fmt: skip
def test_what_the_pipeline_rejects_is_never_sent(
    nft: AccessNFT, anvil: Anvil, args: list[str], signer: str, option: str, why: str
) -> None:
    before = sent(anvil)
    res = contract(nft, anvil, *args, signer=signer)
    assert res.returncode == 2
    assert res.stdout == ""
    (line,) = res.stderr.splitlines()
    assert line.startswith(f"wgchain: {option}: ")
    assert why in line
    assert "nothing was sent (--force sends it anyway)" in line
    assert sent(anvil) == before
    assert nft.token_id_of("node-x") == 0


def test_force_sends_it_anyway(nft: AccessNFT, anvil: Anvil) -> None:
    res = contract(
        nft,
        anvil,
        "mint",
        "--to",
        ALICE,
        "--node",
        "bad node!",
        "--key",
        "xyz",
        "--force",
        "--json",
    )
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert (out["node"], out["key"], out["owner"]) == ("bad node!", "xyz", ALICE)
    assert nft.get_node_access(out["token_id"]).node_id == "bad node!"
    keyed = contract(nft, anvil, "set-key", "notakey", "--force", signer=ALICE_KEY)
    assert keyed.returncode == 0, keyed.stderr
    assert nft.public_key_of(ALICE) == "notakey"


def test_every_json_output_is_complete(nft: AccessNFT, anvil: Anvil) -> None:
    minted = json.loads(
        contract(
            nft, anvil, "mint", "--to", ALICE, "--node", "node-a", "--key", KEY_A, "--json"
        ).stdout
    )
    assert minted["token_id"] == 1
    assert (minted["node"], minted["owner"], minted["key"]) == ("node-a", ALICE, KEY_A)
    assert minted["events"] == ["Transfer", "NodeAccessGranted"]

    other = "YmJiYmJiYmJiYmJiYmJiYmJiYmJiYmJiYmJiYmJiYmI="
    keyed = json.loads(contract(nft, anvil, "set-key", other, "--json", signer=ALICE_KEY).stdout)
    assert (keyed["owner"], keyed["key"], keyed["events"]) == (ALICE, other, ["PublicKeyUpdated"])

    moved = json.loads(
        contract(nft, anvil, "transfer", "1", "--to", BOB, "--json", signer=ALICE_KEY).stdout
    )
    assert (moved["token_id"], moved["node"], moved["previous_owner"], moved["owner"]) == (
        1,
        "node-a",
        ALICE,
        BOB,
    )
    assert moved["key"] == ""  # BOB has no key: the node is no longer live

    revoked = json.loads(contract(nft, anvil, "revoke", "1", "--json").stdout)
    assert (revoked["token_id"], revoked["node"], revoked["owner"]) == (1, "node-a", BOB)

    for out in (minted, keyed, moved, revoked):
        assert out["tx_hash"].startswith("0x")
        assert len(out["tx_hash"]) == 66
        assert out["block"] >= 1
        assert out["address"] == nft.address
    assert [minted["block"], keyed["block"], moved["block"], revoked["block"]] == sorted(
        {minted["block"], keyed["block"], moved["block"], revoked["block"]}
    )
