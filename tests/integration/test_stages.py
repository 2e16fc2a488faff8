"""The registry and ipam stages on a real Redis: pipeline, exactly-once, restart, dead letters."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import redis
from factories import wg_key as key
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumers.ipam import commands as ipam_commands
from consumers.ipam.allocate import IpamFold
from consumers.registry import commands as registry_commands
from consumers.registry.fold import FOLD as REGISTRY
from consumers.registry.fold import dump, fold
from consumers.stage import Stage
from shared import redis_log
from shared.devnet.proc import wait_for
from shared.devnet.redis_server import RedisServer
from shared.errors import DecodeError, SettingsError
from shared.events import (
    GENESIS_DIGEST,
    ChainEvent,
    LogEntry,
    NodeAccessGranted,
    NodeAccessRevoked,
    NodeJoined,
    NodeLeft,
    PeerRemove,
    PeerUpsert,
    PublicKeyUpdated,
    from_fields,
    to_fields,
)
from shared.keys import Keys
from shared.redis_log import xadd_many
from shared.settings import Settings

pytestmark = pytest.mark.integration

KEYS = Keys(31337, "0x5fbdb2315678afecb367f032d93f642f64180aa3")
A = "0x70997970c51812dc3a010c7d01b50e0d17dc79c8"
B = "0x3c44cdddb6a900fa2b585dd299e03d12fa4293bc"


class Crash(Exception):
    """Stands for the process dying at that instant."""


def append_events(client: redis.Redis, *events: ChainEvent) -> list[str]:
    """Append ``events`` to the events stream, digest-chained, one block each; their ids."""
    existing = read(client, KEYS.events)
    prev = existing[-1][1].digest if existing else GENESIS_DIGEST
    first_block = len(existing) + 1
    entries = []
    for n, event in enumerate(events, start=first_block):
        entry = LogEntry(
            31337, KEYS.contract, n, f"0x{n:064x}", "0x01", 0, 1_700_000_000 + n, event
        )
        entry = entry.with_digest(prev)
        prev = entry.digest
        entries.append(to_fields(entry))
    return [i.decode() for i in xadd_many(client, KEYS.events, entries)]


def grant_nodes(client: redis.Redis, count: int) -> list[str]:
    """Grants of ``node-0`` .. ``node-{count-1}``, each its own owner and key; the node ids."""
    nodes = [f"node-{n}" for n in range(count)]
    append_events(
        client,
        *(
            NodeAccessGranted(n + 1, node, f"0x{n + 1:040x}", key(n + 1))
            for n, node in enumerate(nodes)
        ),
    )
    return nodes


def entries(client: redis.Redis, stream: str) -> list[tuple[str, dict[bytes, bytes]]]:
    raw: Any = client.xrange(stream)
    return [(i.decode(), f) for i, f in raw]


def read(client: redis.Redis, stream: str) -> list[tuple[str, Any]]:
    """The decoded entries of ``stream`` (typed loosely: tests look at fields)."""
    return [(i, from_fields(f)) for i, f in entries(client, stream)]


def drain(stage: Stage[Any]) -> None:
    while stage.step(block_ms=None):
        pass


def test_events_flow_through_registry_and_ipam(redis_client: redis.Redis) -> None:
    ids = append_events(
        redis_client,
        NodeAccessGranted(1, "node-a", A, key(1)),
        NodeAccessGranted(2, "node-b", B, key(2)),
        NodeAccessRevoked(1, "node-a"),
    )
    assert Stage(redis_client, KEYS, REGISTRY).step(block_ms=None) == 3
    changes = read(redis_client, KEYS.registry)
    assert [(type(c), c.node_id, c.cause) for _, c in changes] == [
        (NodeJoined, "node-a", ids[0]),
        (NodeJoined, "node-b", ids[1]),
        (NodeLeft, "node-a", ids[2]),
    ]
    assert Stage(redis_client, KEYS, IpamFold()).step(block_ms=None) == 3
    peers = read(redis_client, KEYS.peers)
    assert [type(p) for _, p in peers] == [PeerUpsert, PeerUpsert, PeerRemove]
    first = peers[0][1]
    assert isinstance(first, PeerUpsert)
    assert (first.node_id, first.public_key, first.cause, first.origin) == (
        "node-a",
        key(1),
        changes[0][0],
        ids[0],
    )
    assert first.ipv4.startswith("10.88.")
    assert redis_client.get(KEYS.position("ipam")) == changes[-1][0].encode()


@pytest.mark.parametrize("after_commit", [False, True], ids=["before-commit", "after-commit"])
def test_a_crash_around_the_commit_never_duplicates_outputs(
    redis_client: redis.Redis, after_commit: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    append_events(redis_client, NodeAccessGranted(1, "node-a", A, key(1)))
    stage = Stage(redis_client, KEYS, REGISTRY)
    real_commit = stage.store.commit

    def crashing_commit(expected: str, batch: Any) -> int:
        if after_commit:
            real_commit(expected, batch)
        raise Crash

    monkeypatch.setattr(stage.store, "commit", crashing_commit)
    with pytest.raises(Crash):
        stage.step(block_ms=None)
    assert redis_client.xlen(KEYS.registry) == (1 if after_commit else 0)
    restarted = Stage(redis_client, KEYS, REGISTRY)
    drain(restarted)
    append_events(redis_client, NodeAccessGranted(2, "node-b", B, key(2)))
    drain(restarted)
    assert [c.node_id for _, c in read(redis_client, KEYS.registry)] == ["node-a", "node-b"]


def test_a_batch_commits_in_chunks_each_exactly_once(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch is committed in chunks, one commit running while the next chunk folds: a
    crash at the second commit keeps the first chunk's outputs and position, and a
    restarted stage publishes the rest once."""
    from consumers import stage as stage_module

    monkeypatch.setattr(stage_module, "COMMIT_EVERY", 2)
    nodes = [f"node-{n}" for n in range(5)]
    owners = [f"0x{n + 1:040x}" for n in range(5)]
    append_events(
        redis_client,
        *(NodeAccessGranted(n + 1, node, owners[n], key(n + 1)) for n, node in enumerate(nodes)),
    )
    stage = Stage(redis_client, KEYS, REGISTRY)
    real_commit = stage.store.commit
    commits: list[str] = []

    def second_crashes(expected: str, batch: Any) -> int:
        if len(commits) == 1:
            raise Crash
        commits.append(batch.position)
        return real_commit(expected, batch)

    monkeypatch.setattr(stage.store, "commit", second_crashes)
    with pytest.raises(Crash):
        stage.step(block_ms=None)
    published = [c.node_id for _, c in read(redis_client, KEYS.registry)]
    assert published == nodes[:2]
    assert redis_client.get(KEYS.position("registry")) == commits[0].encode()
    drain(Stage(redis_client, KEYS, REGISTRY))
    assert [c.node_id for _, c in read(redis_client, KEYS.registry)] == nodes


