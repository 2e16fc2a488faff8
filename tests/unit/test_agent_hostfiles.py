"""The config file as the agent writes it (consumers/agent/hostfiles.py): a rewrite renders
only the peers that changed since the file was last written, and the file is always
render_config of the applied state (docs/design.md §11.4)."""

from __future__ import annotations

import random
import stat
from dataclasses import replace
from pathlib import Path

import pytest
from factories import counting_renders
from factories import wg_key as key

from consumers.agent import render
from consumers.agent.desired import Desired, DesiredPeer
from consumers.agent.hostfiles import HostFiles
from consumers.agent.state import AppliedState, Ident

IDENT = Ident("{31337:0xabc}", "a", "wg0")


class Quiet:
    def info(self, *args: object) -> None: ...
    def warning(self, *args: object) -> None: ...
    def error(self, *args: object) -> None: ...


def member(node: str, seed: str, n: int) -> DesiredPeer:
    return DesiredPeer(node, key(seed), (f"10.88.{n // 250}.{n % 250 + 1}/32",), None, 25)


@pytest.mark.parametrize("several_agents", [True, False])
def test_a_rewrite_renders_only_the_changed_peers_and_equals_the_applied_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, several_agents: bool
) -> None:
    """In a process of several agents (the blocks are kept); a process of one agent renders
    its file whole at each write, to the same bytes."""
    monkeypatch.setattr(render, "_keep_blocks", several_agents)
    rendered = counting_renders(monkeypatch)
    key_file = tmp_path / "wg0.key"
    errors: list[str] = []
    files = HostFiles(tmp_path / "conf" / "wg0.conf", IDENT, listen_port=51820,
                      key_file=key_file, log=Quiet(), error=errors.append)  # fmt: skip
    rng = random.Random(3)
    peers = {f"m{i:04}": member(f"m{i:04}", f"hostfiles-{i}", i) for i in range(1, 301)}

    def write(fail_closed: str | None = None) -> list[str]:
        """Write the file of ``peers``; the nodes whose block that rendered."""
        state = AppliedState("1-0", 1, ("10.88.0.1/16",), fail_closed, dict(peers))
        files.config_due.mark()
        rendered.clear()
        files.write(lambda: state, force=True)
        nodes = sorted(rendered)
        want = render.render_config(
            Desired("a", state.addresses, tuple(peers.values()), fail_closed),
            listen_port=51820,
            private_key_file=str(key_file.absolute()),
        )
        assert files.config_path.read_text() == want
        assert stat.S_IMODE(files.config_path.stat().st_mode) == 0o600
        return nodes

    assert len(write()) == 300
    for step in range(40):
        rotated = rng.sample(sorted(peers), rng.randint(1, 3))
        for node in rotated:
            peers[node] = replace(peers[node], public_key=key(f"hostfiles-{step}-{node}"))
        done = write()
        assert done == (sorted(rotated) if several_agents else sorted(peers))  # not all 300
    del peers["m0007"]
    peers["m0500"] = member("m0500", "hostfiles-joined", 500)
    assert write() == (["m0500"] if several_agents else sorted(peers))
    saved = dict(peers)
    peers.clear()
    write("not-live")  # fail closed: no peer in the file
    assert "[Peer]" not in files.config_path.read_text()
    peers.update(saved)
    write()
    assert errors == []
