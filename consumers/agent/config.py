"""What one agent knows about its host: :class:`AgentConfig`. Pure."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from consumers.agent.desired import Policy, parse_endpoint
from shared.keys import Keys

#: Interface names: what Linux accepts, and safe in a file name (1..15 characters).
IFNAME_RE: Final = re.compile(r"[A-Za-z0-9_=+-][A-Za-z0-9_.=+-]{0,14}")


def is_valid_ifname(name: str) -> bool:
    return bool(IFNAME_RE.fullmatch(name))


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """Everything one agent needs to know about its host."""

    node_id: str
    interface: str
    private_key_file: Path
    keys: Keys
    policy: Policy = field(default_factory=Policy)
    listen_port: int | None = None
    endpoint: str | None = None
    config_dir: Path = Path("/etc/wireguard")
    file_only: bool = False
    reconcile_interval: float = 30.0

    def __post_init__(self) -> None:
        if not is_valid_ifname(self.interface):
            raise ValueError(f"invalid interface name {self.interface[:20]!r}")
        if self.endpoint is not None and parse_endpoint(self.endpoint) is None:
            raise ValueError("endpoint must be host:port or [v6]:port")

    @property
    def config_path(self) -> Path:
        return self.config_dir / f"{self.interface}.conf"
