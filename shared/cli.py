"""The ``wgchain`` command: a small root group that discovers its subcommands.

Each component declares its commands in the ``wgchain.commands`` entry-point
group (pyproject.toml), so this module never imports ``producers`` or ``consumers``.
Deliberate errors (:class:`WgchainError`) become one line on stderr and a non-zero
exit code, never a traceback.
"""

from __future__ import annotations

import sys
from importlib.metadata import entry_points
from typing import Any

import click

from shared import logs
from shared.errors import SettingsError, WgchainError

#: Exit code of a bad setting or argument.
EXIT_USAGE = 2
#: Exit code of any other deliberate failure.
EXIT_FAILURE = 1


class _Root(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(ep.name for ep in entry_points(group="wgchain.commands"))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        for ep in entry_points(group="wgchain.commands", name=cmd_name):
            cmd = ep.load()
            if isinstance(cmd, click.Command):
                return cmd
        return None


@click.group(cls=_Root, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_file",
    type=click.Path(),
    envvar="WGCHAIN_CONFIG",
    help="TOML settings file (keys as in WGCHAIN_* without the prefix).",
)
@click.option("--log-json", is_flag=True, default=None, help="Log JSON lines.")
@click.option("--log-level", default=None, help="TRACE, DEBUG, INFO, WARNING, ERROR.")
@click.version_option(package_name="wgchain")
@click.pass_context
def root(
    ctx: click.Context, config_file: str | None, log_json: bool | None, log_level: str | None
) -> None:
    """wgchain: on-chain access passes turned into live WireGuard configuration."""
    ctx.ensure_object(dict)
    ctx.obj["config_file"] = config_file
    ctx.obj["overrides"] = {"log_json": log_json, "log_level": log_level}


def main(argv: list[str] | None = None) -> Any:
    """Console-script entry point."""
    try:
        return root.main(args=argv, prog_name="wgchain", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(EXIT_FAILURE)
    except click.UsageError as exc:  # one line, not click's usage block
        where = exc.ctx.command_path if exc.ctx else "wgchain"
        click.echo(f"{where}: {exc.format_message()} (see {where} --help)", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except SettingsError as exc:
        click.echo(f"wgchain: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    except WgchainError as exc:
        logs.log.remove()
        click.echo(f"wgchain: {exc}", err=True)
        sys.exit(EXIT_FAILURE)
    except KeyboardInterrupt:
        sys.exit(130)
