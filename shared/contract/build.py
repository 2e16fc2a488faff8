"""Compile DstackAccessNFT.sol with the pinned solcjs into ``DstackAccessNFT.json``.

``python -m shared.contract.build`` rewrites the committed artifact;
``python -m shared.contract.build --check`` exits 1 when it is stale. The compiler,
OpenZeppelin and the settings are pinned, so the output is byte-for-byte reproducible.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from shared.errors import BuildError, ServiceUnavailable

#: Folder of this package (the source and the artifact).
CONTRACT_DIR = Path(__file__).resolve().parent
#: Root of the repository (holds ``.tools``).
REPO_ROOT = CONTRACT_DIR.parents[1]
SOURCE = CONTRACT_DIR / "DstackAccessNFT.sol"
ARTIFACT = CONTRACT_DIR / "DstackAccessNFT.json"
CONTRACT_NAME = "DstackAccessNFT"
#: Optimizer runs (expected calls per contract lifetime; fixed for reproducible bytecode).
OPTIMIZER_RUNS = 200
#: EVM version targeted (pinned so a compiler default change cannot alter the bytecode).
EVM_VERSION = "cancun"
#: Seconds the compiler may take.
COMPILE_TIMEOUT = 300

# Runs solc's standard-JSON interface; imports resolve inside <tools>/node_modules only.
_COMPILE_JS = r"""
const fs = require('fs');
const path = require('path');
const modules = path.resolve(process.argv[1], 'node_modules');
const solc = require(path.join(modules, 'solc'));
function findImports(name) {
  const file = path.resolve(modules, name);
  if (!file.startsWith(modules + path.sep)) return { error: 'import outside node_modules: ' + name };
  try { return { contents: fs.readFileSync(file, 'utf8') }; }
  catch (e) { return { error: 'not found: ' + name }; }
}
const input = fs.readFileSync(0, 'utf8');
process.stdout.write(JSON.stringify({
  version: solc.version(),
  output: JSON.parse(solc.compile(input, { import: findImports })),
}));
"""


def tools_dir() -> Path:
    """The pinned node tools: ``WGCHAIN_TOOLS_DIR`` or ``<repo>/.tools``."""
    return Path(os.environ.get("WGCHAIN_TOOLS_DIR") or REPO_ROOT / ".tools")


def standard_input(source: str) -> dict[str, Any]:
    """The solc standard-JSON input for ``source``."""
    return {
        "language": "Solidity",
        "sources": {f"{CONTRACT_NAME}.sol": {"content": source}},
        "settings": {
            "optimizer": {"enabled": True, "runs": OPTIMIZER_RUNS},
            "evmVersion": EVM_VERSION,
            "outputSelection": {"*": {"*": ["abi", "evm.bytecode.object"]}},
        },
    }


def compile_contract() -> dict[str, Any]:
    """Compile the source; returns ``{"abi": [...], "bytecode": "0x..."}``.

    Raises :class:`ServiceUnavailable` without node or solc, :class:`BuildError` on a
    compile error.
    """
    node = shutil.which("node")
    solc_dir = tools_dir() / "node_modules" / "solc"
    if node is None or not solc_dir.is_dir():
        raise ServiceUnavailable(
            f"compiling needs node and solc in {tools_dir()}/node_modules (npm ci in .tools)"
        )
    request = json.dumps(standard_input(SOURCE.read_text(encoding="utf-8")))
    try:
        proc = subprocess.run(
            [node, "-e", _COMPILE_JS, str(tools_dir())],
            input=request.encode(),
            capture_output=True,
            timeout=COMPILE_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise BuildError(f"solc did not finish within {COMPILE_TIMEOUT}s") from exc
    if proc.returncode != 0:
        detail = proc.stderr.decode(errors="replace").strip().splitlines()
        raise BuildError(f"solc failed: {detail[-1] if detail else proc.returncode}")
    result = json.loads(proc.stdout)
    output = result["output"]
    errors = [e for e in output.get("errors", []) if e.get("severity") == "error"]
    if errors:
        raise BuildError(
            "solc: " + "; ".join(e.get("formattedMessage", e["message"]) for e in errors)
        )
    contract = output["contracts"][f"{CONTRACT_NAME}.sol"][CONTRACT_NAME]
    return {"abi": contract["abi"], "bytecode": "0x" + contract["evm"]["bytecode"]["object"]}


def render(artifact: dict[str, Any]) -> str:
    """The committed text of an artifact (stable formatting)."""
    return json.dumps(artifact, indent=1, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.contract.build", description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if the artifact is stale")
    args = parser.parse_args(argv)
    text = render(compile_contract())
    if args.check:
        current = ARTIFACT.read_text(encoding="utf-8") if ARTIFACT.exists() else ""
        if current != text:
            print(f"{ARTIFACT} is stale: run python -m shared.contract.build", file=sys.stderr)
            return 1
        print(f"{ARTIFACT} is up to date")
        return 0
    ARTIFACT.write_text(text, encoding="utf-8")
    print(f"wrote {ARTIFACT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
