"""Both ways the agent sets peers, on a real wireguard-go interface: its control socket
(``Wg(uapi=True)``, wireguard-go) and ``wg set`` (``Wg(uapi=False)``, what kernel
WireGuard gets). The same story for each: changes applied against the model, a batch
that fails half way rolled back to what the model says, drift repaired by a full read.
The failure comes from :class:`uapiproxy.UapiProxy` in front of the real socket (``wg``
talks to a userspace interface through that socket too)."""

from __future__ import annotations

from pathlib import Path

import pytest
from factories import wg_key as key
from uapiproxy import UapiProxy

from consumers.agent.desired import DesiredPeer
from consumers.agent.interface import Interface
from consumers.agent.render import PeerSpec
from consumers.agent.wg import Wg, show_dump
from shared.devnet.netns import Host, Lab
from shared.errors import WireGuardError
from shared.logs import log

pytestmark = pytest.mark.e2e


def peer(n: int, ip: int | None = None, endpoint: bool = True) -> DesiredPeer:
    where = f"192.0.2.{n}:51820" if endpoint else None
    return DesiredPeer(f"n{n}", key(n), (f"10.70.0.{ip or n}/32",), where, 25)


def interface_of(host: Host) -> dict[str, PeerSpec]:
    return show_dump(host.ifname).peers


def expected(*peers: DesiredPeer) -> dict[str, PeerSpec]:
    return {
        p.public_key: PeerSpec(p.public_key, p.allowed_ips, p.endpoint, p.keepalive) for p in peers
    }


@pytest.fixture
def host(lab: Lab) -> Host:
    host = lab.add_host("paths")
    host.start_wireguard()
    return host


@pytest.mark.parametrize("uapi", [True, False], ids=["socket", "wg-set"])
def test_changes_rollback_and_drift_repair(host: Host, uapi: bool, tmp_path: Path) -> None:
    iface = Interface(
        Wg(uapi=uapi),
        host.ifname,
        key_file=tmp_path / "unused.key",
        listen_port=None,
        pools=["10.70.0.0/24"],
        log=log.bind(stage="test"),
    )
    iface.apply({"n1": peer(1), "n2": peer(2), "n3": peer(3, endpoint=False)})
    before = expected(peer(1), peer(2), peer(3, endpoint=False))
    assert interface_of(host) == before

    # one batch: a removal, an update, three additions; setting n5 fails half way
    proxy = UapiProxy(host.ifname).start()
    try:
        proxy.fail_key = key(5)
        batch = {"n1": None, "n2": peer(2, ip=22), "n4": peer(4), "n5": peer(5), "n6": peer(6)}
        with pytest.raises(WireGuardError):
            iface.apply(batch)
        assert proxy.failures >= 1
        assert key(4) in proxy.passed_before_failure  # part of the batch did reach the interface
        assert interface_of(host) == before  # ... and was rolled back
        assert set(iface.applied) == {"n1", "n2", "n3"}
        assert not iface.synced  # the next reconcile reads the interface whole

        proxy.fail_key = None
        iface.apply(batch)
        after = expected(peer(2, ip=22), peer(3, endpoint=False), peer(4), peer(5), peer(6))
        assert interface_of(host) == after
    finally:
        proxy.stop()

    # drift: a peer removed by hand, a stray added by hand, an allowed IP changed by hand
    host.exec(["wg", "set", host.ifname, "peer", key(4), "remove"])
    host.exec(["wg", "set", host.ifname, "peer", key(9), "allowed-ips", "10.70.0.9/32"])
    host.exec(["wg", "set", host.ifname, "peer", key(5), "allowed-ips", "10.70.0.99/32"])
    repaired = iface.sync(dict(iface.applied))
    assert repaired == 3
    assert interface_of(host) == after
    assert iface.synced
