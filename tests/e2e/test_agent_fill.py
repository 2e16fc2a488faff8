"""A first start on a fresh wireguard-go interface (no peers, link down), the real agent
in the host's namespace: it fills the interface batch by batch while it reads the
stream, and brings the link up only once wireguard-go has answered the last batch.
wireguard-go starts every peer added while the link is up and sends it a handshake
(two key exchanges each): a link up during the fill would slow its end down. Each
request on the control socket is watched through a relay (:class:`LinkWatch`) that
looks at the link when wireguard-go answers."""

from __future__ import annotations

import json
import secrets
import socket
import struct
from pathlib import Path

import pytest
import redis
from factories import wg_key
from uapiproxy import UapiProxy, _read_answer, _read_request

from consumers.agent.keys import generate_private_key_file
from consumers.agent.wg import parse_dump
from shared.devnet.netns import Host, Lab
from shared.devnet.proc import wait_for
from shared.devnet.redis_server import RedisServer
from shared.events import PeerUpsert, to_fields
from shared.keys import Keys

pytestmark = pytest.mark.e2e

#: Members besides the host: batches of 200, 800, 2,000, then 1,001 (consumers/agent/
#: bootstrap.py); wireguard-go takes over 100 ms on that last one, far longer than the
#: ``ip`` commands that would bring the link up while it does.
MEMBERS = 4000


class LinkWatch(UapiProxy):
    """The interface's control socket, relayed; for each ``set=1`` request, how many peers
    it set and whether the link was up when wireguard-go answered it."""

    def __init__(self, host: Host) -> None:
        super().__init__(host.ifname)
        self.host = host
        self.sets: list[tuple[int, bool]] = []

    def link_up(self) -> bool:
        out = self.host.exec(["ip", "-j", "link", "show", "dev", self.host.ifname]).stdout
        return "UP" in json.loads(out)[0]["flags"]

    def _relay(self, conn: socket.socket) -> None:
        request = _read_request(conn)
        if not request:
            return
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as upstream:
            upstream.connect(str(self.real))
            upstream.sendall(request)
            answer = _read_answer(upstream)
            if request.startswith(b"set=1"):
                self.sets.append((request.count(b"\npublic_key="), self.link_up()))
            conn.sendall(answer)


def _fresh_host(
    lab: Lab, name: str, redis_server: RedisServer, tmp_path: Path, members: int
) -> tuple[Host, Path, str, Keys, dict[str, str]]:
    """A fresh wireguard-go host (no peers, link down), its private key file and public
    key, and a ``peers`` stream of its node (``own``) and ``members`` others (their IPv4
    by key)."""
    host = lab.add_host(name)
    host.start_wireguard()
    key_file = tmp_path / "own.key"
    own = generate_private_key_file(key_file)
    keys = Keys(31337, "0x" + secrets.token_hex(20))
    client = redis.Redis.from_url(redis_server.url)
    pipe = client.pipeline(transaction=False)
    pipe.xadd(keys.peers, to_fields(PeerUpsert("own", own, "10.88.0.1", "0-1", "0-1", 1)))  # type: ignore[arg-type]
    ips = {}
    for i in range(2, members + 2):
        key = wg_key(i)
        ips[key] = f"10.88.{i >> 8}.{i & 0xFF}"
        upsert = PeerUpsert(f"n{i:05d}", key, ips[key], "0-1", "0-1", 1)
        pipe.xadd(keys.peers, to_fields(upsert))  # type: ignore[arg-type]
    pipe.execute()
    client.close()
    return host, key_file, own, keys, ips


def _start_agent(
    host: Host, redis_server: RedisServer, keys: Keys, key_file: Path, tmp_path: Path
) -> int:
    """The agent of node ``own`` on ``host`` (the ``wgchain agent`` command); its pid."""
    return host.start_agent(
        node="own",
        redis_url=redis_server.unix_url,
        chain_id=keys.chain_id,
        contract=keys.contract,
        private_key_file=key_file,
        config_dir=tmp_path / "conf",
        env={"WGCHAIN_RECONCILE_INTERVAL": "60"},
    ).pid


