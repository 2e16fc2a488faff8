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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, get_args

import msgspec
import redis

from consumers.audit import compare
from consumers.audit.entries import Decoded
from consumers.audit.inprocess import run_fold
from consumers.audit.streams import read_stream
from consumers.ipam.allocate import IpamFold
from shared.errors import DecodeError
from shared.events import SCHEMA_VERSION, PeersChange, RegistryChange, encode, from_fields
from shared.keys import Keys
from shared.redis_log import START

#: The ``v`` of a current envelope, and the entry types a stage writes besides retractions.
_VERSION: Final = str(SCHEMA_VERSION).encode()
_PLAIN: Final = frozenset(t.__name__ for t in (*get_args(RegistryChange), *get_args(PeersChange)))
#: Seconds the replay waits for the worker once its own fold is done.
WAIT_S: Final = 1800.0


@dataclass(frozen=True)
class LiveSide:
    """What the worker found (``plain`` False: the replay compares the old way)."""

    plain: bool
    #: :func:`payload_digest` of the live ``registry`` payloads, and its last id.
    registry_digest: str = ""
    registry_last: str = START
    #: The ipam fold of the live registry stream: its state hash.
    ipam_state: dict[str, bytes] | None = None
    #: Whether the live ``peers`` payloads are that fold's outputs, and their content digest.
    peers_equal: bool = False
    peers_digest: str = ""
    peers_count: int = 0


def payload_digest(payloads: Sequence[bytes]) -> str:
    """sha256 of a sequence of payloads (each length-prefixed: equal digests, equal lists)."""
    h = hashlib.sha256()
    for p in payloads:
        h.update(len(p).to_bytes(8, "big"))
        h.update(p)
    return h.hexdigest()


def _plain(client: redis.Redis, key: str, last: str) -> list[tuple[str, dict[bytes, bytes]]] | None:
    """The entries of ``key`` up to ``last``; None unless each is a current plain envelope."""
    if last == START:
        return []
    entries = read_stream(client, key, high=last)
    for _, fields in entries:
        kind = fields.get(b"type")
        if fields.get(b"v") != _VERSION or kind is None or kind == b"Retracted":
            return None
        if kind.decode("ascii", "replace") not in _PLAIN:
            return None
    return entries


def live_side(
    client: redis.Redis, keys: Keys, ipam: IpamFold, registry_last: str, peers_last: str
) -> LiveSide:
    """Read the live streams, fold ``registry`` through ``ipam``, check ``peers``."""
    registry = _plain(client, keys.registry, registry_last)
    if registry is None:
        return LiveSide(plain=False)
    payloads = [fields[b"data"] for _, fields in registry]
    decoded: list[Decoded] = []
    try:
        for entry_id, fields in registry:
            decoded.append((entry_id, from_fields(fields)))
    except DecodeError:
        return LiveSide(plain=False)
    del registry
    folded = run_fold(ipam, decoded)
    if folded is None:
        return LiveSide(plain=False)
    state, peers_out = folded
    side = LiveSide(
        plain=True,
        registry_digest=payload_digest(payloads),
        registry_last=decoded[-1][0] if decoded else START,
        ipam_state=ipam.dump(state),
    )
    del payloads
    peers = _plain(client, keys.peers, peers_last)
    if peers is None or len(peers) != len(peers_out):
        return side
    for (_, fields), (_, entry) in zip(peers, peers_out, strict=True):
        if not isinstance(entry, msgspec.Struct) or fields[b"data"] != encode(entry):
            return side
    content = compare.content(peers_out, compare.ordinals(decoded))
    return dataclasses.replace(
        side,
        peers_equal=True,
        peers_digest=compare.content_digest(content),
        peers_count=len(content),
    )


class Worker:
    """:func:`live_side` in a forked process; :meth:`result` is None if it failed."""

    def __init__(
        self, client: redis.Redis, keys: Keys, ipam: IpamFold, registry_last: str, peers_last: str
    ) -> None:
        context = multiprocessing.get_context("fork")
        self._conn, child = context.Pipe(duplex=False)
        args = (child, (client, keys, ipam, registry_last, peers_last))
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


def _serve(conn: multiprocessing.connection.Connection, job: tuple[Any, ...]) -> None:
    client, keys, ipam, registry_last, peers_last = job
    client.connection_pool.reset()  # never share the parent's sockets
    try:
        answer: Any = live_side(client, keys, ipam, registry_last, peers_last)
    except Exception as exc:  # the replay compares the old way
        answer = f"{type(exc).__name__}: {exc}"
    conn.send(answer)
    conn.close()


__all__ = ["LiveSide", "Worker", "live_side", "payload_digest"]
