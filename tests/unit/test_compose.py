"""compose/ cannot run here (no Docker engine): these checks keep it consistent with the code.

Every wgchain service's command is parsed by the real CLI (``wgchain <command...>
--help`` exits 0, so every subcommand and flag exists), every ``WGCHAIN_*`` variable
is a setting (or the documented variable of one of the command's options) and its
default value passes the settings validation, and every health check targets
something that exists: an endpoint of the API's OpenAPI document on the API's port,
``/metrics`` on the port a process serves its metrics on, or a valid ``wgchain``
command.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import pytest
import yaml
from click.testing import CliRunner

from consumers.api.schemas import openapi
from shared import settings
from shared.cli import root

COMPOSE = Path(__file__).resolve().parents[2] / "compose"
#: ``${NAME:-default}`` (or ``${NAME-default}``, ``${NAME}``) in compose files.
_VARIABLE = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")
_URL = re.compile(r"https?://[^'\"\s]+")


def _doc() -> dict[str, Any]:
    return yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())


def _services() -> dict[str, dict[str, Any]]:
    return _doc()["services"]


def _defaults(value: Any) -> str:
    """``value`` with every ``${NAME:-default}`` replaced by its default (as compose would)."""
    return _VARIABLE.sub(lambda m: m.group(2) or "", str(value))


def _wgchain(svc: dict[str, Any]) -> bool:
    return "build" in svc


def _argv(svc: dict[str, Any]) -> list[str]:
    return [_defaults(a) for a in svc["command"]]


def _command(argv: list[str]) -> click.Command:
    """The click command ``argv`` names (descending into groups)."""
    ctx = click.Context(root)
    cmd: click.Command = root
    for word in argv:
        if not isinstance(cmd, click.Group) or word.startswith("-"):
            break
        found = cmd.get_command(ctx, word)
        assert found is not None, f"no command {word!r} in {argv}"
        cmd = found
    return cmd


def _help_exits_0(argv: list[str]) -> None:
    result = CliRunner().invoke(root, ["--log-json", *argv, "--help"])
    assert result.exit_code == 0, (argv, result.output)


def _env(svc: dict[str, Any]) -> dict[str, str]:
    return {k: _defaults(v) for k, v in (svc.get("environment") or {}).items()}


def test_the_topology_is_complete():
    services = _services()
    commands = {name: _argv(svc)[0] for name, svc in services.items() if _wgchain(svc)}
    listeners = [n for n, c in commands.items() if c == "listen"]
    assert len(listeners) >= 2, "two listeners (one holds the lease, one stands by)"
    for needed in ("registry", "ipam", "api", "worker"):
        assert needed in commands.values(), needed
    hosts = [n for n, c in commands.items() if c == "agent"]
    assert len(hosts) == 3
    nodes = set()
    for name in hosts:
        svc = services[name]
        assert "NET_ADMIN" in svc["cap_add"]
        assert any(d.startswith("/dev/net/tun") for d in svc["devices"])
        argv = _argv(svc)
        nodes.add(argv[argv.index("--node") + 1])
    assert len(nodes) == 3, "each host is its own node"
    redis = " ".join(map(str, services["redis"]["command"]))
    assert "--appendonly yes" in redis
    assert services["anvil"]["profiles"] == ["local"]
    assert _argv(services["deploy"])[:2] == ["contract", "deploy"]
    for name, svc in services.items():
        if name != "deploy":
            assert "healthcheck" in svc, f"{name} has no health check"


@pytest.mark.parametrize("name", sorted(n for n, s in _services().items() if "build" in s))
def test_every_command_is_a_valid_wgchain_invocation(name: str):
    _help_exits_0(_argv(_services()[name]))


def test_every_variable_is_a_setting_and_its_default_is_valid():
    known = {settings.env_name(f) for f in settings.FIELDS}
    for name, svc in _services().items():
        if not _wgchain(svc):
            continue
        env = _env(svc)
        cmd = _command(_argv(svc))
        option_vars = {p.envvar for p in cmd.params if isinstance(p.envvar, str)}
        unknown = {k for k in env if k.startswith("WGCHAIN_")} - known - option_vars
        assert not unknown, (name, unknown)
        values = {k: v for k, v in env.items() if k in known}
        settings.load(environ=values)  # raises SettingsError for a bad default


def _check_http(name: str, svc: dict[str, Any], test: list[str]) -> None:
    (url,) = _URL.findall(" ".join(test))
    parts = urlsplit(url)
    assert parts.hostname in {"127.0.0.1", "localhost"}, (name, url)
    env = _env(svc)
    cmd = _command(_argv(svc))
    if _argv(svc)[0] == "api":
        assert str(parts.port) == env["WGCHAIN_API_LISTEN"].rpartition(":")[2], (name, url)
        paths = openapi("test", auth=False)["paths"]
        assert parts.path in paths, (name, parts.path, sorted(paths))
        return
    assert parts.path == "/metrics", (name, url)
    assert str(parts.port) == env.get("WGCHAIN_METRICS_PORT"), (name, url)
    assert any(p.name == "metrics_port" for p in cmd.params), f"{name} serves no metrics"


def test_every_health_check_targets_something_that_exists():
    for name, svc in _services().items():
        check = svc.get("healthcheck")
        if check is None:
            continue
        test = [str(t) for t in check["test"]]
        assert test[0] == "CMD", (name, test)
        program = test[1]
        if program == "wgchain":
            _help_exits_0(test[2:])
        elif program == "python":
            _check_http(name, svc, test)
        elif program == "redis-cli":
            assert svc["image"].startswith("redis:"), name
            assert test[2:] == ["ping"]
        elif program == "cast":
            assert "foundry" in svc["image"], name
            assert test[2] == "block-number"
        else:
            pytest.fail(f"{name}: unknown health check {test}")


def test_dockerfile_installs_the_pinned_project_and_wireguard():
    text = (COMPOSE / "Dockerfile").read_text()
    assert re.search(r"pip install .*-c constraints\.txt \.", text)
    assert "wireguard-tools" in text
    assert "wireguard-go" in text
    for pkg in ("shared", "producers", "consumers"):
        assert f"COPY {pkg}" in text
    assert 'ENTRYPOINT ["wgchain"' in text
