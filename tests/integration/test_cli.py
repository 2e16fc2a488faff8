"""Bad arguments, bad settings and unreachable services: one clear line, non-zero exit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from shared.devnet.proc import free_port

WGCHAIN = str(Path(sys.executable).parent / "wgchain")
CONTRACT = "0x" + "12" * 20


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("WGCHAIN_")}
    return subprocess.run(
        [WGCHAIN, *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _one_line(res: subprocess.CompletedProcess[str]) -> str:
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in res.stderr
    assert len(lines) == 1, res.stderr
    return lines[0]


def test_help_lists_every_subcommand():
    res = run("--help")
    assert res.returncode == 0
    for name in ("agent", "contract", "demo", "ipam", "listen", "registry", "run"):
        assert name in res.stdout


@pytest.mark.parametrize("cmd", ["registry", "ipam", "listen"])
def test_bad_setting_is_one_line_and_exit_2(cmd):
    res = run(cmd, WGCHAIN_CONFIRMATIONS="lots", WGCHAIN_POOL="nonsense")
    assert res.returncode == 2
    assert _one_line(res).startswith("wgchain: invalid setting WGCHAIN_")


def test_bad_flag_value_names_the_flag_as_typed():
    res = run("ipam", "--pool", "10.0.0.0/33", WGCHAIN_CONTRACT=CONTRACT)
    assert res.returncode == 2
    line = _one_line(res)
    assert line.startswith("wgchain: --pool: '10.0.0.0/33' is not an IPv4 network")
    assert line.endswith("(see wgchain ipam --help)")


def test_unreachable_redis_is_one_line():
    port = free_port()
    res = run(  # a one-shot command (the long-running ones wait for Redis: test_health.py)
        "status",
        WGCHAIN_REDIS_URL=f"redis://:hunter2@127.0.0.1:{port}/0",
        WGCHAIN_CONTRACT=CONTRACT,
        WGCHAIN_CHAIN_ID="31337",
    )
    assert res.returncode == 1
    line = _one_line(res)
    assert "Redis" in line
    assert "hunter2" not in res.stderr  # a password never reaches the logs


def test_missing_redis_url_is_a_settings_error():
    res = run("ipam", WGCHAIN_CONTRACT=CONTRACT, WGCHAIN_CHAIN_ID="1")
    assert res.returncode == 2
    assert "WGCHAIN_REDIS_URL" in _one_line(res)
