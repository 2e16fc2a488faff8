"""``StageStore.commit`` on a real Redis: the transaction (``WATCH`` + ``MULTI``/``EXEC``) and
the Lua script (Redis Cluster) write the same thing, and both refuse a moved position whole.
"""

from __future__ import annotations

from typing import Any

import hiredis
import pytest
import redis
from factories import wg_key as key

from shared import lua
from shared.errors import CommitConflict
from shared.events import SCHEMA_VERSION, NodeJoined, NodeLeft, encode, from_fields
from shared.ids import START
from shared.keys import Keys
from shared.redis_log import Batch, StageStore, Transaction

pytestmark = pytest.mark.integration

KEYS = Keys(31337, "0x5fbdb2315678afecb367f032d93f642f64180aa3")
A = "0x70997970c51812dc3a010c7d01b50e0d17dc79c8"


def store(client: redis.Redis, *, script: bool, prefix: str = "wgchain") -> StageStore:
    """The registry stage's store (with the ipam snapshot key, to test snapshots too)."""
    keys = Keys(KEYS.chain_id, KEYS.contract, prefix=prefix)
    return StageStore(
        client,
        position=keys.position("registry"),
        state=keys.state("registry"),
        output=keys.registry,
        dead=keys.dead("registry"),
        snapshot=keys.snapshot,
        script=script,
    )


def joined(n: int) -> NodeJoined:
    return NodeJoined(f"node-{n}", n, A, key(n), cause=f"1-{n}", block_number=n)


def batches() -> list[Batch]:
    """A first commit (state, outputs, a dead letter, a snapshot), then one that deletes a
    field and snapshots without outputs, then one that rewrites the state whole."""
    return [
        Batch(
            position="5-0",
            state_set={"t:1": b'{"a":1}', "t:2": b'{"b":"\xc3\xa9"}'},
            outputs=[
                joined(1),
                joined(2),
                NodeLeft("node-1", "revoked", cause="1-3", block_number=3),
            ],
            dead=[("4-0", "bad entry", b"\x00raw")],
            snapshot=b'{"peers":[]}',
        ),
        Batch(position="6-0", state_del={"t:1"}, snapshot=b'{"peers":[1]}'),
        Batch(position="7-0", state_set={"t:9": b"{}"}, outputs=[joined(9)], replace=True),
    ]


def written(client: redis.Redis, s: StageStore) -> dict[str, Any]:
    """What the store holds, stream ids left out (they are the time of the commit)."""
    outputs = client.xrange(s.output)
    snapshot: Any = client.hgetall(s.snapshot or "")
    return {
        "position": client.get(s.position),
        "state": client.hgetall(s.state),
        "outputs": [fields for _, fields in outputs],
        "dead": [fields for _, fields in client.xrange(s.dead)],
        "snapshot": snapshot.get(b"data"),
        # how many outputs the snapshot covers (its id is the last of them)
        "snapshot_covers": [i for i, _ in outputs].index(snapshot[b"id"]) + 1
        if snapshot.get(b"id") in {i for i, _ in outputs}
        else snapshot.get(b"id"),
    }


def test_the_transaction_writes_what_the_script_writes(redis_client: redis.Redis) -> None:
    by_script = store(redis_client, script=True, prefix="script")
    by_transaction = store(redis_client, script=False)
    for s in (by_script, by_transaction):
        expected = START
        for batch in batches():
            assert s.commit(expected, batch) == len(batch.outputs)
            expected = batch.position
    got = written(redis_client, by_transaction)
    assert got == written(redis_client, by_script)
    assert got["position"] == b"7-0"
    assert got["state"] == {b"t:9": b"{}"}
    assert got["dead"] == [{b"id": b"4-0", b"reason": b"bad entry", b"raw": b"\x00raw"}]
    assert got["snapshot"] == b'{"peers":[1]}'
    assert got["snapshot_covers"] == 3
    # the envelope exactly as consumers read it: v, type, data
    first = got["outputs"][0]
    assert first == {
        b"v": str(SCHEMA_VERSION).encode(),
        b"type": b"NodeJoined",
        b"data": encode(joined(1)),
    }
    assert [from_fields(f) for f in got["outputs"]] == [*batches()[0].outputs, joined(9)]


