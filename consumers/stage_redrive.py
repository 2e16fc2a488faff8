"""Re-driven dead letters (``wgchain deadletters retry``) for a :class:`~consumers.stage.Stage`
(I/O), and how a dead letter keeps the entry it set aside.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Final

import msgspec

from shared.errors import CommitConflict
from shared.ids import id_key
from shared.redis_log import Batch, as_str, redis_retry

if TYPE_CHECKING:
    from consumers.stage import Stage

#: State-hash field holding the id of the last re-drive request applied (not fold state).
RETRY_FIELD: Final = "~retry"
#: Re-drive requests read per step.
REQUESTS_PER_STEP: Final = 500
_STREAM_ID: Final = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")


class Poison(Exception):
    """An entry its fold cannot apply: the stage moves it to the dead letters."""

    def __init__(self, entry_id: str, reason: str) -> None:
        super().__init__(reason)
        self.entry_id = entry_id
        self.reason = reason


def redrive(stage: Stage[Any]) -> int:
    """Apply the dead letters an operator queued in the retry stream; returns how many.

    A request names a dead letter. Its original entry goes through :meth:`Stage._apply <consumers.stage.Stage>`
    like an input entry (same entry id), in a commit of its own that also stores
    the request id in the state hash (:data:`RETRY_FIELD`): a request takes effect
    exactly once. The dead letter and the request are deleted only after that
    commit (a stage killed in between deletes them when it restarts); an entry
    that fails again is dead-lettered anew, with the new reason, in the commit.
    """
    requests: Any = redis_retry(stage.client.xrange, stage.retry, count=REQUESTS_PER_STEP)
    for raw_id, fields in requests:
        request, dead_id = as_str(raw_id), as_str(fields.get(b"dead", b""))
        pending = id_key(request) > id_key(stage.retry_position)
        if pending and not _redrive_one(stage, request, dead_id):
            return 0
        pipe = stage.client.pipeline(transaction=True)
        if _STREAM_ID.fullmatch(dead_id):
            pipe.xdel(stage.store.dead, dead_id)
        pipe.xdel(stage.retry, request)
        redis_retry(pipe.execute)
    return len(requests)


def _redrive_one(stage: Stage[Any], request: str, dead_id: str) -> bool:
    """Apply one request's dead letter (gone already: nothing); False on a conflict."""
    letter: Any = []
    if _STREAM_ID.fullmatch(dead_id):
        letter = redis_retry(stage.client.xrange, stage.store.dead, dead_id, dead_id)
    if not letter:
        return True
    fields = letter[0][1]
    original = [(as_str(fields.get(b"id", b"?")), unraw_fields(fields.get(b"raw", b"")))]
    if original[0][1].get(b"type") == b"Retracted":  # only meaningful in stream order
        why = "a retraction is not re-driven (replay the stage instead)"
        batch = Batch(stage.position, dead=[(original[0][0], why, fields.get(b"raw", b""))])
    else:
        try:
            batch = stage._apply(original, {})
        except Poison as exc:
            stage.position, stage.state = stage._load()
            batch = stage._apply(original, {exc.entry_id: exc.reason})
    batch.position = stage.position
    batch.state_set[RETRY_FIELD] = request.encode()
    try:
        redis_retry(stage.store.commit, stage.position, batch)
    except CommitConflict as exc:
        stage.log.warning("commit conflict ({}); reloading state", exc)
        stage.position, stage.state = stage._load()
        return False
    stage.retry_position = request
    stage._committed(batch)
    outcome = "dead-lettered again" if batch.dead else "applied"
    stage.log.info("re-drove dead letter {} (entry {}): {}", dead_id, original[0][0], outcome)
    return True


def raw_fields(fields: dict[bytes, bytes]) -> bytes:
    """A stream entry's fields as they are kept in a dead letter (JSON, bytes as latin-1)."""
    return msgspec.json.encode(
        {k.decode("latin-1"): v.decode("latin-1") for k, v in fields.items()}
    )


def unraw_fields(raw: bytes) -> dict[bytes, bytes]:
    """The entry fields ``raw_fields`` encoded (empty when ``raw`` is not such an encoding)."""
    try:
        decoded = msgspec.json.decode(raw, type=dict[str, str])
        return {k.encode("latin-1"): v.encode("latin-1") for k, v in decoded.items()}
    except (msgspec.DecodeError, UnicodeEncodeError):
        return {}
