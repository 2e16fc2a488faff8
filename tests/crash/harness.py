"""Crash anywhere: the whole pipeline as subprocesses, a seeded workload, seeded SIGKILLs.

Starts a real anvil (with the contract deployed), a real ``redis-server`` with AOF
on, and every process of the pipeline as a subprocess: ``wgchain listen``,
``wgchain registry``, ``wgchain ipam``, two ``wgchain agent --file-only`` hosts and
(``--wg``) one agent driving a real wireguard-go interface in a network namespace.
A seeded workload of contract operations (grants, revokes, transfers, renewals and
cancellations of time-limited passes, key updates,
with conflicting node ids and keys and hostile strings) runs while a seeded killer
SIGKILLs a random process at a random moment and restarts it after a random delay.

Once the workload is done, at least ``--kills`` kills happened and everything has
caught up, the harness checks:

1. the events stream (its effective entries) equals an independent ``eth_getLogs``
   scan (block, log index, tx hash, block hash, decoded data), without duplicates
   and with an unbroken digest chain;
2. registry state, ipam state and the registry and peers streams' effective content
   (payloads without stream ids or causes) equal a clean fold of the same events by
   in-process stages in a fresh namespace;
3. every agent's config file, and the wireguard-go interface's peers and addresses,
   equal the desired state computed from the clean peer table.

Every random choice comes from the seed, printed at the start and on failure:
``python -m tests.crash.harness --seed S --ops N --kills K`` replays the same
workload and the same kill sequence (the kill moments also depend on timing, so a
rare interleaving may take a few runs to recur). Logs, the AOF file and the config
files of a failed run are kept and their folder is printed.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import difflib
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import msgspec
import redis
from eth_abi.abi import decode, encode
from eth_account import Account
from eth_utils.crypto import keccak
from web3.exceptions import Web3Exception

from consumers.agent.desired import Desired, PeerTable, Policy, desired_state
from consumers.agent.keys import public_key_of
from consumers.agent.render import endpoint_matches, render_config, wanted_peers
from consumers.agent.wg import parse_dump
from consumers.ipam.allocate import IpamFold
from consumers.registry.fold import FOLD as REGISTRY_FOLD
from consumers.stage import Stage
from shared import logs
from shared.contract.client import AccessNFT
from shared.devnet.anvil import ACCOUNTS, Anvil, rpc_call
from shared.devnet.netns import Host, Lab, available, wgchain_command
from shared.devnet.proc import stop_process, wait_for
from shared.devnet.redis_server import RedisServer
from shared.errors import ChainError, DecodeError
from shared.events import (
    GENESIS_DIGEST,
    ChainEvent,
    LogEntry,
    NodeAccessGranted,
    NodeAccessRevoked,
    NodeAccessTransferred,
    PeersSnapshot,
    PublicKeyUpdated,
    Retracted,
    SubscriptionUpdate,
    effective,
    from_fields,
)
from shared.keys import Keys
from shared.settings import Settings, load

CHAIN_ID: Final = 31337
#: A small pool, so that allocations run out (pending) and addresses are quarantined.
POOL: Final = "10.77.0.0/28"
QUARANTINE_BLOCKS: Final = 20
WG_PORT: Final = 51820
#: Prefix of the scratch namespace that holds the clean fold.
CLEAN_PREFIX: Final = "crashclean"
#: Seconds the pipeline may take to catch up once the workload is done.
CATCH_UP_TIMEOUT: Final = 300.0
#: Seconds the agents may take to reach the desired state once the stages caught up.
AGENT_TIMEOUT: Final = 90.0
#: Seconds between two kills, and before a killed process is restarted (uniform ranges).
KILL_GAP: Final = (0.2, 1.8)
RESTART_DELAY: Final = (0.0, 1.0)
#: Seconds a process gets to exit on SIGTERM at the end.
STOP_TIMEOUT: Final = 15.0
#: Durations of time-limited passes and renewals (seconds): never reached during a run.
DURATIONS: Final = (3 * 3600, 86400, 30 * 86400)
#: Valid node ids of the workload (a small set, so grants, revokes and re-grants collide).
NODE_NAMES: Final = tuple(f"n{i:02d}" for i in range(80))
#: Account indexes (into ``ACCOUNTS`` and then the extra accounts): the contract owner, the
#: agents' owners, and the workload's token holders (every holder's tokens share its key).
ADMIN: Final = 0
AGENT_OWNERS: Final = (7, 8, 9)
EXTRA_HOLDERS: Final = 18
HOLDERS: Final = (*range(1, 7), *range(len(ACCOUNTS), len(ACCOUNTS) + EXTRA_HOLDERS))
#: Valid keys the holders pick from (fewer than holders: key conflicts).
KEY_POOL: Final = 16
#: Hostile strings of 100 kB: at most one per this many operations (at least one per run).
BIG_EVERY: Final = 300
BIG_SIZE: Final = 100_000

_SIGNATURES: Final = {
    "NodeAccessGranted(uint256,string,address,string)": "NodeAccessGranted",
    "NodeAccessRevoked(uint256,string)": "NodeAccessRevoked",
    "NodeAccessTransferred(uint256,address,address)": "NodeAccessTransferred",
    "PublicKeyUpdated(address,string)": "PublicKeyUpdated",
    "SubscriptionUpdate(uint256,uint64)": "SubscriptionUpdate",
}
#: topic0 (computed here, independently of the listener) -> event name.
TOPICS: Final = {"0x" + keccak(text=sig).hex(): name for sig, name in _SIGNATURES.items()}
#: Payload fields that name stream ids (differ between the live and the clean namespace).
ID_FIELDS: Final = frozenset({"cause", "origin", "entry_id", "prev", "digest"})


class CrashFailure(AssertionError):
    """The pipeline did not survive the run; the message holds the seed and every problem."""


@dataclass(frozen=True)
class Options:
    """One run of the harness."""

    seed: int
    ops: int = 2000
    kills: int = 20
    wg: bool = True
    #: Peers entries kept by ipam (0: never trim).
    retention: int = 0
    #: Keep the work folder (logs, AOF, config files) even when the run passes.
    keep: bool = False
    #: Seconds the agents may take to reach the desired state once the stages caught up.
    settle_timeout: float = AGENT_TIMEOUT

    @property
    def command(self) -> str:
        """The command line that replays this run."""
        wg = "--wg" if self.wg else "--no-wg"
        return (
            f"python -m tests.crash.harness --seed {self.seed} --ops {self.ops} "
            f"--kills {self.kills} {wg} --retention {self.retention}"
        )


@dataclass
class Report:
    """What a passing run did."""

    seed: int
    ops: Counter[str]
    kills: Counter[str]
    events: int
    peers_entries: int
    seconds: float
    notes: list[str]
    #: Entry types of the clean registry and peers streams (what the workload exercised).
    kinds: Counter[str]

    def summary(self) -> str:
        sent = ", ".join(f"{k} {v}" for k, v in sorted(self.ops.items()))
        killed = ", ".join(f"{k} {v}" for k, v in sorted(self.kills.items()))
        return (
            f"seed {self.seed}: OK in {self.seconds:.0f}s; ops: {sent}; "
            f"{sum(self.kills.values())} kills ({killed}); {self.events} events, "
            f"{self.peers_entries} peers entries; "
            + ", ".join(f"{k} {v}" for k, v in sorted(self.kinds.items()))
        )


def say(message: str) -> None:
    print(f"[crash] {message}", flush=True)


# --- processes ---------------------------------------------------------------------------


@dataclass
class Service:
    """One pipeline process: started, SIGKILLed and restarted by pid."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    host: Host | None = None
    proc: subprocess.Popen[bytes] | None = None
    #: Unexpected exits seen (a process is only ever supposed to die by our SIGKILL).
    crashes: list[str] = field(default_factory=list)
    #: ``time.monotonic()`` of the last start.
    started_at: float = 0.0

    def start(self) -> None:
        self.started_at = time.monotonic()
        if self.host is not None:
            self.proc = self.host.spawn(self.argv, env=self.env, log_path=self.log_path)
            return
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                self.argv, env=self.env, stdin=subprocess.DEVNULL, stdout=out, stderr=out
            )

    def kill(self) -> None:
        """SIGKILL our process (by pid) and reap it."""
        if self.proc is None:
            return
        self.check()
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.proc = None

    def check(self) -> bool:
        """True while running; an exit we did not cause is recorded, and it is restarted."""
        if self.proc is None or self.proc.poll() is None:
            return self.proc is not None
        code = self.proc.returncode
        self.crashes.append(f"{self.name} exited by itself with code {code}")
        say(f"{self.name} exited by itself (code {code}); restarting it")
        self.start()
        return False

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL if it lingers; returns the exit code."""
        if self.proc is None:
            return None
        stop_process(self.proc, timeout=STOP_TIMEOUT)
        code: int | None = self.proc.returncode
        self.proc = None
        return code

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return "\n".join(f"    {line[:300]}" for line in text)


@dataclass
class Agent:
    """One host: its node id, key file, config file, and (wg mode) its namespace."""

    node: str
    interface: str
    key_file: Path
    public_key: str
    config_dir: Path
    endpoint: str
    owner: int
    host: Host | None = None

    @property
    def config_path(self) -> Path:
        return self.config_dir / f"{self.interface}.conf"


def write_key_file(path: Path, rng: random.Random) -> str:
    """A private key file (0600) from ``rng``; returns the public key."""
    private = base64.b64encode(rng.randbytes(32)).decode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(private + "\n")
    return public_key_of(private)


def extra_accounts(rng: random.Random) -> list[tuple[str, str]]:
    """(address, private key) of the holders beyond anvil's ten dev accounts (seeded)."""
    keys = ["0x" + rng.randbytes(32).hex() for _ in range(EXTRA_HOLDERS)]
    return [(Account.from_key(key).address, key) for key in keys]


