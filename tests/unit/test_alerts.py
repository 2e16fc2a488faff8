"""``compose/prometheus/alerts.yml``: every rule names metrics wgchain exports, every problem
``wgchain status --check`` can name has a rule, and (with promtool, from Debian's prometheus
package: ``make setup`` extracts it) the rules load and fire on each situation."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml
from conftest import require

import consumers.api.app  # noqa: F401 (registers the API's own metrics)
from consumers.status.exporter import FleetCollector
from consumers.status.health import PROBLEM_CODES, Limits
from consumers.status.model import (
    Counts,
    FleetStatus,
    HostInfo,
    Issue,
    ListenerInfo,
    Problem,
)
from shared import metrics
from shared.keys import Keys

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "compose" / "prometheus" / "alerts.yml"
RULE_TESTS = ROOT / "compose" / "prometheus" / "alerts_test.yml"
_METRIC = re.compile(r"\bwgchain_[a-z0-9_]+")


class _Snapshot:
    """Stands in for ``Snapshot``: a fleet where every gauge has a sample."""

    keys = Keys(8453, "0x" + "ab" * 20)

    def fleet(self, rpc_urls: list[str], cap: int = 0, limits: Limits | None = None) -> FleetStatus:
        now = time.time()
        return FleetStatus(
            network=self.keys.tag,
            generated_at=now,
            listener=ListenerInfo(cursor_block=5, lease_holder="l1"),
            stages=[],
            hosts=[
                HostInfo(
                    node="node-a",
                    last_apply=now - 5,
                    updated_at=now - 1,
                    handshake_latest=now - 30,
                    fail_closed="not-live",
                    stale=True,
                )
            ],
            counts=Counts(),
            issues=[Issue(kind="pending", reason="pool-exhausted", node="node-b")],
            problems=[Problem(code="no-lease", severity="critical", subject="l", message="m")],
        )


def exported() -> set[str]:
    """Every metric name (families and samples) wgchain's processes and the API export."""
    names: set[str] = set()
    for family in metrics.REGISTRY.collect():
        names.add(family.name)
        names.update(s.name for s in family.samples)
    collector = FleetCollector(_Snapshot(), Limits(), lazy_live=lambda: 3)  # type: ignore[arg-type]
    for family in collector.collect():
        names.add(family.name)
        names.update(s.name for s in family.samples)
    return names


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_every_rule_names_metrics_that_wgchain_exports() -> None:
    names = exported()
    assert "wgchain_health_problems" in names
    assert "wgchain_host_handshake_age_seconds" in names
    for rule in rules():
        used = set(_METRIC.findall(rule["expr"]))
        assert used, rule["alert"]
        assert used <= names, f"{rule['alert']}: {used - names} not exported"
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"]


#: Problems whose alert reads a per-host gauge (with its ``node`` label) instead.
BY_GAUGE = {"host-stale": "wgchain_host_stale"}


def test_every_problem_status_can_name_has_an_alert() -> None:
    every = [r["expr"] for r in rules()]
    exprs = [e for e in every if "wgchain_health_problems" in e]
    for code in PROBLEM_CODES:
        quoted = re.compile(rf'code=~?"[^"]*\b{re.escape(code)}\b[^"]*"')
        covered = any(quoted.search(e) for e in exprs)
        covered = covered or any(BY_GAUGE.get(code, "~") in e for e in every)
        assert covered, f"no alert fires on {code}"


def test_promtool_loads_the_rules_and_each_situation_fires() -> None:
    local = ROOT / ".tools" / "bin" / "promtool"
    promtool = str(local) if local.exists() else shutil.which("promtool")
    require(promtool is not None, "promtool missing (make setup extracts it from Debian's package)")
    assert promtool is not None
    for args in (["check", "rules", str(RULES)], ["test", "rules", str(RULE_TESTS)]):
        res = subprocess.run(
            [promtool, *args], capture_output=True, text=True, timeout=120, check=False
        )
        assert res.returncode == 0, res.stdout + res.stderr
