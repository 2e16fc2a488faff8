"""The benchmarks keep running: ``run.py --smoke`` completes and reports every benchmark.

No timing assertions (CI machines vary): only that each benchmark ran against its
baseline and wrote a complete, positive row. A benchmark skipped for a missing
real part (root for namespaces, solc) skips this test locally and fails it in CI.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from common import ID_RE
from conftest import require

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

RUN = Path(__file__).resolve().parent / "run.py"
REQUIRED = ("id", "name", "value", "unit", "baseline", "baseline_value", "ratio", "params")
#: Every benchmark and the ids of the rows it must produce (at any size).
EXPECTED = {
    "B1": ("B1.listener", "B1.listener_ceiling"),
    "B2": ("B2.fold", "B2.redis_memory", "B2.stage_rss", "B2.replay_1m"),
    "B3": ("B3.file_agents",),
    "B4": (
        "B4.wg_set",
        "B4.agent_change",
        "B4.syncconf_empty",
        "B4.bootstrap",
        "B4.agent_change_hub",
        "B4.agent_rss",
        "B4.agent_rss_hub",
    ),
    "B5": ("B5.inprocess", "B5.freshness", "B5.strict", "B5.http"),
    "B6": ("B6.mesh_1000", "B6.hub_1000"),
}


@pytest.mark.timeout(900)
def test_smoke_run_reports_every_benchmark(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(RUN), "--smoke", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=840,
        check=False,
    )
    assert out.exists(), proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert not doc["failed"], doc["failed"]
    require(not doc["skipped"], f"benchmarks skipped: {doc['skipped']}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert doc["machine"]["cores"] > 0
    assert doc["machine"]["python"]
    ids = [row["id"] for row in doc["results"]]
    assert len(ids) == len(set(ids)), f"duplicate ids in {ids}"
    assert all(ID_RE.fullmatch(i) for i in ids), ids
    for bench, wanted in EXPECTED.items():
        for row_id in wanted:
            assert row_id in ids, f"{bench}: no row {row_id!r} in {ids}"
    for row in doc["results"]:
        missing = [k for k in REQUIRED if k not in row]
        assert not missing, f"{row['name']} lacks {missing}"
        for key in ("value", "baseline_value", "ratio"):
            assert row[key] > 0, f"{row['name']}: {key} = {row[key]}"
        assert row["params"], row["name"]
    assert "B4.agent_change" in proc.stdout  # the table was printed
