"""Rendering the wg-quick file and diffing interface peers against desired peers."""

from __future__ import annotations

import random
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from factories import counting_renders
from factories import wg_key as key

from consumers.agent import render
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


def test_peer_blocks_render_only_what_changed_and_equal_render_config(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Random rotations, moves, joins, leaves, hostile peers and a fail closed: after each,
    the kept blocks give render_config's bytes, and only new or changed peers were rendered
    (every key here is new to the process, so none is found among the shared blocks)."""
    rendered = counting_renders(monkeypatch)
    rng = random.Random(10)
    fresh = iter(range(10**6))

    def member(node: str, n: int) -> DesiredPeer:
        endpoint = rng.choice([None, f"192.0.2.{n % 250 + 1}:51820", "vpn.example.org:1"])
        return DesiredPeer(node, key(f"blocks-{next(fresh)}"), (f"10.88.{n // 250}.{n % 250 + 1}/32",),
                           endpoint, rng.choice([0, 25]))  # fmt: skip

    peers = {f"n{i:03}": member(f"n{i:03}", i) for i in range(60)}
    blocks = render.PeerBlocks()
    assert blocks.update(peers) == len(rendered) == 60
    fail_closed: str | None = None
    for step in range(120):
        before = dict(peers)
        what = rng.choice(["rotate", "rotate", "move", "join", "leave", "hostile", "close", "open"])
        nodes = sorted(peers)
        if what == "rotate" and nodes:
            for node in rng.sample(nodes, min(len(nodes), rng.randint(1, 3))):
                peers[node] = replace(member(node, 1), allowed_ips=peers[node].allowed_ips)
        elif what == "move" and nodes:
            node = rng.choice(nodes)
            peers[node] = replace(peers[node], allowed_ips=(f"10.88.9.{step}/32",))
        elif what == "join":
            node = f"j{step:03}"
            peers[node] = member(node, 300 + step)
        elif what == "leave" and nodes:
            del peers[rng.choice(nodes)]
        elif what == "hostile":
            node = rng.choice(["evil\n[Peer]", "x", f"h{step}"])
            peers[node] = DesiredPeer(node, rng.choice(["not a key", key(f"blocks-{next(fresh)}")]),
                                      ("10.88.7.7/32", f"PublicKey = {step}"), "192.0.2.1:1", 0)  # fmt: skip
        elif what == "close":
            fail_closed, peers = "not-live", {}
        elif what == "open" and not peers:
            fail_closed = None
            peers = {f"o{step}-{i}": member(f"o{step}-{i}", i) for i in range(20)}
        changed = sorted(n for n, p in peers.items() if before.get(n) is not p)
        rendered.clear()
        assert blocks.update(peers) == len(changed)
        assert sorted(rendered) == changed
        head = render.render_head(("10.88.0.1/16",), fail_closed, listen_port=51820,
                                  private_key_file="/etc/wg/k")  # fmt: skip
        want = render_config(
            Desired("a", ("10.88.0.1/16",), tuple(peers.values()), fail_closed),
            listen_port=51820,
            private_key_file="/etc/wg/k",
        )
        assert b"".join(blocks.pieces(head)) == want.encode(), what


def test_the_agents_of_a_process_share_one_copy_of_each_block(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Equal peers of two agents get the very same bytes; a flood of blocks nobody holds any
    more (many rotations) does not pile up in the process."""
    monkeypatch.setattr(render, "_keep_blocks", True)  # (as once a second agent starts)
    mine = {f"s{i}": peer(f"s{i}", 1000 + i, f"10.88.3.{i + 1}") for i in range(50)}
    theirs = {n: replace(p) for n, p in mine.items()}  # equal, not the same objects
    a, b = render.PeerBlocks(), render.PeerBlocks()
    a.update(mine)
    b.update(theirs)
    assert all(render.peer_block(p) is render.peer_block(theirs[n]) for n, p in mine.items())
    held = [id(render.peer_block(p)) for p in mine.values()]  # (alive: a and b hold them)
    for n in range(3 * render.SHARED_BLOCKS_MIN):
        render.peer_block(peer(f"f{n}", 5000 + n, "10.88.4.4"))
    assert len(render._shared_blocks) < render.SHARED_BLOCKS_MIN + len(mine)
    assert [id(render.peer_block(replace(p))) for p in mine.values()] == held
    assert b"".join(a.pieces("")) == b"".join(b.pieces(""))
