"""The live side of an in-process audit replay, checked in a second process.

Without ``--until``, the live ``registry`` and ``peers`` streams up to the snapshot
are exactly what the stages wrote for the whole log. While the replay folds the log
through the registry fold (``consumers/audit/replay.py``), a forked worker reads the
live ``registry`` stream, folds it through the ipam fold, and checks the ``peers``
stream against that fold's outputs. The replay then compares its own registry
outputs with the live ones by digest: when they are byte for byte the same entries
(same canonical payloads, in the same order), the worker's ipam fold had exactly the
replay's input, so its ipam state and peers content are the replay's. Anything else
(a difference, an entry that is not a current envelope, the worker failing) and the
replay folds ipam itself, as before, and compares entry by entry.

The worker uses the live entry ids where the replay uses ``1-0``, ``2-0``, ...: the
comparison replaces those ``cause`` ids by positions (``compare.content``), so the
content is the same. See docs/design.md §12.3.
"""

from __future__ import annotations

import dataclasses
import hashlib
import multiprocessing
import multiprocessing.connection
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, get_args

import redis

from consumers.audit import compare, rawpages
from consumers.audit.entries import Decoded, Undecodable
from consumers.audit.inprocess import run_fold_chunks
from consumers.audit.rawpages import RawEntry, decode_page, fields_of, usual
from consumers.ipam.allocate import IpamFold
from shared.events import SCHEMA_VERSION, PeersChange, RegistryChange, encode
from shared.keys import Keys
from shared.redis_log import START

#: The ``v`` of a current envelope, and the entry types a stage writes besides retractions.
_VERSION: Final = str(SCHEMA_VERSION).encode()
_PLAIN: Final = frozenset(
    t.__name__.encode() for t in (*get_args(RegistryChange), *get_args(PeersChange))
)
#: Seconds the replay waits for the worker once its own fold is done.
WAIT_S: Final = 1800.0


@dataclass(frozen=True)
class LiveSide:
    """What the worker found (``plain`` False: the replay compares the old way)."""

    plain: bool
    #: :func:`~consumers.audit.compare.content_digest` of the live ``registry`` payloads,
    #: and its last id.
    registry_digest: str = ""
    registry_last: str = START
    #: The ipam fold of the live registry stream: its state hash.
    ipam_state: dict[str, bytes] | None = None
    #: Whether the live ``peers`` payloads are that fold's outputs, and their content digest.
    peers_equal: bool = False
    peers_digest: str = ""
    peers_count: int = 0
    #: ``state_digest`` of the live state hashes handed in (stage -> digest), and of
    #: ``ipam_state``: computed here, not on the replay's side.
    live_states: dict[str, str] = dataclasses.field(default_factory=dict)
    ipam_digest: str = ""


def payload_digest(payloads: Sequence[bytes]) -> str:
    """The digest of a stream's ``data`` payloads (``compare.content_digest``)."""
    return compare.content_digest(payloads)


def _payloads(chunk: list[RawEntry]) -> list[bytes] | None:
    """The ``data`` of each entry of a page; None unless each is a current envelope of a
    plain type (not a retraction)."""
    if all(map(usual, chunk)):
        if {f[3] for _, f in chunk} <= _PLAIN:
            return [f[5] for _, f in chunk]
        return None
    out: list[bytes] = []
    for entry in chunk:
        fields = fields_of(entry)
        data = fields.get(b"data")
        if fields.get(b"v") != _VERSION or fields.get(b"type") not in _PLAIN or data is None:
            return None
        out.append(data)
    return out


class _Plain:
    """The decoded pages of a stream while each entry is plain (``broken`` once one is not),
    with the digest of their payloads and their ids."""

    def __init__(self) -> None:
        self.broken = False
        self.ids: list[str] = []
        self._hash = hashlib.sha256(b"[")
        self._first = True

    def pages(self, client: redis.Redis, key: str, last: str) -> Iterator[list[Decoded]]:
        for chunk in rawpages.pages(client, key, last):
            payloads = _payloads(chunk)
            decoded = decode_page(chunk)
            if payloads is None or any(isinstance(e, Undecodable) for _, e in decoded):
                self.broken = True
                return
            self._hash.update(b"," if not self._first else b"")
            self._hash.update(b",".join(payloads))
            self._first = False
            self.ids += [entry_id for entry_id, _ in decoded]
            yield decoded

    def digest(self) -> str:
        h = self._hash.copy()
        h.update(b"]")
        return h.hexdigest()


