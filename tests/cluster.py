"""A local 3-master Redis Cluster for tests: three ``redis-server --cluster-enabled yes`` on
free ports (each in its own temp folder), joined with ``redis-cli --cluster create``."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import redis

from shared.devnet.proc import free_port, stop_process, wait_for
from shared.devnet.redis_server import redis_server_binary
from shared.errors import ServiceUnavailable

#: Seconds the cluster may take to agree that every slot is served.
READY_TIMEOUT = 30.0


@dataclass
class LocalCluster:
    """Three masters, no replicas; :meth:`cleanup` stops them by pid and removes their folders."""

    size: int = 3
    ports: list[int] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="wgchain-cluster-")))

    @property
    def url(self) -> str:
        """What ``WGCHAIN_REDIS_URL`` says to reach the cluster through its first node."""
        return f"redis+cluster://127.0.0.1:{self.ports[0]}"

    def node(self, port: int) -> redis.Redis:
        """A plain client of one node (for CLUSTER commands)."""
        return redis.Redis(host="127.0.0.1", port=port)

    def start(self) -> LocalCluster:
        binary = redis_server_binary()
        cli = shutil.which("redis-cli")
        if cli is None:
            raise ServiceUnavailable("redis-cli is not installed (needed to create a cluster)")
        for index in range(self.size):
            port, bus = free_port(), free_port()
            folder = self.workdir / str(index)
            folder.mkdir()
            args = [
                binary,
                "--port", str(port),
                "--bind", "127.0.0.1",
                "--cluster-enabled", "yes",
                "--cluster-port", str(bus),
                "--cluster-config-file", str(folder / "nodes.conf"),
                "--dir", str(folder),
                "--save", "",
                "--appendonly", "no",
                "--protected-mode", "no",
            ]  # fmt: skip
            with open(folder / "redis.log", "ab") as log_file:
                self.procs.append(subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT))
            self.ports.append(port)
        for port in self.ports:
            client = self.node(port)
            try:
                wait_for(client.ping, timeout=10, what=f"cluster node on port {port}")
            finally:
                client.close()
        create = [cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
                  "--cluster-replicas", "0", "--cluster-yes"]  # fmt: skip
        proc = subprocess.run(create, capture_output=True, text=True, timeout=60, check=False)
        if proc.returncode != 0:
            raise ServiceUnavailable(f"redis-cli --cluster create failed: {proc.stdout[-500:]}")
        wait_for(self._ready, timeout=READY_TIMEOUT, interval=0.2, what="cluster_state:ok")
        return self

    def _ready(self) -> bool:
        for port in self.ports:
            client = self.node(port)
            try:
                info = client.execute_command("CLUSTER", "INFO")
            finally:
                client.close()
            text = info.decode() if isinstance(info, bytes) else str(info)
            if "cluster_state:ok" not in text:
                return False
        return True

    def keyslot(self, key: str) -> int:
        client = self.node(self.ports[0])
        try:
            return int(client.execute_command("CLUSTER", "KEYSLOT", key))
        finally:
            client.close()

    def master_of(self, slot: int) -> int:
        """The port of the master serving ``slot``."""
        client = self.node(self.ports[0])
        try:
            ranges = client.execute_command("CLUSTER", "SLOTS")
        finally:
            client.close()
        for low, high, master, *_ in ranges:
            if int(low) <= slot <= int(high):
                return int(master[1])
        raise LookupError(f"slot {slot} is not served")

    def cleanup(self) -> None:
        for proc in self.procs:
            stop_process(proc)
        self.procs.clear()
        shutil.rmtree(self.workdir, ignore_errors=True)
