"""``wgchain audit``: replay, history, verify and export against a real pipeline.

A real anvil and a real redis-server; the real listener, registry and ipam stages
run in a thread (``run_stages``); the audit commands run as ``wgchain`` processes.
Tampering is done the way an intruder with Redis access would: HSET on a state
hash, a stream rewritten by a Lua script with the same ids, XDEL.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import pytest
import redis
from factories import (
    KEY_A,
    KEY_B,
    KEY_C,
    KEY_D,
    WGCHAIN,
    Pipeline,
    clean_env,
    devnet_env,
    devnet_settings,
    running_pipeline,
    wgchain,
)
from rq import Queue, Worker
from rq.registry import FinishedJobRegistry

from consumers.audit import compare, export
from consumers.audit.entries import decode
from consumers.audit.history import NodeSubject, timeline
from consumers.audit.inprocess import run_fold
from consumers.audit.live import LiveJob, live_side, payload_digest
from consumers.audit.live import Worker as LiveWorker
from consumers.audit.replay import snapshot
from consumers.audit.streams import read_stream
from consumers.ipam.allocate import IpamFold
from consumers.registry.fold import RegistryFold
from consumers.stage import Stage
from shared.contract.client import AccessNFT
from shared.devnet.anvil import ACCOUNTS, Anvil
from shared.devnet.proc import wait_for
from shared.devnet.redis_server import RedisServer
from shared.events import (
    LogEntry,
    NodeAccessGranted,
    NodeAccessRevoked,
    PublicKeyUpdated,
    Retracted,
    from_fields,
    to_fields,
)
from shared.keys import Keys

POOL = "10.77.0.0/24"
#: Entries of the scenario: key of C, grant a, grant b, re-key a's owner, transfer, revoke.
EVENTS = 6

_REWRITE = """
-- KEYS[1]: a stream; ARGV: id, v, type, data, ... : the stream replaced by these entries
redis.call('DEL', KEYS[1])
for i = 1, #ARGV, 4 do
  redis.call('XADD', KEYS[1], ARGV[i], 'v', ARGV[i + 1], 'type', ARGV[i + 2], 'data', ARGV[i + 3])
