"""The ``wgchain`` command: a small root group that discovers its subcommands.

Each component declares its commands in the ``wgchain.commands`` entry-point
group (pyproject.toml), so this module never imports ``producers`` or ``consumers``.

Every failure is one line on stderr, ``wgchain: <what>``, never a traceback: bad
arguments and settings exit 2 (argument errors name the option as typed and point
to the command's ``--help``), any other failure exits 1, a closed pipe exits quietly
and a full disk is one line. The global options (``--config``, ``--log-json``,
``--log-level``) are accepted before and after the subcommand.
"""

from __future__ import annotations

import errno
import os
import sys
import traceback
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any, Final

import click

from shared import logs
from shared.errors import SettingsError, WgchainError
from shared.validate import printable

#: Exit code of a bad setting or argument.
EXIT_USAGE: Final = 2
#: Exit code of any other deliberate failure.
EXIT_FAILURE: Final = 1
#: Exit code after Ctrl-C.
EXIT_INTERRUPTED: Final = 130
#: Widest help text (columns); a narrower terminal wraps it, nothing is ever cut.
HELP_WIDTH: Final = 100
#: ``errno`` values of an output that cannot take more (full disk, quota, file too large).
_FULL: Final = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
#: Help of the global options, shown by every command.
_GLOBAL_HELP: Final = {
    "config_file": "TOML settings file (keys as in WGCHAIN_* without the prefix) [env WGCHAIN_CONFIG].",
    "log_json": "Log JSON lines [env WGCHAIN_LOG_JSON; default: false].",
    "log_level": "TRACE, DEBUG, INFO, WARNING or ERROR [env WGCHAIN_LOG_LEVEL; default: INFO].",
}
#: A global option's flags and its other settings, by the key its value is kept under.
_GLOBAL_OPTIONS: Final[dict[str, tuple[list[str], dict[str, Any]]]] = {
    "config_file": (["--config", "config_file"], {"type": click.Path(), "metavar": "FILE"}),
    "log_json": (["--log-json"], {"is_flag": True}),
    "log_level": (["--log-level"], {"metavar": "LEVEL"}),
}


