"""Logging with loguru: human lines on a terminal, JSON lines with ``--log-json``.

Bind context (``log.bind(stage=..., network=...)``); never log a private key or a
secret URL (``redis_log.redacted`` strips passwords); hostile strings from the
chain are logged through ``validate.excerpt``.
"""

from __future__ import annotations

import logging
import sys

from loguru import logger as log

_HUMAN_FORMAT = (
    "<green>{time:HH:mm:ss.SSS}</green> <level>{level: <7}</level> "
    "<cyan>{extra[stage]}</cyan> {message}"
)


class _InterceptHandler(logging.Handler):
    """Routes stdlib logging (tenacity, rq, web3) into loguru."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = log.level(record.levelname).name
        except ValueError:
            level = record.levelno
        log.opt(depth=6, exception=record.exc_info).bind(stage=record.name).log(
            level, record.getMessage()
        )


def setup(level: str = "INFO", json: bool = False, stage: str = "wgchain") -> None:
    """Configure the process-wide logger once (stderr)."""
    log.remove()
    log.configure(extra={"stage": stage})
    if json:
        log.add(sys.stderr, level=level.upper(), serialize=True, backtrace=False, diagnose=False)
    else:
        log.add(
            sys.stderr,
            level=level.upper(),
            format=_HUMAN_FORMAT,
            colorize=None,
            backtrace=False,
            diagnose=False,
        )
    logging.basicConfig(handlers=[_InterceptHandler()], level=logging.WARNING, force=True)


def std_logger(name: str) -> logging.Logger:
    """A stdlib logger (for libraries such as tenacity) whose records reach loguru."""
    return logging.getLogger(f"wgchain.{name}")


log.configure(extra={"stage": "wgchain"})

__all__ = ["log", "setup", "std_logger"]
