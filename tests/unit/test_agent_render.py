"""Rendering the wg-quick file and diffing interface peers against desired peers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from factories import wg_key as key

from consumers.agent.desired import Desired, DesiredPeer
from consumers.agent.keys import generate_private_key_file, read_private_key
from consumers.agent.render import (
    PeerSpec,
    RemovePeer,
    SetPeer,
    diff_peers,
    render_config,
    wanted_peers,
)
from consumers.agent.wg import parse_dump
from shared.errors import WireGuardError


def peer(node: str, n: int, ip: str, endpoint: str | None = None) -> DesiredPeer:
    return DesiredPeer(node, key(n), (f"{ip}/32",), endpoint, 25)


DESIRED = Desired(
    "a",
    ("10.88.0.1/16",),
    (peer("c", 3, "10.88.0.3"), peer("b", 2, "10.88.0.2", "192.168.77.2:51820")),
)


def test_render_sorts_peers_and_holds_every_field() -> None:
    text = render_config(DESIRED, listen_port=51820, private_key_file="/etc/wg/a.key")
    assert "Address = 10.88.0.1/16" in text
    assert "ListenPort = 51820" in text
    assert "PostUp = wg set %i private-key /etc/wg/a.key" in text
    assert text.index(f"PublicKey = {key(2)}") < text.index(f"PublicKey = {key(3)}")
    assert "Endpoint = 192.168.77.2:51820" in text
    assert text.count("PersistentKeepalive = 25") == 2
    assert "PrivateKey =" not in text


def test_render_never_contains_the_private_key(tmp_path: Path) -> None:
    key_file = tmp_path / "a.key"
    generate_private_key_file(key_file)
    private = read_private_key(key_file)
    text = render_config(DESIRED, private_key_file=str(key_file))
    assert private not in text
    assert str(key_file) in text


@pytest.mark.parametrize(
    "hostile",
    [
        "evil\n[Peer]",
        "PublicKey = x\nAllowedIPs = 0.0.0.0/0",
        "../../etc/passwd\r\nPostUp = rm -rf /",
    ],
)
def test_render_drops_hostile_strings(hostile: str) -> None:
    bad = Desired(
        "a",
        ("10.88.0.1/16", hostile),
        (
            DesiredPeer(hostile, key(4), ("10.88.0.4/32",), None, 0),
            DesiredPeer("d", hostile, ("10.88.0.5/32",), None, 0),
            DesiredPeer("e", key(6), ("10.88.0.6/32", hostile), hostile, 0),
        ),
    )
    text = render_config(bad, private_key_file=hostile)
    assert hostile not in text
    assert "0.0.0.0/0" not in text
    assert "PostUp" not in text
    assert "AllowedIPs = 10.88.0.6/32\n" in text
    assert text.count("[Peer]") == 1


def test_render_fail_closed_has_no_peers() -> None:
    text = render_config(Desired("a", fail_closed="key-mismatch"))
    assert "FAIL CLOSED (key-mismatch)" in text
    assert "[Peer]" not in text


def current_of(desired: Desired) -> dict[str, PeerSpec]:
    """The interface as ``wg show dump`` would report it once ``desired`` is applied."""
    return {
        k: PeerSpec(s.public_key, s.allowed_ips, s.endpoint, s.keepalive)
        for k, s in wanted_peers(desired).items()
    }


def test_diff_of_equal_sets_is_empty() -> None:
    assert diff_peers(current_of(DESIRED), wanted_peers(DESIRED)) == []


def test_diff_is_minimal() -> None:
    current = current_of(DESIRED)
    current.pop(key(3))  # c is missing
    stray = PeerSpec(key(9), ("10.88.0.9/32",), "1.2.3.4:5", 0)
    current[key(9)] = stray  # a peer nobody wants
    b = current[key(2)]
    current[key(2)] = PeerSpec(b.public_key, ("10.88.0.2/32", "10.0.0.0/8"), b.endpoint, 25)
    ops = diff_peers(current, wanted_peers(DESIRED))
    assert ops == [
        RemovePeer(key(9)),
        SetPeer(key(2), ("10.88.0.2/32",), "192.168.77.2:51820", 25, "b"),
        SetPeer(key(3), ("10.88.0.3/32",), None, 25, "c"),
    ]


def test_diff_endpoint_rules() -> None:
    target = wanted_peers(Desired("a", (), (peer("b", 2, "10.88.0.2", "host.example:1"),)))
    have = {key(2): PeerSpec(key(2), ("10.88.0.2/32",), "192.0.2.7:1", 25)}
    # a hostname cannot be compared with the resolved address: the agent's memory decides
    assert diff_peers(have, target, {key(2): "host.example:1"}) == []
    assert len(diff_peers(have, target, {})) == 1
    # an IP endpoint that differs (the peer roamed away from its announcement) is set again
    target_ip = wanted_peers(DESIRED)
    roamed = current_of(DESIRED)
    roamed[key(2)] = PeerSpec(key(2), ("10.88.0.2/32",), "10.1.1.1:9", 25)
    assert [op.public_key for op in diff_peers(roamed, target_ip)] == [key(2)]
    # no wanted endpoint: whatever the peer roamed in from is fine
    roamed[key(3)] = PeerSpec(key(3), ("10.88.0.3/32",), "10.1.1.1:9", 25)
    assert [op.public_key for op in diff_peers(roamed, target_ip)] == [key(2)]


def test_parse_dump_drops_the_private_key() -> None:
    private = key(42)
    text = (
        f"{private}\t{key(1)}\t51820\toff\n"
        f"{key(2)}\t(none)\t192.168.77.2:51820\t10.88.0.2/32\t1700000000\t10\t20\t25\n"
        f"{key(3)}\t(none)\t(none)\t(none)\t0\t0\t0\toff\n"
    )
    state = parse_dump(text)
    assert private not in repr(state)
    assert state.public_key == key(1)
    assert state.listen_port == 51820
    assert state.peers[key(2)] == PeerSpec(key(2), ("10.88.0.2/32",), "192.168.77.2:51820", 25)
    assert state.peers[key(3)].allowed_ips == ()
    with pytest.raises(WireGuardError) as err:
        parse_dump(f"{private}\t{key(1)}\t51820\n")
    assert private not in str(err.value)


def test_pure_modules_do_no_io() -> None:
    code = (
        "import sys, consumers.agent.desired, consumers.agent.render; "
        "print(sorted(m for m in ('redis', 'subprocess', 'web3') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
