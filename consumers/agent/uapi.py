"""wireguard-go's control socket: setting peers without starting a ``wg`` process (I/O).

A userspace interface (wireguard-go) is configured through ``/var/run/wireguard/IF.sock``
with WireGuard's cross-platform text protocol (https://www.wireguard.com/xplatform/):
``set=1``, then ``key=value`` lines (keys in hex), a blank line, and the answer
``errno=N``. ``wg set`` speaks exactly that; speaking it directly saves a process per
change (about 0.6 ms down to 0.06 ms on the development VM). Kernel WireGuard has no
socket: there :class:`consumers.agent.wg.Wg` runs ``wg``.

Only peers go through here (added, updated, removed; IP endpoints only, as ``wg``
would resolve a hostname first). The private key never does (``wg set IF private-key
FILE``), and the interface is read whole with ``wg show IF dump``, which also derives
its public key. :func:`read_head` reads only what a start needs to know before it fills
a fresh interface (its public key, listen port, whether it has peers) with one
``get=1``, where ``wg show`` would be a process ahead of the fill's first request; the
private key wireguard-go prints there is turned into the public key and dropped, as
the parse of ``wg show IF dump`` drops it. A request is validated whole before its
first byte is sent, because wireguard-go applies lines as they arrive: a request cut
short is applied in part.
"""

from __future__ import annotations

import binascii
import socket
import stat
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

from consumers.agent.desired import is_key, parse_endpoint
from consumers.agent.keys import public_key_of
from consumers.agent.render import (
    IPV4_ENDPOINT_RE,
    V4_HOST_RE,
    PeerSpec,
    is_ip_endpoint,
    normalise_ips,
)
from shared.errors import KeyFileError, WireGuardError

#: Where wireguard-go creates its control sockets (``IF.sock``).
SOCKET_DIR: Final = Path("/var/run/wireguard")
#: Seconds one request may take (connect, send, answer), plus :data:`PEER_SECONDS` for
#: each peer it sets or removes (:func:`request_timeout`).
TIMEOUT: Final = 15.0
#: Seconds more a request may take per peer in it: the answer waits for wireguard-go's
#: work on every peer (about 0.2 ms each on the development VM, an X25519 and its queues
#: and timers), and a fill's 2,000-peer request on a machine loaded to 40 and more took
#: longer than a flat :data:`TIMEOUT`: the agent then rolled back a request that was only
#: slow (docs/design.md §11.2).
PEER_SECONDS: Final = 0.01
#: Peers encoded per ``sendall`` (wireguard-go applies them while we encode the next).
CHUNK_PEERS: Final = 256
#: Longest answer read (bytes); ``errno=N`` and a blank line.
MAX_ANSWER: Final = 256
#: Longest line of a ``get=1`` answer read (bytes; a key line is 76).
MAX_GET_LINE: Final = 4096
#: A request of more peers than this (a bootstrap's fill) asks for a send buffer of
#: :data:`FILL_BUFFER` bytes, so that sending never waits for wireguard-go to read: it
#: applies the lines already sent while the agent encodes the next chunk (and, with
#: :func:`start_set_peers`, folds the next batch of the stream).
FILL_PEERS: Final = 256
FILL_BUFFER: Final = 32 << 20
#: The same threshold for an encoded request (bytes; a peer is 130 to 200 of them).
FILL_BYTES: Final = FILL_PEERS * 128


def request_timeout(peers: int) -> float:
    """Seconds a request that sets or removes ``peers`` peers may take (:data:`TIMEOUT`)."""
    return TIMEOUT + peers * PEER_SECONDS


def socket_path(ifname: str, socket_dir: Path = SOCKET_DIR) -> Path:
    return socket_dir / f"{ifname}.sock"


def has_socket(ifname: str, socket_dir: Path = SOCKET_DIR) -> bool:
    """Whether ``ifname`` is a userspace interface with a control socket."""
    try:
        return stat.S_ISSOCK(socket_path(ifname, socket_dir).stat().st_mode)
    except OSError:
        return False


def _hex(key: str) -> str:
    """A key (validated first: canonical base64 of 32 bytes) in hex, as the protocol has it."""
    return binascii.a2b_base64(key).hex()


class PeerFields(Protocol):
    """What a request needs of a peer: a :class:`PeerSpec`, or the agent's desired peer
    itself (``consumers.agent.desired.DesiredPeer``: a fill encodes those directly)."""

    @property
    def public_key(self) -> str: ...
    @property
    def allowed_ips(self) -> tuple[str, ...]: ...
    @property
    def endpoint(self) -> str | None: ...
    @property
    def keepalive(self) -> int: ...


def _checked_ips(peer: PeerFields) -> tuple[str, ...]:
    """``peer``'s allowed IPs, canonical, or :class:`WireGuardError` if anything of the peer
    is off (the checks of every request: nothing else validates on the way to here)."""
    if not is_key(peer.public_key):
        raise WireGuardError("refusing an invalid peer key")
    try:
        ips = normalise_ips(peer.allowed_ips)
    except ValueError:
        raise WireGuardError("refusing an invalid allowed IP") from None
    endpoint = peer.endpoint
    if (
        endpoint is not None
        and not IPV4_ENDPOINT_RE.fullmatch(endpoint)
        and (parse_endpoint(endpoint) != endpoint or not is_ip_endpoint(endpoint))
    ):
        raise WireGuardError("refusing an endpoint that is not an IP address")
    if not 0 <= peer.keepalive <= 65535:
        raise WireGuardError("refusing a keepalive out of range")
    return ips


