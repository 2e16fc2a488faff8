"""What a stage reads of its streams besides its next batch (I/O, for ``consumers/stage.py``).

A retraction looks up the committed outputs of the entries it voids and rebuilds the state
from the input; a rebuild leaves out the entries the stage dead-lettered; the snapshot
cadence and the output's retention look at the latest snapshot. Each walk pages through
its stream with :func:`shared.streams.pages` (retrying through an outage) and sets aside
what does not decode.
"""

from __future__ import annotations

from typing import Any

import redis

from shared import streams
from shared.errors import DecodeError
from shared.events import Retracted, from_fields
from shared.ids import id_key
from shared.redis_log import as_str, redis_retry


def committed_outputs(
    client: redis.Redis, output: str, inputs: set[str], *, page_size: int
) -> list[tuple[str, str]]:
    """(output id, input id) of the committed outputs caused by ``inputs``, newest first
    (outputs already retracted left out)."""
    first = min(inputs, key=id_key)
    found: list[tuple[str, str]] = []
    already: set[str] = set()
    for page in streams.pages(client, output, page=page_size, newest_first=True):
        for out_id, fields in page:
            try:
                out = from_fields(fields)
            except DecodeError:
                continue
            if isinstance(out, Retracted):
                already.add(out.entry_id)
                continue
            link = getattr(out, "cause", "")
            if id_key(link) < id_key(first):
                return found
            if link in inputs and out_id not in already:
                found.append((out_id, link))
    return found


def input_entries(
    client: redis.Redis,
    stream: str,
    until: str,
    skip: set[str],
    reads: tuple[type, ...],
    *,
    page_size: int,
) -> list[tuple[str, Any]]:
    """(id, entry) of ``stream`` up to ``until``: entries of the ``reads`` types that decode,
    ``skip`` left out."""
    items: list[tuple[str, Any]] = []
    for page in streams.pages(client, stream, through=until, page=page_size):
        for entry_id, fields in page:
            if entry_id in skip:
                continue
            try:
                entry = from_fields(fields)
            except DecodeError:
                continue
            if isinstance(entry, reads):
                items.append((entry_id, entry))
    return items


def dead_ids(client: redis.Redis, dead: str) -> set[str]:
    """Input ids a stage dead-lettered (they stay out of a rebuild too)."""
    raw: Any = redis_retry(client.xrange, dead)
    return {as_str(f[b"id"]) for _, f in raw if b"id" in f}


def outputs_since_snapshot(client: redis.Redis, snapshot: str, output: str, limit: int) -> int:
    """Output entries after the latest snapshot, counted up to ``limit``; with no snapshot
    at all, ``limit`` (so the next batch writes one)."""
    through: Any = redis_retry(client.hget, snapshot, "id")
    if through is None:
        return limit
    after: Any = redis_retry(client.xrange, output, min=f"({as_str(through)}", count=limit)
    return len(after)


def trim(client: redis.Redis, output: str, snapshot: str, retention: int) -> tuple[int, str]:
    """Drop output entries beyond ``retention``, never past the latest snapshot; returns
    (entries dropped, the id kept from), (0, "") when there was nothing to drop.

    A reader whose position is older than what was dropped starts again from the
    snapshot, so nothing it needs is lost.
    """
    newest: Any = redis_retry(client.xrevrange, output, "+", "-", count=retention)
    through: Any = redis_retry(client.hget, snapshot, "id")
    if len(newest) < retention or through is None:
        return 0, ""
    keep_from = min(as_str(newest[-1][0]), as_str(through), key=id_key)
    dropped = redis_retry(client.xtrim, output, minid=keep_from, approximate=False)
    return int(dropped), keep_from