def _remember(key: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    """Callback of a global option: store its value (when given) in the root's ``obj``."""

    def store(ctx: click.Context, param: click.Parameter, value: Any) -> None:
        obj = ctx.find_root().ensure_object(dict)
        obj["path"] = ctx.command_path  # the deepest command parsed last: named in errors
        if value is None:
            return
        if key == "config_file":
            obj["config_file"] = value
        else:
            obj.setdefault("overrides", {})[key] = value

    return store


def _global_options() -> list[click.Option]:
    """``--config``, ``--log-json`` and ``--log-level`` as every subcommand accepts them."""
    return [
        click.Option(
            decls,
            default=None,
            expose_value=False,
            callback=_remember(key),
            help=_GLOBAL_HELP[key],
            **more,
        )
        for key, (decls, more) in _GLOBAL_OPTIONS.items()
    ]


def _summary(command: click.Command) -> str:
    """The first paragraph of a command's help on one line (what ``wgchain --help`` lists)."""
    text = (command.help or "").replace("\b", "").strip()
    return " ".join(text.split("\n\n", 1)[0].split())


def adopt(command: click.Command) -> click.Command:
    """Give ``command`` (and its subcommands) the global options and an uncut summary."""
    if getattr(command, "_wgchain_adopted", False):
        return command
    taken = {opt for param in command.params for opt in param.opts}
    command.params += [opt for opt in _global_options() if not set(opt.opts) & taken]
    if command.short_help is None and command.help:
        command.short_help = _summary(command)
    command._wgchain_adopted = True  # type: ignore[attr-defined]
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            adopt(sub)
    return command


class _Root(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(ep.name for ep in entry_points(group="wgchain.commands"))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        for ep in entry_points(group="wgchain.commands", name=cmd_name):
            cmd = ep.load()
            if isinstance(cmd, click.Command):
                return adopt(cmd)
        return None


@click.group(
    cls=_Root,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": HELP_WIDTH},
    epilog="Global options work before and after the subcommand. Shell completion: "
    'eval "$(_WGCHAIN_COMPLETE=bash_source wgchain)" (zsh_source, fish_source for other '
    "shells). Every command is described in docs/cli.md.",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(),
    envvar="WGCHAIN_CONFIG",
    metavar="FILE",
    help=_GLOBAL_HELP["config_file"],
)
@click.option("--log-json", is_flag=True, default=None, help=_GLOBAL_HELP["log_json"])
@click.option("--log-level", default=None, metavar="LEVEL", help=_GLOBAL_HELP["log_level"])
@click.version_option(package_name="wgchain")
@click.pass_context
def root(
    ctx: click.Context, config_file: str | None, log_json: bool | None, log_level: str | None
) -> None:
    """wgchain: on-chain access passes turned into live WireGuard configuration."""
    obj = ctx.ensure_object(dict)
    obj.setdefault("config_file", config_file)
    overrides = obj.setdefault("overrides", {})
    overrides.setdefault("log_json", log_json)
    overrides.setdefault("log_level", log_level)


def _usage_message(exc: click.UsageError) -> str:
    """A click usage error as ``<option>: <problem>`` or its own sentence, without the dot."""
    if isinstance(exc, click.BadParameter) and not isinstance(exc, click.MissingParameter):
        name = exc.param_hint if isinstance(exc.param_hint, str) else None
        if exc.param is not None:
            opts = getattr(exc.param, "opts", None) or []
            longest = max(opts, key=len) if isinstance(exc.param, click.Option) else None
            name = longest or exc.param.human_readable_name
        text = f"{name}: {exc.message}" if name else exc.message
    else:
        text = exc.format_message()
    text = text.strip().removesuffix(".")
    return text[:1].lower() + text[1:] if text[:1].isupper() and not text[:2].isupper() else text


def _fail(message: str, code: int) -> None:
    click.echo(f"wgchain: {printable(message)}", err=True)
    sys.exit(code)


def _quiet_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's last flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def main(argv: list[str] | None = None) -> Any:
    """Console-script entry point."""
    obj: dict[str, Any] = {}
    path = "wgchain"
    try:
        result = root.main(args=argv, prog_name="wgchain", standalone_mode=False, obj=obj)
        sys.stdout.flush()  # a full disk shows here, not at exit
        return result
    except click.exceptions.Abort:
        _fail("aborted", EXIT_FAILURE)
    except click.exceptions.NoArgsIsHelpError as exc:  # `wgchain`, `wgchain audit`: the help
        exc.show()
        sys.exit(exc.exit_code)
    except click.UsageError as exc:  # one line, not click's usage block
        where = exc.ctx.command_path if exc.ctx else obj.get("path", path)
        _fail(f"{_usage_message(exc)} (see {where} --help)", exc.exit_code)
    except click.ClickException as exc:
        if type(exc).show is not click.ClickException.show:  # it prints its own line
            exc.show()
            sys.exit(exc.exit_code)
        _fail(exc.format_message(), exc.exit_code)
    except SettingsError as exc:
        hint = f" (see {obj.get('path', path)} --help)" if exc.is_argument else ""
        _fail(f"{exc}{hint}", EXIT_USAGE)
    except WgchainError as exc:
        logs.log.remove()
        _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)
    except OSError as exc:
        _quiet_stdout()
        if exc.errno == errno.EPIPE or isinstance(exc, BrokenPipeError):
            sys.exit(EXIT_FAILURE)  # the reader went away (`| head`): nothing to say
        what = exc.strerror or logs.brief(exc)
        if exc.errno in _FULL:
            _fail(f"cannot write the output: {what}", EXIT_FAILURE)
        _fail(f"{what}: {exc.filename}" if exc.filename else what, EXIT_FAILURE)
    except Exception as exc:  # a bug: still one line; the traceback at DEBUG
        if logs.LEVEL in {"TRACE", "DEBUG"}:
            traceback.print_exc()
        redis_error = type(exc).__module__.startswith("redis")
        what = f"Redis failed: {logs.brief(exc)}" if redis_error else logs.brief(exc)
        _fail(f"{what} (--log-level DEBUG shows the traceback)", EXIT_FAILURE)
    return None
