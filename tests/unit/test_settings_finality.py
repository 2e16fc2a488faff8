"""WGCHAIN_FINALITY: confirmations, or the safe / finalized block; it wins over confirmations."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.cli import EXIT_USAGE, main
from shared.errors import SettingsError
from shared.settings import load


@pytest.mark.parametrize(
    ("env", "rule"),
    [
        ({}, 2),  # default: the numeric rule, from WGCHAIN_CONFIRMATIONS' default
        ({"WGCHAIN_CONFIRMATIONS": "7"}, 7),
        ({"WGCHAIN_FINALITY": "5", "WGCHAIN_CONFIRMATIONS": "7"}, 5),
        ({"WGCHAIN_FINALITY": "0"}, 0),
        ({"WGCHAIN_FINALITY": "safe", "WGCHAIN_CONFIRMATIONS": "7"}, "safe"),
        ({"WGCHAIN_FINALITY": " Finalized "}, "finalized"),
        ({"WGCHAIN_FINALITY": ""}, 2),
    ],
)
def test_finality_rule(env: dict[str, str], rule: int | str) -> None:
    assert load(environ=env).finality_rule() == rule


@pytest.mark.parametrize("value", ["latest", "-1", "1.5", "pending", "²", "9" * 50, "safe!"])
def test_bad_finality_names_the_setting(value: str) -> None:
    with pytest.raises(SettingsError) as info:
        load(environ={"WGCHAIN_FINALITY": value})
    assert str(info.value).startswith("invalid setting WGCHAIN_FINALITY:")


def test_finality_from_toml(tmp_path: Path) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text("finality = 4\nconfirmations = 9\n")
    assert load(config_file=conf, environ={}).finality_rule() == 4
    conf.write_text('finality = "finalized"\n')
    assert load(config_file=conf, environ={}).finality_rule() == "finalized"
    for bad in ("finality = -3\n", "finality = true\n"):
        conf.write_text(bad)
        with pytest.raises(SettingsError, match=f"invalid setting finality in {conf}:"):
            load(config_file=conf, environ={})


def test_a_bad_finality_exits_with_code_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("WGCHAIN_FINALITY", "latest")
    with pytest.raises(SystemExit) as info:
        main(["listen"])
    assert info.value.code == EXIT_USAGE == 2
    assert "invalid setting WGCHAIN_FINALITY" in capsys.readouterr().err
