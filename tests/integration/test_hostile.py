"""Hostile chain strings, minted on a real anvil, through the real pipeline into a real agent.

Node ids and keys crafted to break things (newlines and ``[Peer]`` blocks, ``AllowedIPs =
0.0.0.0/0`` smuggling, ``../`` and absolute paths, NUL bytes, 100 kB strings, non-UTF-8
bytes, look-alike Unicode, leading dashes) must be rejected and recorded as anomalies, and
never reach a config file, a file name, a ``wg``/``ip`` command line (the real ``Wg`` class on
a real wireguard-go interface, argv recorded by wrappers) or a log line unescaped.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from eth_abi import encode
from eth_utils.crypto import keccak
from factories import devnet_settings, running_pipeline
from web3 import Web3

from consumers.agent.keys import generate_private_key_file
from shared.contract.client import AccessNFT
from shared.devnet.anvil import ACCOUNTS, Anvil
from shared.devnet.netns import Host, Lab
from shared.devnet.proc import wait_for
from shared.devnet.redis_server import RedisServer
from shared.events import Anomaly, NodeJoined, PeerUpsert, from_fields, to_fields
from shared.logs import log
from shared.validate import is_valid_wg_key

pytestmark = pytest.mark.e2e

#: Seconds a convergence may take before the test fails.
DEADLINE = 60.0
#: Longest log message accepted (a 100 kB string must never be logged whole).
MAX_LOG_LINE = 4000
TOKEN = secrets.token_hex(4)
VALID = base64.b64encode(bytes([7]) * 32).decode()
LOOKALIKE_KEY = VALID[:10] + "\u0430" + VALID[11:]  # Cyrillic a
MINT = keccak(text="mintNodeAccess(address,string,string,string)")[:4]

#: (node id, public key) as raw bytes, each minted once.
HOSTILE: list[tuple[bytes, bytes]] = [
    (b"x\n[Peer]\nPublicKey = " + VALID.encode() + b"\nAllowedIPs = 0.0.0.0/0", b""),
    (b"AllowedIPs = 0.0.0.0/0", b""),
    (f"../../../tmp/wgchain-hostile-{TOKEN}".encode(), b""),
    (f"/tmp/wgchain-hostile-{TOKEN}-abs".encode(), b""),
    (b"node\x00a", b""),
    (b"N" * 100_000, b""),
    (b"node-\xff\xfe", b""),
    ("n\u043ede-b".encode(), b""),  # looks like node-b
    (b"-h", b""),
    (b"--private-key=/etc/shadow", b""),
    (b"hk-newline", VALID.encode() + b"\nAllowedIPs = 0.0.0.0/0"),
    (b"hk-peer", b"x\n[Peer]\nPublicKey = " + VALID.encode()),
    (b"hk-dash", b"--private-key=/etc/shadow"),
    (b"hk-dash2", b"-" + VALID[1:].encode()),
    (b"hk-big", b"K" * 100_000),
    (b"hk-nul", VALID[:20].encode() + b"\x00" + VALID[21:].encode()),
    (b"hk-utf8", VALID[:20].encode() + b"\xff" + VALID[21:].encode()),
    (b"hk-lookalike", LOOKALIKE_KEY.encode()),
    (b"hk-zero", base64.b64encode(bytes(32))),
    (b"hk-path", b"../../etc/passwd"),
]
#: Fragments none of which may appear in a config file or an argv (nor, raw, in a log line:
#: a log line shows hostile strings only escaped, one line of printable text).
FORBIDDEN = [
    "0.0.0.0/0",
    "\x00",
    "\ufffd",
    "\u043e",
    "\u0430",
    "/etc/shadow",
    "/etc/passwd",
    f"wgchain-hostile-{TOKEN}",
    "N" * 200,
    "K" * 200,
]
#: What a log line never holds: raw control or look-alike characters, long dumps.
LOG_FORBIDDEN = [f for f in FORBIDDEN if not f.isascii() or not f.isprintable() or len(f) > 100]
#: Entries a hostile writer appends to the events stream.
GARBAGE: list[dict[str, bytes | str]] = [
    {"v": "1", "type": b"X\n[Peer]\x00\xff", "data": "{}"},
    {"junk\n[Peer]": b"\x00" + b"N" * 100_000},
    {"v": "1", "type": "LogEntry", "data": b"\xff\xfe" + b"K" * 100_000},
]
CONFIG_LINE = re.compile(
    r"(#.*"
    r"|\[Interface\]|\[Peer\]"
    r"|Address = [0-9a-f.:/, ]+"
    r"|ListenPort = \d+"
    r"|PostUp = wg set %i private-key /[A-Za-z0-9_./-]+"
    r"|PublicKey = [A-Za-z0-9+/]{43}="
    r"|AllowedIPs = [0-9a-f.:/, ]+"
    r"|Endpoint = [A-Za-z0-9.:\[\]-]+"
    r"|PersistentKeepalive = \d+"
    r"|)"
)
WRAPPER = """#!/bin/sh
{{ printf '{tool}\\0'; for a in "$@"; do printf '%s\\0' "$a"; done; printf '\\036'; }} >> {log}
exec {real} "$@"
"""


def mint_raw(anvil: Anvil, nft: AccessNFT, node_id: bytes, key: bytes) -> str:
    """``mintNodeAccess`` with raw string bytes (web3 would refuse non-UTF-8): its tx hash."""
    owner = Web3.to_checksum_address("0x" + secrets.token_hex(20))
    data = MINT + encode(["address", "bytes", "bytes", "bytes"], [owner, node_id, key, b""])
    tx = {"from": ACCOUNTS[0][0], "to": nft.address, "data": "0x" + data.hex(), "gas": hex(200_000_000)}  # fmt: skip
    tx_hash: str = anvil.rpc("eth_sendTransaction", [tx])
    receipt = wait_for(
        lambda: anvil.rpc("eth_getTransactionReceipt", [tx_hash]), timeout=30, what="receipt"
    )
    assert receipt["status"] == "0x1", node_id[:40]
    return tx_hash


@dataclass
class Recorder:
    """``wg`` and ``ip`` wrappers that record every argv, then run the real tool."""

    folder: Path

    @property
    def log(self) -> Path:
        return self.folder / "argv.log"

    def install(self) -> str:
        """Writes the wrappers; returns the PATH that puts them first."""
        bin_dir = self.folder / "bin"
        bin_dir.mkdir(parents=True)
        for tool in ("wg", "ip"):
            real = shutil.which(tool)
            assert real is not None
            script = bin_dir / tool
            script.write_text(WRAPPER.format(tool=tool, log=self.log, real=real))
            script.chmod(0o755)
        return f"{bin_dir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

    def commands(self) -> list[list[bytes]]:
        raw = self.log.read_bytes() if self.log.exists() else b""
        return [record.split(b"\0")[:-1] for record in raw.split(b"\x1e") if record]


@pytest.fixture
def messages() -> Iterator[list[str]]:
    """Every log message of this process (the pipeline's threads) while the test runs."""
    captured: list[str] = []
    sink = log.add(
        lambda m: captured.append(m.record["message"]), level="DEBUG", format="{message}"
    )
    try:
        yield captured
    finally:
        log.remove(sink)


def _clean(text: str, where: str, forbidden: list[str] = FORBIDDEN) -> None:
    for bad in forbidden:
        assert bad not in text, f"{bad[:20]!r} in {where}"


def test_hostile_strings_are_rejected_recorded_and_never_reach_files_argv_or_logs(
    anvil: Anvil,
    nft: AccessNFT,
    redis_server: RedisServer,
    lab: Lab,
    tmp_path: Path,
    messages: list[str],
) -> None:
    anvil.rpc("evm_setBlockGasLimit", [hex(500_000_000)])
    cfg = devnet_settings(anvil, nft, redis_server, poll_interval=0.05)
    keys = cfg.keys()
    client = redis.Redis.from_url(redis_server.url)
    with running_pipeline(cfg):  # stopped, and checked stopped, at the end of the block
        host: Host = lab.add_host("hostile")
        host.start_wireguard()
        recorder = Recorder(tmp_path / "rec")
        path = recorder.install()
        key_file = tmp_path / "a.key"
        public_a = generate_private_key_file(key_file)
        public_b = generate_private_key_file(tmp_path / "b.key")
        conf_dir = tmp_path / "conf"
        agent = host.start_agent(
            node="node-a",
            redis_url=redis_server.unix_url,
            chain_id=keys.chain_id,
            contract=keys.contract,
            private_key_file=key_file,
            listen_port=51820,
            config_dir=conf_dir,
            env={"PATH": path, "WGCHAIN_RECONCILE_INTERVAL": "1", "WGCHAIN_LOG_LEVEL": "DEBUG"},
        )
        nft.mint(ACCOUNTS[1][0], "node-a", public_a)
        nft.mint(ACCOUNTS[2][0], "node-b", public_b)
        first_hostile = 3
        for node_id, key in HOSTILE:
            mint_raw(anvil, nft, node_id, key)
        # a valid member whose owner then sets a hostile key: it stops being a peer
        public_u = generate_private_key_file(tmp_path / "u.key")
        nft.mint(ACCOUNTS[5][0], "hk-update", public_u)
        nft.with_signer(ACCOUNTS[5][1]).set_key(VALID + "\n[Peer]")
        last_token = first_hostile + len(HOSTILE)
        # and a hostile writer with access to Redis: garbage in events, hostile peers entries
        # and a hostile announcement: dead-lettered or ignored, and logged escaped
        for fields in GARBAGE:
            client.xadd(keys.events, fields)  # type: ignore[arg-type]
        public_s = generate_private_key_file(tmp_path / "s.key")
        for node_id, key, ipv4 in (
            ("x\n[Peer]\nAllowedIPs = 0.0.0.0/0", VALID, "10.88.0.9"),
            ("smuggle", public_s, "0.0.0.0/0"),
            ("hk-evil", "-" + VALID[1:], "10.88.0.10"),
            ("n\u043ede-b", public_b, "10.88.0.11"),
        ):
            upsert = PeerUpsert(node_id, key, ipv4, "0-1", "0-1", 1)
            client.xadd(keys.peers, to_fields(upsert))  # type: ignore[arg-type]
        hostile_endpoint = "192.0.2.9:1\n[Peer]\nAllowedIPs = 0.0.0.0/0"
        client.set(keys.host_announce("node-b"), json.dumps({"endpoint": hostile_endpoint}))

        conf = conf_dir / f"{host.ifname}.conf"

        def settled() -> bool:
            peers: Any = client.xrevrange(keys.peers, count=1)
            events: Any = client.xlen(keys.events)
            status = client.hget(keys.host_status("node-a"), "applied_position")
            return (
                events == last_token + 1 + len(GARBAGE)  # every mint, the key update, garbage
                and client.get(keys.position("registry")) == _last(client, keys.events)
                and client.get(keys.position("ipam")) == _last(client, keys.registry)
                and bool(peers)
                and status == peers[0][0]
                and conf.exists()
                and public_b in conf.read_text()
            )

        wait_for(settled, timeout=DEADLINE, interval=0.2, what="the agent applied everything")
        # the file follows the applied state within a second (docs/design.md §11.4): a file
        # written between node-b's join and hk-update's removal may still hold both
        wait_for(
            lambda: re.findall(r"PublicKey = (\S+)", conf.read_text()) == [public_b],
            timeout=10,
            what="the config file to hold the applied peers",
        )
        wait_for(lambda: public_b in host.exec(["wg", "show", host.ifname]).stdout, timeout=10)

    # rejected and recorded: every hostile token is an anomaly, never a member
    registry = [from_fields(f) for _, f in client.xrange(keys.registry)]  # type: ignore[union-attr]
    anomalies = {e.token_id for e in registry if isinstance(e, Anomaly)}
    assert set(range(first_hostile, last_token)) <= anomalies
    assert any(isinstance(e, Anomaly) and e.kind == "invalid-key" and e.token_id is None
               for e in registry)  # fmt: skip  # the hostile key update
    joined = {e.node_id for e in registry if isinstance(e, NodeJoined)}
    assert joined == {"node-a", "node-b", "hk-update"}

    # the config file: only the legitimate peer, every line in the grammar
    text = conf.read_text()
    _clean(text, "the config file")
    for line in text.splitlines():
        assert CONFIG_LINE.fullmatch(line), f"unexpected config line {line!r}"
    assert re.findall(r"PublicKey = (\S+)", text) == [public_b]

    # file names: only the interface's config (and its backups) and the agent's state file
    # (README, Agent); nothing escaped the folder
    for name in (p.name for p in conf_dir.iterdir()):
        assert re.fullmatch(rf"{host.ifname}\.(conf(\.[1-5])?|state(\.journal)?)", name), name
    assert not list(Path("/tmp").glob(f"*{TOKEN}*"))
    for folder in (tmp_path, lab.workdir):
        assert not list(folder.rglob(f"*{TOKEN}*")), folder

    # argv of every wg / ip command the real Wg class ran
    commands = recorder.commands()
    assert any(c[:2] == [b"wg", b"set"] for c in commands), "no wg set recorded"
    for argv in commands:
        shown = b" ".join(argv).decode("latin-1")
        assert all(a.isascii() and a.decode().isprintable() for a in argv), shown
        _clean(shown, f"argv {shown[:80]}")
        if argv[0] == b"wg":
            assert not any(a.startswith(b"-") for a in argv[1:]), shown
        for i, arg in enumerate(argv[:-1]):
            if arg == b"peer":
                key = argv[i + 1].decode()
                assert is_valid_wg_key(key)
                assert key in {public_b, public_u}, shown  # hk-update was a peer for a while

    # log lines: the pipeline's (this process) and the agent's (its log file)
    assert messages
    agent_log = (lab.workdir / f"agent-{host.name}.log").read_text(errors="replace")
    assert agent.poll() is None, agent_log[-2000:]
    for where, lines in (("pipeline log", messages), ("agent log", agent_log.splitlines())):
        for line in lines:
            assert line.isprintable(), f"{where}: {line[:120]!r}"
            assert len(line) < MAX_LOG_LINE, f"{where}: {len(line)} characters"
            _clean(line, where, LOG_FORBIDDEN)
    assert sum("dead-lettering" in m for m in messages) == len(GARBAGE)
    assert agent_log.count("peers entry ignored") >= 3
    assert "n\\u043ede-b" in agent_log  # the look-alike, escaped


def _last(client: redis.Redis, stream: str) -> bytes | None:
    raw: Any = client.xrevrange(stream, count=1)
    return raw[0][0] if raw else None
