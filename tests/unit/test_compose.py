"""compose/ kept consistent with the code and the README (``make compose-test`` runs it for real).

Every wgchain service's command is parsed by the real CLI (``wgchain <command...> --help``
exits 0), every ``WGCHAIN_*`` variable is a setting (or the documented variable of one of the
command's options) and its default passes the settings validation, every health check targets
something that exists, secrets stay out of command lines and environments, one service builds
the one image, and the README's "Production deployment" commands name services, paths and
commands that exist.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shlex
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import click
import pytest
import redis
import yaml
from click.testing import CliRunner

from consumers.api.schemas import openapi
from shared import settings
from shared.cli import root

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "compose"
#: ``${NAME:-default}`` (or ``${NAME-default}``, ``${NAME}``) in compose files.
_VARIABLE = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")
_URL = re.compile(r"https?://[^'\"\s]+")
IMAGE = "wgchain:local"


def _doc() -> dict[str, Any]:
    return yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())


def _services() -> dict[str, dict[str, Any]]:
    return _doc()["services"]


def _defaults(value: Any) -> str:
    """``value`` with every ``${NAME:-default}`` replaced by its default (as compose would)."""
    return _VARIABLE.sub(lambda m: m.group(2) or "", str(value))


def _image(svc: dict[str, Any]) -> str:
    return _defaults(svc.get("image", ""))


def _wgchain(svc: dict[str, Any]) -> bool:
    """A service running a wgchain subcommand (the image's entrypoint)."""
    return _image(svc) == IMAGE and "entrypoint" not in svc


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


def _helper() -> ModuleType:
    spec = importlib.util.spec_from_file_location("wgchain_compose", COMPOSE / "wgchain-compose.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
    redis_cmd = " ".join(map(str, services["redis"]["command"]))
    assert "--appendonly yes" in redis_cmd
    assert services["anvil"]["profiles"] == ["local"]
    assert services["deploy"]["profiles"] == ["local"]
    assert _doc()["name"] == "wgchain", "a fixed project name, not the folder's"
    for name, svc in services.items():
        if svc.get("restart") != "no":
            assert "healthcheck" in svc, f"{name} has no health check"
            assert svc.get("restart") == "unless-stopped", f"{name} does not come back"


def test_one_image_built_once():
    services = _services()
    builders = [n for n, s in services.items() if "build" in s]
    assert builders == ["setup"], "one service builds the image (not a shared anchor)"
    users = [n for n, s in services.items() if _image(s) == IMAGE]
    assert len(users) >= 10, users
    assert "build" not in (_doc().get("x-wgchain") or {})
    for name in users:
        if name not in ("setup", "deploy"):
            assert services[name]["depends_on"]["setup"]["condition"] == (
                "service_completed_successfully"
            ), name


def test_anvil_keeps_its_chain_and_is_reachable_from_the_host():
    anvil = _services()["anvil"]
    argv = [_defaults(a) for a in anvil["command"]]
    state = argv[argv.index("--state") + 1]
    assert any(_defaults(v).endswith(":" + str(Path(state).parent)) for v in anvil["volumes"])
    assert anvil["restart"] == "unless-stopped"
    (port,) = anvil["ports"]
    assert _defaults(port) == "127.0.0.1:8545:8545"


@pytest.mark.parametrize("name", sorted(n for n, s in _services().items() if _wgchain(s)))
def test_every_command_is_a_valid_wgchain_invocation(name: str):
    _help_exits_0(_argv(_services()[name]))


def test_every_variable_is_a_setting_and_its_default_is_valid():
    known = {settings.env_name(f) for f in settings.FIELDS} | {settings.ENV_PREFIX + "CONFIG"}
    for name, svc in _services().items():
        if _image(svc) != IMAGE:
            continue
        env = _env(svc)
        # deploy runs `wgchain contract deploy` (through wgchain-compose deploy)
        argv = ["contract", "deploy"] if name == "deploy" else _argv(svc)
        option_vars: set[str] = set()
        if _wgchain(svc) or name == "deploy":
            option_vars = {p.envvar for p in _command(argv).params if isinstance(p.envvar, str)}
        unknown = {k for k in env if k.startswith("WGCHAIN_")} - known - option_vars
        assert not unknown, (name, unknown)
        values = {k: v for k, v in env.items() if k in known and k != "WGCHAIN_CONFIG"}
        settings.load(environ=values)  # raises SettingsError for a bad default


def test_no_secret_on_a_command_line_or_in_an_environment():
    text = (COMPOSE / "docker-compose.yml").read_text()
    uses = [m.group(1) for m in _VARIABLE.finditer(text)]
    assert uses.count("REDIS_PASSWORD") == 1
    assert uses.count("WGCHAIN_API_TOKEN") == 1
    configs = _doc()["configs"]
    assert configs["redis-password"]["content"] == "${REDIS_PASSWORD:-}"
    assert configs["api-token"]["content"] == "${WGCHAIN_API_TOKEN:-}"
    for name, svc in _services().items():
        env = svc.get("environment") or {}
        for secret in ("WGCHAIN_REDIS_URL", "WGCHAIN_API_TOKEN", "REDISCLI_AUTH"):
            assert secret not in env, (name, secret)
        if _wgchain(svc):
            assert env["WGCHAIN_CONFIG"] == "/run/wgchain/wgchain.toml"
            assert "secrets:/run/wgchain:ro" in svc["volumes"], name
    redis_argv = _services()["redis"]["command"]
    assert "--requirepass" not in redis_argv
    assert redis_argv[redis_argv.index("--aclfile") + 1] == "/run/wgchain/redis.acl"


def test_the_setup_helper_escapes_the_password_and_stores_only_its_hash(tmp_path, monkeypatch):
    helper = _helper()
    given, kept = tmp_path / "given", tmp_path / "kept"
    given.mkdir()
    kept.mkdir()
    password = "p@ss:w/rd#%?&= x'\"\\"
    (given / "redis-password").write_text(password)
    monkeypatch.setattr(helper, "COMPOSE_SECRETS", given)
    monkeypatch.setattr(helper, "SECRETS", kept)
    monkeypatch.setattr(os, "chown", lambda *a: None)
    assert helper.main(["secrets"]) == 0
    cfg = settings.load(environ={"WGCHAIN_CONFIG": str(kept / "wgchain.toml")})
    parsed = redis.ConnectionPool.from_url(cfg.redis_url).connection_kwargs
    assert parsed["password"] == password
    assert parsed["host"] == "redis"
    acl = (kept / "redis.acl").read_text()
    assert password not in acl
    assert hashlib.sha256(password.encode()).hexdigest() in acl
    token = (kept / "api-token").read_text().strip()
    assert len(token) >= 32
    assert cfg.api_token == token
    assert (kept / "redis.acl").stat().st_mode & 0o077 == 0
    # A second run keeps the generated token.
    assert helper.main(["secrets"]) == 0
    assert (kept / "api-token").read_text().strip() == token


def _check_http(name: str, svc: dict[str, Any], url: str) -> None:
    parts = urlsplit(url)
    assert parts.hostname in {"127.0.0.1", "localhost"}, (name, url)
    env = _env(svc)
    cmd = _command(_argv(svc))
    if _argv(svc)[0] == "api":
        assert str(parts.port) == env["WGCHAIN_API_LISTEN"].rpartition(":")[2], (name, url)
        paths = openapi("test", auth=False)["paths"]
        assert parts.path in paths, (name, parts.path, sorted(paths))
        return
    assert parts.path == "/healthz", (name, url)
    assert str(parts.port) == env.get("WGCHAIN_METRICS_PORT"), (name, url)
    assert any(p.name == "metrics_port" for p in cmd.params), f"{name} serves no metrics"


def test_every_health_check_targets_something_that_exists():
    for name, svc in _services().items():
        check = svc.get("healthcheck")
        if check is None:
            continue
        test = [str(t) for t in check["test"]]
        if test[0] == "CMD-SHELL":
            assert name == "redis", name
            assert "redis-cli ping" in test[1]
            assert "/run/wgchain/redis-password" in test[1]
            continue
        assert test[0] == "CMD", (name, test)
        program = test[1]
        if program == "wgchain":
            _help_exits_0(test[2:])
        elif program == "wgchain-compose" and test[2] == "healthcheck":
            (url,) = _URL.findall(" ".join(test))
            _check_http(name, svc, url)
        elif program == "wgchain-compose":
            assert test[2:] == ["healthcheck-worker"]
            assert _argv(svc)[0] == "worker"
        elif program == "cast":
            assert "foundry" in svc["image"], name
            assert test[2] == "block-number"
        else:
            pytest.fail(f"{name}: unknown health check {test}")


def test_dockerfile_and_dockerignore():
    text = (COMPOSE / "Dockerfile").read_text()
    assert re.search(r"pip install .*-c constraints\.txt \.", text)
    assert "wireguard-tools" in text
    assert "wireguard-go" in text
    for pkg in ("shared", "producers", "consumers"):
        assert f"COPY {pkg}" in text
    assert "COPY compose/wgchain-compose.py /usr/local/bin/wgchain-compose" in text
    assert 'ENTRYPOINT ["wgchain"' in text
    assert "ARG BASE_IMAGE=python:3.11-slim-bookworm" in text
    ignore = (REPO / ".dockerignore").read_text().split()
    assert ignore[ignore.index("*")] == "*", "everything is left out unless named"
    copied = set(re.findall(r"^COPY (\S+)", text, re.M))
    included = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for src in copied:
        assert src.rstrip("/").removeprefix("./") in included, src


def _readme_commands() -> list[list[str]]:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Production deployment", 1)[1].split("\n## ", 1)[0]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    lines = block.replace("\\\n", " ").splitlines()
    commands = [c for line in lines if (c := line.split("#", 1)[0].strip())]
    # each $(...) is a command too
    inner = [m for c in commands for m in re.findall(r"\$\(([^()]*)\)", c)]
    return [shlex.split(re.sub(r"\$\([^()]*\)", "X", c)) for c in commands + inner]


def test_the_readme_deployment_is_what_the_compose_file_runs():
    services = _services()
    commands = _readme_commands()
    exports = {
        k: v for argv in commands if argv[0] == "export" for k, _, v in
        (a.partition("=") for a in argv[1:])
    }  # fmt: skip
    assert exports["COMPOSE_FILE"] == "compose/docker-compose.yml"
    assert exports["COMPOSE_PROFILES"] == "local"
    anvil_port = _defaults(services["anvil"]["ports"][0]).split(":")[1]
    assert exports["WGCHAIN_RPC_URL"] == f"http://127.0.0.1:{anvil_port}"
    assert exports["WGCHAIN_CONTRACT"] == _env(services["listener-1"])["WGCHAIN_CONTRACT"]
    assert exports["WGCHAIN_PRIVATE_KEY"] == _env(services["deploy"])["WGCHAIN_PRIVATE_KEY"]
    seen = set()
    minted = set()
    for argv in commands:
        if argv[:2] == ["docker", "compose"]:
            seen.add(argv[2])
            if argv[2] == "exec":
                args = [a for a in argv[3:] if a != "-T"]
                service, program = args[0], args[1:]
                assert service in services, service
                if program[0] == "wgchain":
                    _help_exits_0(program[1:])
                if "--private-key-file" in program:
                    key_file = program[program.index("--private-key-file") + 1]
                    host = _argv(services[service])
                    assert host[host.index("--private-key-file") + 1] == key_file
                if program[0] == "cat":
                    assert program[1].startswith("/run/wgchain/")
            if argv[2] == "logs":
                assert all(s in services for s in argv[3:])
        elif argv[0] == ".venv/bin/wgchain":
            _help_exits_0(argv[1:])
            minted.add(argv[argv.index("--node") + 1])
        elif argv[0] == "curl":
            api_port = _defaults(services["api"]["ports"][0]).split(":")[1]
            (url,) = [a for a in argv if a.startswith("http")]
            parts = urlsplit(url)
            assert parts.port == int(api_port)
            assert parts.path in openapi("test", auth=True)["paths"]
    assert {"build", "up", "exec", "down"} <= seen
    hosts = {_argv(s)[2] for s in services.values() if _wgchain(s) and _argv(s)[0] == "agent"}
    assert minted == hosts, "every host is minted"


def test_agent_pubkey_prints_the_existing_key_without_touching_it(tmp_path):
    key_file = tmp_path / "private.key"
    made = CliRunner().invoke(root, ["agent", "init", "--private-key-file", str(key_file)])
    assert made.exit_code == 0, made.output
    content = key_file.read_bytes()
    shown = CliRunner().invoke(root, ["agent", "pubkey", "--private-key-file", str(key_file)])
    assert shown.exit_code == 0, shown.output
    assert shown.output.strip() == made.output.strip()
    assert key_file.read_bytes() == content
    again = CliRunner().invoke(root, ["agent", "init", "--private-key-file", str(key_file)])
    assert again.exit_code != 0, "init refuses an existing key: pubkey is the way to read it"
