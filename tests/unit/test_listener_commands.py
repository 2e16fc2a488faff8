"""``wgchain listen`` refuses to start without the settings it needs (before any I/O)."""

from __future__ import annotations

import threading

import pytest

from producers.listener.commands import stage
from shared.cli import main
from shared.errors import SettingsError
from shared.settings import Settings

CONTRACT = "0x5FbDB2315678afecb367f032d93F642f64180aa3"


@pytest.fixture(autouse=True)
def _no_wgchain_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("WGCHAIN_REDIS_URL", "WGCHAIN_CONTRACT", "WGCHAIN_CONFIG"):
        monkeypatch.delenv(name, raising=False)


def test_stage_needs_a_redis_url() -> None:
    with pytest.raises(SettingsError, match="WGCHAIN_REDIS_URL"):
        stage(Settings(contract=CONTRACT), threading.Event())


def test_stage_needs_a_contract() -> None:
    with pytest.raises(SettingsError, match="WGCHAIN_CONTRACT"):
        stage(Settings(redis_url="redis://127.0.0.1:1/0"), threading.Event())


def test_listen_exits_with_usage_code_without_redis_url(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["listen", "--contract", CONTRACT])
    assert info.value.code == 2
    assert "WGCHAIN_REDIS_URL" in capsys.readouterr().err