def test_two_instances_on_the_same_keys_commit_once(redis_client: redis.Redis) -> None:
    append_events(redis_client, NodeAccessGranted(1, "node-a", A, key(1)))
    first = Stage(redis_client, KEYS, REGISTRY)
    second = Stage(redis_client, KEYS, REGISTRY)
    assert first.step(block_ms=None) == 1
    assert second.step(block_ms=None) == 0  # its commit conflicts; it reloads instead
    append_events(redis_client, NodeAccessRevoked(1, "node-a"))
    drain(second)
    drain(first)
    changes = [type(c) for _, c in read(redis_client, KEYS.registry)]
    assert changes == [NodeJoined, NodeLeft]


def test_restart_resumes_from_the_committed_position_with_the_same_state(
    redis_client: redis.Redis,
) -> None:
    events: list[ChainEvent] = [
        NodeAccessGranted(1, "node-a", A, key(1)),
        NodeAccessGranted(2, "node-b", B, key(1)),  # same key: node-b waits behind token 1
        PublicKeyUpdated(A, key(3)),
    ]
    append_events(redis_client, *events[:2])
    stage = Stage(redis_client, KEYS, REGISTRY)
    drain(stage)
    restarted = Stage(redis_client, KEYS, REGISTRY)
    assert restarted.position == stage.position
    assert restarted.state.status == stage.state.status
    assert dump(restarted.state) == dump(stage.state)
    append_events(redis_client, events[2])
    drain(restarted)
    straight, expected = fold(read(redis_client, KEYS.events))
    assert [c for _, c in read(redis_client, KEYS.registry)] == expected
    raw: Any = redis_client.hgetall(KEYS.state("registry"))
    stored = {k.decode(): v for k, v in raw.items()}
    assert stored == dump(straight)