def _checked(peer: PeerFields) -> PeerSpec:
    """``peer`` with canonical allowed IPs, or :class:`WireGuardError` if anything is off."""
    ips = _checked_ips(peer)
    if ips == peer.allowed_ips and isinstance(peer, PeerSpec):
        return peer
    return PeerSpec(peer.public_key, ips, peer.endpoint, peer.keepalive)


def _peer_lines(peer: PeerFields, ips: tuple[str, ...]) -> str:
    """``peer``'s lines of a request, with ``ips`` (checked, :func:`_checked_ips`)."""
    if len(ips) == 1:  # the common case in one format (a fill encodes 10,000 of these)
        allowed = f"allowed_ip={ips[0]}\n"
    else:
        allowed = "".join(f"allowed_ip={ip}\n" for ip in ips)
    endpoint = "" if peer.endpoint is None else f"endpoint={peer.endpoint}\n"
    return (
        f"public_key={binascii.a2b_base64(peer.public_key).hex()}\nreplace_allowed_ips=true\n"
        f"{allowed}{endpoint}persistent_keepalive_interval={int(peer.keepalive)}\n"
    )


def _request(removals: Sequence[str], peers: Sequence[PeerSpec]) -> Iterator[bytes]:
    """The request's bytes in pieces; ``peers`` checked already (:func:`_checked`)."""
    yield b"set=1\n"
    yield from _removal_lines(removals)
    for start in range(0, len(peers), CHUNK_PEERS):
        chunk = peers[start : start + CHUNK_PEERS]
        yield "".join(_peer_lines(p, p.allowed_ips) for p in chunk).encode()
    yield b"\n"


def _removal_lines(removals: Sequence[str]) -> Iterator[bytes]:
    for start in range(0, len(removals), CHUNK_PEERS):
        chunk = removals[start : start + CHUNK_PEERS]
        yield "".join(f"public_key={_hex(key)}\nremove=true\n" for key in chunk).encode()


def set_peers(
    ifname: str,
    removals: Sequence[str],
    peers: Sequence[PeerSpec],
    socket_dir: Path = SOCKET_DIR,
) -> None:
    """Remove ``removals``, then add or update ``peers``, in one request.

    Raises :class:`WireGuardError` when the socket does not answer or wireguard-go
    refuses a line; the lines before the refused one are applied (the caller rolls back).
    """
    start_set_peers(ifname, removals, peers, socket_dir).wait()


class Pending:
    """A request sent to wireguard-go whose answer is not read yet."""

    def __init__(self, sock: socket.socket, path: Path, ifname: str) -> None:
        self.sock = sock
        self.path = path
        self.ifname = ifname

    def wait(self) -> None:
        """Read the answer; :class:`WireGuardError` when there is none or it is not 0."""
        try:
            answer = _answer(self.sock)
        except OSError as exc:
            raise WireGuardError(f"{self.path}: {exc.strerror or exc}") from None
        finally:
            self.sock.close()
        if answer != 0:
            raise WireGuardError(f"wireguard-go {self.ifname} refused the change (errno {answer})")


def start_set_peers(
    ifname: str,
    removals: Sequence[str],
    peers: Sequence[PeerSpec],
    socket_dir: Path = SOCKET_DIR,
) -> Pending:
    """Send the request of :func:`set_peers`, validated whole first; its answer is read
    by :meth:`Pending.wait` (wireguard-go applies it meanwhile)."""
    if not all(is_key(key) for key in removals):
        raise WireGuardError("refusing an invalid peer key")
    checked = [_checked(p) for p in peers]
    count = len(removals) + len(checked)
    return _send(ifname, _request(removals, checked), count > FILL_PEERS, socket_dir, count)


def encode_set_peers(removals: Sequence[str], peers: Sequence[PeerFields]) -> bytes:
    """The request of :func:`set_peers`, validated and encoded whole, for
    :func:`send_set_peers` (a bootstrap's fill encodes the next batch while wireguard-go
    still applies the one before). Each peer is checked and encoded in one step, from
    the fields it has (no copy of it is made: a fill encodes thousands)."""
    if not all(is_key(key) for key in removals):
        raise WireGuardError("refusing an invalid peer key")
    pieces = [b"set=1\n", *_removal_lines(removals)]
    for start in range(0, len(peers), CHUNK_PEERS):  # (a few pieces, not one per peer)
        chunk = peers[start : start + CHUNK_PEERS]
        pieces.append("".join([_checked_lines(p) for p in chunk]).encode())
    pieces.append(b"\n")
    return b"".join(pieces)