end
return #ARGV / 4
"""


@dataclass
class World(Pipeline):
    env: dict[str, str] = field(default_factory=dict)

    def audit(self, *args: str) -> subprocess.CompletedProcess[str]:
        return wgchain(self.env, "audit", *args, timeout=120)

    def events(self) -> list[tuple[str, dict[bytes, bytes]]]:
        return [(i.decode(), f) for i, f in self.client.xrange(self.keys.events)]


def _scenario(nft: AccessNFT) -> None:
    (a1, k1), (a2, _), (a3, k3) = ACCOUNTS[1], ACCOUNTS[2], ACCOUNTS[3]
    nft.with_signer(k3).set_key(KEY_C)
    token = nft.mint(a1, "node-a", KEY_A).token_id
    nft.mint(a2, "node-b", KEY_B)
    nft.with_signer(k1).set_key(KEY_D)
    nft.with_signer(k1).transfer(token or 0, a3)
    nft.revoke(token or 0)


def _settled(client: redis.Redis, keys: Keys) -> bool:
    if client.xlen(keys.events) < EVENTS:
        return False
    last = client.xrevrange(keys.events, count=1)[0][0]
    reg = client.xrevrange(keys.registry, count=1)
    return client.get(keys.position("registry")) == last and (
        client.get(keys.position("ipam")) == (reg[0][0] if reg else None)
    )


@pytest.fixture
def world(anvil: Anvil, nft: AccessNFT, redis_server: RedisServer) -> Iterator[World]:
    cfg = devnet_settings(anvil, nft, redis_server, poll_interval=0.05, pool=POOL)
    env = devnet_env(anvil, nft, redis_server, WGCHAIN_POOL=POOL)
    with running_pipeline(cfg) as p:
        w = World(p.cfg, p.keys, p.client, p.stop, p.thread, env)
        _scenario(nft)
        wait_for(lambda: _settled(w.client, w.keys), timeout=60, what="the pipeline to fold it all")
        yield w


def _rewrite(client: redis.Redis, stream: str, entries: list[tuple[str, object]]) -> None:
    args: list[object] = []
    for entry_id, entry in entries:
        f = to_fields(entry)  # type: ignore[arg-type]
        args += [entry_id, f["v"], f["type"], f["data"]]
    client.eval(_REWRITE, 1, stream, *args)


def _decoded(w: World) -> list[tuple[str, LogEntry]]:
    out = []
    for i, f in w.events():
        entry = from_fields(f)
        assert isinstance(entry, LogEntry)
        out.append((i, entry))
    return out


# --- replay ----------------------------------------------------------------------------


def test_replay_of_a_clean_pipeline_matches_and_leaves_no_scratch_keys(world: World):
    res = world.audit("replay")  # the stages are still running
    assert res.returncode == 0, res.stdout + res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].endswith(" in process"), lines[0]  # folded here, nothing written to Redis
    for name in ("registry state", "ipam state", "registry stream", "peers stream"):
        assert any(line.startswith("OK") and name in line for line in lines), res.stdout
    assert not world.client.keys("wgchain-audit-*")

    grant_b = _decoded(world)[2][0]
    res = world.audit("replay", "--until", grant_b)
    assert res.returncode == 0, res.stdout + res.stderr
    # the live states are past the bound: only the stream prefixes are comparable
    assert any(ln.startswith("SKIP") and "registry state" in ln for ln in res.stdout.splitlines())
    assert any(ln.startswith("OK") and "peers stream" in ln for ln in res.stdout.splitlines())


def test_replay_after_tampering_the_registry_state_names_the_field(world: World):
    world.halt()
    token2 = json.loads(world.client.hget(world.keys.state("registry"), "t:2"))
    assert token2["active"] is True
    token2["active"] = False
    world.client.hset(world.keys.state("registry"), "t:2", json.dumps(token2))

    res = world.audit("replay", "--wait", "0")
    assert res.returncode == 1
    assert "DIFF  registry state" in res.stdout
    assert "t:2.active: live false, replay true" in res.stdout
    assert any(ln.startswith("OK") and "peers stream" in ln for ln in res.stdout.splitlines())
    assert res.stderr.strip().splitlines()[-1].startswith("wgchain: the replay differs")
    assert not world.client.keys("wgchain-audit-*")

    # verify sees the same lie through the contract's views
    res = world.audit("verify", "--wait", "0")
    assert res.returncode == 1
    assert "registry token 2: active False, the contract says True" in res.stdout


def test_replay_after_tampering_the_peers_stream(world: World):
    world.halt()
    last = world.client.xrevrange(world.keys.peers, count=1)[0][0]
    world.client.xdel(world.keys.peers, last)
    res = world.audit("replay", "--wait", "0")
    assert res.returncode == 1
    assert "DIFF  peers stream" in res.stdout
    assert "only in the replay" in res.stdout


def test_replay_checks_the_live_side_in_a_second_process(world: World):
    world.halt()
    snap = snapshot(world.client, world.keys)
    job = LiveJob(world.client, world.keys, IpamFold(POOL), snap.registry_last, snap.peers_last)
    side = live_side(job)
    assert side.plain
    assert side.peers_equal
    assert side.ipam_state is not None
    assert side.registry_last == snap.registry_last
    assert compare.state_digest(side.ipam_state) == compare.state_digest(snap.states["ipam"])
    # the peers content digest, computed from the live payloads with causes numbered
    live_registry = decode(read_stream(world.client, world.keys.registry))
    live_peers = decode(read_stream(world.client, world.keys.peers))
    assert side.peers_digest == compare.content_digest(
        compare.content(live_peers, compare.ordinals(live_registry))
    )
    # the live ipam state handed in is the fold's: its digest is the fold's
    with_states = dataclasses.replace(job, ipam=IpamFold(POOL), states=snap.states)
    digests = live_side(with_states).live_states
    assert digests == {
        "ipam": side.ipam_digest,
        "registry": compare.state_digest(snap.states["registry"]),
    }
    # the replay's own registry outputs are the live ones, byte for byte
    folded = run_fold(RegistryFold(), decode(read_stream(world.client, world.keys.events)))
    assert folded is not None
    assert side.registry_digest == payload_digest(compare.content(folded[1]))

    # the same check in a forked worker
    worker = LiveWorker(job)
    assert worker.result() == side

    # a peers entry that is not what the ipam fold wrote: the replay compares the old way
    last_id, fields = world.client.xrevrange(world.keys.peers, count=1)[0]
    entry = from_fields(fields)
    peers = [(i.decode(), from_fields(f)) for i, f in world.client.xrange(world.keys.peers)]
    changed = msgspec.structs.replace(entry, block_number=entry.block_number + 1)
    _rewrite(world.client, world.keys.peers, [*peers[:-1], (last_id.decode(), changed)])
    tampered = live_side(dataclasses.replace(job, ipam=IpamFold(POOL)))
    assert tampered.plain
    assert not tampered.peers_equal
    res = world.audit("replay", "--wait", "0")
    assert res.returncode == 1
    assert "DIFF  peers stream" in res.stdout
    assert any(ln.startswith("OK") and "ipam state" in ln for ln in res.stdout.splitlines())


def _log(block: int, event: object, index: int = 0) -> LogEntry:
    return LogEntry(31337, CONTRACT, block, f"0x{block:064x}", f"0x{block + 1000:064x}", index,
                    1_700_000_000 + 2 * block, event)  # type: ignore[arg-type]  # fmt: skip


CONTRACT = "0x" + "11" * 20
OWNER_1, OWNER_2 = "0x" + "21" * 20, "0x" + "22" * 20


def test_replay_history_and_export_across_a_retraction(redis_server: RedisServer):
    """Live stages fold a retraction in a later batch than the entry it voids; the replay
    folds both in one batch (its outputs never published): the effective contents agree."""
    client = redis.Redis.from_url(redis_server.url)
    keys = Keys(31337, CONTRACT)

    def append(*entries: tuple[str, object]) -> None:
        for entry_id, entry in entries:
            client.xadd(keys.events, to_fields(entry), id=entry_id)  # type: ignore[arg-type]
        for stage in (Stage(client, keys, RegistryFold()), Stage(client, keys, IpamFold(POOL))):
            while stage.step(block_ms=None):
                pass

    append(
        ("1-0", _log(1, NodeAccessGranted(1, "node-a", OWNER_1, KEY_A))),
        ("2-0", _log(2, NodeAccessGranted(2, "node-b", OWNER_2, KEY_B))),
        ("3-0", _log(3, NodeAccessRevoked(1, "node-a"))),
    )
    append(
        ("4-0", Retracted("3-0", 3, f"0x{3:064x}")),
        ("5-0", _log(3, PublicKeyUpdated(OWNER_2, KEY_C), index=1)),
    )
    registry = [from_fields(f) for _, f in client.xrange(keys.registry)]
    assert any(isinstance(e, Retracted) for e in registry), "the live stage retracted outputs"
    env = clean_env(
        WGCHAIN_REDIS_URL=redis_server.url,
        WGCHAIN_CONTRACT=CONTRACT,
        WGCHAIN_CHAIN_ID="31337",
        WGCHAIN_POOL=POOL,
    )

    def audit(*args: str) -> subprocess.CompletedProcess[str]:
        return wgchain(env, "audit", *args, timeout=120)

    try:
        res = audit("replay", "--wait", "0")
        assert res.returncode == 0, res.stdout + res.stderr
        assert [ln.split()[0] for ln in res.stdout.splitlines()[1:]] == ["OK"] * 4

        res = audit("history", "--node", "node-a", "--json")
        rows = [json.loads(line) for line in res.stdout.splitlines()]
        assert [(r["event"], r["retracted"]) for r in rows] == [
            ("NodeAccessGranted", False),
            ("NodeAccessRevoked", True),
            ("Retracted", False),
        ]
        assert all(r["state"]["live"] for r in rows)  # the voided revoke never applied

        res = audit("export")
        exported = [json.loads(line) for line in res.stdout.splitlines()]
        assert [(r["id"], r["retracted"]) for r in exported] == [
            ("1-0", False), ("2-0", False), ("3-0", True), ("4-0", False), ("5-0", False),
        ]  # fmt: skip
        assert exported[3]["fields"] == {"entry_id": "3-0"}
    finally:
        client.close()


# --- history ---------------------------------------------------------------------------


def test_history_of_a_node_across_grant_rekey_transfer_revoke(world: World):
    res = world.audit("history", "--node", "node-a", "--json")
    assert res.returncode == 0, res.stderr
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r["event"] for r in rows] == [
        "NodeAccessGranted",
        "PublicKeyUpdated",
        "NodeAccessTransferred",
        "NodeAccessRevoked",
    ]
    a1, a3 = ACCOUNTS[1][0].lower(), ACCOUNTS[3][0].lower()
    states = [r["state"] for r in rows]
    assert states[0] | {"tokens": None} == {
        "live": True, "reason": "", "token": 1, "owner": a1, "key": KEY_A, "tokens": None,
    }  # fmt: skip
    assert (states[1]["key"], states[1]["owner"], states[1]["live"]) == (KEY_D, a1, True)
    assert (states[2]["key"], states[2]["owner"], states[2]["live"]) == (KEY_C, a3, True)
    assert states[3] == {"live": False, "reason": "no active token", "tokens": {"1": "revoked"}}
    for row in rows:
        assert row["time"].endswith("Z")
        assert row["tx"].startswith("0x")
        assert len(row["tx"]) == 66
        assert row["retracted"] is False
    assert [r["block"] for r in rows] == sorted(r["block"] for r in rows)

    text = world.audit("history", "--node", "node-a")
    assert text.returncode == 0
    assert text.stdout.count("\n    -> ") == 4

    owner = world.audit("history", "--owner", ACCOUNTS[1][0], "--json")
    events = [json.loads(line)["event"] for line in owner.stdout.splitlines()]
    assert events == ["NodeAccessGranted", "PublicKeyUpdated", "NodeAccessTransferred"]

    key = world.audit("history", "--key", KEY_C, "--json")
    key_rows = [json.loads(line) for line in key.stdout.splitlines()]
    assert [r["state"]["nodes"] for r in key_rows] == [{}, {"node-a": "live"}, {}]


def test_history_follows_the_effective_log_and_marks_retracted_entries():
    def log(n: int, event: object) -> LogEntry:
        return LogEntry(31337, "0x" + "11" * 20, n, "0x" + "aa" * 32, "0x" + "bb" * 32, 0,
                        1_700_000_000 + n, event)  # type: ignore[arg-type]  # fmt: skip

    events = [
        ("1-0", log(1, NodeAccessGranted(1, "node-a", "0x" + "22" * 20, KEY_A))),
        ("2-0", log(2, NodeAccessRevoked(1, "node-a"))),
        ("3-0", Retracted("2-0", 2, "0x" + "aa" * 32)),
    ]
    rows = timeline(events, NodeSubject("node-a"))
    assert [(r.event, r.retracted) for r in rows] == [
        ("NodeAccessGranted", False),
        ("NodeAccessRevoked", True),
        ("Retracted", False),
    ]
    assert rows[1].state["live"] is True  # the retracted revoke changed nothing
    assert rows[-1].state["live"] is True
    exported = list(export.rows(events))
    assert [r["retracted"] for r in exported] == [False, True, False]
    assert [r["event"] for r in exported] == ["NodeAccessGranted", "NodeAccessRevoked", "Retracted"]


# --- verify ----------------------------------------------------------------------------


def test_verify_clean_then_an_entry_edited_in_redis(world: World):
    world.halt()
    res = world.audit("verify", "--wait", "0")
    assert res.returncode == 0, res.stdout + res.stderr
    assert [ln.split()[0] for ln in res.stdout.splitlines()] == ["OK", "OK", "OK"]

    original = _decoded(world)
    target_id, target = original[3]  # PublicKeyUpdated of node-a's owner
    forged = msgspec.structs.replace(
        target, event=msgspec.structs.replace(target.event, public_key=KEY_B)
    )
    edited = [(i, forged if i == target_id else e) for i, e in original]
    _rewrite(world.client, world.keys.events, edited)  # same ids, digest left as it was
    res = world.audit("verify", "--wait", "0")
    assert res.returncode == 1
    assert f"entry {target_id}" in res.stdout
    assert "digest does not match" in res.stdout
    assert "differs from the chain's log: event.public_key" in res.stdout
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("wgchain: verify found")
    assert target_id in last

    # a careful forger re-chains every digest after it and the cursor: the chain still knows
    prev = original[2][1].digest
    rechained = []
    for i, e in edited[3:]:
        chained = e.with_digest(prev)
        prev = chained.digest
        rechained.append((i, chained))
    _rewrite(world.client, world.keys.events, original[:3] + rechained)
    world.client.hset(world.keys.cursor, "digest", prev)
    res = world.audit("verify", "--wait", "0")
    assert res.returncode == 1
    assert res.stdout.splitlines()[0].startswith("OK    digest chain")
    assert f"entry {target_id}" in res.stdout
    assert "differs from the chain's log: event.public_key" in res.stdout


def test_verify_hands_ranges_to_running_rq_workers(world: World):
    world.halt()
    queue = Queue(world.keys.backfill_queue, connection=world.client)
    worker = subprocess.Popen(
        [WGCHAIN, "worker"], env=world.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        wait_for(lambda: Worker.all(queue=queue), timeout=60, what="an rq worker")
        res = world.audit("verify", "--wait", "0", "--max-block-range", "2")
        assert res.returncode == 0, res.stdout + res.stderr
        assert "in 3 ranges" in res.stdout  # blocks 2-7
        done = FinishedJobRegistry(queue=queue).get_job_ids()
        assert len([j for j in done if j.startswith("audit-verify-")]) == 3
    finally:
        worker.terminate()
        worker.wait(timeout=30)


def test_verify_catches_a_deleted_entry(world: World):
    world.halt()
    victim = _decoded(world)[2]
    world.client.xdel(world.keys.events, victim[0])
    res = world.audit("verify", "--wait", "0")
    assert res.returncode == 1
    assert "prev is not the digest of the entry before it" in res.stdout
    assert f"block {victim[1].block_number}" in res.stdout
    assert "is on chain but not in the events stream" in res.stdout


def test_verify_catches_a_deleted_last_entry(world: World):
    world.halt()
    last = world.events()[-1][0]
    world.client.xdel(world.keys.events, last)
    res = world.audit("verify", "--wait", "0", "--to", "1000000")
    assert res.returncode == 1
    assert "the listener cursor's digest is not the last entry's" in res.stdout


# --- export ----------------------------------------------------------------------------


def test_export_jsonl_and_csv_parse_back(world: World, tmp_path: Path):
    world.halt()
    res = world.audit("export", "--format", "jsonl")
    assert res.returncode == 0, res.stderr
    lines = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(lines) == EVENTS
    assert [r["id"] for r in lines] == [i for i, _ in world.events()]
    assert lines[1]["event"] == "NodeAccessGranted"
    assert lines[1]["fields"]["node_id"] == "node-a"
    assert all(r["retracted"] is False for r in lines)

    out = tmp_path / "log.csv"
    res = world.audit("export", "--format", "csv", "--output", str(out))
    assert res.returncode == 0, res.stderr
    table = list(csv.DictReader(io.StringIO(out.read_text())))
    assert len(table) == EVENTS
    assert json.loads(table[5]["fields"]) == {"token_id": 1, "node_id": "node-a"}
    assert {r["retracted"] for r in table} == {"False"}

    grant_b = lines[2]
    res = world.audit("export", "--until-block", str(grant_b["block"]))
    assert [json.loads(line)["id"] for line in res.stdout.splitlines()] == [
        r["id"] for r in lines[:3]
    ]
    res = world.audit("export", "--until", grant_b["id"], "--format", "csv")
    assert len(list(csv.DictReader(io.StringIO(res.stdout)))) == 3


# --- bad arguments ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["replay", "--until-block", "x"],
        ["replay", "--until", "nonsense"],
        ["replay", "--until", "1-0", "--until-block", "3"],
        ["history"],
        ["history", "--owner", "0x12"],
        ["export", "--format", "xml"],
        ["verify", "--from", "5", "--to", "1"],
        ["bogus"],
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(args: list[str]):
    env = clean_env(
        WGCHAIN_REDIS_URL="redis://127.0.0.1:9/0",
        WGCHAIN_CONTRACT="0x" + "12" * 20,
        WGCHAIN_CHAIN_ID="31337",
    )
    res = wgchain(env, "audit", *args)
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert "Traceback" not in res.stderr
