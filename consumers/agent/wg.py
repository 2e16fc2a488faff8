"""The WireGuard interface, driven by ``wg`` and ``ip`` (I/O).

Every command is an argument list (never a shell). Only validated keys, addresses
and endpoints reach argv; the private key only as its file's path. The private key
that ``wg show IF dump`` prints is dropped while parsing and never logged, kept or
put into an error message.

:class:`Wg` is the real interface; :class:`~consumers.agent.twin.MemoryWireGuard`
(re-exported here) is its in-memory twin for tests of the agent loop and for the
fleet benchmark (it never stands in for WireGuard in e2e tests).
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import shlex
import socket
import struct
import subprocess
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Final, Protocol

from consumers.agent import uapi as uapi_socket
from consumers.agent.desired import parse_endpoint
from consumers.agent.keys import public_key_from_file
from consumers.agent.render import InterfaceState, PeerSpec, is_ip_endpoint, normalise_ips
from consumers.agent.twin import MemoryWireGuard
from shared.errors import WireGuardError
from shared.validate import is_valid_wg_key

#: Seconds one ``wg`` or ``ip`` command may take.
COMMAND_TIMEOUT: Final = 15.0
#: Longest stderr excerpt kept in an error message (characters).
MAX_STDERR: Final = 500
#: Most peer clauses in one ``wg set`` (about 60 KiB of argv, far below ARG_MAX).
PEERS_PER_CALL: Final = 500
#: ``struct ifreq`` (name, flags) and the ioctls of the link's flags (linux/sockios.h, net/if.h).
_IFREQ_SIZE: Final = 40
_SIOCGIFFLAGS: Final = 0x8913
_SIOCSIFFLAGS: Final = 0x8914
_IFF_UP: Final = 0x1


def run(argv: Sequence[str], timeout: float = COMMAND_TIMEOUT) -> str:
    """Run ``argv`` (no shell); its stdout, or :class:`WireGuardError` with its stderr."""
    command = shlex.join(argv)
    try:
        proc = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, check=False
        )
    except FileNotFoundError:
        raise WireGuardError(f"{argv[0]} is not installed (running {command})") from None
    except subprocess.TimeoutExpired:
        raise WireGuardError(f"{command} took longer than {timeout}s") from None
    if proc.returncode != 0:
        stderr = proc.stderr.strip()[:MAX_STDERR]
        raise WireGuardError(f"{command} failed with exit code {proc.returncode}: {stderr}")
    return proc.stdout


def parse_dump(text: str) -> InterfaceState:
    """Parse ``wg show IF dump`` (interface line, then one line per peer)."""
    return _parse_dump(text.splitlines())


def _parse_dump(lines: Iterable[str]) -> InterfaceState:
    public: str | None = None
    listen_port = 0
    seen_head = False
    peers: dict[str, PeerSpec] = {}
    handshakes: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        cols = line.rstrip("\n").split("\t")
        if not seen_head:
            seen_head = True
            if len(cols) != 4:  # never echo the line: it holds the private key
                raise WireGuardError(f"unexpected wg dump interface line ({len(cols)} fields)")
            public = cols[1] if is_valid_wg_key(cols[1]) else None
            listen_port = int(cols[2]) if cols[2].isdigit() else 0
            continue
        if len(cols) != 8:
            raise WireGuardError(f"unexpected wg dump peer line {number} ({len(cols)} fields)")
        key, _psk, endpoint, allowed, handshake, _rx, _tx, keepalive = cols
        peers[key] = _peer_spec(key, endpoint, allowed, keepalive)
        handshakes[key] = int(handshake) if handshake.isdigit() else 0
    if not seen_head:
        raise WireGuardError("wg show dump printed nothing")
    return InterfaceState(public, listen_port, peers, handshakes)


def _peer_spec(key: str, endpoint: str, allowed: str, keepalive: str) -> PeerSpec:
    """A peer from its ``wg show dump`` columns."""
    ips = [] if allowed in {"(none)", ""} else allowed.split(",")
    return PeerSpec(
        public_key=key,
        allowed_ips=normalise_ips(ips),
        endpoint=None if endpoint == "(none)" else endpoint,
        keepalive=int(keepalive) if keepalive.isdigit() else 0,
    )


def show_dump(ifname: str) -> InterfaceState:
    """The interface's public key, listen port and peers.

    Parsed line by line as ``wg`` prints them: 10,000 peers are about 1.5 MB of text
    that never has to be held whole (a long-running agent's memory stays flat).
    """
    argv = ["wg", "show", ifname, "dump"]
    try:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
    except FileNotFoundError:
        raise WireGuardError(f"wg is not installed (running {shlex.join(argv)})") from None
    timer = threading.Timer(COMMAND_TIMEOUT, proc.kill)
    timer.start()
    try:
        assert proc.stdout is not None
        assert proc.stderr is not None
        try:
            state = _parse_dump(proc.stdout)
        except WireGuardError:
            proc.kill()
            raise
        finally:
            proc.stdout.close()
        stderr = proc.stderr.read()
        code = proc.wait()
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if code != 0:
        raise WireGuardError(
            f"{shlex.join(argv)} failed with exit code {code}: {stderr.strip()[:MAX_STDERR]}"
        )
    return state


def set_private_key(ifname: str, path: str | Path) -> None:
    """Load the private key from ``path`` (checked to be 0600 first)."""
    public_key_from_file(path)
    run(["wg", "set", ifname, "private-key", str(Path(path).absolute())])


def set_listen_port(ifname: str, port: int) -> None:
    if not 0 <= port <= 65535:
        raise WireGuardError(f"listen port {port} out of range")
    run(["wg", "set", ifname, "listen-port", str(port)])


def peer_args(
    key: str, allowed_ips: Sequence[str], endpoint: str | None = None, keepalive: int = 0
) -> list[str]:
    """One validated ``peer KEY allowed-ips ... [endpoint E] persistent-keepalive N`` clause."""
    if not is_valid_wg_key(key):
        raise WireGuardError("refusing an invalid peer key")
    args = ["peer", key, "allowed-ips", ",".join(normalise_ips(allowed_ips))]
    if endpoint is not None:
        checked = parse_endpoint(endpoint)
        if checked is None:
            raise WireGuardError("refusing an invalid endpoint")
        args += ["endpoint", checked]
    args += ["persistent-keepalive", str(int(keepalive)) if keepalive > 0 else "off"]
    return args


def set_peer(
    ifname: str,
    key: str,
    allowed_ips: Sequence[str],
    endpoint: str | None = None,
    keepalive: int = 0,
) -> None:
    """Add or update a peer; its allowed IPs become exactly ``allowed_ips``."""
    run(["wg", "set", ifname, *peer_args(key, allowed_ips, endpoint, keepalive)])


def set_peers(ifname: str, peers: Sequence[PeerSpec]) -> None:
    """Add or update many peers, :data:`PEERS_PER_CALL` per ``wg set``.

    Every clause is validated before the first command runs; a failing command
    leaves the peers of earlier commands set (the caller rolls back).
    """
    clauses = [peer_args(p.public_key, p.allowed_ips, p.endpoint, p.keepalive) for p in peers]
    for i in range(0, len(clauses), PEERS_PER_CALL):
        run(["wg", "set", ifname, *(a for c in clauses[i : i + PEERS_PER_CALL] for a in c)])


def apply_peers(ifname: str, removals: Sequence[str], peers: Sequence[PeerSpec]) -> None:
    """Remove ``removals``, then add or update ``peers``: one ``wg set`` per
    :data:`PEERS_PER_CALL` clauses, removals first (validated before the first runs)."""
    if not all(is_valid_wg_key(key) for key in removals):
        raise WireGuardError("refusing an invalid peer key")
    clauses = [["peer", key, "remove"] for key in removals]
    clauses += [peer_args(p.public_key, p.allowed_ips, p.endpoint, p.keepalive) for p in peers]
    for i in range(0, len(clauses), PEERS_PER_CALL):
        run(["wg", "set", ifname, *(a for c in clauses[i : i + PEERS_PER_CALL] for a in c)])


def remove_peer(ifname: str, key: str) -> None:
    remove_peers(ifname, [key])


def remove_peers(ifname: str, keys: Sequence[str]) -> None:
    """Remove many peers, :data:`PEERS_PER_CALL` per ``wg set``."""
    if not all(is_valid_wg_key(key) for key in keys):
        raise WireGuardError("refusing an invalid peer key")
    for i in range(0, len(keys), PEERS_PER_CALL):
        clauses = (("peer", key, "remove") for key in keys[i : i + PEERS_PER_CALL])
        run(["wg", "set", ifname, *(a for c in clauses for a in c)])


def link_info(ifname: str) -> dict[str, Any]:
    """``ip -j addr show dev IF`` for this interface."""
    try:
        doc = json.loads(run(["ip", "-j", "addr", "show", "dev", ifname]))
    except ValueError as exc:
        raise WireGuardError(f"ip -j addr printed no JSON: {exc}") from None
    if not doc:
        raise WireGuardError(f"no interface {ifname}")
    return dict(doc[0])


def addresses(info: dict[str, Any]) -> set[str]:
    """The interface's addresses as ``addr/prefix``."""
    return {f"{a['local']}/{a['prefixlen']}" for a in info.get("addr_info", []) if "local" in a}


def set_addresses(
    ifname: str, cidrs: Sequence[str], pools: Sequence[str], *, up: bool = True
) -> bool:
    """Give the interface exactly ``cidrs`` among the addresses in ``pools``, and bring it up
    (``up`` false: leave the link as it is).

    Addresses outside the pools are left alone. Returns True when anything changed.
    """
    wanted = {str(ipaddress.ip_interface(c)) for c in cidrs}
    nets = [ipaddress.ip_network(p) for p in pools if p]
    info = link_info(ifname)
    changed = False
    for have in sorted(addresses(info) - wanted):
        ip = ipaddress.ip_interface(have).ip
        if any(ip.version == n.version and ip in n for n in nets):
            run(["ip", "addr", "del", have, "dev", ifname])
            changed = True
    for cidr in sorted(wanted - addresses(info)):
        run(["ip", "addr", "replace", cidr, "dev", ifname])
        changed = True
    if up and "UP" not in info.get("flags", []):
        link_up(ifname)
        changed = True
    return changed


def link_up(ifname: str) -> None:
    """Bring the link up: one ``ioctl`` (``SIOCSIFFLAGS``), where ``ip link set dev IF up``
    would be a process on the path of a start; ``ip`` when it fails (it says why)."""
    name = struct.pack("16s", ifname.encode())
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            got = fcntl.ioctl(sock, _SIOCGIFFLAGS, name.ljust(_IFREQ_SIZE, b"\0"))
            flags = struct.pack("H", struct.unpack_from("H", got, 16)[0] | _IFF_UP)
            fcntl.ioctl(sock, _SIOCSIFFLAGS, (name + flags).ljust(_IFREQ_SIZE, b"\0"))
    except OSError:
        run(["ip", "link", "set", "dev", ifname, "up"])


def set_address(ifname: str, cidr: str, pool: str | None = None) -> bool:
    """One address (``10.88.0.5/16``); others in ``pool`` (default: ``cidr``'s network) go."""
    return set_addresses(ifname, [cidr], [pool or str(ipaddress.ip_interface(cidr).network)])


def interface_exists(ifname: str) -> bool:
    """Whether this network namespace has an interface ``ifname`` (one ``ioctl``, where
    ``ip link show`` would be a process: it is on the path of every start)."""
    try:
        socket.if_nametoindex(ifname)
    except (OSError, ValueError):
        return False
    return True


def ensure_interface(ifname: str) -> str:
    """Make sure ``ifname`` exists: kernel WireGuard first, else ``wireguard-go``.

    Returns how: "existing", "kernel" or "wireguard-go".
    """
    if interface_exists(ifname):
        return "existing"
    try:
        run(["ip", "link", "add", "dev", ifname, "type", "wireguard"])
    except WireGuardError:
        pass
    else:
        return "kernel"
    # wireguard-go without -f detaches itself once the interface is up.
    try:
        proc = subprocess.run(
            ["wireguard-go", ifname],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )
    except (FileNotFoundError, subprocess.TimeoutExpired) as exc:
        raise WireGuardError(f"cannot create {ifname}: no kernel WireGuard, {exc}") from None
    if proc.returncode != 0:
        stderr = proc.stderr.strip()[:MAX_STDERR]
        raise WireGuardError(f"wireguard-go {ifname} failed ({proc.returncode}): {stderr}")
    return "wireguard-go"


class WireGuard(Protocol):
    """The operations the agent needs from an interface."""

    def ensure(self, ifname: str) -> str: ...

    def show(self, ifname: str) -> InterfaceState: ...

    def set_private_key(self, ifname: str, path: str) -> None: ...

    def set_listen_port(self, ifname: str, port: int) -> None: ...

    def set_peer(self, ifname: str, peer: PeerSpec) -> None: ...

    def set_peers(self, ifname: str, peers: Sequence[PeerSpec]) -> None: ...

    def remove_peer(self, ifname: str, key: str) -> None: ...

    def remove_peers(self, ifname: str, keys: Sequence[str]) -> None: ...

    def apply(self, ifname: str, removals: Sequence[str], peers: Sequence[PeerSpec]) -> None:
        """Remove ``removals``, then set ``peers`` (IP endpoints or none), in that order."""
        ...

    def set_addresses(
        self, ifname: str, cidrs: Sequence[str], pools: Sequence[str], *, up: bool = True
    ) -> bool: ...


class Wg:
    """The real interface, through ``wg`` and ``ip``.

    Peers of a userspace interface (wireguard-go) are set through its control socket
    (:mod:`consumers.agent.uapi`) when ``uapi`` is true and the socket exists; kernel
    WireGuard through ``wg set``.
    """

    def __init__(self, uapi: bool = True, socket_dir: Path = uapi_socket.SOCKET_DIR) -> None:
        self.uapi = uapi
        self.socket_dir = socket_dir
        self._sockets: dict[str, bool] = {}  # interface -> whether it has a control socket

    def apply(self, ifname: str, removals: Sequence[str], peers: Sequence[PeerSpec]) -> None:
        if not removals and not peers:
            return
        direct = all(p.endpoint is None or is_ip_endpoint(p.endpoint) for p in peers)
        if self.uapi and direct and self._has_socket(ifname):
            try:
                uapi_socket.set_peers(ifname, removals, peers, self.socket_dir)
            except WireGuardError:
                self._sockets.pop(ifname, None)  # look again next time (wireguard-go restarted?)
                raise
        else:
            apply_peers(ifname, removals, peers)

    def start_apply(
        self, ifname: str, removals: Sequence[str], peers: Sequence[PeerSpec]
    ) -> uapi_socket.Pending | None:
        """Send :meth:`apply`'s request on wireguard-go's socket without waiting for the
        answer (``Pending.wait`` reads it); None when that is not possible (kernel
        WireGuard, a hostname endpoint): then nothing was done."""
        direct = all(p.endpoint is None or is_ip_endpoint(p.endpoint) for p in peers)
        if not (self.uapi and direct and self._has_socket(ifname)):
            return None
        try:
            return uapi_socket.start_set_peers(ifname, removals, peers, self.socket_dir)
        except WireGuardError:
            self._sockets.pop(ifname, None)
            raise

    def prepare_apply(
        self, ifname: str, removals: Sequence[str], peers: Sequence[uapi_socket.PeerFields]
    ) -> Callable[[], uapi_socket.Pending] | None:
        """:meth:`start_apply` in two steps: the request validated and encoded now, sent by
        the function returned (None: not possible, as for :meth:`start_apply`)."""
        direct = all(p.endpoint is None or is_ip_endpoint(p.endpoint) for p in peers)
        if not (self.uapi and direct and self._has_socket(ifname)):
            return None
        request = uapi_socket.encode_set_peers(removals, peers)

        def send() -> uapi_socket.Pending:
            try:
                return uapi_socket.send_set_peers(ifname, request, self.socket_dir)
            except WireGuardError:
                self._sockets.pop(ifname, None)
                raise

        return send

    def _has_socket(self, ifname: str) -> bool:
        known = self._sockets.get(ifname)
        if known is None:
            known = self._sockets[ifname] = uapi_socket.has_socket(ifname, self.socket_dir)
        return known

    def ensure(self, ifname: str) -> str:
        self._sockets.pop(ifname, None)
        return ensure_interface(ifname)

    def show(self, ifname: str) -> InterfaceState:
        self._sockets.pop(ifname, None)  # the timer's full read: look for the socket again
        return show_dump(ifname)

    def head(self, ifname: str) -> uapi_socket.DeviceHead | None:
        """The interface's public key, listen port and number of peers through its control
        socket (:func:`consumers.agent.uapi.read_head`: no process); None when it has none
        (kernel WireGuard: then :meth:`show`)."""
        if not (self.uapi and self._has_socket(ifname)):
            return None
        try:
            return uapi_socket.read_head(ifname, self.socket_dir)
        except WireGuardError:
            self._sockets.pop(ifname, None)  # look again next time (wireguard-go restarted?)
            raise

    def set_private_key(self, ifname: str, path: str) -> None:
        set_private_key(ifname, path)

    def set_listen_port(self, ifname: str, port: int) -> None:
        set_listen_port(ifname, port)

    def set_peer(self, ifname: str, peer: PeerSpec) -> None:
        set_peer(ifname, peer.public_key, peer.allowed_ips, peer.endpoint, peer.keepalive)

    def set_peers(self, ifname: str, peers: Sequence[PeerSpec]) -> None:
        self.apply(ifname, (), peers)

    def remove_peer(self, ifname: str, key: str) -> None:
        self.apply(ifname, (key,), ())

    def remove_peers(self, ifname: str, keys: Sequence[str]) -> None:
        self.apply(ifname, keys, ())

    def set_addresses(
        self, ifname: str, cidrs: Sequence[str], pools: Sequence[str], *, up: bool = True
    ) -> bool:
        return set_addresses(ifname, cidrs, pools, up=up)

    def link_up(self, ifname: str) -> None:
        """Bring the link up, its addresses as they are (:meth:`Interface.set_addresses`
        after a fill gave them)."""
        link_up(ifname)


__all__ = ["InterfaceState", "MemoryWireGuard", "Wg", "WireGuard", "parse_dump", "show_dump"]
