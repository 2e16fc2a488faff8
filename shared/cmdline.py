"""Click helpers shared by every subcommand: settings flags and process signals."""

from __future__ import annotations

import functools
import signal
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import click

from shared import logs, settings, shutdown
from shared.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])


def with_settings(*fields: str, stage: str = "wgchain") -> Callable[[F], F]:
    """Add ``--<field>`` options for ``fields`` and pass the merged ``Settings`` as ``cfg``.

    Precedence: flag > ``WGCHAIN_*`` > TOML (``--config``) > default. Also sets up logging.
    """
    for name in fields:
        if name not in settings.FIELDS:
            raise ValueError(f"unknown setting {name}")

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            ctx = click.get_current_context()
            root = ctx.find_root().obj or {}
            overrides = dict(root.get("overrides", {}))
            for name in fields:
                overrides[name] = kwargs.pop(name, None)
            cfg = settings.load(overrides, config_file=root.get("config_file"))
            logs.setup(cfg.log_level, cfg.log_json, stage=stage)
            return func(*args, cfg=cfg, **kwargs)

        for name in reversed(fields):
            help_text = f"[env {settings.env_name(name)}]"
            wrapper = click.option(
                "--" + name.replace("_", "-"), name, default=None, help=help_text
            )(wrapper)
        return wrapper  # type: ignore[return-value]

    return decorate


def stop_event() -> threading.Event:
    """An event set by SIGTERM or SIGINT, for loops that finish their batch and exit."""
    stop = shutdown.SHUTDOWN

    def handler(signum: int, frame: Any) -> None:
        logs.log.info("signal {} received, finishing the current batch", signum)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


__all__ = ["Settings", "stop_event", "with_settings"]