@dataclass(frozen=True)
class LiveJob:
    """What :func:`live_side` (and so a :class:`Worker`) checks: the live streams up to
    ``registry_last`` and ``peers_last``, folded through ``ipam``, and the digests of the
    live ``states``."""

    client: redis.Redis
    keys: Keys
    ipam: IpamFold
    registry_last: str
    peers_last: str
    states: Mapping[str, Mapping[str, bytes]] | None = None


def live_side(job: LiveJob) -> LiveSide:
    """Read the live streams, fold ``registry`` through ``ipam`` (page by page, as read),
    check ``peers``; and the digests of the live ``states``."""
    client, keys, ipam = job.client, job.keys, job.ipam
    registry_last, peers_last, states = job.registry_last, job.peers_last, job.states
    registry = _Plain()
    folded = run_fold_chunks(ipam, registry.pages(client, keys.registry, registry_last))
    if registry.broken or folded is None:
        live_states = {stage: compare.state_digest(f) for stage, f in (states or {}).items()}
        return LiveSide(plain=False, live_states=live_states)
    state, peers_out = folded
    ipam_state = ipam.dump(state)
    ipam_digest = compare.state_digest(ipam_state)
    live_states = {
        # the live ipam state is usually the fold's: digested once (compare.state_digests)
        stage: compare.state_digests(f, ipam_state, ipam_digest)[0]
        if stage == "ipam"
        else compare.state_digest(f)
        for stage, f in (states or {}).items()
    }
    side = LiveSide(
        plain=True,
        registry_digest=registry.digest(),
        registry_last=registry.ids[-1] if registry.ids else START,
        ipam_state=ipam_state,
        live_states=live_states,
        ipam_digest=ipam_digest,
    )
    n = 0
    causes = {entry_id: n for n, entry_id in enumerate(registry.ids)}
    content = compare.ContentHash()
    for chunk in rawpages.pages(client, keys.peers, peers_last):
        ours = peers_out[n : n + len(chunk)]
        mine = [encode(entry) for _, entry in ours]  # type: ignore[arg-type]
        if _payloads(chunk) != mine:
            return side
        # the content digest from the same bytes, causes numbered in place
        content.update_joined(compare.numbered(mine, ours, causes), bool(mine))
        n += len(chunk)
    if n != len(peers_out):
        return side
    return dataclasses.replace(
        side,
        peers_equal=True,
        peers_digest=content.hexdigest(),
        peers_count=len(peers_out),
    )


class Worker:
    """:func:`live_side` in a forked process; :meth:`result` is None if it failed."""

    def __init__(self, job: LiveJob) -> None:
        context = multiprocessing.get_context("fork")
        self._conn, child = context.Pipe(duplex=False)
        args = (child, job)
        self._proc = context.Process(target=_serve, args=args, daemon=True)
        self._proc.start()
        child.close()

    def result(self, timeout: float = WAIT_S) -> LiveSide | None:
        try:
            if not self._conn.poll(timeout):
                return None
            answer: Any = self._conn.recv()
        except (EOFError, OSError):
            return None
        finally:
            self.close()
        return answer if isinstance(answer, LiveSide) else None

    def close(self) -> None:
        self._conn.close()
        if self._proc.is_alive():
            self._proc.kill()
        self._proc.join()


def _serve(conn: multiprocessing.connection.Connection, job: LiveJob) -> None:
    job.client.connection_pool.reset()  # never share the parent's sockets
    try:
        answer: Any = live_side(job)
    except Exception as exc:  # the replay compares the old way
        answer = f"{type(exc).__name__}: {exc}"
    conn.send(answer)
    conn.close()


__all__ = ["LiveJob", "LiveSide", "Worker", "live_side", "payload_digest"]
