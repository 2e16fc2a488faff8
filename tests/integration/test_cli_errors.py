"""Every ``wgchain`` subcommand, given bad arguments, bad settings or unreachable services,
prints one clear line and exits non-zero: never a traceback, never a password."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from importlib.metadata import entry_points
from pathlib import Path

import click
import pytest
from factories import KEY_A

from shared import cli, clidoc, shutdown
from shared.devnet.proc import free_port, wait_for

pytestmark = pytest.mark.integration

WGCHAIN = str(Path(sys.executable).parent / "wgchain")
CONTRACT = "0x" + "12" * 20
SIGNER = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"  # anvil's, public
PASSWORD = "hunter2-secret"
COMMANDS = sorted(ep.name for ep in entry_points(group="wgchain.commands"))

#: One ordinary invocation per subcommand that reads settings and then needs Redis.
USES_REDIS: dict[str, list[str]] = {
    "agent": ["agent", "--node", "a", "--interface", "wgerr0", "--private-key-file", "{tmp}/k",
              "--generate-key", "--file-only", "--config-dir", "{tmp}/conf"],
    "api": ["api"],
    "audit": ["audit", "replay"],
    "backfill": ["backfill"],
    "check": ["check", "--node", "n", "--key", KEY_A],
    "deadletters": ["deadletters", "list"],
    "demo": ["demo", "--file-only"],
    "deadletters retry": ["deadletters", "retry", "--all"],
    "diagnose": ["diagnose", "node-a"],
    "ipam": ["ipam"],
    "listen": ["listen"],
    "nodes": ["nodes"],
    "registry": ["registry"],
    "run": ["run"],
    "status": ["status"],
    "worker": ["worker"],
}  # fmt: skip
#: Long-running processes: an unreachable Redis is waited for (one line), never an exit
#: (the agent too: a host's agent must come up before Redis does, issue 10).
WAITS_FOR_REDIS = {"agent", "api", "ipam", "listen", "registry", "run", "worker"}
#: Commands that need the chain before anything else.
USES_RPC: dict[str, list[str]] = {
    "contract deploy": ["contract", "deploy", "--private-key", SIGNER],
    "contract mint": ["contract", "mint", "--to", CONTRACT, "--node", "n", "--key", KEY_A,
                      "--private-key", SIGNER],
}  # fmt: skip


#: (setting, bad value): a bad value anywhere in the environment stops every command.
BAD_SETTINGS = [
    ("WGCHAIN_POOL", "10.0.0.0/33"),
    ("WGCHAIN_REDIS_URL", "http://127.0.0.1:1"),
    ("WGCHAIN_CONTRACT", "0x12\n[Peer]"),
    ("WGCHAIN_LOG_LEVEL", "LOUD"),
    ("WGCHAIN_CONFIRMATIONS", "-3"),
]


def run(argv: list[str], tmp: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("WGCHAIN_")}
    return subprocess.run(
        [WGCHAIN, *(a.replace("{tmp}", str(tmp)) for a in argv)],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def one_line(res: subprocess.CompletedProcess[str]) -> str:
    """The only stderr line (asserted), after checking there is no traceback nor password."""
    assert "Traceback" not in res.stderr, res.stderr
    assert PASSWORD not in res.stderr + res.stdout
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    return lines[0]


def test_the_tables_cover_every_subcommand() -> None:
    covered = {argv[0] for argv in USES_REDIS.values()} | {"contract"}
    assert set(COMMANDS) <= covered, "add new subcommands to the tables above"


@pytest.mark.parametrize("command", COMMANDS)
def test_an_unknown_option_is_one_line_and_exit_2(command: str, tmp_path: Path) -> None:
    res = run([command, "--no-such-option"], tmp_path)
    assert res.returncode == 2
    line = one_line(res)
    assert line == f"wgchain: no such option '--no-such-option' (see wgchain {command} --help)"


@pytest.mark.parametrize(
    "argv",
    [
        ["agent", "--node", "-h", "--interface", "wg0", "--private-key-file", "k"],
        ["agent", "--node", "a\n[Peer]", "--interface", "wg0", "--private-key-file", "k"],
        ["agent", "--node", "a", "--interface", "../../etc", "--private-key-file", "k"],
        ["agent", "acl", "--node", "../x", "--password-file", "{tmp}/pw"],
        ["deadletters", "list", "--limit", "-1"],
        ["deadletters", "show"],
        ["deadletters", "retry", "1-1", "--all"],
        ["deadletters", "retry", "--stage", "listener", "--all"],
        ["contract", "mint", "--to", "nowhere"],
        ["backfill", "1", "2"],
        ["nodes", "--owner", "0x12"],
        ["nodes", "--search", "a\x7fb"],
        ["diagnose", "../etc"],
        ["diagnose", "node-a", "--interface", "x" * 16],
        ["check", "--node", "node-a"],
        ["check", "--node", "node-a", "--key", "nope"],
        ["no-such-command"],
    ],
    ids=lambda argv: " ".join(argv)[:40],
)
def test_a_bad_argument_is_one_line_and_exit_2(argv: list[str], tmp_path: Path) -> None:
    res = run(argv, tmp_path, WGCHAIN_CONTRACT=CONTRACT, WGCHAIN_CHAIN_ID="1")
    assert res.returncode == 2
    line = one_line(res)
    assert line.startswith("wgchain"), line
    assert "\x00" not in line
    assert "--help" in line or "invalid setting" in line


@pytest.mark.parametrize(
    ("name", "setting", "value"),
    [  # every command, each with one of the bad settings in turn
        (name, *BAD_SETTINGS[i % len(BAD_SETTINGS)]) for i, name in enumerate(sorted(USES_REDIS))
    ],
)
def test_a_bad_setting_is_one_line_naming_it(
    name: str, setting: str, value: str, tmp_path: Path
) -> None:
    env = {"WGCHAIN_CONTRACT": CONTRACT, "WGCHAIN_CHAIN_ID": "31337", setting: value}
    res = run(USES_REDIS[name], tmp_path, **env)
    assert res.returncode != 0
    line = one_line(res)
    assert setting in line
    assert "[Peer]" not in line.replace(r"\n[Peer]", "")  # shown escaped, if at all


@pytest.mark.parametrize("name", sorted(set(USES_REDIS) - WAITS_FOR_REDIS))
def test_redis_unreachable_is_one_line(name: str, tmp_path: Path) -> None:
    url = f"redis://wgchain:{PASSWORD}@127.0.0.1:{free_port()}/0"
    res = run(USES_REDIS[name], tmp_path, WGCHAIN_REDIS_URL=url, WGCHAIN_CONTRACT=CONTRACT,
              WGCHAIN_CHAIN_ID="31337", WGCHAIN_RPC_URL=f"http://127.0.0.1:{free_port()}")  # fmt: skip
    assert res.returncode != 0
    line = one_line(res)
    assert "cannot reach Redis" in line
    assert "wgchain:***@" in line  # the URL shown with its password redacted


@pytest.mark.parametrize("name", sorted(USES_RPC))
def test_rpc_down_is_one_line(name: str, tmp_path: Path) -> None:
    rpc = f"http://127.0.0.1:{free_port()}"
    res = run(USES_RPC[name], tmp_path, WGCHAIN_RPC_URL=rpc, WGCHAIN_CONTRACT=CONTRACT)
    assert res.returncode == 1
    line = one_line(res)
    assert "RPC" in line or "eth_chainId" in line, line


def _waits(argv: list[str], tmp: Path, marker: str, **env: str) -> str:
    """Start ``argv``; once its log says ``marker``, SIGTERM it: it must exit 0. Its stderr."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("WGCHAIN_")}
    log_path = tmp / "waiting.log"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen([WGCHAIN, *argv], env={**clean, **env}, stdout=out, stderr=out)
    try:
        wait_for(lambda: marker in log_path.read_text(), timeout=30, what=marker)
        time.sleep(1)
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return log_path.read_text()


