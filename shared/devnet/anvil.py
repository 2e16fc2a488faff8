"""A real ``anvil`` (Foundry's local EVM chain) on a free port, stopped by its pid.

The binary comes from ``WGCHAIN_ANVIL``, else the pinned npm package in
``<repo>/.tools``, else ``PATH``. Its dev accounts are the well-known public test
accounts of the mnemonic ``test test ... junk``: never use them outside a devnet.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import requests

from shared.devnet.proc import ProcessService, free_port, temp_workdir, wait_for
from shared.errors import ChainError, ServiceUnavailable

#: Root of the repository (holds ``.tools``).
REPO_ROOT = Path(__file__).resolve().parents[2]
#: Where ``npm ci`` in ``.tools`` puts the pinned anvil binary.
BUNDLED_ANVIL = REPO_ROOT / ".tools/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil"
#: Chain id anvil reports by default.
DEFAULT_CHAIN_ID = 31337
#: Seconds anvil may take to answer its first ``eth_chainId``.
START_TIMEOUT = 20.0
#: Seconds a JSON-RPC call to the devnet may take.
RPC_TIMEOUT = 10.0
#: Times a start is retried when the chosen free port was taken meanwhile.
START_ATTEMPTS = 3

#: The first ten dev accounts as (address, private key): PUBLIC test keys, devnet only.
ACCOUNTS: tuple[tuple[str, str], ...] = (
    ("0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266", "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"),
    ("0x70997970C51812dc3A010C7d01b50e0d17dc79C8", "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"),
    ("0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC", "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a"),
    ("0x90F79bf6EB2c4f870365E785982E1f101E93b906", "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6"),
    ("0x15d34AAf54267DB7D7c367839AAf71A00a2C6A65", "0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a"),
    ("0x9965507D1a55bcC2695C58ba16FB37d819B0A4dc", "0x8b3a350cf5c34c9194ca85829a2df0ec3153be0318b5e2d3348e872092edffba"),
    ("0x976EA74026E726554dB657fA54763abd0C3a0aa9", "0x92db14e403b83dfe3df233f83dfa3a0d7096f21ca9b0d6d6b8d88b2b4ec1564e"),
    ("0x14dC79964da2C08b23698B3D3cc7Ca32193d9955", "0x4bbbf85ce3377467afe5d46f804f221813b2bb87f24d81f60f1fcdbf7cbf4356"),
    ("0x23618e81E3f5cdF7f54C3d65f7FBc0aBf5B21E8f", "0xdbda1821b80551c9d65939329250298aa3472ba22feea921c0cf5d620ea67b97"),
    ("0xa0Ee7A142d267C1f36714E4a8F75612F20a79720", "0x2a871d0798f97d79848a013d4936a73bf4cc922c825d33c1cf7073dff6d409c6"),
)  # fmt: skip


def anvil_binary() -> str:
    """Path of an anvil binary: ``WGCHAIN_ANVIL``, the pinned one in ``.tools``, then PATH."""
    configured = os.environ.get("WGCHAIN_ANVIL")
    if configured:
        if Path(configured).is_file():
            return configured
        raise ServiceUnavailable(f"WGCHAIN_ANVIL={configured} is not a file")
    if BUNDLED_ANVIL.is_file():
        return str(BUNDLED_ANVIL)
    found = shutil.which("anvil")
    if found:
        return found
    raise ServiceUnavailable(
        "no anvil found: run `npm ci` in .tools, install Foundry, or set WGCHAIN_ANVIL"
    )


def rpc_call(url: str, method: str, params: list[Any] | None = None) -> Any:
    """One JSON-RPC call; raises :class:`ChainError` when the node answers with an error."""
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []}
    reply = requests.post(url, json=body, timeout=RPC_TIMEOUT).json()
    if "error" in reply:
        raise ChainError(f"{method}: {reply['error'].get('message', reply['error'])}")
    return reply["result"]


@dataclass
class Anvil(ProcessService):
    """An anvil we started: automines one block per transaction unless ``block_time`` is set."""

    port: int = 0
    host: str = "127.0.0.1"
    chain_id: int = DEFAULT_CHAIN_ID
    #: Seconds between blocks (interval mining), or None to mine one block per transaction.
    block_time: float | None = None
    workdir: Path = field(default_factory=temp_workdir("anvil"))
    log_name: ClassVar[str] = "anvil.log"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> Anvil:
        binary = anvil_binary()
        fixed_port = self.port != 0
        for attempt in range(1, START_ATTEMPTS + 1):
            self.port = self.port if fixed_port else free_port()
            if self._launch(binary):
                return self
            if fixed_port or attempt == START_ATTEMPTS:
                break
        tail = self.log_path.read_text(errors="replace").strip().splitlines()[-3:]
        raise ServiceUnavailable(f"anvil did not start on port {self.port}: {' | '.join(tail)}")

    def _launch(self, binary: str) -> bool:
        args = [
            binary,
            "--host", self.host,
            "--port", str(self.port),
            "--chain-id", str(self.chain_id),
            "--accounts", str(len(ACCOUNTS)),
        ]  # fmt: skip
        if self.block_time is not None:
            args += ["--block-time", str(self.block_time)]
        proc = self._spawn(args)

        def settled() -> bool:
            """True once anvil answers (or exits: a port taken meanwhile)."""
            return proc.poll() is not None or int(self.rpc("eth_chainId"), 16) == self.chain_id

        with contextlib.suppress(TimeoutError):
            wait_for(settled, timeout=START_TIMEOUT, what=f"anvil on port {self.port}")
        if proc.poll() is None and self._answers():
            return True
        self.stop()
        return False

    def _answers(self) -> bool:
        try:
            return int(self.rpc("eth_chainId"), 16) == self.chain_id
        except (requests.RequestException, ChainError, ValueError):
            return False

    def rpc(self, method: str, params: list[Any] | None = None) -> Any:
        """A raw JSON-RPC call to this anvil (e.g. ``anvil_reorg``, ``evm_snapshot``)."""
        return rpc_call(self.url, method, params)

    def mine(self, n: int = 1) -> int:
        """Mine ``n`` empty blocks (for confirmations); returns the new head's number."""
        self.rpc("anvil_mine", [hex(n)])
        return self.block_number()

    def block_number(self) -> int:
        return int(self.rpc("eth_blockNumber"), 16)
