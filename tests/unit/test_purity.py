"""Pure modules stay pure: importing one must not pull in redis, web3, subprocess or requests.

Each module is imported in a fresh interpreter, so what another test imported
cannot hide (or fake) a violation. A listed module that is missing fails.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

#: Modules that hold rules only (docs/design.md §7.2: pure folds).
PURE_MODULES = [
    "shared.events",
    "shared.ids",
    "shared.keys",
    "shared.validate",
    "shared.settings",
    "consumers.fold",
    "consumers.registry.fold",
    "consumers.registry.candidates",
    "consumers.registry.quick",
    "consumers.ipam.allocate",
    "consumers.ipam.state",
    "consumers.agent.render",
    "consumers.agent.desired",
    "consumers.agent.peerset",
    "consumers.agent.state",
    "consumers.agent.table",
    "consumers.agent.hold",
    "consumers.agent.config",
    "shared.chain.decode",
    "shared.chain.ranges",
    "shared.chain.plan",
    "shared.chain.answers",
    "shared.chain.compare",
    "consumers.access.decide",
    "consumers.status.model",
    "consumers.status.render",
    "consumers.api.schemas",
    "consumers.dashboard.topology",
    "shared.reasons",
    "shared.durations",
    "shared.collector",
    "consumers.status.health",
    "consumers.nodes.facts",
    "consumers.nodes.listing",
    "consumers.nodes.diagnose",
    "consumers.nodes.findings",
    "consumers.nodes.hosts",
    "consumers.nodes.render",
    "consumers.registry.issues",
    "consumers.registry.state",
    "consumers.audit.checks",
    "consumers.audit.compare",
    "consumers.audit.entries",
    "consumers.audit.history",
    "consumers.audit.inprocess",
]
#: Modules whose presence after the import means the module can do I/O.
FORBIDDEN = ("redis", "web3", "subprocess", "requests")

_PROBE = """
import importlib, sys
importlib.import_module(sys.argv[1])
print(" ".join(m for m in sys.argv[2:] if m in sys.modules))
"""


@pytest.mark.parametrize("module", PURE_MODULES)
def test_pure_module_imports_no_io_library(module: str) -> None:
    assert importlib.util.find_spec(module) is not None, f"{module} is missing"
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, module, *FORBIDDEN],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [], f"{module} pulls in {result.stdout.strip()}"


def test_the_probe_sees_a_forbidden_import() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, "shared.redis_log", *FORBIDDEN],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "redis" in result.stdout.split()
