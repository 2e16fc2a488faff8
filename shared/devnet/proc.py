"""Small process helpers: free ports, waiting for a condition, stopping our own pids."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar, Self, TypeVar

T = TypeVar("T")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(
    condition: Callable[[], T], timeout: float = 10.0, interval: float = 0.05, what: str = ""
) -> T:
    """Poll ``condition`` until it returns something truthy; raise TimeoutError at the deadline."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while True:
        try:
            value = condition()
            if value:
                return value
        except Exception as exc:  # the condition may fail until the service is up
            last_exc = exc
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_exc!r})" if last_exc else ""
            raise TimeoutError(
                f"timed out after {timeout}s waiting for {what or condition}{detail}"
            )
        time.sleep(interval)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    """Terminate a process we started (by its pid), then kill it if it lingers."""
    if proc.poll() is not None:
        return
    try:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)
    except ProcessLookupError:
        pass


def temp_workdir(name: str) -> Callable[[], Path]:
    """What makes a fresh temporary folder ``wgchain-<name>-...`` (a work folder's default)."""
    return lambda: Path(tempfile.mkdtemp(prefix=f"wgchain-{name}-"))


class ProcessService:
    """A service process we started, with its own work folder: stopped by pid, folder removed.

    Subclasses (dataclasses) define ``workdir``, ``log_name`` and ``start()``.
    """

    #: The running process (None: not started, or stopped).
    proc: subprocess.Popen[bytes] | None = None
    workdir: Path
    #: Its log file in :attr:`workdir` (standard output and error).
    log_name: ClassVar[str]

    @property
    def log_path(self) -> Path:
        return self.workdir / self.log_name

    def start(self) -> Self:
        raise NotImplementedError

    def _spawn(self, args: list[str]) -> subprocess.Popen[bytes]:
        """Start ``args`` as :attr:`proc`, its output appended to :attr:`log_path`."""
        with open(self.log_path, "ab") as log_file:
            self.proc = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT)
        return self.proc

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
