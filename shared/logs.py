"""Logging with loguru: human lines on a terminal, JSON lines with ``--log-json``.

Bind context (``log.bind(stage=..., network=...)``); never log a private key or a
secret URL (``redis_log.redacted`` strips passwords); hostile strings from the
chain are logged through ``validate.excerpt``.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from loguru import logger as log

if TYPE_CHECKING:
    from tenacity import RetryCallState

#: Longest error text a log line shows (characters).
BRIEF_CHARS: Final = 200
#: ``<redis.commands.core.Script object at 0x7f...>`` and the like: never worth a log line.
_OBJECT_REPR: Final = re.compile(r"<([\w.]+) object at 0x[0-9a-f]+>")
#: The operating system's reason inside a wrapped error (urllib3, requests, redis).
_ERRNO: Final = re.compile(r"\[Errno -?\d+\] ([^'\")\]]+)")
#: ``host='127.0.0.1', port=8545`` as urllib3 prints a connection pool.
_POOL: Final = re.compile(r"host='([^']*)', port=(\d+)")

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


def brief(exc: BaseException, *, typed: bool = True) -> str:
    """``Type: reason`` of ``exc`` in one short line: no object reprs, no connection-pool dumps.

    A requests/urllib3 failure such as ``HTTPConnectionPool(host='h', port=1): Max retries
    exceeded ... [Errno 111] Connection refused`` becomes ``ConnectionError: h:1: Connection
    refused``.
    """
    text = " ".join(str(exc).split())
    reason = _ERRNO.search(text)
    if reason and ("ConnectionPool" in text or "Caused by" in text):
        pool = _POOL.search(text)
        text = (f"{pool.group(1)}:{pool.group(2)}: " if pool else "") + reason.group(1).strip()
    elif "ConnectionPool(" in text:
        pool = _POOL.search(text)
        cause = text.rsplit("Caused by ", 1)[-1].split("(", 1)[0] if "Caused by" in text else ""
        text = (f"{pool.group(1)}:{pool.group(2)}" if pool else "") + (
            f": {cause}" if cause else ""
        )
    text = _OBJECT_REPR.sub(lambda m: m.group(1).rsplit(".", 1)[-1], text)
    if len(text) > BRIEF_CHARS:
        text = text[: BRIEF_CHARS - 3] + "..."
    name = type(exc).__name__
    if not typed and text:
        return text
    return f"{name}: {text}" if text else name


def callee(fn: object) -> str:
    """A short name of a retried callable: ``xread``, ``commit``, ``Lua script``."""
    if fn is None:
        return "?"
    if type(fn).__name__ == "Script":  # redis-py's registered Lua script
        return "Lua script"
    return str(getattr(fn, "__name__", None) or type(fn).__name__)


def retry_logger(
    stage: str, what: str, *, typed: bool = True, named: bool = True
) -> Callable[[RetryCallState], None]:
    """A tenacity ``before_sleep`` callback: one WARNING line per failed attempt.

    ``what`` names the operation (``"Redis call"``); the error is shown through
    :func:`brief` (without its type when ``typed`` is false: messages already made for
    people), never the retried function's repr; ``named`` adds its short name
    (:func:`callee`).
    """
    bound = log.bind(stage=stage)

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        bound.warning(
            "{} failed ({}); attempt {}, retrying in {:.1f}s",
            f"{what} ({callee(state.fn)})" if named else what,
            brief(exc, typed=typed) if exc is not None else "no result",
            state.attempt_number,
            state.upcoming_sleep,
        )

    return before_sleep


#: The level :func:`setup` configured last (the CLI shows tracebacks only at DEBUG and below).
LEVEL = "INFO"


class _Stderr:
    """Whatever ``sys.stderr`` is when a line is written (a sink never keeps a stale stream:
    a command run in-process by a test, whose captured stderr is closed afterwards)."""

    def write(self, text: str) -> None:
        sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


def setup(level: str = "INFO", json: bool = False, stage: str = "wgchain") -> None:
    """Configure the process-wide logger once (stderr)."""
    global LEVEL  # noqa: PLW0603 - one process-wide logger
    LEVEL = level.upper()
    log.remove()
    log.configure(extra={"stage": stage})
    if json:
        log.add(_Stderr(), level=level.upper(), serialize=True, backtrace=False, diagnose=False)
    else:
        log.add(
            _Stderr(),
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

__all__ = ["brief", "callee", "log", "retry_logger", "setup", "std_logger"]
