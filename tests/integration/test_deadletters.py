"""Dead letters on a real Redis: poison is set aside with its reason, the stage goes on, and
``wgchain deadletters list|show|retry`` inspects and re-drives it exactly once."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from factories import network_keys
from factories import wg_key as key

from consumers.ipam.allocate import IpamFold
from consumers.registry.fold import RegistryFold
from consumers.stage import Stage
from shared import cli
from shared.devnet.redis_server import RedisServer
from shared.events import (
    GENESIS_DIGEST,
    LogEntry,
    NodeAccessGranted,
    NodeJoined,
    from_fields,
    to_fields,
)
from shared.keys import Keys

pytestmark = pytest.mark.integration

OWNERS = ["0x" + c * 40 for c in "abcdef"]
POISON = "node-poison"
GARBAGE = {b"junk": b"\xff\xfe\n[Peer]\nAllowedIPs = 0.0.0.0/0\x00"}


class FlakyFold(RegistryFold):
    """The registry rules with a bug: granting ``POISON`` raises while ``broken`` is set."""

    def __init__(self) -> None:
        self.broken = True

    def apply(self, state: Any, entry_id: str, entry: Any) -> tuple[Any, list[Any]]:
        event = getattr(entry, "event", None)
        if self.broken and getattr(event, "node_id", "") == POISON:
            raise RuntimeError("bug: cannot grant node-poison")
        return super().apply(state, entry_id, entry)


@pytest.fixture
def keys() -> Keys:
    return network_keys()


def grant(keys: Keys, block: int, token: int, node: str, prev: str) -> LogEntry:
    event = NodeAccessGranted(token, node, OWNERS[token % len(OWNERS)], key(token))
    entry = LogEntry(31337, keys.contract, block, f"0x{block:064x}", "0x01", 0, 1_700_000_000 + block, event)  # fmt: skip
    return entry.with_digest(prev)


def feed(client: redis.Redis, keys: Keys) -> dict[str, str]:
    """Good grants around four kinds of poison; name -> events id."""
    a = grant(keys, 1, 1, "node-a", GENESIS_DIGEST)
    p = grant(keys, 2, 2, POISON, a.digest)
    b = grant(keys, 3, 3, "node-b", p.digest)
    future = dict(to_fields(a))
    future["v"] = 99
    items: list[tuple[str, Any]] = [
        ("a", to_fields(a)),
        ("garbage", GARBAGE),
        ("unknown", {"v": 1, "type": "NodeTeleported", "data": b"{}"}),
        ("future", future),
        ("poison", to_fields(p)),
        ("b", to_fields(b)),
    ]
    return {name: client.xadd(keys.events, fields).decode() for name, fields in items}  # type: ignore[union-attr]


def drain(stage: Stage[Any]) -> None:
    while stage.step(block_ms=None):
        pass


def joined(client: redis.Redis, keys: Keys) -> list[tuple[str, str]]:
    """(node id, cause) of every NodeJoined in the registry stream."""
    out = []
    for _, fields in client.xrange(keys.registry):  # type: ignore[union-attr]
        entry = from_fields(fields)
        if isinstance(entry, NodeJoined):
            out.append((entry.node_id, entry.cause))
    return out


def dead(client: redis.Redis, keys: Keys, stage: str = "registry") -> dict[str, tuple[str, str]]:
    """original entry id -> (dead-letter id, reason)."""
    raw: Any = client.xrange(keys.dead(stage))
    return {f[b"id"].decode(): (i.decode(), f[b"reason"].decode()) for i, f in raw}


def wgchain(
    capsys: pytest.CaptureFixture[str], server: RedisServer, keys: Keys, *argv: str
) -> tuple[int, str, str]:
    """Run ``wgchain deadletters ARGV`` in-process; (exit code, stdout, stderr)."""
    settings = ["--redis-url", server.url, "--chain-id", str(keys.chain_id), "--contract", keys.contract]  # fmt: skip
    code = 0
    try:
        cli.main(["deadletters", *argv, *settings])
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def poisoned(redis_client: redis.Redis, keys: Keys) -> tuple[Stage[Any], FlakyFold, dict[str, str]]:
    """A registry stage that has run over the poison (left in ``stage`` at its end)."""
    ids = feed(redis_client, keys)
    fold = FlakyFold()
    stage = Stage(redis_client, keys, fold)
    drain(stage)
    return stage, fold, ids


@pytest.fixture
def running(
    poisoned: tuple[Stage[Any], FlakyFold, dict[str, str]],
) -> Iterator[tuple[FlakyFold, dict[str, str]]]:
    """The poisoned stage, its bug fixed, running in a thread (as ``wgchain registry``)."""
    stage, fold, ids = poisoned
    fold.broken = False
    stop = threading.Event()
    thread = threading.Thread(target=stage.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield fold, ids
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()


def test_each_kind_of_poison_is_dead_lettered_with_its_reason_and_the_stage_goes_on(
    redis_client: redis.Redis, keys: Keys, poisoned: tuple[Stage[Any], FlakyFold, dict[str, str]]
) -> None:
    _, _, ids = poisoned
    assert joined(redis_client, keys) == [("node-a", ids["a"]), ("node-b", ids["b"])]
    reasons = {original: reason for original, (_, reason) in dead(redis_client, keys).items()}
    assert set(reasons) == {ids[n] for n in ("garbage", "unknown", "future", "poison")}
    assert "not a wgchain envelope" in reasons[ids["garbage"]]
    assert "unknown entry type 'NodeTeleported'" in reasons[ids["unknown"]]
    assert "schema version 99 is newer" in reasons[ids["future"]]
    assert "cannot grant node-poison" in reasons[ids["poison"]]

    # an ipam stage meeting garbage in its input does the same
    redis_client.xadd(keys.registry, GARBAGE)  # type: ignore[arg-type]
    drain(Stage(redis_client, keys, IpamFold("10.88.0.0/24", None, 10)))
    assert len(dead(redis_client, keys, "ipam")) == 1
    assert len(redis_client.xrange(keys.peers)) == 2  # type: ignore[arg-type]  # a and b


def test_list_and_show_print_them_escaped(
    capsys: pytest.CaptureFixture[str],
    redis_server: RedisServer,
    redis_client: redis.Redis,
    keys: Keys,
    poisoned: tuple[Stage[Any], FlakyFold, dict[str, str]],
) -> None:
    _, _, ids = poisoned
    code, out, _ = wgchain(capsys, redis_server, keys, "list")
    assert code == 0
    lines = out.splitlines()
    assert lines[-1] == "4 dead letter(s)"
    rows = [line.split() for line in lines[:-1]]
    assert [(r[0], r[5]) for r in rows] == [("registry", ids[n]) for n in ("garbage", "unknown", "future", "poison")]  # fmt: skip
    assert all(r[6] == "dead" for r in rows)
    assert "unknown entry type" in lines[1]

    garbage_letter = dead(redis_client, keys)[ids["garbage"]][0]
    code, out, _ = wgchain(capsys, redis_server, keys, "show", garbage_letter)
    assert code == 0
    assert f"entry    {ids['garbage']}" in out
    assert r"field    junk = \xff\xfe\n[Peer]\nAllowedIPs = 0.0.0.0/0\x00" in out
    assert "\x00" not in out
    assert all(line.isascii() and line.isprintable() for line in out.splitlines())

    # the listener's dead letters (logs it could not decode) are listed, never re-driven
    raw_log = b'{"topics": ["0x\xff"], "data": "0x00"}'
    listener_letter = redis_client.xadd(keys.dead("listener"), {"id": "12:3", "reason": "bad log", "raw": raw_log}).decode()  # type: ignore[union-attr]  # fmt: skip
    code, out, _ = wgchain(capsys, redis_server, keys, "list", "--stage", "listener")
    assert out.splitlines()[0].split()[:2] == ["listener", listener_letter]
    code, _, err = wgchain(capsys, redis_server, keys, "retry", listener_letter)
    assert code == 1
    assert "is a chain log that did not decode; it is not re-driven" in err
    assert redis_client.xlen(keys.retry("registry")) == 0

    code, _, err = wgchain(capsys, redis_server, keys, "show", "1-1")
    assert code == 1
    assert err.strip() == "wgchain: no dead letter 1-1 in listener, registry, ipam"
    code, _, err = wgchain(capsys, redis_server, keys, "show", "../etc\n")
    assert code == 2  # a malformed argument
    assert "is not a dead-letter id" in err
    assert len(err.strip().splitlines()) == 1


def test_retry_applies_a_fixed_entry_exactly_once_and_keeps_what_fails_again(
    capsys: pytest.CaptureFixture[str],
    redis_server: RedisServer,
    redis_client: redis.Redis,
    keys: Keys,
    running: tuple[FlakyFold, dict[str, str]],
) -> None:
    _, ids = running
    before = dead(redis_client, keys)
    poison_letter = before[ids["poison"]][0]

    code, out, _ = wgchain(capsys, redis_server, keys, "retry", poison_letter)
    assert code == 0, out
    assert out.strip() == f"registry {poison_letter} (entry {ids['poison']}): applied"
    assert joined(redis_client, keys) == [
        ("node-a", ids["a"]),
        ("node-b", ids["b"]),
        (POISON, ids["poison"]),  # applied once, naming its original events entry
    ]
    assert ids["poison"] not in dead(redis_client, keys)
    assert redis_client.xlen(keys.retry("registry")) == 0

    code, _, err = wgchain(capsys, redis_server, keys, "retry", poison_letter)
    assert code == 1
    assert "no dead letter" in err  # re-driven letters are gone: no second application

    code, out, err = wgchain(capsys, redis_server, keys, "retry", "--all")
    assert code == 1
    assert err.strip().splitlines()[-1] == "wgchain: 3 of 3 dead letter(s) failed again"
    assert out.count("failed again, now") == 3
    after = dead(redis_client, keys)
    assert set(after) == {ids["garbage"], ids["unknown"], ids["future"]}
    for original, (letter, reason) in after.items():
        assert letter != before[original][0]  # a new dead letter, the old one deleted
        assert reason == before[original][1]
    assert [n for n, _ in joined(redis_client, keys)] == ["node-a", "node-b", POISON]

    code, out, err = wgchain(capsys, redis_server, keys, "retry", "--all", "--json")
    assert code == 1
    assert err.strip().splitlines()[-1] == "wgchain: 3 of 3 dead letter(s) failed again"
    doc = json.loads(out)  # one document, whatever the outcome
    assert sorted(r["entry"] for r in doc["letters"]) == sorted(after)
    assert {r["result"] for r in doc["letters"]} == {"failed-again"}
    assert all(r["new_id"] != r["id"] and r["reason"] for r in doc["letters"])


def test_a_request_waits_for_its_stage_and_survives_a_crash_after_its_commit(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    redis_server: RedisServer,
    redis_client: redis.Redis,
    keys: Keys,
    poisoned: tuple[Stage[Any], FlakyFold, dict[str, str]],
) -> None:
    stage, fold, ids = poisoned
    poison_letter = dead(redis_client, keys)[ids["poison"]][0]
    code, _, err = wgchain(capsys, redis_server, keys, "retry", poison_letter, "--wait", "0.3")
    assert code == 1
    assert "is the registry stage running?" in err
    code, out, _ = wgchain(capsys, redis_server, keys, "list", "--stage", "registry")
    queued_rows = [line for line in out.splitlines() if " queued " in line]
    assert len(queued_rows) == 1
    assert poison_letter in queued_rows[0]
    code, out, _ = wgchain(capsys, redis_server, keys, "retry", poison_letter, "--wait", "0")
    assert out.splitlines() == [f"registry {poison_letter}: already queued", "nothing to re-drive"]
    code, out, _ = wgchain(
        capsys, redis_server, keys, "retry", poison_letter, "--wait", "0", "--json"
    )
    assert (code, json.loads(out)["letters"][0]["result"]) == (0, "already-queued")

    class Crash(Exception):
        """The stage dies right after the commit, before deleting the dead letter."""

    def crash(*args: object, **kwargs: object) -> None:
        raise Crash

    fold.broken = False
    monkeypatch.setattr(stage.client, "pipeline", crash)
    with pytest.raises(Crash):
        stage.redrive()
    monkeypatch.undo()
    assert [n for n, _ in joined(redis_client, keys)] == ["node-a", "node-b", POISON]
    assert ids["poison"] in dead(redis_client, keys)  # not deleted yet: the "crash"

    restarted = Stage(redis_client, keys, fold)
    drain(restarted)  # finishes the clean-up, does not apply it again
    assert [n for n, _ in joined(redis_client, keys)] == ["node-a", "node-b", POISON]
    assert ids["poison"] not in dead(redis_client, keys)
    assert redis_client.xlen(keys.retry("registry")) == 0
