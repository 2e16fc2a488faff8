"""Dead letters in Redis: list them, find one, queue one for re-drive, learn the outcome.

Every stage moves what it cannot decode or apply to its dead-letter stream
(``Keys.dead(stage)``), in the same atomic commit as its other effects: fields ``id``
(the original entry id; for the listener, the log's position), ``reason`` and ``raw``
(the original entry's fields as JSON, for the listener the raw log).

Re-drive (registry and ipam only). Re-appending the original to the stage's input
would be wrong: other readers of that stream would see it twice, and in ``events``
it would break the digest chain. Instead :func:`queue` appends a request naming the
dead letter to the stage's own retry stream (``Keys.retry(stage)``); the stage reads
it before its next batch and applies the original entry through its fold, with its
original id, in one commit that also records the request as done
(``consumers.stage.Stage.redrive``). So a request takes effect exactly once; the dead
letter is deleted after that commit, or, when the entry fails again, replaced by a
new dead letter with the new reason. The listener's dead letters are chain logs it
could not decode; they are not re-driven (the chain is the source: fix the decoder and
replay the listener from the block).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import msgspec
import redis

from shared import streams
from shared.errors import BadArgument, WgchainError
from shared.keys import Keys
from shared.redis_log import as_str, redis_retry

#: Stages that dead-letter, in pipeline order.
STAGES: Final = ("listener", "registry", "ipam")
#: Stages whose dead letters can be re-driven.
REDRIVABLE: Final = ("registry", "ipam")
#: A Redis stream id.
STREAM_ID: Final = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")


@dataclass(frozen=True, slots=True)
class Letter:
    """One dead letter: where it is, what it was, and why it was set aside."""

    stage: str
    ident: str
    original: str
    reason: str
    raw: bytes

    @property
    def time(self) -> str:
        """When it was dead-lettered (UTC, from its stream id)."""
        millis = int(self.ident.split("-", 1)[0])
        return datetime.fromtimestamp(millis / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")

    def fields(self) -> list[tuple[str, bytes]]:
        """The original entry's fields (a stage's letter), or the raw log (the listener's)."""
        if self.stage != "listener":
            try:
                decoded = msgspec.json.decode(self.raw, type=dict[str, str])
                return [(k, v.encode("latin-1")) for k, v in decoded.items()]
            except (msgspec.DecodeError, UnicodeEncodeError):
                pass
        return [("raw", self.raw)]

    @property
    def entry_type(self) -> str:
        """The ``type`` field of the original entry ("" when it has none)."""
        return next((escape(v) for k, v in self.fields() if k == "type"), "")


def escape(data: bytes | str, limit: int | None = None) -> str:
    """``data`` as one line of printable ASCII (``\\n``, ``\\x00``, ``\\u043e``...), cut at ``limit``."""
    text = data.decode("latin-1") if isinstance(data, bytes) else data
    shown = text if limit is None else text[:limit]
    out = shown.encode("unicode_escape").decode("ascii")
    if limit is not None and len(text) > limit:
        out += f"...(+{len(text) - limit} chars)"
    return out


def _letter(stage: str, raw_id: bytes | str, fields: dict[bytes, bytes]) -> Letter:
    return Letter(
        stage=stage,
        ident=as_str(raw_id),
        original=escape(fields.get(b"id", b"")),
        reason=fields.get(b"reason", b"").decode("utf-8", "replace"),
        raw=fields.get(b"raw", b""),
    )


def letters(client: redis.Redis, keys: Keys, stage: str, limit: int) -> list[Letter]:
    """The newest ``limit`` dead letters of ``stage``, oldest first."""
    raw: Any = redis_retry(client.xrevrange, keys.dead(stage), count=limit)
    return [_letter(stage, i, f) for i, f in reversed(raw)]


def count(client: redis.Redis, keys: Keys, stage: str) -> int:
    """How many dead letters ``stage`` holds."""
    return int(redis_retry(client.xlen, keys.dead(stage)))


def find(client: redis.Redis, keys: Keys, ident: str, stages: tuple[str, ...]) -> Letter:
    """The dead letter ``ident`` in one of ``stages``; :class:`WgchainError` if none
    (:class:`BadArgument` when ``ident`` is no stream id)."""
    if not STREAM_ID.fullmatch(ident):
        raise BadArgument(
            "IDENT", f"{escape(ident, 40)} is not a dead-letter id (like 1712000000000-0)"
        )
    for stage in stages:
        raw: Any = redis_retry(client.xrange, keys.dead(stage), ident, ident)
        if raw:
            return _letter(stage, raw[0][0], raw[0][1])
    raise WgchainError(f"no dead letter {ident} in {', '.join(stages)}")


def queued(client: redis.Redis, keys: Keys, stage: str) -> dict[str, str]:
    """Dead-letter id -> re-drive request id, of the requests ``stage`` has not applied yet."""
    if stage not in REDRIVABLE:
        return {}
    requests = streams.read(client, keys.retry(stage))
    return {as_str(fields.get(b"dead", b"")): request for request, fields in requests}


def queue(client: redis.Redis, keys: Keys, letter: Letter) -> str:
    """Ask ``letter``'s stage to apply its original entry again; returns the request id."""
    if letter.stage not in REDRIVABLE:
        raise WgchainError(
            f"{letter.stage} dead letter {letter.ident} is a chain log that did not decode; it is"
            " not re-driven (fix the cause, then replay the listener from its block)"
        )
    if letter.entry_type == "Retracted":
        raise WgchainError(
            f"{letter.stage} dead letter {letter.ident} is a retraction: it only makes sense in"
            " stream order (replay the stage instead)"
        )
    request = redis_retry(client.xadd, keys.retry(letter.stage), {"dead": letter.ident})
    return as_str(request)


def pending(client: redis.Redis, keys: Keys, stage: str, request: str) -> bool:
    """True while ``stage`` has not applied the re-drive ``request`` yet."""
    raw: Any = redis_retry(client.xrange, keys.retry(stage), request, request)
    return bool(raw)


def failed_again(client: redis.Redis, keys: Keys, letter: Letter, request: str) -> Letter | None:
    """The new dead letter of ``letter``'s entry written by ``request``'s commit, if any."""
    since = request.split("-", 1)[0]  # ids of two streams may tie within one millisecond
    raw: Any = redis_retry(client.xrange, keys.dead(letter.stage), min=since)
    again = [_letter(letter.stage, i, f) for i, f in raw]
    return next((x for x in reversed(again) if x.original == letter.original), None)
