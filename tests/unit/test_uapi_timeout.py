"""How long the agent waits for wireguard-go's answer to a request on its control socket: a
request of many peers may take longer than one of a few (``uapi.request_timeout``), so a slow
fill batch on a loaded machine is not rolled back as if it had failed. The control socket is a
stand-in that answers ``errno=0`` after a delay."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from uapiproxy import StandIn

from consumers.agent import uapi
from consumers.agent.render import PeerSpec
from shared.errors import WireGuardError

#: Seconds the stand-in waits before it answers a request.
DELAY = 0.8


@pytest.fixture
def slow_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A control socket for ``wg0`` in ``tmp_path`` that reads a whole request and answers
    ``errno=0`` :data:`DELAY` seconds later; the base timeout shortened to 0.3 s and the
    allowance per peer to 10 ms."""
    monkeypatch.setattr(uapi, "TIMEOUT", 0.3)
    monkeypatch.setattr(uapi, "PEER_SECONDS", 0.01, raising=False)

    def slowly(_: bytes) -> bytes:
        time.sleep(DELAY)
        return b"errno=0\n\n"

    stand_in = StandIn(uapi.socket_path("wg0", tmp_path), slowly)
    yield tmp_path
    stand_in.close()


def _peers(count: int) -> list[PeerSpec]:
    return [
        PeerSpec(
            base64.b64encode(n.to_bytes(32, "big")).decode(),
            (f"10.9.{n // 250}.{n % 250 + 1}/32",),
            None,
            25,
            f"node-{n}",
        )
        for n in range(1, count + 1)
    ]


def test_a_request_of_many_peers_may_take_longer_than_the_base_timeout(
    slow_socket: Path,
) -> None:
    # 100 peers: 0.3 s + 100 * 10 ms = 1.3 s allowed; the answer comes after 0.8 s
    uapi.set_peers("wg0", [], _peers(100), slow_socket)
    request = uapi.encode_set_peers([], _peers(100))
    uapi.send_set_peers("wg0", request, slow_socket).wait()


def test_a_request_of_few_peers_still_times_out(slow_socket: Path) -> None:
    # 1 peer: 0.31 s allowed, the answer comes after 0.8 s
    with pytest.raises(WireGuardError, match="timed out"):
        uapi.set_peers("wg0", [], _peers(1), slow_socket)


def test_the_allowance_grows_with_the_peers_set_or_removed() -> None:
    assert uapi.request_timeout(0) == uapi.TIMEOUT
    assert uapi.request_timeout(2000) == pytest.approx(uapi.TIMEOUT + 2000 * uapi.PEER_SECONDS)