@pytest.mark.parametrize("name", sorted(WAITS_FOR_REDIS))
def test_a_long_running_process_waits_for_redis_in_one_line(name: str, tmp_path: Path) -> None:
    url = f"redis://wgchain:{PASSWORD}@127.0.0.1:{free_port()}/0"
    argv = [a.replace("{tmp}", str(tmp_path)) for a in USES_REDIS[name]]
    text = _waits(argv, tmp_path, "Redis unreachable (", WGCHAIN_REDIS_URL=url,
                  WGCHAIN_CONTRACT=CONTRACT, WGCHAIN_CHAIN_ID="31337",
                  WGCHAIN_RPC_URL=f"http://127.0.0.1:{free_port()}")  # fmt: skip
    assert text.count("Redis unreachable (") == 1
    assert "Traceback" not in text
    assert PASSWORD not in text


def test_run_waits_for_the_chain_id_when_the_rpc_node_is_down(tmp_path: Path) -> None:
    rpc = f"http://127.0.0.1:{free_port()}"
    text = _waits(["run", "--chain-id", "0"], tmp_path, "RPC unreachable (",
                  WGCHAIN_RPC_URL=rpc, WGCHAIN_CONTRACT=CONTRACT)  # fmt: skip
    assert text.count("RPC unreachable (") == 1
    assert "Traceback" not in text


