"""B6's chain side: a whole network granted on a real anvil, then real key rotations.

``FleetEmitter.sol`` emits logs with DstackAccessNFT's exact ``NodeAccessGranted``
and ``PublicKeyUpdated`` signatures: the population is granted in transactions of
:data:`GRANTS_PER_TX` logs (each with its own key, so every member is a distinct live
peer), and each measured change is one transaction re-keying one owner. The real
listener reads these logs like the contract's, and registry + ipam fold them.
"""

from __future__ import annotations

import base64
import json
import random
import shutil
import subprocess
from functools import cache
from typing import Any, Final

from common import HERE, Unavailable

from shared.devnet.anvil import ACCOUNTS, Anvil

SOURCE: Final = HERE / "FleetEmitter.sol"
#: Address pool of B6's networks (room for 100,000 members and more).
POOL: Final = "10.64.0.0/14"
#: Grants per population transaction.
GRANTS_PER_TX: Final = 500
#: Gas per grant (log + calldata key + node id), with room to spare.
GAS_PER_GRANT: Final = 14_000

_COMPILE_JS: Final = r"""
const fs = require('fs');
const path = require('path');
const solc = require(path.resolve(process.argv[1], 'node_modules', 'solc'));
process.stdout.write(solc.compile(fs.readFileSync(0, 'utf8')));
"""


def node_of(token: int) -> str:
    """The node id the emitter gives token ``token``."""
    return f"node-{token}"


def random_key(rng: random.Random) -> str:
    """A random WireGuard public key (32 random bytes, base64)."""
    return base64.b64encode(rng.randbytes(32)).decode()


@cache
def compile_fleet_emitter() -> dict[str, Any]:
    """ABI and bytecode of ``FleetEmitter.sol`` (solc from ``.tools``)."""
    from shared.contract.build import tools_dir

    node = shutil.which("node")
    if node is None or not (tools_dir() / "node_modules" / "solc").is_dir():
        raise Unavailable("node and solc in .tools/node_modules are needed (make setup)")
    request = {
        "language": "Solidity",
        "sources": {SOURCE.name: {"content": SOURCE.read_text()}},
        "settings": {
            "optimizer": {"enabled": True, "runs": 200},
            "outputSelection": {"*": {"*": ["abi", "evm.bytecode.object"]}},
        },
    }
    proc = subprocess.run(
        [node, "-e", _COMPILE_JS, str(tools_dir())],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    output = json.loads(proc.stdout)
    errors = [e["formattedMessage"] for e in output.get("errors", []) if e["severity"] == "error"]
    if errors:
        raise RuntimeError("; ".join(errors))
    contract = output["contracts"][SOURCE.name]["FleetEmitter"]
    return {"abi": contract["abi"], "bytecode": "0x" + contract["evm"]["bytecode"]["object"]}


class FleetChain:
    """The emitter deployed on ``chain``; grants and rotations as real transactions."""

    def __init__(self, chain: Anvil) -> None:
        from web3 import Web3

        artifact = compile_fleet_emitter()
        self.w3 = Web3(Web3.HTTPProvider(chain.url, request_kwargs={"timeout": 120}))
        self.sender = ACCOUNTS[0][0]  # anvil's unlocked dev account: no signing
        factory = self.w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
        tx = factory.constructor().transact({"from": self.sender})
        receipt = self.w3.eth.wait_for_transaction_receipt(tx)
        self.address = str(receipt["contractAddress"])
        self.deploy_block = int(receipt["blockNumber"])
        self.contract = self.w3.eth.contract(address=self.address, abi=artifact["abi"])

    def grant(self, keys: list[str], first_token: int = 1) -> int:
        """Grant tokens ``first_token``.. with ``keys`` (one each); the last block."""
        last_hash = None
        for i in range(0, len(keys), GRANTS_PER_TX):
            chunk = keys[i : i + GRANTS_PER_TX]
            call = self.contract.functions.grants(first_token + i, chunk)
            gas = 200_000 + GAS_PER_GRANT * len(chunk)
            last_hash = call.transact({"from": self.sender, "gas": gas})
        if last_hash is None:
            return self.deploy_block
        receipt = self.w3.eth.wait_for_transaction_receipt(last_hash, timeout=600)
        if receipt["status"] != 1:
            raise RuntimeError("a FleetEmitter grants transaction failed")
        return int(receipt["blockNumber"])

    def rotate(self, token: int, key: str) -> None:
        """Send the transaction that re-keys ``token``'s owner (does not wait for it)."""
        self.contract.functions.rotate(token, key).transact({"from": self.sender, "gas": 200_000})


def fleet_stages_child(params: dict[str, Any]) -> dict[str, Any]:
    """Listener + registry + ipam as ``wgchain run`` runs them (B6's pool), until SIGTERM."""
    from shared.cmdline import stop_event
    from shared.runner import run_stages
    from shared.settings import load

    cfg = load(
        {
            "redis_url": params["redis_url"],
            "rpc_url": params["rpc_url"],
            "contract": params["contract"],
            "chain_id": params["chain_id"],
            "start_block": params["start_block"],
            "confirmations": 0,
            "poll_interval": 0.05,
            "pool": POOL,
        },
        environ={},
    )
    run_stages(cfg, stop_event())
    return {}