def test_garbage_goes_to_the_dead_letter_stream_and_the_stage_moves_on(
    redis_client: redis.Redis,
) -> None:
    good = to_fields(
        LogEntry(
            31337, KEYS.contract, 1, "0x1", "0x2", 0, 0, NodeAccessGranted(1, "node-a", A, key(1))
        )
    )
    garbage: list[dict[str, Any]] = [
        {"v": 1, "type": "LogEntry", "data": b"{not json"},
        {"v": 1, "type": "Bogus", "data": b"{}"},
        {"v": 99, "type": "LogEntry", "data": good["data"]},
        {"hello": "world"},
        to_fields(NodeLeft("node-a", "revoked", "1-0", 1)),  # a registry change in events
    ]
    ids = [i.decode() for i in xadd_many(redis_client, KEYS.events, [*garbage, good])]
    stage = Stage(redis_client, KEYS, REGISTRY)
    assert stage.step(block_ms=None) == 6
    dead = entries(redis_client, KEYS.dead("registry"))
    assert [f[b"id"].decode() for _, f in dead] == ids[:5]
    assert all(f[b"reason"] for _, f in dead)
    assert [type(c) for _, c in read(redis_client, KEYS.registry)] == [NodeJoined]
    assert stage.position == ids[-1]


def test_an_entry_the_fold_refuses_is_dead_lettered_without_blocking(
    redis_client: redis.Redis,
) -> None:
    hostile = NodeJoined("node\n[Peer]", 1, A, key(1), "1-0", 1)
    fine = NodeJoined("node-b", 2, B, key(2), "2-0", 2)
    ids = [
        i.decode()
        for i in xadd_many(redis_client, KEYS.registry, [to_fields(hostile), to_fields(fine)])
    ]
    stage = Stage(redis_client, KEYS, IpamFold())
    drain(stage)
    dead = entries(redis_client, KEYS.dead("ipam"))
    assert [f[b"id"].decode() for _, f in dead] == [ids[0]]
    assert [p.node_id for _, p in read(redis_client, KEYS.peers)] == ["node-b"]
    assert stage.position == ids[1]


def test_stage_callables_run_in_threads_until_stopped(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    cfg = Settings(
        redis_url=redis_server.url,
        chain_id=KEYS.chain_id,
        contract=KEYS.contract,
        pool="10.99.0.0/24",
    )
    stop = threading.Event()
    threads = [
        threading.Thread(target=fn, args=(cfg, stop), daemon=True)
        for fn in (registry_commands.stage, ipam_commands.stage)
    ]
    for thread in threads:
        thread.start()
    try:
        append_events(redis_client, NodeAccessGranted(1, "node-a", A, key(1)))
        wait_for(lambda: redis_client.xlen(KEYS.peers) == 1, timeout=20, what="a peer upsert")
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=20)
    assert not any(thread.is_alive() for thread in threads)
    [(_, peer)] = read(redis_client, KEYS.peers)
    assert peer.ipv4.startswith("10.99.0.")


@pytest.mark.parametrize("stage", [registry_commands.stage, ipam_commands.stage])
def test_stage_without_a_redis_url_is_a_settings_error(stage: Any) -> None:
    cfg = Settings(chain_id=KEYS.chain_id, contract=KEYS.contract)
    with pytest.raises(SettingsError, match="WGCHAIN_REDIS_URL"):
        stage(cfg, threading.Event())


