"""The registry's current conflicts and anomalies, kept with the fold state. Pure.

After each event the fold calls :func:`track` with the nodes the event affected;
each node's issues are recomputed from the state (:func:`node_issues`), and an issue
that was already there keeps the contract log that first caused it, named as the
chain names it (block, transaction hash, log index: the same in any replay of the
log, whatever its stream ids). They are persisted in one field of the state hash
(:data:`ISSUES_FIELD`), so a status reads the current ones with one ``HGET`` however
long the history is.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

import msgspec

from consumers.registry.state import RegistryState
from consumers.status.model import ANOMALY, CONFLICT, Issue
from shared.validate import excerpt

#: State-hash field holding every current issue (JSON list, sorted by node and token).
ISSUES_FIELD: Final = "~issues"

_ENCODER: Final = msgspec.json.Encoder()
_DECODER: Final = msgspec.json.Decoder(list[Issue])

#: Why a member is not live that makes an issue (``no-key`` is not one: a transfer to an
#: address without a key, on purpose).
PROBLEMS: Final = frozenset({"invalid-node-id", "key-conflict", "invalid-key"})
#: (kind, reason, token, winner, detail) of one issue as the state shows it now.
_Found = tuple[str, str, int, int | None, str]


def node_issues(state: RegistryState, node: str) -> list[_Found]:
    """What is wrong with ``node`` in ``state`` (no causes: those come from the history)."""
    held = state.node_index.get(node)  # one token, or a set of several
    status = state.status.get(node)  # present exactly while an active token names the node
    if held is None or status is None:
        return []
    if isinstance(held, int) and status.reason not in PROBLEMS:
        return []  # the common case, without building anything
    tokens = {held} if isinstance(held, int) else held
    member = status.token_id  # the lowest active token
    if status.reason == "invalid-node-id":
        return [(ANOMALY, "invalid-node-id", member, None, f"node id {excerpt(node)}")]
    found: list[_Found] = [
        (CONFLICT, "duplicate-node", token, member, "")
        for token in sorted(tokens)
        if token != member
    ]
    if status.reason == "key-conflict":
        found.append((CONFLICT, "duplicate-key", member, None, ""))
    elif status.reason == "invalid-key":
        found.append((ANOMALY, "invalid-key", member, None, f"key {excerpt(status.public_key)}"))
    return found


def track(
    state: RegistryState, nodes: Iterable[str], source: tuple[str, int | None], block: int
) -> None:
    """Recompute the issues of ``nodes`` after the log ``source`` (tx hash, log index) of
    block ``block``."""
    cause, log_index = source
    for node in nodes:
        old = state.issues.get(node, ())
        found = node_issues(state, node)
        if not found and not old:
            continue
        before = {(i.reason, i.token_id): i for i in old}
        now = []
        for kind, reason, token, winner, detail in found:
            issue = before.get((reason, token))
            if issue is None:
                issue = Issue(
                    kind=kind,
                    reason=reason,
                    node=node,
                    token_id=token,
                    winner_token_id=winner,
                    cause=cause,
                    block=block,
                    log_index=log_index,
                    detail=detail,
                )
            elif (issue.winner_token_id, issue.detail) != (winner, detail):
                issue = msgspec.structs.replace(issue, winner_token_id=winner, detail=detail)
            now.append(issue)
        if tuple(now) == old:
            continue
        if now:
            state.issues[node] = tuple(now)
        else:
            del state.issues[node]
        state.issues_dirty = True


def everything(state: RegistryState) -> None:
    """Issues of every node, with no known cause (state persisted before issues were kept)."""
    track(state, sorted(state.node_index), ("", None), 0)


def encode(state: RegistryState) -> bytes | None:
    """The :data:`ISSUES_FIELD` value (None: no issue, the field is deleted)."""
    if not state.issues:
        return None
    return _ENCODER.encode([i for node in sorted(state.issues) for i in state.issues[node]])


def decode(raw: bytes) -> dict[str, tuple[Issue, ...]]:
    """The issues of :data:`ISSUES_FIELD`, by node."""
    by_node: dict[str, list[Issue]] = {}
    for issue in _DECODER.decode(raw):
        by_node.setdefault(issue.node, []).append(issue)
    return {node: tuple(items) for node, items in by_node.items()}


def listed(raw: bytes | None) -> list[Issue]:
    """The issues of a raw :data:`ISSUES_FIELD` value (None or garbage: none)."""
    if not raw:
        return []
    try:
        return _DECODER.decode(raw)
    except msgspec.DecodeError:
        return []
