"""The command line as an operator meets it: global options anywhere, shell completion,
help that explains every option, warnings about misspelt variables, output errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

WGCHAIN = str(Path(sys.executable).parent / "wgchain")
CONTRACT = "0x" + "12" * 20


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("WGCHAIN_")}
    return subprocess.run(
        [WGCHAIN, *args], env={**clean, **env}, capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


@pytest.mark.parametrize("where", ["before", "after"])
def test_global_options_work_before_and_after_the_subcommand(where: str, tmp_path: Path) -> None:
    conf = tmp_path / "wgchain.toml"
    conf.write_text("reconcile_interval = -1\n")
    options = ["--config", str(conf)]
    argv = [*options, "registry"] if where == "before" else ["registry", *options]
    res = run(*argv, WGCHAIN_CONTRACT=CONTRACT, WGCHAIN_CHAIN_ID="1")
    assert res.returncode == 2
    assert lines(res.stderr) == [
        f"wgchain: invalid setting reconcile_interval in {conf}: must be a positive number of seconds"
    ]

    options = ["--log-json", "--log-level", "WARNING"]
    argv = [*options, "registry"] if where == "before" else ["registry", *options]
    res = run(*argv, WGCHAIN_CONFIRMATION="5")  # a typo: warned about, then no Redis URL
    assert res.returncode == 2
    first, last = lines(res.stderr)
    record = json.loads(first)["record"]  # --log-json: the warning is a JSON line
    assert record["level"]["name"] == "WARNING"
    assert record["message"] == (
        "WGCHAIN_CONFIRMATION is not a wgchain setting (did you mean WGCHAIN_CONFIRMATIONS?); ignored"
    )
    assert last.startswith("wgchain: invalid setting WGCHAIN_CONTRACT: required")


def test_a_bad_log_level_after_the_subcommand_is_named() -> None:
    res = run("status", "--log-level", "LOUD", WGCHAIN_CONTRACT=CONTRACT, WGCHAIN_CHAIN_ID="1")
    assert res.returncode == 2
    assert lines(res.stderr) == [
        "wgchain: --log-level: unknown level 'LOUD' (see wgchain status --help)"
    ]


def test_shell_completion_is_clicks() -> None:
    script = run(_WGCHAIN_COMPLETE="bash_source")
    assert script.returncode == 0
    assert "_wgchain_completion" in script.stdout
    words = {"COMP_WORDS": "wgchain sta", "COMP_CWORD": "1"}
    done = run(_WGCHAIN_COMPLETE="bash_complete", **words)
    assert done.stdout.split() == ["plain,status"]
    words = {"COMP_WORDS": "wgchain contract set", "COMP_CWORD": "2"}
    assert run(_WGCHAIN_COMPLETE="bash_complete", **words).stdout.split() == ["plain,set-key"]
    words = {"COMP_WORDS": "wgchain status --cha", "COMP_CWORD": "2"}
    assert run(_WGCHAIN_COMPLETE="bash_complete", **words).stdout.split() == ["plain,--chain-id"]


def test_help_explains_every_setting_flag_and_never_cuts_a_summary() -> None:
    res = run("status", "--help", COLUMNS="200")
    assert res.returncode == 0
    text = " ".join(res.stdout.split())
    assert (
        "--chain-id ID Chain id of the network (0: ask the RPC node). [env WGCHAIN_CHAIN_ID; default: 0]"
        in text
    )
    assert "--config FILE" in text  # the global options, here too
    assert "TEXT [env" not in text
    top = run("--help", COLUMNS="60")
    commands = top.stdout.split("Commands:", 1)[1]
    assert "..." not in commands
    assert (
        "Run listener, registry and ipam in one process (embedded Redis when no URL is set)."
        in " ".join(commands.split())
    )
    assert "_WGCHAIN_COMPLETE=bash_source" in top.stdout


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full")
def test_help_to_a_full_disk_is_one_line() -> None:
    with open("/dev/full", "w") as full:
        res = subprocess.run(
            [WGCHAIN, "--help"], stdout=full, stderr=subprocess.PIPE, text=True, timeout=60,
            check=False,
        )  # fmt: skip
    assert res.returncode == 1
    assert lines(res.stderr) == ["wgchain: cannot write the output: No space left on device"]


@pytest.mark.parametrize("argv", [[], ["audit"], ["contract"]])
def test_a_group_without_its_command_shows_its_help(argv: list[str]) -> None:
    res = run(*argv)
    assert res.returncode == 2
    assert res.stderr.startswith(f"Usage: {' '.join(['wgchain', *argv])} [OPTIONS] COMMAND")
    assert "\nCommands:\n" in res.stderr
    assert "\\n" not in res.stderr
