"""Who may hold each node's peer (docs/design.md §4): the registry fold's indexes of active
tokens, the key candidacies and their winners, and a node's published status. Pure.

:mod:`consumers.registry.fold` calls these for the nodes an event affects; they read and
update the indexes of :class:`~consumers.registry.state.RegistryState` in place.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from consumers.registry.state import RegistryState, Status, TokenRecord, _add, _remove
from shared import validate

#: Validation (pattern matches, no decoding: ``shared/validate.py``) is cheaper than a
#: cache of its results, which would cost ~100 bytes per key and node held.
key_problem: Final = validate.key_problem
is_valid_node_id: Final = validate.is_valid_node_id


def _index(state: RegistryState, token_id: int, record: TokenRecord) -> None:
    _add(state.owner_tokens, record.owner, token_id)
    _add(state.node_index, record.node_id, token_id)


def _unindex(state: RegistryState, token_id: int, record: TokenRecord) -> None:
    _remove(state.owner_tokens, record.owner, token_id)
    _remove(state.node_index, record.node_id, token_id)


#: What the status and the candidacy of a node are made of: (member token, its record, the
#: owner's key, why the node cannot be live: "" when it can, key conflicts aside).
_Facts = tuple[int, TokenRecord, str, str]


def _facts(state: RegistryState, node: str) -> _Facts | None:
    """``node``'s facts (None when no active token names it); computed once per node and
    event, for its candidacy and then its status (the candidacies change neither)."""
    tokens = state.node_index.get(node)
    if tokens is None:
        return None
    member = tokens if isinstance(tokens, int) else min(tokens)
    record = state.tokens[member]
    key = state.keys.get(record.owner, "")
    if not is_valid_node_id(node):
        return member, record, key, "invalid-node-id"
    return member, record, key, key_problem(key) or ""


def _candidate(state: RegistryState, node: str) -> tuple[str, int] | None:
    """(key, member token) when ``node`` could be live, else None."""
    facts = _facts(state, node)
    if facts is None or facts[3]:
        return None
    return facts[2], facts[0]


#: The reasons of a published status whose node is a candidate under its key.
CANDIDATE: Final = frozenset({"", "key-conflict"})


def _current(state: RegistryState, node: str) -> tuple[str, int] | None:
    """(key, member token) of ``node``'s current candidacy, else None: the key of its
    published status, while that status is not yet updated for the event (a node is a
    candidate exactly when its status is live or a key conflict)."""
    status = state.status.get(node)
    if status is None or status.reason not in CANDIDATE:
        return None
    return status.public_key, status.token_id


def _withdraw(state: RegistryState, node: str, key: str) -> None:
    """Take ``node`` out of the candidates under ``key``."""
    group = state.rivals.get(key)
    if group is None:  # the only candidate
        del state.winner[key]
        return
    token = group.pop(node)
    if len(group) == 1:
        ((_, other),) = group.items()
        del state.rivals[key]
        state.winner[key] = other
    elif state.winner[key] == token:
        state.winner[key] = min(group.values())


def _enter(state: RegistryState, node: str, key: str, token: int) -> None:
    """Make ``node`` (member ``token``) a candidate under ``key`` (after every candidacy
    that changes is withdrawn: a winning token then names its candidate)."""
    current = state.winner.get(key)
    if current is None:
        state.winner[key] = token
        return
    group = state.rivals.get(key)
    if group is None:
        group = state.rivals[key] = {state.tokens[current].node_id: current}
    group[node] = token
    if token < current:
        state.winner[key] = token


def _update_candidates(
    state: RegistryState, nodes: Iterable[str], facts: dict[str, _Facts | None] | None = None
) -> set[str]:
    """Refresh the candidacy of ``nodes``; returns the nodes whose key winner changed.

    ``facts``, when given, receives each node's :func:`_facts`.
    """
    before: dict[str, int | None] = {}
    winner = state.winner
    entering: list[tuple[str, str, int]] = []
    for node in nodes:  # every changed candidacy withdrawn first, then entered
        found = _facts(state, node)
        if facts is not None:
            facts[node] = found
        new = None if found is None or found[3] else (found[2], found[0])
        old = _current(state, node)
        if old == new:
            continue
        if old is not None:
            if old[0] not in before:
                before[old[0]] = winner.get(old[0])
            _withdraw(state, node, old[0])
        if new is not None:
            entering.append((node, *new))
    for node, key, token in entering:
        if key not in before:
            before[key] = winner.get(key)
        _enter(state, node, key, token)
    return _winners_changed(state, before.items())


def _winners_changed(state: RegistryState, before: Iterable[tuple[str, int | None]]) -> set[str]:
    """The nodes that won or lost a key: for each (key, winning token before), the nodes of
    both winning tokens when the key's winner is not the one before (a token that now names
    another node was re-granted: both its nodes are affected by that event anyway)."""
    touched: set[str] = set()
    tokens = state.tokens
    for key, prev in before:
        now = state.winner.get(key)
        if prev != now:
            if prev is not None:
                touched.add(tokens[prev].node_id)
            if now is not None:
                touched.add(tokens[now].node_id)
    return touched


def _update_one(state: RegistryState, node: str) -> tuple[_Facts | None, set[str]]:
    """:func:`_update_candidates` of one node: its facts, and the nodes whose key winner
    changed."""
    found = _facts(state, node)
    new = None if found is None or found[3] else (found[2], found[0])
    old = _current(state, node)
    if old == new:
        return found, set()
    winner = state.winner
    keys = []
    if old is not None:
        keys.append((old[0], winner.get(old[0])))
        _withdraw(state, node, old[0])
    if new is not None and (old is None or new[0] != old[0]):
        keys.append((new[0], winner.get(new[0])))
    if new is not None:
        _enter(state, node, new[0], new[1])
    return found, _winners_changed(state, keys)


def _status(state: RegistryState, node: str) -> Status | None:
    """The published view of ``node`` (None when no active token names it)."""
    return _status_of(state, node, _facts(state, node))


def _status_of(state: RegistryState, node: str, facts: _Facts | None) -> Status | None:
    """:func:`_status` from ``node``'s :func:`_facts` (after the candidacies are updated)."""
    if facts is None:
        return None
    member, record, key, reason = facts
    owner, expires = record.owner, record.expires
    if reason:
        return Status(False, member, owner, key, reason, expires)
    if state.winner[key] != member:  # tokens name one node each
        return Status(False, member, owner, key, "key-conflict", expires)
    return Status(True, member, owner, key, "", expires)