def test_a_large_state_loads_in_chunks_and_again_when_a_commit_lands_meanwhile(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restart reads the state hash with HSCAN (never one HGETALL), several chunks, and
    a commit by another instance during the read makes it read again: the state it holds
    is the one of the position it holds."""
    count = 3 * redis_log.SCAN_CHUNK
    append_events(
        redis_client,
        *(
            NodeAccessGranted(t, f"node-{t}", f"0x{t:040x}", key(t % 250 + 1))
            for t in range(1, count)
        ),
    )
    drain(Stage(redis_client, KEYS, REGISTRY))
    calls: list[str] = []
    real_hscan = redis.client.Pipeline.hscan

    def hscan(pipe: Any, name: str, cursor: int = 0, **kwargs: Any) -> Any:
        calls.append("hscan")
        if len(calls) == 2:  # another instance commits while this one reads
            other = Stage(redis.Redis(connection_pool=redis_client.connection_pool), KEYS, REGISTRY)
            append_events(redis_client, PublicKeyUpdated("0x" + "0" * 39 + "1", key(251)))
            drain(other)
        return real_hscan(pipe, name, cursor, **kwargs)

    monkeypatch.setattr(redis.client.Pipeline, "hscan", hscan)
    monkeypatch.setattr(
        redis.client.Pipeline, "hgetall", lambda *a, **k: pytest.fail("HGETALL of the state")
    )
    restarted = Stage(redis_client, KEYS, REGISTRY)
    assert len(calls) > 3  # chunks, and a second pass after the commit
    straight, _ = fold(read(redis_client, KEYS.events))
    assert restarted.position == read(redis_client, KEYS.events)[-1][0]
    assert dump(restarted.state) == dump(straight)
    assert restarted.state.status == straight.status


def test_the_batch_after_a_full_one_is_read_ahead_while_it_folds(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a full batch the next read runs on the reader thread (the fold never waits for
    it); a batch that is not full reads nothing ahead; the outputs are the same."""
    from consumers import stage as stage_module

    readers: list[tuple[str, int]] = []
    real_read = stage_module.read_entries

    def counted(*args: Any, **kwargs: Any) -> Any:
        got = real_read(*args, **kwargs)
        readers.append((threading.current_thread().name.split("_")[0], len(got)))
        return got

    monkeypatch.setattr(stage_module, "read_entries", counted)
    nodes = grant_nodes(redis_client, 5)
    stage = Stage(redis_client, KEYS, REGISTRY)
    assert [stage.step(block_ms=None, count=2) for _ in range(4)] == [2, 2, 1, 0]
    stage.close()
    main = threading.current_thread().name.split("_")[0]
    assert readers == [(main, 2), ("registry-read", 2), ("registry-read", 1), (main, 0)]
    assert [c.node_id for _, c in read(redis_client, KEYS.registry)] == nodes


def test_a_read_ahead_from_a_position_another_instance_moved_commits_nothing_twice(
    redis_client: redis.Redis,
) -> None:
    """The read ahead of a stage that another instance overtook folds, conflicts and is
    dropped with the state: every output is published once."""
    nodes = grant_nodes(redis_client, 6)
    first = Stage(redis_client, KEYS, REGISTRY)
    assert first.step(block_ms=None, count=2) == 2  # reads entries 3-4 ahead
    other = Stage(redis_client, KEYS, REGISTRY)
    drain(other)
    assert first.step(block_ms=None, count=2) == 0  # its commit conflicts: state reloaded
    assert first.position == other.position
    append_events(redis_client, NodeAccessGranted(7, "node-6", f"0x{7:040x}", key(7)))
    drain(first)
    first.close()
    other.close()
    assert [c.node_id for _, c in read(redis_client, KEYS.registry)] == [*nodes, "node-6"]


#: Envelopes a stage may read: real ones, with a field changed or dropped, type or version swapped.
ENVELOPE_ITEMS = [
    LogEntry(1, "0xc0", 7, "0x07", "0x01", 0, 14, NodeAccessGranted(1, "node-a", "0xab", key(1))),
    LogEntry(1, "0xc0", 8, "0x08", "0x02", 0, 16, NodeAccessGranted(2, "node-b", "0xcd", key(2))),
    NodeJoined("node-a", 1, "0xab", key(1), "1-0", 7),
]
ENVELOPES = st.lists(
    st.builds(
        lambda item, v, kind, data, drop: {
            **{k: val for k, val in _envelope(item).items() if k != drop},
            **({b"v": v} if v is not None else {}),
            **({b"type": kind} if kind is not None else {}),
            **({b"data": data} if data is not None else {}),
        },
        st.sampled_from(ENVELOPE_ITEMS),
        st.none() | st.none() | st.sampled_from([b"1", b"0", b"2", b"x", b""]),
        st.none() | st.none() | st.sampled_from([b"LogEntry", b"NodeJoined", b"Nope", b"\xff"]),
        st.none() | st.none() | st.binary(max_size=30),
        st.none() | st.none() | st.sampled_from([b"v", b"type", b"data"]),
    ),
    min_size=1,
    max_size=12,
)


def _envelope(item: Any) -> dict[bytes, bytes]:
    """The fields of ``item`` as a Redis client reads them back (bytes)."""
    return {k.encode(): v if isinstance(v, bytes) else str(v).encode() for k, v in to_fields(item).items()}  # fmt: skip


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(envelopes=ENVELOPES)
def test_the_stage_loop_decodes_as_from_fields_does(
    redis_client: redis.Redis, envelopes: list[dict[bytes, bytes]]
) -> None:
    """The loop's envelope table (docs/design.md §7.2) folds what ``from_fields`` decodes to an
    input and dead-letters everything else with ``from_fields``' reason."""
    stage = Stage(redis_client, Keys(31337, "0x" + "e" * 40), REGISTRY)
    entries = [(f"{n}-0", fields) for n, fields in enumerate(envelopes, 1)]
    inputs: list[tuple[str, Any]] = []
    reasons: list[tuple[str, str]] = []
    for entry_id, fields in entries:
        try:
            entry = from_fields(fields)
        except DecodeError as exc:
            reasons.append((entry_id, str(exc)))
            continue
        if isinstance(entry, LogEntry):
            inputs.append((entry_id, entry))
        else:
            reasons.append((entry_id, f"{type(entry).__name__} is not an input of registry"))
    batch = stage._apply(entries, {})
    assert [(entry_id, reason) for entry_id, reason, _ in batch.dead] == reasons
    assert batch.outputs == fold(inputs)[1]
    # the same fields as an XRANGE reply holds them (names and values in turn), as read_entries
    # gives them: the same folds, the same dead letters (raw fields included)
    flat = [
        (entry_id, [x for pair in fields.items() for x in pair]) for entry_id, fields in entries
    ]
    again = Stage(redis_client, Keys(31337, "0x" + "e" * 40), REGISTRY)._apply(flat, {})
    assert again.dead == batch.dead
    assert again.outputs == batch.outputs


def test_a_range_is_read_as_the_reply_holds_it(redis_client: redis.Redis) -> None:
    """``read_entries`` gives each entry of a range or a blocking read as its flat list of names
    and values (no dict per entry), the same entries ``read_after`` parses; the shared client
    still parses; the stage folds them."""
    from consumers.stage import as_dict, raw_reader, read_entries

    grant_nodes(redis_client, 3)
    raw = raw_reader(redis_client)
    ranged = read_entries(redis_client, raw, KEYS.events, redis_log.START, 10)
    blocking = read_entries(redis_client, raw, KEYS.events, redis_log.START, 10, block_ms=10)
    assert [type(fields) for _, fields in ranged + blocking] == [list] * 6
    parsed = redis_log.read_after(redis_client, KEYS.events, redis_log.START, 10)
    assert [(i, as_dict(f)) for i, f in ranged] == parsed
    assert [(i, as_dict(f)) for i, f in blocking] == parsed
    last = parsed[-1][0]
    assert read_entries(redis_client, raw, KEYS.events, last, 10, block_ms=10) == []
    parsed: Any = redis_client.xrange(KEYS.events)  # the shared client still parses replies
    assert [type(fields) for _, fields in parsed] == [dict] * 3
    stage = Stage(redis_client, KEYS, REGISTRY)
    drain(stage)
    stage.close()
    assert [c.node_id for _, c in read(redis_client, KEYS.registry)] == [
        f"node-{i}" for i in range(3)
    ]
