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
        del state.winners[key]
        return
    del group[node]
    if len(group) == 1:
        ((other, token),) = group.items()
        del state.rivals[key]
        state.winners[key] = (token, other)
    elif state.winners[key][1] == node:
        state.winners[key] = min((t, n) for n, t in group.items())


def _enter(state: RegistryState, node: str, key: str, token: int) -> None:
    """Make ``node`` (member ``token``) a candidate under ``key``."""
    current = state.winners.get(key)
    if current is None:
        state.winners[key] = (token, node)
        return
    group = state.rivals.get(key)
    if group is None:
        group = state.rivals[key] = {current[1]: current[0]}
    group[node] = token
    if token < current[0]:
        state.winners[key] = (token, node)


def _update_candidates(
    state: RegistryState, nodes: Iterable[str], facts: dict[str, _Facts | None] | None = None
) -> set[str]:
    """Refresh the candidacy of ``nodes``; returns the nodes whose key winner changed.

    ``facts``, when given, receives each node's :func:`_facts`.
    """
    before: dict[str, tuple[int, str] | None] = {}
    winners = state.winners
    for node in nodes:
        found = _facts(state, node)
        if facts is not None:
            facts[node] = found
        new = None if found is None or found[3] else (found[2], found[0])
        old = _current(state, node)
        if old == new:
            continue
        if old is not None:
            if old[0] not in before:
                before[old[0]] = winners.get(old[0])
            _withdraw(state, node, old[0])
        if new is not None:
            if new[0] not in before:
                before[new[0]] = winners.get(new[0])
            _enter(state, node, new[0], new[1])
    return _winners_changed(winners, before.items())


def _winners_changed(
    winners: dict[str, tuple[int, str]], before: Iterable[tuple[str, tuple[int, str] | None]]
) -> set[str]:
    """The nodes that won or lost a key: for each (key, winner before), both winners when
    the key's winner is not the one before."""
    touched: set[str] = set()
    for key, prev in before:
        now = winners.get(key)
        if prev != now:
            if prev is not None:
                touched.add(prev[1])
            if now is not None:
                touched.add(now[1])
    return touched


def _update_one(state: RegistryState, node: str) -> tuple[_Facts | None, set[str]]:
    """:func:`_update_candidates` of one node: its facts, and the nodes whose key winner
    changed."""
    found = _facts(state, node)
    new = None if found is None or found[3] else (found[2], found[0])
    old = _current(state, node)
    if old == new:
        return found, set()
    winners = state.winners
    keys = []
    if old is not None:
        keys.append((old[0], winners.get(old[0])))
        _withdraw(state, node, old[0])
    if new is not None and (old is None or new[0] != old[0]):
        keys.append((new[0], winners.get(new[0])))
    if new is not None:
        _enter(state, node, new[0], new[1])
    return found, _winners_changed(winners, keys)


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
    if state.winners[key][1] != node:
        return Status(False, member, owner, key, "key-conflict", expires)
    return Status(True, member, owner, key, "", expires)