def random_key(rng: random.Random) -> str:
    """A valid WireGuard public key (standard base64 of 32 random bytes)."""
    return base64.b64encode(rng.randbytes(32)).decode()


# --- the workload ------------------------------------------------------------------------


@dataclass
class Token:
    holder: int
    node: bytes
    active: bool


def hostile(rng: random.Random, key: str) -> str | bytes:
    """A node id or key crafted to break things (bytes: not valid UTF-8)."""
    choices: list[str | bytes] = [
        f"{key}\n[Peer]\nPublicKey = {key}\nAllowedIPs = 0.0.0.0/0",
        "n01\n[Peer]\nAllowedIPs = 0.0.0.0/0",
        "AllowedIPs = 0.0.0.0/0",
        f"{key}\nAllowedIPs = 0.0.0.0/0",
        "../../etc/wireguard/wg0",
        "/etc/shadow",
        "..",
        "n\x0001",
        key[:-1] + "\x00",
        "--help",
        "-n01",
        "-" + key[1:],
        "--private-key=/etc/shadow",
        "n\u043e1",  # Cyrillic o
        "\uff4e01",  # fullwidth n
        "n01\u200b",  # zero-width space
        "\u202en01",  # right-to-left override
        "\u0410" + key[1:],  # Cyrillic A
        key + " ",
        key + "\n",
        b"n\xff\xfe01",
        b"\xc3\x28" + key.encode()[2:],
        key.encode()[:-2] + b"\x80=",
    ]
    return rng.choice(choices)


