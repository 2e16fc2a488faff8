"""Canonical dumps, digests and field-level diffs of projections. Pure.

A state hash is compared as its sorted (field, value) pairs. A stream is compared
by its *effective content*: the entries left after retractions (``effective``), in
order, as canonical JSON, with stream ids that differ between two runs of the same
fold replaced by something that does not: in ``peers``, ``cause`` (the id of the
``registry`` entry that caused it) becomes ``#n``, that entry's position in the
effective ``registry`` content. ``events`` ids (``cause`` in ``registry``, ``origin``
in ``peers``) are the same in a replay, which keeps them, so they are compared as is.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Final

import msgspec

from consumers.audit.entries import Decoded, Undecodable
from shared.events import effective
from shared.validate import excerpt

_JSON: Final = msgspec.json.Decoder()
#: The encoder of ``shared.events.encode`` (same output), for a whole list at once.
_ENCODER: Final = msgspec.json.Encoder()
#: Prefix of a state hash's bookkeeping fields, which are not fold state: ``~retry`` (the
#: last re-drive request a stage applied, ``consumers.stage.RETRY_FIELD``). A replay
#: never re-drives, so they are left out of every comparison.
BOOKKEEPING_PREFIX: Final = "~"
#: Entries encoded per call when a digest is computed over a whole list.
DIGEST_CHUNK: Final = 10_000


def state_fields(fields: Mapping[str, bytes]) -> dict[str, bytes]:
    """The fields of a state hash that hold fold state (bookkeeping left out)."""
    return {k: v for k, v in fields.items() if not k.startswith(BOOKKEEPING_PREFIX)}


def state_digest(fields: Mapping[str, bytes]) -> str:
    """sha256 of a state hash's canonical dump: its fold-state (field, value) pairs sorted,
    as one JSON array (values base64). Sorted here: msgspec's ``order="sorted"`` takes
    seconds on a dump whose fields come in numeric order."""
    pairs = sorted(state_fields(fields).items())
    return hashlib.sha256(msgspec.json.encode(pairs)).hexdigest()


def same_state(live: Mapping[str, bytes], replay: Mapping[str, bytes]) -> bool:
    """Whether two state hashes hold the same fold state, so have the same
    :func:`state_digest`: one digest serves both (a dict comparison costs a fraction of
    a digest, which sorts and encodes every field)."""
    return live == replay or state_fields(live) == state_fields(replay)


def state_digests(
    live: Mapping[str, bytes], replay: Mapping[str, bytes], replay_digest: str = ""
) -> tuple[str, str]:
    """(live, replay) :func:`state_digest`; computed once when the states are the same
    (``replay_digest``: the replay's, when already known)."""
    replay_digest = replay_digest or state_digest(replay)
    if same_state(live, replay):
        return replay_digest, replay_digest
    return state_digest(live), replay_digest


def content_digest(items: Sequence[bytes]) -> str:
    """sha256 of a stream's canonical content (see :func:`content`): its items as one JSON
    array (each item is one JSON value, so equal digests mean equal item lists)."""
    h = hashlib.sha256(b"[")
    h.update(b",".join(items))
    h.update(b"]")
    return h.hexdigest()


def outputs_digest(outputs: Sequence[Decoded]) -> str:
    """``content_digest(content(outputs))`` of a fold's outputs (``run_fold``'s: no
    retraction, nothing undecodable, no cause to replace), encoded a list at a time."""
    return _list_digest([entry for _, entry in outputs])


def _list_digest(items: list[Any]) -> str:
    """sha256 of ``items`` encoded as one JSON array, encoded :data:`DIGEST_CHUNK` at a time."""
    h = hashlib.sha256(b"[")
    buf = bytearray()
    for start in range(0, len(items), DIGEST_CHUNK):
        if start:
            h.update(b",")
        _ENCODER.encode_into(items[start : start + DIGEST_CHUNK], buf)
        h.update(memoryview(buf)[1:-1])
    h.update(b"]")
    return h.hexdigest()


class ContentHash:
    """:func:`content_digest` of items given a batch at a time."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256(b"[")
        self._first = True

    def update(self, items: Sequence[bytes]) -> None:
        """Add ``items``."""
        self.update_joined(b",".join(items), bool(items))

    def update_joined(self, joined: bytes, nonempty: bool = True) -> None:
        """Add items given as ``b",".join(items)`` (``nonempty``: there was at least one)."""
        if not nonempty:
            return
        if not self._first:
            self._hash.update(b",")
        self._hash.update(joined)
        self._first = False

    def hexdigest(self) -> str:
        h = self._hash.copy()
        h.update(b"]")
        return h.hexdigest()


#: The ``cause`` key of a canonical JSON object and its string value (unescaped quotes only
#: occur around keys and values: inside a string they are escaped).
_CAUSE: Final = re.compile(rb'"cause":"([^"\\]*)"')


def numbered(
    encoded: Sequence[bytes], entries: Sequence[Decoded], causes: Mapping[str, int]
) -> bytes:
    """``b",".join(content(entries, causes))`` of entries that are all ``peers`` changes
    (flat objects with one ``cause``, no retraction, nothing undecodable), given ``encoded``:
    each entry's canonical JSON as it is (``encode``).

    The ``cause`` ids are replaced by their positions in the encoded bytes themselves, not
    by encoding every entry again: in canonical JSON an unescaped ``"cause":"`` is the
    key. Unless each entry's key was found once and its cause is known, the entries are
    encoded again (``content``)."""
    # [text, cause, text, cause, ..., text]: each cause replaced at C speed
    pieces = _CAUSE.split(b",".join(encoded))
    numbers = list(map(causes.get, map(bytes.decode, pieces[1::2])))
    if len(numbers) != len(encoded) or None in numbers:
        return b",".join(content(entries, causes))
    pieces[1::2] = map(b'"cause":"#%d"'.__mod__, numbers)
    return b"".join(pieces)


def ordinals(registry: Sequence[Decoded]) -> dict[str, int]:
    """registry entry id -> its position in the effective registry content."""
    return {entry_id: n for n, (entry_id, _) in enumerate(effective(registry))}


def _shown(entries: Sequence[Decoded], causes: Mapping[str, int] | None) -> list[Any]:
    """The effective entries of a stream as they are compared (see :func:`content`)."""
    out: list[Any] = []
    replace = msgspec.structs.replace
    for _, entry in effective(entries):
        if isinstance(entry, Undecodable):
            out.append({"type": "undecodable", "reason": entry.reason})
            continue
        cause = getattr(entry, "cause", "")
        if causes is not None and cause:
            number = causes.get(cause)
            shown = f"#{number}" if number is not None else f"?{cause}"
            out.append(replace(entry, cause=shown))  # type: ignore[type-var]
        else:
            out.append(entry)
    return out


def content(entries: Sequence[Decoded], causes: Mapping[str, int] | None = None) -> list[bytes]:
    """The effective entries of a stream as canonical JSON; with ``causes`` (registry id ->
    position), ``cause`` ids are replaced by their position (``#n``)."""
    return [_ENCODER.encode(item) for item in _shown(entries, causes)]


def content_digest_of(entries: Sequence[Decoded], causes: Mapping[str, int] | None = None) -> str:
    """``content_digest(content(entries, causes))``, encoded a list at a time."""
    return _list_digest(_shown(entries, causes))


def _parse(raw: bytes) -> Any:
    try:
        return _JSON.decode(raw)
    except msgspec.DecodeError:
        return raw.decode("latin-1")


def _show(value: Any) -> str:
    text = value if isinstance(value, str) else msgspec.json.encode(value).decode()
    return excerpt(text)


def _paths(live: Any, replay: Any, path: str) -> Iterator[str]:
    """``path: live X, replay Y`` for every leaf where two JSON values differ."""
    if isinstance(live, dict) and isinstance(replay, dict):
        for key in sorted(set(live) | set(replay), key=str):
            sub = f"{path}.{excerpt(str(key))}"
            if key not in live:
                yield f"{sub}: only in the replay: {_show(replay[key])}"
            elif key not in replay:
                yield f"{sub}: only live: {_show(live[key])}"
            elif live[key] != replay[key]:
                yield from _paths(live[key], replay[key], sub)
    elif live != replay:
        yield f"{path}: live {_show(live)}, replay {_show(replay)}"


def diff_state(live: Mapping[str, bytes], replay: Mapping[str, bytes]) -> list[str]:
    """One line per difference between two state hashes, field by field (JSON leaf by leaf)."""
    live, replay = state_fields(live), state_fields(replay)
    lines: list[str] = []
    for name in sorted(set(live) | set(replay)):
        lines += _differences(live.get(name), replay.get(name), excerpt(name))
    return lines


def diff_content(live: Sequence[bytes], replay: Sequence[bytes]) -> list[str]:
    """One line per difference between two streams' contents, entry by entry."""
    lines: list[str] = []
    for n in range(max(len(live), len(replay))):
        a = live[n] if n < len(live) else None
        b = replay[n] if n < len(replay) else None
        lines += _differences(a, b, f"entry #{n}")
    return lines


def _differences(live: bytes | None, replay: bytes | None, shown: str) -> list[str]:
    """The lines that tell one live value from its replayed one (None: absent on that side)."""
    if live is None:
        return [] if replay is None else [f"{shown}: only in the replay: {_show(_parse(replay))}"]
    if replay is None:
        return [f"{shown}: only live: {_show(_parse(live))}"]
    return [] if live == replay else list(_paths(_parse(live), _parse(replay), shown))


__all__ = [
    "ContentHash",
    "content",
    "content_digest",
    "content_digest_of",
    "diff_content",
    "diff_state",
    "numbered",
    "ordinals",
    "outputs_digest",
    "same_state",
    "state_digest",
    "state_digests",
    "state_fields",
]
