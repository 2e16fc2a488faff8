"""A fill's request on wireguard-go's control socket is encoded from the desired peers
themselves (no copy of each as a ``PeerSpec``): the bytes are those of the ``PeerSpec``
path, and every field is still checked before the first byte is sent (the check in
``uapi`` is the last gate before wireguard-go; docs/design.md §11.2). The control socket
is a stand-in that records what it is sent and answers ``errno=0``."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest
from uapiproxy import StandIn

from consumers.agent import uapi
from consumers.agent.desired import DesiredPeer
from consumers.agent.interface import Interface
from consumers.agent.render import PeerSpec
from consumers.agent.wg import Wg
from shared.errors import WireGuardError
from shared.logs import log


def key(i: int) -> str:
    return base64.b64encode(i.to_bytes(32, "big")).decode()


GOOD = [
    DesiredPeer("a", key(1), ("10.88.0.2/32",), None, 25),
    DesiredPeer("d", key(4), ("10.88.0.5/32",), "192.0.2.8:51820", 0),
    DesiredPeer("e", key(6), ("10.88.0.6/32",), "[2001:db8::6]:51820", 25),
    DesiredPeer("b", key(2), ("10.88.0.3/32", "fd00::3/128"), "192.0.2.7:51820", 0, 99),
    # a spoke's hub: the pools after its own addresses (not the canonical order)
    DesiredPeer(
        "c",
        key(3),
        ("10.88.0.4/32", "fd00::4/128", "10.88.0.0/16", "fd00::/64"),
        "[2001:db8::1]:51820",
        25,
    ),
]


def test_the_request_of_desired_peers_is_the_one_of_their_specs() -> None:
    removals = [key(9)]
    specs = [PeerSpec(p.public_key, p.allowed_ips, p.endpoint, p.keepalive) for p in GOOD]
    by_spec = b"".join(uapi._request(removals, [uapi._checked(s) for s in specs]))
    assert uapi.encode_set_peers(removals, GOOD) == by_spec
    assert uapi.encode_set_peers(removals, specs) == by_spec
    assert b"allowed_ip=10.88.0.0/16\nallowed_ip=10.88.0.4/32\nallowed_ip=fd00::/64\n" in by_spec


HOSTILE = [
    DesiredPeer("x", "not a key", ("10.88.0.9/32",), None, 25),
    DesiredPeer("x", "A" * 43 + "=", ("10.88.0.9/32",), None, 25),  # the all-zero key
    DesiredPeer("x", key(5), ("10.88.0.9/32\nendpoint=203.0.113.1:1",), None, 25),
    DesiredPeer("x", key(5), ("",), None, 25),
    DesiredPeer("x", key(5), ("10.88.0.9/32",), "evil.example:51820", 25),
    DesiredPeer("x", key(5), ("10.88.0.9/32",), "192.0.2.1:1\nremove=true", 25),
    DesiredPeer("x", key(5), ("10.88.0.9/32",), "192.0.2.1:70000", 25),
    DesiredPeer("x", key(5), ("10.88.0.9/32",), None, 70000),
    DesiredPeer("x", key(5), ("10.88.0.9/32",), None, -1),
]


@pytest.mark.parametrize("bad", HOSTILE)
def test_a_hostile_field_refuses_the_whole_request(bad: DesiredPeer) -> None:
    with pytest.raises(WireGuardError):
        uapi.encode_set_peers([], [GOOD[0], bad])


@pytest.fixture
def control_socket(tmp_path: Path) -> Iterator[list[bytes]]:
    """A control socket for ``wg0`` in ``tmp_path``: each request it is sent is appended
    to the list (read whole, answered ``errno=0``)."""
    stand_in = StandIn(uapi.socket_path("wg0", tmp_path), lambda _: b"errno=0\n\n")
    try:
        yield stand_in.requests
    finally:
        stand_in.close()


def interface(tmp_path: Path) -> Interface:
    wg = Wg(uapi=True, socket_dir=tmp_path)
    iface = Interface(
        wg, "wg0", key_file=tmp_path / "k", listen_port=None, pools=["10.88.0.0/16"], log=log
    )
    iface.synced = True
    return iface


def test_a_fill_sends_its_desired_peers_checked(
    tmp_path: Path, control_socket: list[bytes]
) -> None:
    iface = interface(tmp_path)
    iface.apply({p.node_id: p for p in GOOD}, wait=False)
    iface.settle()
    in_node_order = sorted(GOOD, key=lambda p: p.node_id)
    assert control_socket == [uapi.encode_set_peers([], in_node_order)]
    assert iface.applied == {p.node_id: p for p in GOOD}


#: (a hostname endpoint is not hostile to the interface: such a peer is set through ``wg``,
#: which resolves it, never on the control socket)
HOSTILE_DIRECT = [p for p in HOSTILE if p.endpoint != "evil.example:51820"]


@pytest.mark.parametrize("bad", HOSTILE_DIRECT)
def test_a_fill_with_a_hostile_peer_sends_nothing(
    tmp_path: Path, control_socket: list[bytes], bad: DesiredPeer
) -> None:
    """Refused as a WireGuardError (which the agent rolls back and reports), before a
    byte is sent; the model is untouched."""
    iface = interface(tmp_path)
    with pytest.raises(WireGuardError):
        iface.apply({"a": GOOD[0], "x": bad}, wait=False)
    iface.settle()
    assert control_socket == []
    assert iface.applied == {}