def _text_or_bytes(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


class Workload:
    """Seeded contract operations, with a model of the tokens to pick sensible ones."""

    def __init__(
        self,
        nft: AccessNFT,
        rng: random.Random,
        accounts: Sequence[tuple[str, str]],
        agents: Sequence[Agent],
        ops: int,
    ) -> None:
        self.nft = nft
        self.rng = rng
        self.accounts = list(accounts)
        self.clients = {i: nft.with_signer(key) for i, (_, key) in enumerate(accounts)}
        self.agents = list(agents)
        self.agent_keys = [a.public_key for a in agents]
        self.keys = [random_key(rng) for _ in range(KEY_POOL)]
        self.tokens: dict[int, Token] = {}
        self.active: dict[bytes, int] = {}
        self.protected: set[int] = set()
        self.next_token = 1
        self.counts: Counter[str] = Counter()
        self.big_left = max(1, ops // BIG_EVERY)

    # -- operations -----------------------------------------------------------------

    def grant_agents(self) -> None:
        """Mint every agent's node id to its own owner, with its own key (live members)."""
        for agent in self.agents:
            owner = self.accounts[agent.owner][0]
            result = self.clients[ADMIN].mint(owner, agent.node, agent.public_key)
            token = self._minted(agent.owner, agent.node.encode())
            assert result.token_id == token, "the harness' token model is off"
            self.protected.add(token)

    def step(self) -> None:
        """One random operation (it may revert on chain; that is counted, not an error)."""
        roll = self.rng.random()
        free = [t for t in self.tokens if t not in self.protected]
        if roll < 0.3 or not free:
            self.grant()
        elif roll < 0.5:
            self.revoke(free)
        elif roll < 0.66:
            self.transfer(free)
        elif roll < 0.74:
            self.renew(free)
        elif roll < 0.8:
            self.cancel(free)
        else:
            self.set_key()

    def grant(self) -> None:
        rng = self.rng
        holder = rng.choice(HOLDERS)
        roll = rng.random()
        node: str | bytes
        if roll < 0.82:
            idle = [n for n in NODE_NAMES if n.encode() not in self.active]
            node = rng.choice(idle if idle and rng.random() < 0.9 else NODE_NAMES)
        elif roll < 0.85:
            node = rng.choice(self.agents).node  # active: the contract refuses it
        else:
            node = self._hostile()
        key = self._key(pool=0.55, agent=0.1, empty=0.15)
        args: tuple[Any, ...] = (self.accounts[holder][0], node, key, "")
        signature = "mintNodeAccess(address,string,string,string)"
        if rng.random() < 0.25:  # a time-limited pass (ERC-5643): it outlives the run
            args += (rng.choice(DURATIONS),)
            signature = "mintNodeAccessWithDuration(address,string,string,string,uint64)"
        if self._send("grant", ADMIN, signature, args):
            self._minted(holder, _text_or_bytes(node))

    def revoke(self, free: list[int]) -> None:
        rng = self.rng
        live = [t for t in free if self.tokens[t].active]
        token = rng.choice(live if live and rng.random() < 0.95 else free)
        record = self.tokens[token]
        signer = record.holder if rng.random() < 0.6 else ADMIN
        if rng.random() < 0.03:
            signer = rng.choice(HOLDERS)  # maybe not the holder: the contract refuses it
        if self._send("revoke", signer, "revokeNodeAccess(uint256)", (token,)):
            record.active = False
            self.active.pop(record.node, None)

    def transfer(self, free: list[int]) -> None:
        token = self.rng.choice(free)
        record = self.tokens[token]
        to = self.rng.choice(HOLDERS)  # sometimes the holder itself
        client = self.clients[record.holder]
        self.counts["transfer"] += 1
        try:
            client.transfer(token, self.accounts[to][0])
        except ChainError:
            self.counts["reverted"] += 1
            return
        record.holder = to

    def renew(self, free: list[int]) -> None:
        """A renewal by the contract owner (a perpetual pass refuses it; a cancelled one
        comes back): its expiration is hours away, never reached during a run."""
        token = self.rng.choice(free)
        duration = self.rng.choice(DURATIONS)
        self._send("renew", ADMIN, "renewSubscription(uint256,uint64)", (token, duration))

    def cancel(self, free: list[int]) -> None:
        """A cancellation (expiration 0: expired at once) by the holder or the owner."""
        token = self.rng.choice(free)
        signer = self.tokens[token].holder if self.rng.random() < 0.5 else ADMIN
        self._send("cancel", signer, "cancelSubscription(uint256)", (token,))

    def set_key(self) -> None:
        owner = self.rng.choice(HOLDERS)
        key = self._key(pool=0.6, agent=0.1, empty=0.08)
        self._send("set_key", owner, "updatePublicKey(string)", (key,))

    # -- helpers --------------------------------------------------------------------

    def _minted(self, holder: int, node: bytes) -> int:
        token = self.next_token
        self.next_token += 1
        self.tokens[token] = Token(holder, node, True)
        self.active[node] = token
        return token

    def _hostile(self) -> str | bytes:
        if self.big_left and self.rng.random() < 0.03:
            self.big_left -= 1
            unit = self.rng.choice(["x", "A", "\n[Peer]\nAllowedIPs = 0.0.0.0/0"])
            return (unit * (BIG_SIZE // len(unit) + 1))[:BIG_SIZE]
        return hostile(self.rng, self.rng.choice(self.keys))

    def _key(self, *, pool: float, agent: float, empty: float) -> str | bytes:
        roll = self.rng.random()
        if roll < pool:
            return self.rng.choice(self.keys)
        if roll < pool + agent:
            return self.rng.choice(self.agent_keys)  # a key conflict with a live agent
        if roll < pool + agent + empty:
            return ""
        return self._hostile()

    def _send(self, kind: str, signer: int, signature: str, args: tuple[Any, ...]) -> bool:
        """Send one transaction; False when the contract refused it."""
        self.counts[kind] += 1
        try:
            if any(isinstance(a, bytes) for a in args):
                self._send_raw(signer, signature, args)
                self.counts["non-utf8"] += 1
            else:
                self._send_client(signer, signature, args)
        except (ChainError, Web3Exception, ValueError):
            self.counts["reverted"] += 1
            return False
        return True

    def _send_client(self, signer: int, signature: str, args: tuple[Any, ...]) -> None:
        client = self.clients[signer]
        name = signature.split("(", 1)[0]
        if name == "mintNodeAccess":
            client.mint(args[0], args[1], args[2])
        elif name == "mintNodeAccessWithDuration":
            client.mint(args[0], args[1], args[2], duration=args[4])
        elif name == "revokeNodeAccess":
            client.revoke(args[0])
        elif name == "renewSubscription":
            client.renew(args[0], args[1])
        elif name == "cancelSubscription":
            client.cancel(args[0])
        else:
            client.set_key(args[0])

    def _send_raw(self, signer: int, signature: str, args: tuple[Any, ...]) -> None:
        """Call with strings that are not UTF-8 (``string`` and ``bytes`` encode alike)."""
        types = signature.split("(", 1)[1].rstrip(")").split(",")
        values = [
            _text_or_bytes(a) if t == "string" else a for t, a in zip(types, args, strict=True)
        ]
        abi_types = ["bytes" if t == "string" else t for t in types]
        data = keccak(text=signature)[:4] + encode(abi_types, values)
        w3 = self.nft.w3
        tx = w3.eth.send_transaction(
            {"from": self.accounts[signer][0], "to": self.nft.address, "data": data}
        )
        receipt = w3.eth.wait_for_transaction_receipt(tx, timeout=120)
        if receipt["status"] != 1:
            raise ChainError(f"{signature} reverted")


# --- the independent view of the chain ----------------------------------------------------


def _word_address(word: bytes) -> str:
    return "0x" + word[12:].hex()


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


def decode_log(log: dict[str, Any]) -> ChainEvent:
    """A log's event, decoded with eth_abi (not with the listener's decoder)."""
    topics = [bytes.fromhex(t[2:]) for t in log["topics"]]
    data = bytes.fromhex(log["data"][2:])
    name = TOPICS[log["topics"][0].lower()]
    if name == "NodeAccessGranted":
        node, key = decode(["bytes", "bytes"], data)
        token = int.from_bytes(topics[1], "big")
        return NodeAccessGranted(token, _text(node), _word_address(topics[2]), _text(key))
    if name == "NodeAccessRevoked":
        (node,) = decode(["bytes"], data)
        return NodeAccessRevoked(int.from_bytes(topics[1], "big"), _text(node))
    if name == "NodeAccessTransferred":
        token = int.from_bytes(topics[1], "big")
        return NodeAccessTransferred(token, _word_address(topics[2]), _word_address(topics[3]))
    if name == "SubscriptionUpdate":
        (expiration,) = decode(["uint64"], data)
        return SubscriptionUpdate(int.from_bytes(topics[1], "big"), expiration)
    (key,) = decode(["bytes"], data)
    return PublicKeyUpdated(_word_address(topics[1]), _text(key))


Position = tuple[int, int, str, str, ChainEvent]


def scan_chain(url: str, contract: str, to_block: int) -> list[Position]:
    """(block, log index, tx hash, block hash, event) of every contract log, chain order."""
    logs = rpc_call(
        url,
        "eth_getLogs",
        [
            {
                "address": contract,
                "topics": [list(TOPICS)],
                "fromBlock": "0x0",
                "toBlock": hex(to_block),
            }
        ],
    )
    found = [
        (
            int(log["blockNumber"], 16),
            int(log["logIndex"], 16),
            log["transactionHash"].lower(),
            log["blockHash"].lower(),
            decode_log(log),
        )
        for log in logs
    ]
    return sorted(found, key=lambda p: (p[0], p[1]))


# --- reading streams ---------------------------------------------------------------------


def read_stream(client: redis.Redis, key: str) -> tuple[list[tuple[str, Any]], list[str]]:
    """(id, decoded entry) of a whole stream, and the ids that did not decode."""
    raw: Any = client.xrange(key)
    items: list[tuple[str, Any]] = []
    bad: list[str] = []
    for raw_id, fields in raw:
        try:
            items.append((raw_id.decode(), from_fields(fields)))
        except DecodeError:
            bad.append(raw_id.decode())
    return items, bad


def payload(entry: Any) -> tuple[str, tuple[tuple[str, Any], ...]]:
    """An entry as (type, fields) without the fields that name stream ids."""
    fields = msgspec.structs.asdict(entry)
    return type(entry).__name__, tuple((k, v) for k, v in fields.items() if k not in ID_FIELDS)


def short(value: object, limit: int = 160) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}...(+{len(text) - limit} chars)"


def compare_lists(what: str, live: Sequence[object], clean: Sequence[object]) -> list[str]:
    """One problem naming the first difference of two sequences, or none."""
    if list(live) == list(clean):
        return []
    for i, (a, b) in enumerate(zip(live, clean, strict=False)):
        if a != b:
            return [f"{what}: entry {i} differs: live {short(a)} vs expected {short(b)}"]
    return [
        f"{what}: {len(live)} entries, expected {len(clean)} (first {min(len(live), len(clean))} agree)"
    ]


def compare_hashes(what: str, live: dict[bytes, bytes], clean: dict[bytes, bytes]) -> list[str]:
    if live == clean:
        return []
    only_live = sorted(set(live) - set(clean))
    only_clean = sorted(set(clean) - set(live))
    differ = sorted(k for k in set(live) & set(clean) if live[k] != clean[k])
    detail = [
        f"{len(only_live)} fields only live (e.g. {short(only_live[:3])})" if only_live else "",
        f"{len(only_clean)} only in the clean fold (e.g. {short(only_clean[:3])})"
        if only_clean
        else "",
        f"{len(differ)} differ (e.g. {short(differ[0])}: live {short(live[differ[0]])} "
        f"vs clean {short(clean[differ[0]])})"
        if differ
        else "",
    ]
    return [f"{what} differs from the clean fold: " + "; ".join(d for d in detail if d)]


# --- the run -----------------------------------------------------------------------------


class Harness:
    """Everything of one run; :meth:`run` returns a :class:`Report` or raises CrashFailure."""

    def __init__(self, options: Options) -> None:
        self.opt = options
        self.workdir = Path(tempfile.mkdtemp(prefix=f"wgchain-crash-{options.seed}-"))
        self.rng_keys = random.Random(f"{options.seed}:keys")
        self.rng_work = random.Random(f"{options.seed}:workload")
        self.rng_kill = random.Random(f"{options.seed}:kills")
        self.accounts = [*ACCOUNTS, *extra_accounts(random.Random(f"{options.seed}:accounts"))]
        self.anvil: Anvil | None = None
        self.redis: RedisServer | None = None
        self.lab: Lab | None = None
        self.client: redis.Redis | None = None
        self.services: list[Service] = []
        self.agents: list[Agent] = []
        self.kills: Counter[str] = Counter()
        self.problems: list[str] = []
        self.notes: list[str] = []
        self.workload_done = threading.Event()
        self.abort = threading.Event()
        self.killer_error: BaseException | None = None
        self.started = time.monotonic()
        self.events_count = 0
        self.peers_count = 0
        self.kinds: Counter[str] = Counter()
        self.keys = Keys(CHAIN_ID, "0x" + "0" * 40)
        self.settings: Settings = load(
            {"pool": POOL, "quarantine_blocks": QUARANTINE_BLOCKS}, environ={}
        )

    def elapsed(self) -> str:
        return f"{time.monotonic() - self.started:6.1f}s"

    # -- setup ----------------------------------------------------------------------

    def start_world(self) -> AccessNFT:
        self.anvil = Anvil(workdir=self.workdir / "anvil")
        self.anvil.workdir.mkdir()
        self.anvil.start()
        self.redis = RedisServer(appendonly=True, workdir=self.workdir / "redis").start()
        self.client = redis.Redis.from_url(self.redis.url)
        nft = AccessNFT.deploy(self.anvil.url, ACCOUNTS[ADMIN][1])
        self.anvil.rpc("evm_setBlockGasLimit", [hex(2_000_000_000)])  # room for 100 kB strings
        for address, _ in self.accounts[len(ACCOUNTS) :]:
            self.anvil.rpc("anvil_setBalance", [address, hex(10**21)])
            self.anvil.rpc("anvil_impersonateAccount", [address])  # for calls with raw bytes
        self.keys = Keys(CHAIN_ID, nft.address.lower())
        return nft

    def make_agents(self) -> None:
        for index, name in enumerate(("a", "b")):
            node = f"crash-{name}"
            conf = self.workdir / f"conf-{name}"
            key_file = self.workdir / f"{node}.key"
            public = write_key_file(key_file, self.rng_keys)
            endpoint = f"192.0.2.{index + 1}:{WG_PORT}"
            self.agents.append(
                Agent(node, f"wgc{name}", key_file, public, conf, endpoint, AGENT_OWNERS[index])
            )
        if self.opt.wg:
            self.lab = Lab(
                prefix=f"crash{secrets.token_hex(2)}",
                workdir=self.workdir / "lab",
                keep_workdir=True,
            )
            self.lab.workdir.mkdir()
            host = self.lab.add_host("wg")
            host.start_wireguard()
            key_file = self.workdir / "crash-wg.key"
            public = write_key_file(key_file, self.rng_keys)
            endpoint = f"{host.underlay_ip}:{WG_PORT}"
            self.agents.append(
                Agent(
                    "crash-wg",
                    host.ifname,
                    key_file,
                    public,
                    self.workdir / "conf-wg",
                    endpoint,
                    AGENT_OWNERS[2],
                    host,
                )
            )

    def make_services(self) -> None:
        assert self.anvil is not None
        assert self.redis is not None
        env = {k: v for k, v in os.environ.items() if not k.startswith("WGCHAIN_")}
        env.update(
            WGCHAIN_REDIS_URL=self.redis.url,
            WGCHAIN_RPC_URL=self.anvil.url,
            WGCHAIN_CONTRACT=self.keys.contract,
            WGCHAIN_CHAIN_ID=str(CHAIN_ID),
            WGCHAIN_CONFIRMATIONS="0",
            WGCHAIN_POLL_INTERVAL="0.1",
            WGCHAIN_MAX_BLOCK_RANGE="8",
            WGCHAIN_LEASE_TTL="1",  # a SIGKILLed listener's lease is free again after 1 s
            WGCHAIN_POOL=POOL,
            WGCHAIN_QUARANTINE_BLOCKS=str(QUARANTINE_BLOCKS),
            WGCHAIN_PEERS_RETENTION=str(self.opt.retention),
            WGCHAIN_RECONCILE_INTERVAL="2",
            WGCHAIN_LOG_LEVEL="INFO",
        )
        wgchain = wgchain_command()
        for name in ("listen", "registry", "ipam"):
            log_path = self.workdir / f"{name}.log"
            self.services.append(Service(name, [*wgchain, name], env, log_path))
        for agent in self.agents:
            argv = [*wgchain, "agent", "--node", agent.node, "--interface", agent.interface]
            argv += ["--private-key-file", str(agent.key_file.absolute())]
            argv += ["--listen-port", str(WG_PORT), "--endpoint", agent.endpoint]
            argv += ["--config-dir", str(agent.config_dir)]
            agent_env = dict(env)
            if agent.host is None:
                argv.append("--file-only")
            else:
                agent_env["WGCHAIN_REDIS_URL"] = self.redis.unix_url  # reachable from the netns
            log_path = self.workdir / f"agent-{agent.node}.log"
            self.services.append(Service(agent.node, argv, agent_env, log_path, agent.host))

    # -- chaos ----------------------------------------------------------------------

    def killer(self) -> None:
        """SIGKILL a random process at a random moment, restart it; until done and K kills."""
        rng = self.rng_kill
        try:
            while not self.abort.is_set():
                if self.workload_done.is_set() and sum(self.kills.values()) >= self.opt.kills:
                    return
                if self.abort.wait(rng.uniform(*KILL_GAP)):
                    return
                victim = rng.choice(self.services)
                delay = rng.uniform(*RESTART_DELAY)
                victim.kill()
                self.kills[victim.name] += 1
                if sum(self.kills.values()) % 10 == 0:
                    say(f"{self.elapsed()} {sum(self.kills.values())} kills so far")
                if self.abort.wait(delay):
                    victim.start()
                    return
                victim.start()
                for service in self.services:
                    service.check()
        except BaseException as exc:  # reported by the main thread
            self.killer_error = exc

    def drive(self, nft: AccessNFT) -> Workload:
        work = Workload(nft, self.rng_work, self.accounts, self.agents, self.opt.ops)
        work.grant_agents()
        for service in self.services:
            service.start()
        killer = threading.Thread(target=self.killer, name="crash-killer", daemon=True)
        killer.start()
        try:
            for i in range(self.opt.ops):
                if self.killer_error is not None:
                    break
                work.step()
                if (i + 1) % 250 == 0:
                    say(f"{self.elapsed()} {i + 1}/{self.opt.ops} operations")
        finally:
            self.workload_done.set()
        killer.join()
        if self.killer_error is not None:
            raise self.killer_error
        say(f"{self.elapsed()} workload done: {dict(sorted(work.counts.items()))}")
        return work

    # -- convergence ----------------------------------------------------------------

    def caught_up(self) -> bool:
        """The listener reached the head and each stage the end of its input."""
        assert self.anvil is not None
        assert self.client is not None
        for service in self.services:
            service.check()
        head = self.anvil.block_number()
        block: Any = self.client.hget(self.keys.cursor, "block")
        if block is None or int(block) < head:
            return False
        for stage in ("registry", "ipam"):
            last: Any = self.client.xrevrange(self.keys.input(stage), count=1)
            position: Any = self.client.get(self.keys.position(stage))
            if last and (position is None or position != last[0][0]):
                return False
        return True

    # -- checks ---------------------------------------------------------------------

    def before_checks(self) -> None:
        """Called once everything caught up, before the checks (a test may tamper here)."""

    def check_events(self) -> list[str]:
        """The events stream against an independent eth_getLogs scan."""
        assert self.anvil is not None
        assert self.client is not None
        problems: list[str] = []
        items, bad = read_stream(self.client, self.keys.events)
        if bad:
            problems.append(f"events: {len(bad)} entries do not decode (e.g. {bad[0]})")
        prev = GENESIS_DIGEST
        for entry_id, entry in items:
            if not isinstance(entry, LogEntry | Retracted):
                problems.append(f"events: {entry_id} is a {type(entry).__name__}")
                continue
            if entry.prev != prev or not entry.digest_ok():
                problems.append(f"events: digest chain broken at {entry_id}")
                break
            prev = entry.digest
        cursor: Any = self.client.hget(self.keys.cursor, "digest")
        if items and (cursor or b"").decode() != prev:
            problems.append("events: the cursor's digest is not the last entry's")
        raw = [
            (e.block_number, e.log_index, e.block_hash) for _, e in items if isinstance(e, LogEntry)
        ]
        if len(raw) != len(set(raw)):
            dupes = [p for p, n in Counter(raw).items() if n > 1]
            problems.append(f"events: {len(dupes)} logs appended twice (e.g. {dupes[0]})")
        live = [e for _, e in effective(items) if isinstance(e, LogEntry)]
        where = [(e.block_number, e.log_index) for e in live]
        if len(where) != len(set(where)):
            problems.append("events: duplicate (block, log index) among effective entries")
        for entry in live:
            if entry.chain_id != CHAIN_ID or entry.contract != self.keys.contract:
                problems.append(
                    f"events: entry of block {entry.block_number} names another network"
                )
                break
        got = [(e.block_number, e.log_index, e.tx_hash, e.block_hash, e.event) for e in live]
        want = scan_chain(self.anvil.url, self.keys.contract, self.anvil.block_number())
        problems += compare_lists("events vs eth_getLogs", got, want)
        dead: Any = self.client.xlen(self.keys.dead("listener"))
        if dead:
            problems.append(f"listener dead-lettered {dead} logs (every log decodes)")
        self.events_count = len(live)
        return problems

    def clean_fold(self) -> Keys:
        """The same (effective) events, folded by in-process stages in a fresh namespace."""
        assert self.client is not None
        clean = Keys(CHAIN_ID, self.keys.contract, prefix=CLEAN_PREFIX)
        raw: Any = self.client.xrange(self.keys.events)
        decoded = [(i.decode(), from_fields(f)) for i, f in raw]
        keep = {i for i, _ in effective(decoded)}
        pipe = self.client.pipeline(transaction=False)
        for raw_id, fields in raw:
            if raw_id.decode() in keep:
                pipe.xadd(clean.events, fields, id=raw_id)
        pipe.execute()
        for fold in (REGISTRY_FOLD, IpamFold.from_settings(self.settings)):
            stage: Stage[Any] = Stage(self.client, clean, fold)
            while stage.step(block_ms=None):
                pass
        return clean

    def check_stages(self, clean: Keys) -> list[str]:
        assert self.client is not None
        client = self.client
        problems: list[str] = []
        for stage in ("registry", "ipam"):
            live_state: Any = client.hgetall(self.keys.state(stage))
            clean_state: Any = client.hgetall(clean.state(stage))
            problems += compare_hashes(f"{stage} state", live_state, clean_state)
            live_dead_raw: Any = client.xrange(self.keys.dead(stage))
            clean_dead_raw: Any = client.xrange(clean.dead(stage))
            reasons = [f.get(b"reason") for _, f in live_dead_raw]
            clean_reasons = [f.get(b"reason") for _, f in clean_dead_raw]
            problems += compare_lists(f"{stage} dead letters", reasons, clean_reasons)
        registry, bad = read_stream(client, self.keys.registry)
        clean_registry, _ = read_stream(client, clean.registry)
        if bad:
            problems.append(f"registry: {len(bad)} entries do not decode")
        problems += compare_lists(
            "registry stream",
            [payload(e) for _, e in effective(registry)],
            [payload(e) for _, e in effective(clean_registry)],
        )
        peers, bad = read_stream(client, self.keys.peers)
        clean_peers, _ = read_stream(client, clean.peers)
        if bad:
            problems.append(f"peers: {len(bad)} entries do not decode")
        info: Any = client.xinfo_stream(self.keys.peers) if peers else {}
        # XTRIM leaves max-deleted-entry-id alone: compare what was added with what is left
        trimmed = int(info.get("entries-added", 0)) > int(info.get("length", 0))
        if trimmed:  # retention: what is left is the newest part of the full stream
            live_tail = [payload(e) for _, e in peers]
            full = [payload(e) for _, e in clean_peers]
            problems += compare_lists(
                "peers stream (kept part)", live_tail, full[-len(live_tail) :]
            )
            self.notes.append(f"peers stream trimmed to {len(peers)} of {len(full)} entries")
        else:
            problems += compare_lists(
                "peers stream",
                [payload(e) for _, e in effective(peers)],
                [payload(e) for _, e in effective(clean_peers)],
            )
        self.peers_count = len(clean_peers)
        self.kinds = Counter(type(e).__name__ for _, e in [*clean_registry, *clean_peers])
        problems += self.check_snapshot(peers, clean_peers)
        return problems

    def check_snapshot(
        self, peers: list[tuple[str, Any]], clean_peers: list[tuple[str, Any]]
    ) -> list[str]:
        """ipam's latest snapshot holds the clean peer set as of the entry it names."""
        assert self.client is not None
        raw: Any = self.client.hmget(self.keys.snapshot, "id", "data")
        if raw[0] is None or raw[1] is None:
            return ["ipam wrote no peers snapshot"]
        through = raw[0].decode()
        live_ids = [i for i, _ in peers]
        if through not in live_ids:
            return [f"the peers snapshot names {through}, not an entry of the peers stream"]
        index = len(clean_peers) - len(peers) + live_ids.index(through)
        want = PeerTable()
        for _, entry in effective(clean_peers[: index + 1]):
            want.apply(entry)
        have = PeerTable()
        for peer in msgspec.json.decode(raw[1], type=PeersSnapshot).peers:
            have.apply(peer)
        if have.records != want.records:
            return [
                f"the peers snapshot at {through} differs from the clean peer set there: "
                f"{len(have.records)} vs {len(want.records)} peers"
            ]
        return []

    def expected_agents(self, clean: Keys) -> dict[str, Desired]:
        """Each agent's desired state, from the clean peer table."""
        assert self.client is not None
        clean_peers, _ = read_stream(self.client, clean.peers)
        table = PeerTable()
        for _, entry in effective(clean_peers):
            table.apply(entry)
        nodes = sorted(table.records)
        raw: Any = self.client.mget([self.keys.host_announce(n) for n in nodes]) if nodes else []
        announcements = {n: v for n, v in zip(nodes, raw, strict=True) if v is not None}
        policy = Policy.from_settings(self.settings)
        now = time.time()  # cancelled passes are expired; the others expire hours later
        return {
            a.node: desired_state(
                table.records, a.node, a.public_key, announcements, policy, now=now
            )
            for a in self.agents
        }

    def agent_problems(self, expected: dict[str, Desired]) -> list[str]:
        problems: list[str] = []
        for agent in self.agents:
            desired = expected[agent.node]
            text = render_config(
                desired, listen_port=WG_PORT, private_key_file=str(agent.key_file.absolute())
            )
            try:
                have = agent.config_path.read_text()
            except OSError as exc:
                problems.append(f"{agent.node}: no config file ({exc.strerror})")
                have = ""
            if have and have != text:
                diff = list(
                    difflib.unified_diff(text.splitlines(), have.splitlines(), lineterm="", n=0)
                )
                problems.append(
                    f"{agent.node}: config file differs from the desired state: "
                    + " | ".join(line[:120] for line in diff[2:8])
                )
            if agent.host is not None:
                problems += self.interface_problems(agent, desired)
        return problems

    def interface_problems(self, agent: Agent, desired: Desired) -> list[str]:
        assert agent.host is not None
        ifname = agent.host.ifname
        state = parse_dump(agent.host.exec(["wg", "show", ifname, "dump"]).stdout)
        want = wanted_peers(desired)
        problems: list[str] = []
        if state.public_key != agent.public_key or state.listen_port != WG_PORT:
            problems.append(f"{agent.node}: interface key or listen port not the host's")
        if set(state.peers) != set(want):
            extra = sorted(set(state.peers) - set(want))
            missing = sorted(set(want) - set(state.peers))
            problems.append(
                f"{agent.node}: interface peers differ: {len(extra)} extra, {len(missing)} missing"
            )
        for key in sorted(set(state.peers) & set(want)):
            have, spec = state.peers[key], want[key]
            if (
                have.allowed_ips != spec.allowed_ips
                or have.keepalive != spec.keepalive
                or not endpoint_matches(spec.endpoint, have.endpoint, None)
            ):
                problems.append(f"{agent.node}: peer {spec.node_id}: interface {have} vs {spec}")
        out = agent.host.exec(["ip", "-o", "addr", "show", "dev", ifname]).stdout
        for address in desired.addresses:
            if f" {address} " not in out:
                problems.append(f"{agent.node}: interface lacks address {address}")
        return problems

    def check_agents(self, clean: Keys) -> list[str]:
        expected = self.expected_agents(clean)
        problems = [
            f"{node}: not a live member of the clean fold ({d.fail_closed}): a harness bug"
            for node, d in expected.items()
            if d.fail_closed
        ]
        if problems:
            return problems
        found: list[str] = []

        def settled() -> bool:
            for service in self.services:
                service.check()
            found[:] = self.agent_problems(expected)
            return not found

        with contextlib.suppress(TimeoutError):
            wait_for(settled, timeout=self.opt.settle_timeout, interval=0.5, what="agents settled")
        peers = {n: len(d.peers) for n, d in expected.items()}
        say(f"{self.elapsed()} agents' desired peers: {peers}")
        for agent in self.agents:
            strays = list(agent.config_dir.glob(f".{agent.interface}.conf.*.tmp"))
            if strays:
                self.notes.append(f"{agent.node}: {len(strays)} stray temp files in its config dir")
        return found

    # -- the whole run --------------------------------------------------------------

    def run(self) -> Report:
        opt = self.opt
        logs.setup("WARNING", stage="crash")
        say(
            f"seed {opt.seed}: {opt.ops} ops, >= {opt.kills} kills, wg {'on' if opt.wg else 'off'}, "
            f"retention {opt.retention}; work folder {self.workdir}"
        )
        ok = False
        try:
            nft = self.start_world()
            self.make_agents()
            self.make_services()
            work = self.drive(nft)
            try:
                wait_for(self.caught_up, timeout=CATCH_UP_TIMEOUT, interval=0.2, what="catch-up")
            except TimeoutError:
                self.problems.append("the pipeline did not catch up with the chain")
            say(f"{self.elapsed()} caught up; {sum(self.kills.values())} kills: {dict(self.kills)}")
            self.before_checks()
            self.problems += self.check_events()
            clean = self.clean_fold()
            self.problems += self.check_stages(clean)
            self.problems += self.check_agents(clean)
            for service in self.services:
                self.problems += service.crashes
            if sum(self.kills.values()) < opt.kills:
                self.problems.append(f"only {sum(self.kills.values())} kills happened")
            ok = not self.problems
            report = Report(
                opt.seed,
                work.counts,
                self.kills,
                self.events_count,
                self.peers_count,
                time.monotonic() - self.started,
                self.notes,
                self.kinds,
            )
        except BaseException as exc:
            self.problems.append(f"harness error: {exc!r}")
            raise self._failure() from exc
        finally:
            self.abort.set()
            self.teardown(ok)
        if not ok:
            raise self._failure()
        for note in self.notes:
            say(f"note: {note}")
        say(report.summary())
        return report

    def _failure(self) -> CrashFailure:
        lines = [f"crash harness FAILED (seed {self.opt.seed}); replay: {self.opt.command}"]
        lines += [f"  - {p}" for p in self.problems]
        lines += [f"  note: {n}" for n in self.notes]
        lines.append(f"  logs, AOF and config files kept in {self.workdir}")
        for service in self.services:
            if service.crashes:
                lines.append(f"  last lines of {service.name}:\n{service.tail()}")
        message = "\n".join(lines)
        print(message, file=sys.stderr, flush=True)
        return CrashFailure(message)

    def teardown(self, ok: bool) -> None:
        for service in self.services:
            with contextlib.suppress(Exception):
                age = time.monotonic() - service.started_at
                code = service.stop()
                if code not in (0, None):
                    self.notes.append(
                        f"{service.name} exited with code {code} on SIGTERM "
                        f"{age:.1f}s after its start"
                    )
        if self.client is not None:
            self.client.close()
        if self.lab is not None:
            self.lab.cleanup()
        for part in (self.redis, self.anvil):
            if part is not None:
                with contextlib.suppress(Exception):
                    part.stop()
        if ok and not self.opt.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)


def run(options: Options) -> Report:
    """Run the harness once; raises :class:`CrashFailure` (with the seed) on any problem."""
    return Harness(options).run()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.crash.harness",
        description="Crash anywhere: the pipeline under seeded SIGKILLs.",
    )
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: a new one)")
    parser.add_argument("--ops", type=int, default=2000, help="contract operations")
    parser.add_argument("--kills", type=int, default=20, help="least number of SIGKILLs")
    parser.add_argument(
        "--wg",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="one agent on a real wireguard-go interface in a network namespace (needs root)",
    )
    parser.add_argument("--retention", type=int, default=0, help="peers entries kept (0: all)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    if args.wg:
        ok, reason = available()
        if not ok:
            print(f"[crash] --wg needs a network-namespace lab: {reason} (or use --no-wg)")
            return 2
    options = Options(seed, args.ops, args.kills, args.wg, args.retention, args.keep)
    try:
        run(options)
    except CrashFailure:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
