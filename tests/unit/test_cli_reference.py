"""The command-line reference (docs/cli.md) is what the commands say, and reads like one:
every option explained, no summary cut short."""

from __future__ import annotations

import re

import click

from shared import clidoc
from shared.cli import root
from shared.settings import FIELDS, env_name, flag_name


def test_docs_cli_md_is_regenerated_from_the_commands() -> None:
    current = clidoc.REFERENCE.read_text(encoding="utf-8")
    assert current == clidoc.render(), "docs/cli.md is stale: python -m shared.clidoc --write"


def test_every_command_and_option_is_in_it_with_a_meaning() -> None:
    text = clidoc.render()
    top = click.Context(root, info_name="wgchain", **root.context_settings)
    commands = [ctx.command_path for _, ctx in clidoc._walk(root, top)][1:]
    assert len(commands) >= 25
    for path in commands:
        assert f"\n## {path}\n" in text, path
    options = re.findall(r"^- `([^`]+)`(.*)$", text, re.M)
    assert options
    bare = [names for names, meaning in options if not meaning.strip(": ")]
    assert not bare, f"options without a meaning: {bare}"
    flags = {flag_name(f): f for f in FIELDS}
    documented = 0
    for names, meaning in options:
        field = flags.get(names.split()[0])
        if field is None:
            continue
        documented += 1
        assert f"[env {env_name(field)}; default: " in meaning, names
        assert not meaning.strip(": ").startswith("[env"), f"{names} says only where it comes from"
    assert documented >= 40


def test_command_summaries_are_never_cut() -> None:
    top = click.Context(root, info_name="wgchain", **root.context_settings)
    for command, _ in clidoc._walk(root, top):
        if command is root:
            continue
        summary = command.get_short_help_str(limit=10)  # a tiny limit cuts any default summary
        assert not summary.endswith("..."), summary
        assert summary == " ".join((command.help or "").split("\n\n")[0].split())
