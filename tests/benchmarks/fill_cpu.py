"""The agent's own CPU in a fill: one agent bootstrapping a 10,000-member mesh.

Not a row of ``run.py`` (no id): a repeatable look at what ``B4.bootstrap``'s agent adds
beside wireguard-go (docs/design.md §11.2), measured as CPU time of the agent's thread
(``time.thread_time``), not wall time. A real ``redis-server`` on a free port, a ``peers``
stream of ``--members`` members written directly, then ``--rounds`` fresh agents, one
after the other, each on a fresh twin that behaves as wireguard-go's control socket does
for a fill (an empty interface found by ``head``; each batch's request validated and
encoded by the real ``consumers.agent.uapi`` code, sent nowhere: the socket's own
syscalls are left out). Each round times ``prepare`` + ``bootstrap`` + the first apply
after it (the loop's), and within it the parts by the agent's methods (reads, fold,
announcements, model, journal, request), each by the thread's CPU. Printed as one JSON
line: medians over the rounds, total and per part, in µs per peer. Run it from the
repository::

    .venv/bin/python tests/benchmarks/fill_cpu.py --rounds 7
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Final

import redis

from consumers.agent import uapi
from consumers.agent.agent import Agent, AgentConfig
from consumers.agent.desired import Policy
from consumers.agent.keys import generate_private_key_file
from consumers.agent.render import PeerSpec
from consumers.agent.wg import MemoryWireGuard
from shared.devnet.redis_server import RedisServer
from shared.events import PeerUpsert, to_fields
from shared.keys import Keys

POOL: Final = "10.96.0.0/16"
OWN: Final = "bench-self"


class FillTwin(MemoryWireGuard):
    """An empty wireguard-go interface as a fill sees it: ``head`` says it has no peers,
    ``prepare_apply`` validates and encodes the request as ``Wg.prepare_apply`` does; the
    request goes nowhere (its peers are counted)."""

    def __init__(self) -> None:
        super().__init__()
        self.sent = 0

    def head(self, ifname: str) -> uapi.DeviceHead:
        return uapi.DeviceHead(self.public_key, self.listen_port, len(self.peers))

    def prepare_apply(
        self, ifname: str, removals: Sequence[str], peers: Sequence[PeerSpec]
    ) -> Callable[[], Any]:
        request = uapi.encode_set_peers(removals, peers)

        def send() -> SimpleNamespace:
            self.sent += request.count(b"public_key=")
            return SimpleNamespace(wait=lambda: None)

        return send

    def start_apply(self, ifname: str, removals: Sequence[str], peers: Sequence[PeerSpec]) -> Any:
        raise AssertionError("prepare_apply is used")


#: Part name -> (object attribute path, method name) of what is timed; a module's
#: function as ("module:NAME", function name).
PARTS: Final = {
    "read": ("follower", "read"),
    "fold": ("follower", "fold"),
    "announcements": ("", "read_announcements"),
    "model": ("", "update_model"),
    "model.update": ("model", "update"),
    "apply": ("", "_change"),
    "journal": ("files", "write_ahead"),
    "interface.apply": ("iface", "apply"),
    "spec": ("module:consumers.agent.interface", "_spec"),
    "encode": ("module:consumers.agent.uapi", "encode_set_peers"),
}


@contextmanager
def timed_parts(agent: Agent, into: dict[str, float]) -> Iterator[None]:
    """Wrap the functions of :data:`PARTS` to add their thread CPU to ``into``, each
    exclusive of the parts it calls (so the parts add up)."""
    import importlib

    stack: list[float] = []  # time of the parts called inside each running part
    undo = []
    for part, (attr, name) in PARTS.items():
        if attr.startswith("module:"):
            owner: Any = importlib.import_module(attr.removeprefix("module:"))
        else:
            owner = getattr(agent, attr) if attr else agent
        original = getattr(owner, name)

        def wrapper(*args: Any, _f: Any = original, _p: str = part, **kw: Any) -> Any:
            stack.append(0.0)
            start = time.thread_time()
            try:
                return _f(*args, **kw)
            finally:
                spent = time.thread_time() - start
                inner = stack.pop()
                into[_p] = into.get(_p, 0.0) + spent - inner
                if stack:
                    stack[-1] += spent

        setattr(owner, name, wrapper)
        undo.append((owner, name, original))
    try:
        yield
    finally:
        for owner, name, original in undo:
            setattr(owner, name, original)


def one_round(url: str, keys: Keys, key_file: Path, workdir: Path, parts: bool) -> dict[str, Any]:
    config = AgentConfig(
        node_id=OWN,
        interface="wgfill0",
        private_key_file=key_file,
        keys=keys,
        policy=Policy(pool=POOL),
        config_dir=workdir,
        reconcile_interval=3600,
    )
    twin = FillTwin()
    # one agent per process, as on a host: a second Agent would turn on the sharing of
    # strings and config blocks between agents (Agent.__init__), which a host never does
    Agent.created = 0
    agent = Agent(config, redis.Redis.from_url(url), twin)
    split: dict[str, float] = {}
    with timed_parts(agent, split) if parts else contextlib.nullcontext():
        start = time.thread_time()
        agent.prepare()
        agent.bootstrap()
        agent.apply_changes(full=not agent.iface.synced)
        total = time.thread_time() - start
    if not (agent.bootstrapped and twin.sent == len(agent.iface.applied)):
        raise RuntimeError("not a fill: the agent did not send every peer on the socket")
    agent.files.close(agent.snapshot)
    agent.client.close()
    return {"total": total, "peers": twin.sent, **split}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--members", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--no-parts", action="store_true", help="time the whole only")
    args = parser.parse_args()
    rng = random.Random(10)
    root = Path(tempfile.mkdtemp(prefix="fillcpu-"))
    try:
        key_file = root / "own.key"
        own_key = generate_private_key_file(key_file)
        keys = Keys(31337, "0x00000000000000000000000000000000000f1cc0")
        with RedisServer() as server:
            client = redis.Redis.from_url(server.url)
            pipe = client.pipeline(transaction=False)
            pipe.xadd(keys.peers, to_fields(PeerUpsert(OWN, own_key, "10.96.0.1", "0-1", "0-1", 1)))  # type: ignore[arg-type]
            for i in range(args.members):
                offset = i + 2
                ip = f"10.96.{offset >> 8}.{offset & 0xFF}"
                key = base64.b64encode(rng.randbytes(32)).decode()
                upsert = PeerUpsert(f"peer-{i:06d}", key, ip, "0-1", "0-1", 1)
                pipe.xadd(keys.peers, to_fields(upsert))  # type: ignore[arg-type]
            pipe.execute()
            client.close()
            rounds = []
            for n in range(args.rounds):
                workdir = root / f"r{n}"
                rounds.append(one_round(server.url, keys, key_file, workdir, not args.no_parts))
                shutil.rmtree(workdir, ignore_errors=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    peers = rounds[0]["peers"]
    names = ["total", *(PARTS if not args.no_parts else ())]
    us = {
        name: round(statistics.median(r.get(name, 0.0) for r in rounds) / peers * 1e6, 2)
        for name in names
    }
    us["other"] = round(us["total"] - sum(v for k, v in us.items() if k != "total"), 2)
    print(
        json.dumps(
            {
                "peers": peers,
                "rounds": args.rounds,
                "us_per_peer_median": us,
                "total_s": [round(r["total"], 4) for r in rounds],
            }
        )
    )


if __name__ == "__main__":
    main()
