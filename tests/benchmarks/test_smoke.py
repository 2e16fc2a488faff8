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
from conftest import require

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

RUN = Path(__file__).resolve().parent / "run.py"
REQUIRED = ("name", "value", "unit", "baseline", "baseline_value", "ratio", "params")
#: Every benchmark and the rows it must produce (name prefixes).
EXPECTED = {
    "B1": ("B1 ingest: listener vs naive", "B1 ingest: listener vs raw"),
    "B2": ("B2 fold", "Memory: Redis", "Memory: stage RSS"),
    "B3": ("B3 propagation:",),
    "B4": (
        "B4 apply: one change",
        "B4 apply: agent reconcile",
        "B4 bootstrap",
        "Memory: agent RSS",
    ),
    "B5": ("B5 access checks: in process", "B5 access checks: HTTP"),
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
    names = [row["name"] for row in doc["results"]]
    for bench, prefixes in EXPECTED.items():
        for prefix in prefixes:
            assert any(n.startswith(prefix) for n in names), (
                f"{bench}: no row {prefix!r} in {names}"
            )
    for row in doc["results"]:
        missing = [k for k in REQUIRED if k not in row]
        assert not missing, f"{row['name']} lacks {missing}"
        for key in ("value", "baseline_value", "ratio"):
            assert row[key] > 0, f"{row['name']}: {key} = {row[key]}"
        assert row["params"], row["name"]
    assert "B3 propagation" in proc.stdout  # the table was printed
