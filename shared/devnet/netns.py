"""A network-namespace lab: hosts joined by a switch, each with a real ``wireguard-go``.

Used by the e2e tests and by ``wgchain demo``. Nothing changes in the root
namespace: a "switch" namespace holds a bridge, each host namespace holds one end
of a veth pair (underlay ``192.168.77.0/24`` by default) and a userspace WireGuard
interface. Interface names are unique per lab (``wg<lab id><index>``) because
``wireguard-go``'s control sockets (``/var/run/wireguard/IF.sock``) are shared by
every namespace. :meth:`Lab.cleanup` stops only the pids it started, deletes only
its namespaces and removes only its own sockets.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Final

from shared.devnet.proc import stop_process, temp_workdir, wait_for
from shared.errors import ServiceUnavailable

#: Directory of wireguard-go's control sockets (shared by all namespaces).
WG_SOCKET_DIR: Final = Path("/var/run/wireguard")
#: Seconds to wait for a wireguard-go interface to answer ``wg show``.
WG_START_TIMEOUT: Final = 10.0
#: Starts of wireguard-go tried before giving up (it may exit while starting).
WG_START_ATTEMPTS: Final = 3
#: Seconds one lab command (``ip``, ``wg``) may take.
COMMAND_TIMEOUT: Final = 15.0
#: Host names inside a lab (they become part of namespace names, e.g. ``node-a``).
HOST_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")


def available() -> tuple[bool, str]:
    """Whether this machine can run a lab: root, ``ip``, ``wg``, ``wireguard-go``, a TUN device."""
    if os.geteuid() != 0:
        return False, "network namespaces need root"
    for tool in ("ip", "wg", "wireguard-go"):
        if shutil.which(tool) is None:
            return False, f"{tool} is not installed"
    if not Path("/dev/net/tun").exists():
        return False, "no /dev/net/tun (wireguard-go needs a TUN device)"
    return True, ""


def wgchain_command() -> list[str]:
    """argv prefix that runs this installation's ``wgchain`` (the venv's console script)."""
    script = Path(sys.executable).parent / "wgchain"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from shared.cli import main; sys.exit(main())"]


def _ip(*args: str) -> None:
    proc = subprocess.run(
        ["ip", *args], capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False
    )
    if proc.returncode != 0:
        raise ServiceUnavailable(f"ip {' '.join(args)} failed: {proc.stderr.strip()[:300]}")


@dataclass
class Host:
    """One host namespace with its underlay address and WireGuard interface name."""

    lab: Lab
    name: str
    index: int
    ns: str
    ifname: str
    underlay_ip: str
    wg_proc: subprocess.Popen[bytes] | None = None

    def exec(
        self, argv: Sequence[str], *, check: bool = True, timeout: float = COMMAND_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the namespace and wait for it."""
        proc = subprocess.run(
            ["ip", "netns", "exec", self.ns, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise ServiceUnavailable(
                f"{' '.join(argv)} in {self.ns} failed: {proc.stderr.strip()[:300]}"
            )
        return proc

    def ping(self, addr: str, count: int = 1, timeout_s: int = 1) -> bool:
        """True when ``addr`` answers ``count`` pings from inside the namespace."""
        proc = self.exec(
            ["ping", "-n", "-q", "-c", str(count), "-W", str(timeout_s), addr],
            check=False,
            timeout=count * timeout_s + 5,
        )
        return proc.returncode == 0

    def spawn(
        self,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        log_path: str | Path | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` inside the namespace (output to ``log_path``); the lab stops it."""
        log_path = (
            Path(log_path)
            if log_path
            else self.lab.workdir / f"{self.name}-{len(self.lab.procs)}.log"
        )
        out: IO[bytes] = open(log_path, "ab")  # noqa: SIM115 - the child keeps it
        try:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", self.ns, *argv],
                env=dict(env) if env is not None else None,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        finally:
            out.close()
        self.lab.procs.append(proc)
        return proc

    def start_wireguard(self) -> subprocess.Popen[bytes]:
        """Start ``wireguard-go -f IF`` in the namespace; returns once ``wg show IF`` answers.

        A wireguard-go that exits while starting (seen once in a few hundred starts on a
        loaded machine, exit status 1) is started again, up to :data:`WG_START_ATTEMPTS`
        times; the error then quotes the end of its log."""
        log_path = self.lab.workdir / f"{self.ifname}.log"
        for attempt in range(1, WG_START_ATTEMPTS + 1):
            with contextlib.suppress(FileNotFoundError):
                (WG_SOCKET_DIR / f"{self.ifname}.sock").unlink()  # stale: from a crashed run
            proc = self.spawn(["wireguard-go", "-f", self.ifname], log_path=log_path)
            self.wg_proc = proc

            def ready(proc: subprocess.Popen[bytes] = proc) -> bool:
                if proc.poll() is not None:
                    return True  # exited: told apart below
                return self.exec(["wg", "show", self.ifname], check=False).returncode == 0

            wait_for(ready, timeout=WG_START_TIMEOUT, what=f"wireguard-go {self.ifname}")
            if proc.poll() is None:
                return proc
            if attempt == WG_START_ATTEMPTS:
                tail = log_path.read_bytes()[-400:].decode(errors="replace").strip()
                raise ServiceUnavailable(
                    f"wireguard-go {self.ifname} exited ({proc.returncode}): {tail}"
                )
        raise AssertionError("unreachable")

    def start_agent(
        self,
        *,
        node: str,
        redis_url: str,
        chain_id: int,
        contract: str,
        private_key_file: str | Path,
        listen_port: int | None = None,
        endpoint: str | None = None,
        config_dir: str | Path | None = None,
        env: Mapping[str, str] | None = None,
        extra_args: Sequence[str] = (),
    ) -> subprocess.Popen[bytes]:
        """Run ``wgchain agent`` for this host's interface inside its namespace."""
        argv = [*wgchain_command(), "agent", "--node", node, "--interface", self.ifname]
        argv += ["--private-key-file", str(private_key_file)]
        argv += ["--config-dir", str(config_dir or self.lab.workdir / f"{self.name}-conf")]
        if listen_port is not None:
            argv += ["--listen-port", str(listen_port)]
        if endpoint is not None:
            argv += ["--endpoint", endpoint]
        argv += list(extra_args)
        full_env = {
            **os.environ,
            "WGCHAIN_REDIS_URL": redis_url,
            "WGCHAIN_CHAIN_ID": str(chain_id),
            "WGCHAIN_CONTRACT": contract,
            **(env or {}),
        }
        return self.spawn(argv, env=full_env, log_path=self.lab.workdir / f"agent-{self.name}.log")


@dataclass
class Lab:
    """A switch namespace plus host namespaces; a context manager that cleans up after itself."""

    prefix: str = ""
    subnet: str = "192.168.77.0/24"
    workdir: Path = field(default_factory=temp_workdir("lab"))
    keep_workdir: bool = False
    lab_id: str = field(default_factory=lambda: secrets.token_hex(3))
    hosts: list[Host] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.prefix = self.prefix or f"wgc{self.lab_id}"
        self._net = ipaddress.IPv4Network(self.subnet)

    @property
    def switch(self) -> str:
        return f"{self.prefix}-sw"

    def _add_ns(self, name: str) -> None:
        _ip("netns", "add", name)
        self.namespaces.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def _ensure_switch(self) -> None:
        if self.switch in self.namespaces:
            return
        self._add_ns(self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")

    def add_host(self, name: str) -> Host:
        """A new host namespace wired to the switch (no WireGuard yet: see ``start_wireguard``)."""
        if not HOST_NAME_RE.fullmatch(name) or any(h.name == name for h in self.hosts):
            raise ValueError(f"host name {name!r} must be new and match {HOST_NAME_RE.pattern}")
        self._ensure_switch()
        index = len(self.hosts)
        ns = f"{self.prefix}-{name}"
        self._add_ns(ns)
        port = f"p{index}"
        _ip("link", "add", "ul0", "netns", ns, "type", "veth", "peer", "name", port,
            "netns", self.switch)  # fmt: skip
        _ip("-n", self.switch, "link", "set", port, "master", "br0", "up")
        address = self._net.network_address + index + 1
        _ip("-n", ns, "addr", "add", f"{address}/{self._net.prefixlen}", "dev", "ul0")
        _ip("-n", ns, "link", "set", "ul0", "up")
        host = Host(self, name, index, ns, f"wg{self.lab_id}{index}", str(address))
        self.hosts.append(host)
        return host

    def cleanup(self) -> None:
        """Stop our processes (by pid), delete our namespaces and our stale sockets."""
        for proc in reversed(self.procs):
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                stop_process(proc)
        self.procs.clear()
        for ns in reversed(self.namespaces):
            with contextlib.suppress(ServiceUnavailable, subprocess.SubprocessError):
                _ip("netns", "del", ns)
        self.namespaces.clear()
        for host in self.hosts:
            with contextlib.suppress(FileNotFoundError):
                (WG_SOCKET_DIR / f"{host.ifname}.sock").unlink()
        if not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