# --- no traceback for any input -----------------------------------------------------------

#: Values no option expects: a newline and a config-file injection, a negative, a huge number.
HOSTILE = ["\n[Peer]\x7f", "-1", "9" * 80]


def _leaves() -> list[tuple[list[str], click.Command, click.Context]]:
    """Every command that runs (leaves, and groups that run without a subcommand)."""
    top = click.Context(cli.root, info_name="wgchain", **cli.root.context_settings)
    found = []
    for command, ctx in clidoc._walk(cli.root, top):
        runs = not isinstance(command, click.Group) or command.invoke_without_command
        path = ctx.command_path.split()[1:]
        if runs and path[:1] != ["demo"]:  # the demo would start a whole devnet
            found.append((path, command, ctx))
    return found


@pytest.mark.parametrize(
    ("path", "command", "ctx"), _leaves(), ids=lambda v: " ".join(v) if isinstance(v, list) else ""
)
def test_no_input_makes_any_command_print_a_traceback(
    path: list[str],
    command: click.Command,
    ctx: click.Context,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name in [k for k in os.environ if k.startswith("WGCHAIN_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("WGCHAIN_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")  # unreachable
    monkeypatch.setenv("WGCHAIN_RPC_URL", f"http://127.0.0.1:{free_port()}")  # unreachable
    monkeypatch.setenv("WGCHAIN_CONTRACT", CONTRACT)
    monkeypatch.setenv("WGCHAIN_CHAIN_ID", "31337")
    monkeypatch.chdir(tmp_path)  # whatever a command writes lands here
    waits = path[0] in WAITS_FOR_REDIS
    if waits:  # it would wait for Redis: a stop already asked for ends the wait at once
        monkeypatch.setattr(shutdown.SHUTDOWN, "is_set", lambda: True)
        monkeypatch.setattr(shutdown.SHUTDOWN, "wait", lambda timeout=None: True)
    runs = 0
    for param in command.get_params(ctx):
        if param.name == "help" or getattr(param, "is_flag", False):
            continue
        for value in HOSTILE:
            argv = (
                [*path, value]
                if isinstance(param, click.Argument)
                else [*path, param.opts[-1], value]
            )
            try:
                cli.main(argv)
                code = 0
            except SystemExit as exc:
                code = int(exc.code or 0)
            out, err = capsys.readouterr()
            runs += 1
            assert "Traceback" not in err, (argv, err)
            assert "\n[Peer]" not in out + err, (argv, err)  # shown escaped, if at all
            if path != ["agent", "init"] and not (waits and code == 0):  # 0: it had to stop
                assert code in (1, 2, 3), (argv, code, err)
                lines = [line for line in err.splitlines() if line.strip()]
                assert lines, argv
                assert lines[-1].startswith("wgchain"), (argv, err)
    assert runs or not command.params