def test_a_snapshot_of_an_empty_output_covers_0_0(redis_client: redis.Redis) -> None:
    s = store(redis_client, script=False)
    s.commit(START, Batch(position="1-0", snapshot=b"{}"))
    assert written(redis_client, s)["snapshot_covers"] == b"0-0"


def test_the_transaction_is_packed_as_the_generic_packer_packs_it(
    redis_client: redis.Redis,
) -> None:
    s = store(redis_client, script=False)
    batch = batches()[0]
    packed = s.pack(batch)
    assert isinstance(packed, Transaction)
    commands = [
        ("HSET", s.state, "t:1", b'{"a":1}', "t:2", b'{"b":"\xc3\xa9"}'),
        *[
            (
                "XADD",
                s.output,
                "*",
                "v",
                SCHEMA_VERSION,
                "type",
                type(o).__name__,
                "data",
                encode(o),
            )
            for o in batch.outputs
        ],
        ("XADD", s.dead, "*", "id", "4-0", "reason", "bad entry", "raw", b"\x00raw"),
    ]
    assert batch.snapshot is not None
    commands += [  # the snapshot's data (packed by hand), then the script that sets its id
        ("HSET", s.snapshot, "data", batch.snapshot),
        ("EVAL", lua.source("stage_snapshot_id"), 2, s.output, s.snapshot),
    ]
    packer: Any = hiredis.pack_command
    assert packed.body == b"".join(packer(c) for c in commands)
    assert packed.commands == len(commands)
    assert packed.outputs == 3


@pytest.mark.parametrize("script", [False, True])
def test_a_commit_from_a_stale_position_writes_nothing(
    redis_client: redis.Redis, script: bool
) -> None:
    s = store(redis_client, script=script)
    s.commit(START, Batch(position="2-0", state_set={"t:1": b"1"}, outputs=[joined(1)]))
    before = written(redis_client, s)
    with pytest.raises(CommitConflict, match="position is 2-0, expected 1-0"):
        s.commit("1-0", Batch(position="3-0", state_set={"t:1": b"2"}, outputs=[joined(2)]))
    assert written(redis_client, s) == before
    # the client is fine after it: the commit from the right position lands
    assert s.commit("2-0", Batch(position="3-0", outputs=[joined(3)])) == 1
    assert redis_client.xlen(s.output) == 2


def test_a_position_written_during_the_commit_fails_it_whole(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another instance commits between this commit's position check and its ``EXEC``: the
    ``WATCH`` makes ``EXEC`` run nothing (without it the batch would land on top)."""
    s = store(redis_client, script=False)
    other = redis.Redis(
        connection_pool=redis.ConnectionPool(**redis_client.connection_pool.connection_kwargs)
    )
    pool = redis_client.connection_pool
    real_get = pool.get_connection

    def get_connection(*args: Any, **kwargs: Any) -> Any:
        conn = real_get(*args, **kwargs)
        real_send = conn.send_packed_command

        def send(command: Any, check_health: bool = True) -> None:
            if isinstance(command, list) and command[0] == hiredis.pack_command(("MULTI",)):
                other.set(s.position, "9-9")  # the other instance's commit
            real_send(command, check_health)

        conn.send_packed_command = send  # type: ignore[method-assign]
        return conn

    monkeypatch.setattr(pool, "get_connection", get_connection)
    try:
        with pytest.raises(CommitConflict, match="written during the commit"):
            s.commit(START, Batch(position="2-0", state_set={"t:1": b"1"}, outputs=[joined(1)]))
    finally:
        other.close()
    assert redis_client.get(s.position) == b"9-9"
    assert redis_client.exists(s.state, s.output) == 0
