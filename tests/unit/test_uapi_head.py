"""``uapi.read_head``: what a start needs to know of a wireguard-go interface before a fill
(its public key, listen port, how many peers), from one ``get=1`` on its control socket,
here a stand-in that answers with canned text."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest
from uapiproxy import StandIn

from consumers.agent import uapi
from consumers.agent.keys import public_key_of
from shared.errors import WireGuardError

PRIVATE = bytes(range(1, 33))
PEER = bytes(32 * [7])


@pytest.fixture
def socket_dir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def answering(socket_dir: Path) -> Iterator[list[bytes]]:
    """A control socket for ``wg0`` that answers each connection with the next text of the
    list (and notes each request in place of it)."""
    answers: list[bytes] = []
    stand_in = StandIn(
        uapi.socket_path("wg0", socket_dir), lambda _: answers.pop(0), requests=answers
    )
    yield answers
    stand_in.close()


def test_a_fresh_interface_has_no_key_port_or_peers(
    answering: list[bytes], socket_dir: Path
) -> None:
    answering.append(b"errno=0\n\n")
    head = uapi.read_head("wg0", socket_dir)
    assert head == uapi.DeviceHead(None, 0, 0)
    assert answering == [b"get=1\n\n"]  # one request, a get


def test_the_public_key_is_derived_and_the_peers_counted(
    answering: list[bytes], socket_dir: Path
) -> None:
    answering.append(
        b"private_key=" + PRIVATE.hex().encode() + b"\nlisten_port=51820\n"
        b"public_key=" + PEER.hex().encode() + b"\npreshared_key=" + bytes(32).hex().encode()
        + b"\nprotocol_version=1\nlisten_port=1\nallowed_ip=10.0.0.2/32\n"
        b"public_key=" + bytes(32 * [8]).hex().encode() + b"\nallowed_ip=10.0.0.3/32\n"
        b"errno=0\n\n"
    )  # fmt: skip
    head = uapi.read_head("wg0", socket_dir)
    assert head.public_key == public_key_of(base64.b64encode(PRIVATE).decode())
    assert head.listen_port == 51820
    assert head.peers == 2
    assert PRIVATE.hex() not in repr(head)  # the private key is not kept


def test_a_refused_or_broken_answer_is_an_error_without_the_key(
    answering: list[bytes], socket_dir: Path
) -> None:
    answering.append(b"errno=-22\n\n")
    with pytest.raises(WireGuardError, match="errno -22"):
        uapi.read_head("wg0", socket_dir)
    bad = b"private_key=" + PRIVATE.hex().encode()[:-2] + b"zz\nerrno=0\n\n"
    answering[:] = [bad]
    with pytest.raises(WireGuardError) as caught:
        uapi.read_head("wg0", socket_dir)
    assert PRIVATE.hex()[:16] not in str(caught.value)
    answering[:] = [b"listen_port=1\n\n"]  # no errno
    with pytest.raises(WireGuardError, match="no errno"):
        uapi.read_head("wg0", socket_dir)


def test_no_socket_is_an_error(socket_dir: Path) -> None:
    with pytest.raises(WireGuardError):
        uapi.read_head("wg9", socket_dir)