def _checked_lines(peer: PeerFields) -> str:
    """``peer``'s lines of a request, checked as :func:`_checked_ips` checks it; the common
    shape (one /32, an IPv4 endpoint or none: all of a mesh fill's peers) by the same
    checks inline (the first ones of each of :func:`_checked_ips`'s, which decide alone
    for that shape), any other through :func:`_checked_ips`."""
    ips, endpoint, keepalive = peer.allowed_ips, peer.endpoint, peer.keepalive
    if (
        len(ips) == 1
        and V4_HOST_RE.fullmatch(ips[0])  # (normalise_ips's own test: canonical as it is)
        and (endpoint is None or IPV4_ENDPOINT_RE.fullmatch(endpoint))
        and type(keepalive) is int
        and 0 <= keepalive <= 65535
        and is_key(peer.public_key)
    ):
        line = "" if endpoint is None else f"endpoint={endpoint}\n"
        return (
            f"public_key={binascii.a2b_base64(peer.public_key).hex()}\n"
            f"replace_allowed_ips=true\nallowed_ip={ips[0]}\n{line}"
            f"persistent_keepalive_interval={keepalive}\n"
        )
    return _peer_lines(peer, _checked_ips(peer))


def send_set_peers(ifname: str, request: bytes, socket_dir: Path = SOCKET_DIR) -> Pending:
    """Send a request of :func:`encode_set_peers`; as :func:`start_set_peers`."""
    peers = request.count(b"public_key=")
    return _send(ifname, (request,), len(request) > FILL_BYTES, socket_dir, peers)


def _send(
    ifname: str, pieces: Iterable[bytes], large: bool, socket_dir: Path, peers: int
) -> Pending:
    path = socket_path(ifname, socket_dir)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(request_timeout(peers))
    try:
        if large:
            _large_buffer(sock)
        sock.connect(str(path))
        try:
            for piece in pieces:
                sock.sendall(piece)
        except OSError:
            pass  # it stopped reading (it refused a line): its answer says why
    except OSError as exc:
        sock.close()
        raise WireGuardError(f"{path}: {exc.strerror or exc}") from None
    return Pending(sock, path, ifname)


def _large_buffer(sock: socket.socket) -> None:
    """Ask for a send buffer of :data:`FILL_BUFFER` bytes: beyond ``net.core.wmem_max`` when
    allowed (``CAP_NET_ADMIN``, which the agent has to configure an interface), else as
    much as the system gives."""
    force = getattr(socket, "SO_SNDBUFFORCE", 32)
    try:
        sock.setsockopt(socket.SOL_SOCKET, force, FILL_BUFFER)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, FILL_BUFFER)


def _answer(sock: socket.socket) -> int:
    """The ``errno=N`` of an answer (wireguard-go writes negative numbers)."""
    data = b""
    while b"\n\n" not in data and len(data) < MAX_ANSWER:
        chunk = sock.recv(MAX_ANSWER)
        if not chunk:
            break
        data += chunk
    first = data.split(b"\n", 1)[0].decode("ascii", "replace")
    name, _, value = first.partition("=")
    if name != "errno" or not value.lstrip("-").isdigit():
        raise OSError(f"unexpected answer {first[:40]!r}")
    return int(value)


@dataclass(frozen=True, slots=True)
class DeviceHead:
    """What :func:`read_head` found: the interface's public key (None: no private key
    set), its listen port (0: none) and how many peers it has."""

    public_key: str | None
    listen_port: int
    peers: int


def read_head(ifname: str, socket_dir: Path = SOCKET_DIR) -> DeviceHead:
    """The interface's public key, listen port and number of peers, from one ``get=1``
    (module docstring); :class:`WireGuardError` when the socket does not answer it."""
    path = socket_path(ifname, socket_dir)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(TIMEOUT)
            sock.connect(str(path))
            sock.sendall(b"get=1\n\n")
            with sock.makefile("rb") as answer:
                return _parse_head(answer)
    except OSError as exc:
        raise WireGuardError(f"{path}: {exc.strerror or exc}") from None


def _parse_head(answer: Iterable[bytes]) -> DeviceHead:
    """Parse a ``get=1`` answer down to a :class:`DeviceHead` (the private key is never
    kept nor put into an error message)."""
    public: str | None = None
    port = peers = 0
    errno: int | None = None
    for raw in answer:
        if len(raw) > MAX_GET_LINE:
            raise OSError("unexpected answer (a line too long)")
        line = raw.rstrip(b"\n")
        if not line:
            break
        name, _, value = line.partition(b"=")
        if name == b"public_key":
            peers += 1
        elif name == b"private_key":
            try:
                public = public_key_of(
                    binascii.b2a_base64(bytes.fromhex(value.decode()), newline=False).decode()
                )
            except (ValueError, UnicodeDecodeError, KeyFileError):
                raise OSError("unexpected answer (an unreadable private key)") from None
        elif name == b"listen_port" and not peers:
            port = int(value) if value.isdigit() else 0
        elif name == b"errno":
            errno = int(value) if value.lstrip(b"-").isdigit() else -1
    if errno is None:
        raise OSError("unexpected answer (no errno)")
    if errno != 0:
        raise OSError(f"get=1 refused (errno {errno})")
    return DeviceHead(public, port, peers)