def test_the_link_goes_up_after_the_fill(
    lab: Lab, redis_server: RedisServer, tmp_path: Path
) -> None:
    host, key_file, _, keys, members = _fresh_host(lab, "fill", redis_server, tmp_path, MEMBERS)
    watch = LinkWatch(host).start()
    try:
        _start_agent(host, redis_server, keys, key_file, tmp_path)

        def filled() -> bool:
            dump = parse_dump(host.exec(["wg", "show", host.ifname, "dump"]).stdout)
            return len(dump.peers) == MEMBERS and watch.link_up()

        wait_for(filled, timeout=60, interval=0.2, what="the interface filled, link up")
    finally:
        watch.stop()
    dump = parse_dump(host.exec(["wg", "show", host.ifname, "dump"]).stdout)
    assert {key: peer.allowed_ips for key, peer in dump.peers.items()} == {
        key: (f"{ip}/32",) for key, ip in members.items()
    }
    assert sum(peers for peers, _ in watch.sets) == MEMBERS
    assert len(watch.sets) >= 3  # batch by batch
    answered_up = [peers for peers, up in watch.sets if up]
    assert not answered_up, watch.sets  # every batch was answered with the link down
    conf = tmp_path / "conf" / f"{host.ifname}.conf"
    wait_for(
        lambda: conf.exists() and conf.read_text().count("[Peer]") == MEMBERS,
        timeout=30,
        what="the config file",
    )


class RequestLog(UapiProxy):
    """The interface's control socket, relayed; every request in order, as (who, what):
    who is ``agent`` (the agent process itself), ``agent's wg`` (a ``wg`` process it
    started) or ``other`` (the test's own ``wg show``), told apart by the process on the
    other end of the socket; what is ``get``, ``key`` (a ``set=1`` of the private key
    only) or the number of peers a ``set=1`` names."""

    def __init__(self, host: Host) -> None:
        super().__init__(host.ifname)
        self.agent_pid = 0
        self.requests: list[tuple[str, str | int]] = []

    def _who(self, conn: socket.socket) -> str:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid = struct.unpack("3i", creds)[0]
        if pid == self.agent_pid:
            return "agent"
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return "other"
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        return "agent's wg" if parent == self.agent_pid else "other"

    def _relay(self, conn: socket.socket) -> None:
        who = self._who(conn)
        request = _read_request(conn)
        if not request:
            return  # ``wg`` connects once only to see whether the interface is there
        if request.startswith(b"get=1"):
            what: str | int = "get"
        elif b"\nprivate_key=" in request and b"\npublic_key=" not in request:
            what = "key"
        else:
            what = request.count(b"\npublic_key=")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as upstream:
            upstream.connect(str(self.real))
            upstream.sendall(request)
            answer = _read_answer(upstream)
            if who != "other":
                self.requests.append((who, what))
            conn.sendall(answer)


def test_a_fill_starts_without_a_wg_process_reading_the_interface(
    lab: Lab, redis_server: RedisServer, tmp_path: Path
) -> None:
    """Before a fill's first request the agent needs to know that the interface is empty
    and to load its private key; on wireguard-go the look is one ``get=1`` of its own on
    the control socket, not a ``wg show`` process (docs/design.md §11.2). The key is
    loaded (by ``wg``, from its file) before the first peer goes in: wireguard-go derives
    a key per peer from it, and would do so again for every peer on a later key."""
    members = 300
    host, key_file, own, keys, _ = _fresh_host(lab, "first", redis_server, tmp_path, members)
    log = RequestLog(host).start()
    try:
        log.agent_pid = _start_agent(host, redis_server, keys, key_file, tmp_path)

        def filled() -> bool:
            dump = parse_dump(host.exec(["wg", "show", host.ifname, "dump"]).stdout)
            return len(dump.peers) == members

        wait_for(filled, timeout=60, interval=0.2, what="the interface filled")
    finally:
        log.stop()
    first = next(i for i, (_, what) in enumerate(log.requests) if isinstance(what, int) and what)
    assert log.requests[:first] == [("agent", "get"), ("agent's wg", "key")], log.requests
    assert log.requests[first][0] == "agent"
    dump = parse_dump(host.exec(["wg", "show", host.ifname, "dump"]).stdout)
    assert dump.public_key == own
