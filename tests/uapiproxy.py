"""A fault-injecting stand-in for wireguard-go's control socket, for tests.

``wg`` and the agent talk to a userspace interface through ``/var/run/wireguard/IF.sock``
(WireGuard's cross-platform protocol: ``set=1`` or ``get=1``, ``key=value`` lines, a
blank line, then ``errno=N``). :class:`UapiProxy` moves the real socket aside (a
unix socket keeps working under another name) and listens at its path, passing
every request through to wireguard-go. While :attr:`UapiProxy.fail_key` is set (a
base64 public key), a ``set=1`` request that names that peer is cut there: the
lines before it reach wireguard-go (and are applied), the rest never does, and the
client is answered ``errno=-5``: a ``wg set`` that failed in the middle of a batch.

:class:`StandIn` is a control socket with no wireguard-go behind it, for unit tests: it
notes each request and answers it with canned text.
"""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Final

#: wireguard-go's socket directory.
SOCKET_DIR: Final = Path("/var/run/wireguard")
#: The answer of a refused request (EIO, as wireguard-go writes it).
REFUSED: Final = b"errno=-5\n\n"


def _read_request(conn: socket.socket) -> bytes:
    data = b""
    while not (data.endswith(b"\n\n") or data == b"\n"):
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def _read_answer(conn: socket.socket) -> bytes:
    data = b""
    while b"errno=" not in data or not data.endswith(b"\n\n"):
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


class StandIn:
    """A control socket at ``path`` with no wireguard-go behind it: each connection's
    request is read whole, appended to :attr:`requests` (``requests`` when given), then
    answered with ``answer(request)``; one connection at a time. A client that gave up
    before the answer is not an error. :meth:`close` stops it."""

    def __init__(
        self,
        path: Path,
        answer: Callable[[bytes], bytes],
        requests: list[bytes] | None = None,
    ) -> None:
        self.requests: list[bytes] = [] if requests is None else requests
        self._answer = answer
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(path))
        self._server.listen(4)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            with conn:
                request = _read_request(conn)
                self.requests.append(request)
                with contextlib.suppress(OSError):
                    conn.sendall(self._answer(request))

    def close(self) -> None:
        self._server.close()


class UapiProxy:
    """The control socket of ``ifname``, with a switch to make a batch fail half way."""

    def __init__(self, ifname: str, socket_dir: Path = SOCKET_DIR) -> None:
        self.path = socket_dir / f"{ifname}.sock"
        self.real = socket_dir / f"{ifname}.real.sock"
        self.fail_key: str | None = None
        #: Requests refused so far, and peers that reached wireguard-go in refused requests.
        self.failures = 0
        self.passed_before_failure: set[str] = set()
        self._server: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> UapiProxy:
        os.replace(self.path, self.real)
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(self.path))
        server.listen(16)
        self._server = server
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        with contextlib.suppress(FileNotFoundError):
            os.replace(self.real, self.path)

    def _serve(self) -> None:
        while self._server is not None:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            self._relay(conn)

    def _relay(self, conn: socket.socket) -> None:
        request = _read_request(conn)
        if not request:
            return  # ``wg`` connects once only to see whether the interface is there
        lines = request.split(b"\n")
        cut = self._cut_at(lines) if request.startswith(b"set=1") else None
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with upstream:
            upstream.connect(str(self.real))
            if cut is None:
                upstream.sendall(request)
                conn.sendall(_read_answer(upstream))
                return
            head = lines[:cut]
            self.passed_before_failure |= {
                base64.b64encode(bytes.fromhex(line.split(b"=", 1)[1].decode())).decode()
                for line in head
                if line.startswith(b"public_key=")
            }
            if len(head) > 1:  # the lines before the refused peer are applied
                upstream.sendall(b"\n".join(head) + b"\n\n")
                _read_answer(upstream)
            self.failures += 1
            conn.sendall(REFUSED)

    def _cut_at(self, lines: list[bytes]) -> int | None:
        if self.fail_key is None:
            return None
        marker = b"public_key=" + base64.b64decode(self.fail_key).hex().encode()
        for index, line in enumerate(lines):
            removal = index + 1 < len(lines) and lines[index + 1] == b"remove=true"
            if line == marker and not removal:  # setting that peer fails; removing it works
                return index
        return None
