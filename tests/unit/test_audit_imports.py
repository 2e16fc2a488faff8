"""``wgchain audit replay`` starts without what only ``audit verify`` (and a bar, or a
replay through the real stages) needs: the chain client, the ABI codec, the job queue."""

from __future__ import annotations

import subprocess
import sys

from consumers.audit import commands
from shared.chain import oneshot

HEAVY = (
    "eth_abi",
    "web3",
    "rq",
    "rich",
    "shared.chain.rpc",
    "consumers.audit.verify",
    "consumers.audit.jobs",
    "consumers.audit.scratch",
    "consumers.stage",
)


def test_audit_commands_import_no_verify_dependencies() -> None:
    probe = (
        "import sys, consumers.audit.commands\nprint([m for m in sys.argv[1:] if m in sys.modules])"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, *HEAVY],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.strip() == "[]"


def test_verify_timeout_default_is_the_rpc_one() -> None:
    assert commands.RPC_TIMEOUT == oneshot.DEFAULT_TIMEOUT
