"""The committed contract artifact: reproducible from the source, and true to docs/design.md §3."""

from __future__ import annotations

import re
import shutil

import pytest
from conftest import require
from eth_utils.crypto import keccak

from shared.contract import build
from shared.contract.client import load_artifact

#: docs/design.md §3.1, verbatim: the listener decodes these and only these.
DESIGN_EVENTS = """
event NodeAccessGranted(uint256 indexed tokenId, string nodeId, address indexed owner, string wireguardPublicKey);
event NodeAccessRevoked(uint256 indexed tokenId, string nodeId);
event NodeAccessTransferred(uint256 indexed tokenId, address indexed from, address indexed to);
event PublicKeyUpdated(address indexed owner, string wireguardPublicKey);
"""

#: docs/design.md §3.3 interface functions: name -> (input types, output types).
DESIGN_FUNCTIONS = {
    "mintNodeAccess": (["address", "string", "string", "string"], ["uint256"]),
    "revokeNodeAccess": (["uint256"], []),
    "getNodeAccess": (["uint256"], ["string", "string", "uint256", "bool"]),
    "hasNodeAccess": (["address", "string"], ["bool"]),
    "verifyAccess": (["address", "string"], ["bool"]),
    "getTokenIdByNodeId": (["string"], ["uint256"]),
    "getPublicKeyByOwner": (["address"], ["string"]),
    "getPublicKeyByTokenId": (["uint256"], ["string"]),
    "ownerOf": (["uint256"], ["address"]),
    "tokenURI": (["uint256"], ["string"]),
    "transferContractOwnership": (["address"], []),
    "updatePublicKey": (["string"], []),
}


def parse_event(line: str) -> tuple[str, list[tuple[str, bool, str]]]:
    match = re.fullmatch(r"event (\w+)\((.*)\);", line.strip())
    assert match, line
    params = []
    for part in match.group(2).split(","):
        words = part.split()
        params.append((words[0], "indexed" in words, words[-1]))
    return match.group(1), params


def topic(name: str, types: list[str]) -> str:
    return keccak(text=f"{name}({','.join(types)})").hex()


def test_committed_artifact_matches_a_fresh_compile() -> None:
    require(shutil.which("node") is not None, "node is not installed")
    require((build.tools_dir() / "node_modules/solc").is_dir(), "solc missing: npm ci in .tools")

    fresh = build.render(build.compile_contract())

    assert build.ARTIFACT.read_text(encoding="utf-8") == fresh, (
        "stale artifact: run python -m shared.contract.build"
    )


def test_check_mode_reports_a_stale_artifact(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    require(shutil.which("node") is not None, "node is not installed")
    require((build.tools_dir() / "node_modules/solc").is_dir(), "solc missing: npm ci in .tools")
    stale = tmp_path / "DstackAccessNFT.json"
    stale.write_text('{"abi": [], "bytecode": "0x"}\n')

    committed = build.ARTIFACT.read_text(encoding="utf-8")
    monkeypatch.setattr(build, "ARTIFACT", stale)

    assert build.main(["--check"]) == 1
    assert build.main([]) == 0
    assert stale.read_text(encoding="utf-8") == committed


def test_event_signatures_match_design() -> None:
    abi_events = {e["name"]: e for e in load_artifact()["abi"] if e["type"] == "event"}
    expected = [parse_event(line) for line in DESIGN_EVENTS.strip().splitlines()]

    for name, params in expected:
        assert name in abi_events, name
        inputs = abi_events[name]["inputs"]
        got = [(i["type"], i["indexed"], i["name"]) for i in inputs]
        assert got == params, name
        assert topic(name, [i["type"] for i in inputs]) == topic(name, [p[0] for p in params])
        assert abi_events[name]["anonymous"] is False


def test_interface_functions_match_design() -> None:
    functions = {f["name"]: f for f in load_artifact()["abi"] if f["type"] == "function"}

    for name, (inputs, outputs) in DESIGN_FUNCTIONS.items():
        assert name in functions, name
        assert [i["type"] for i in functions[name]["inputs"]] == inputs, name
        assert [o["type"] for o in functions[name]["outputs"]] == outputs, name
    assert load_artifact()["bytecode"].startswith("0x6080")


#: ERC-5643 (subscription NFTs), verbatim: the event and the four functions of its interface.
ERC5643_EVENT = "event SubscriptionUpdate(uint256 indexed tokenId, uint64 expiration);"
ERC5643_FUNCTIONS = {
    "renewSubscription": (["uint256", "uint64"], [], "payable"),
    "cancelSubscription": (["uint256"], [], "payable"),
    "expiresAt": (["uint256"], ["uint64"], "view"),
    "isRenewable": (["uint256"], ["bool"], "view"),
}


def test_erc5643_event_functions_and_interface_id() -> None:
    abi = load_artifact()["abi"]
    events = {e["name"]: e for e in abi if e["type"] == "event"}
    name, params = parse_event(ERC5643_EVENT)
    got = [(i["type"], i["indexed"], i["name"]) for i in events[name]["inputs"]]
    assert got == params
    functions = {f["name"]: f for f in abi if f["type"] == "function"}
    interface_id = 0
    for fname, (inputs, outputs, mutability) in ERC5643_FUNCTIONS.items():
        assert [i["type"] for i in functions[fname]["inputs"]] == inputs, fname
        assert [o["type"] for o in functions[fname]["outputs"]] == outputs, fname
        assert functions[fname]["stateMutability"] == mutability, fname
        interface_id ^= int.from_bytes(keccak(text=f"{fname}({','.join(inputs)})")[:4], "big")
    assert interface_id == 0x8C65F84D
    with_duration = functions["mintNodeAccessWithDuration"]
    assert [i["type"] for i in with_duration["inputs"]] == [
        "address",
        "string",
        "string",
        "string",
        "uint64",
    ]
