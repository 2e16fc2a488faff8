"""compose/ cannot run here (no Docker engine): these checks keep it consistent with the code."""

from __future__ import annotations

from importlib.metadata import entry_points
from pathlib import Path

import click
import yaml

from shared.settings import FIELDS, env_name

COMPOSE = Path(__file__).resolve().parents[2] / "compose"


def _services() -> dict[str, dict]:
    doc = yaml.safe_load((COMPOSE / "compose.yaml").read_text())
    return doc["services"]


def _command(name: str) -> click.Command:
    (ep,) = entry_points(group="wgchain.commands", name=name)
    cmd = ep.load()
    assert isinstance(cmd, click.Command)
    return cmd


def test_every_service_runs_a_real_subcommand_with_real_flags():
    services = _services()
    assert {"redis", "listener", "registry", "ipam", "agent"} <= set(services)
    for name, svc in services.items():
        if name == "redis":
            continue
        argv = svc["command"]
        cmd = _command(argv[0])
        known = {opt for p in cmd.params for opt in getattr(p, "opts", [])}
        flags = [a for a in argv[1:] if a.startswith("--")]
        assert set(flags) <= known, (name, set(flags) - known)


def test_every_environment_variable_is_a_setting():
    settings = {env_name(f) for f in FIELDS}
    for name, svc in _services().items():
        env = svc.get("environment", {})
        unknown = {k for k in env if k.startswith("WGCHAIN_")} - settings
        assert not unknown, (name, unknown)


def test_dockerfile_installs_the_project_and_wireguard():
    text = (COMPOSE / "Dockerfile").read_text()
    assert "pip install" in text
    assert "wireguard-tools" in text
    for pkg in ("shared", "producers", "consumers"):
        assert f"COPY {pkg}" in text
