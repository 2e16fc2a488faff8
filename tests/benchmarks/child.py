"""Runs one benchmark part in its own process: ``child.py WHAT`` with JSON params on stdin.

A separate process gives a part its own peak RSS, its own interpreter lock, or
its own network namespace (``ip netns exec NS python child.py ...``). The last
line printed is the JSON answer.
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Callable
from typing import Any

#: Part name -> "module:function" (imported only when that part runs).
PARTS = {
    "worker": "b1_ingest:worker_child",
    "fold": "b2_fold:fold_child",
    "load": "b2_fold:load_child",
    "stage": "b2_fold:stage_child",
    "stages": "b3_propagation:stages_child",
    "agents": "b3_propagation:agents_child",
    "scanner": "b3_propagation:scanner_child",
    "apply": "b4_host:apply_child",
    "apply_hub": "b4_host:apply_hub_child",
    "boot": "b4_host:boot_child",
    "api": "b5_access:api_child",
    "registry": "b5_access:registry_child",
    "fleet": "fleet:fleet_child",
    "fleet_stages": "fleet_chain:fleet_stages_child",
}


def _part(what: str) -> Callable[[dict[str, Any]], Any]:
    module, _, name = PARTS[what].partition(":")
    fn: Callable[[dict[str, Any]], Any] = getattr(importlib.import_module(module), name)
    return fn


def main() -> int:
    """Run the part named by argv[1] with the JSON params on stdin; print its JSON answer."""
    from common import quiet_logs

    quiet_logs()
    what = sys.argv[1]
    params = json.loads(sys.stdin.read() or "{}")
    answer = _part(what)(params)
    sys.stdout.write("\n" + json.dumps(answer) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
