"""The registry fold (docs/design.md §4): contract events in, membership changes out. Pure.

State is ``tokens[tokenId] = {node, owner, active}`` and ``keys[owner] = key``; the
published view (who is live, with which token and key) is derived from it, so a
reload recomputes it exactly. Each event touches only the nodes it can affect:
incremental indexes (owner -> active tokens, node -> active tokens, key ->
candidate nodes and their lowest-token winner) keep ``apply`` O(affected).

Conflicts are deterministic: the lowest active token naming a node is its member;
among live candidates sharing a key, the lowest member token keeps the peer. Hostile
strings are recorded and reported only as escaped excerpts, never published.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Final, NamedTuple

import msgspec

from consumers.registry import issues
from consumers.status.model import Issue
from shared import validate
from shared.events import (
    Anomaly,
    Conflict,
    LogEntry,
    NodeAccessGranted,
    NodeAccessRevoked,
    NodeAccessTransferred,
    NodeChanged,
    NodeJoined,
    NodeLeft,
    PublicKeyUpdated,
    RegistryChange,
)
from shared.validate import excerpt

#: Field-name prefix of a token record in the state hash (``t:<tokenId>``).
TOKEN_FIELD: Final = "t:"  # noqa: S105 (a field prefix, not a secret)
#: Field-name prefix of an owner's key in the state hash (``k:<owner>``).
KEY_FIELD: Final = "k:"
#: Longest string whose validation result is cached (characters); longer ones are never valid.
CACHED_CHARS: Final = 64
#: Validation results kept (entries).
CACHE_SIZE: Final = 1 << 17


@lru_cache(maxsize=CACHE_SIZE)
def _cached_key_problem(key: str) -> str | None:
    return validate.key_problem(key)


@lru_cache(maxsize=CACHE_SIZE)
def _cached_node_id_ok(node_id: str) -> bool:
    return validate.is_valid_node_id(node_id)


def key_problem(key: str) -> str | None:
    """``validate.key_problem``, cached for short strings (keys repeat across many events)."""
    return _cached_key_problem(key) if len(key) <= CACHED_CHARS else validate.key_problem(key)


def is_valid_node_id(node_id: str) -> bool:
    """``validate.is_valid_node_id``, cached for short strings."""
    return _cached_node_id_ok(node_id) if len(node_id) <= CACHED_CHARS else False


class TokenRecord(msgspec.Struct, frozen=True):
    """One token as the log has seen it."""

    node_id: str
    owner: str
    active: bool


class Status(NamedTuple):
    """The published view of a node that has at least one active token."""

    live: bool
    token_id: int
    owner: str
    public_key: str
    #: Why the node is not live ("" when live).
    reason: str = ""


@dataclass(eq=False)
class RegistryState:
    """Mutable fold state; ``apply`` updates it in place and returns it."""

    tokens: dict[int, TokenRecord] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)
    owner_tokens: dict[str, set[int]] = field(default_factory=dict)
    node_tokens: dict[str, set[int]] = field(default_factory=dict)
    #: key -> {node: member token} of every node that could be live with that key.
    candidates: dict[str, dict[str, int]] = field(default_factory=dict)
    #: key -> (token, node): the candidate that keeps the peer.
    winners: dict[str, tuple[int, str]] = field(default_factory=dict)
    #: node -> the key it is a candidate under.
    candidate_key: dict[str, str] = field(default_factory=dict)
    status: dict[str, Status] = field(default_factory=dict)
    dirty_tokens: set[int] = field(default_factory=set)
    dirty_owners: set[str] = field(default_factory=set)
    #: node -> its current conflicts and anomalies (``registry/issues.py``).
    issues: dict[str, tuple[Issue, ...]] = field(default_factory=dict)
    issues_dirty: bool = False

    def live(self) -> dict[str, Status]:
        """Every live member, by node id."""
        return {n: s for n, s in self.status.items() if s.live}


_TOKEN_DECODER: Final = msgspec.json.Decoder(TokenRecord)
_STR_DECODER: Final = msgspec.json.Decoder(str)


class RegistryFold:
    """The registry stage's rules (the ``Fold`` protocol of ``consumers.stage``)."""

    name = "registry"
    accepts: tuple[type, ...] = (LogEntry,)

    def dump(self, state: RegistryState) -> dict[str, bytes]:
        """Every persisted field of ``state``."""
        return dump(state)

    def load(self, fields: dict[str, bytes]) -> RegistryState:
        state = RegistryState()
        for name, raw in fields.items():
            if name.startswith(TOKEN_FIELD):
                token_id = int(name[len(TOKEN_FIELD) :])
                record = _TOKEN_DECODER.decode(raw)
                state.tokens[token_id] = record
                if record.active:
                    _index(state, token_id, record)
            elif name.startswith(KEY_FIELD):
                state.keys[name[len(KEY_FIELD) :]] = _STR_DECODER.decode(raw)
        nodes = sorted(state.node_tokens)
        _update_candidates(state, nodes)
        for node in nodes:
            status = _status(state, node)
            if status is not None:
                state.status[node] = status
        raw_issues = fields.get(issues.ISSUES_FIELD)
        if raw_issues is not None:
            state.issues = issues.decode(raw_issues)
        else:  # a state persisted before issues were kept: find them (causes unknown)
            issues.everything(state)
        return state

    def apply(
        self, state: RegistryState, entry_id: str, entry: Any
    ) -> tuple[RegistryState, list[RegistryChange]]:
        if not isinstance(entry, LogEntry):
            raise TypeError(f"registry folds LogEntry, not {type(entry).__name__}")
        step = _Step(state, entry_id, entry.block_number)
        step.source = (entry.tx_hash, entry.log_index)  # the cause of issues it starts
        event = entry.event
        if isinstance(event, NodeAccessGranted):
            step.granted(event)
        elif isinstance(event, NodeAccessRevoked):
            step.revoked(event)
        elif isinstance(event, NodeAccessTransferred):
            step.transferred(event)
        elif isinstance(event, PublicKeyUpdated):
            step.key_updated(event.owner.lower(), event.public_key)
        return state, step.publish()

    def take_changes(self, state: RegistryState) -> tuple[dict[str, bytes], set[str]]:
        to_set: dict[str, bytes] = {}
        to_del: set[str] = set()
        for token_id in sorted(state.dirty_tokens):
            to_set[f"{TOKEN_FIELD}{token_id}"] = msgspec.json.encode(state.tokens[token_id])
        for owner in sorted(state.dirty_owners):
            key = state.keys.get(owner, "")
            if key:
                to_set[f"{KEY_FIELD}{owner}"] = msgspec.json.encode(key)
            else:
                to_del.add(f"{KEY_FIELD}{owner}")
        state.dirty_tokens.clear()
        state.dirty_owners.clear()
        if state.issues_dirty:
            raw_issues = issues.encode(state)
            if raw_issues is None:
                to_del.add(issues.ISSUES_FIELD)
            else:
                to_set[issues.ISSUES_FIELD] = raw_issues
            state.issues_dirty = False
        return to_set, to_del


def dump(state: RegistryState) -> dict[str, bytes]:
    """Every persisted field of ``state`` (what the state hash holds after all commits)."""
    fields = {f"{TOKEN_FIELD}{t}": msgspec.json.encode(r) for t, r in sorted(state.tokens.items())}
    for owner, key in sorted(state.keys.items()):
        if key:
            fields[f"{KEY_FIELD}{owner}"] = msgspec.json.encode(key)
    raw_issues = issues.encode(state)
    if raw_issues is not None:
        fields[issues.ISSUES_FIELD] = raw_issues
    return fields


class _Step:
    """The work of one event: mutate the state, then publish the affected nodes."""

    def __init__(self, state: RegistryState, cause: str, block_number: int) -> None:
        self.state = state
        self.cause = cause
        self.block = block_number
        #: (tx hash, log index) of the event: the chain's name for it, the same in any replay.
        self.source: tuple[str, int | None] = ("", None)
        self.notes: list[RegistryChange] = []
        self.affected: set[str] = set()
        self.transfer = False

    def anomaly(self, kind: str, detail: str, token_id: int | None = None) -> None:
        self.notes.append(Anomaly(kind, detail, self.cause, self.block, token_id))

    def set_token(self, token_id: int, record: TokenRecord) -> None:
        state = self.state
        old = state.tokens.get(token_id)
        if old is not None and old.active:
            _unindex(state, token_id, old)
            self.affected.add(old.node_id)
        state.tokens[token_id] = record
        state.dirty_tokens.add(token_id)
        if record.active:
            _index(state, token_id, record)
            self.affected.add(record.node_id)

    def granted(self, event: NodeAccessGranted) -> None:
        token_id, node, owner = event.token_id, event.node_id, event.owner.lower()
        if not is_valid_node_id(node):
            self.anomaly("invalid-node-id", f"node id {excerpt(node)}", token_id)
        self.set_token(token_id, TokenRecord(node, owner, True))
        if event.public_key:
            self.key_updated(owner, event.public_key, token_id)
        holders = self.state.node_tokens[node]
        if len(holders) > 1 and is_valid_node_id(node):
            winner = min(holders)
            loser = token_id if token_id != winner else min(holders - {winner})
            self.notes.append(
                Conflict("duplicate-node", node, loser, winner, self.cause, self.block)
            )

    def revoked(self, event: NodeAccessRevoked) -> None:
        token_id = event.token_id
        old = self.state.tokens.get(token_id)
        if old is None:
            self.anomaly(
                "unknown-token", f"revoke of unseen token (node {excerpt(event.node_id)})", token_id
            )
            self.set_token(token_id, TokenRecord(event.node_id, "", False))
            return
        if old.node_id != event.node_id:
            detail = f"revoke names {excerpt(event.node_id)}, token names {excerpt(old.node_id)}"
            self.anomaly("node-mismatch", detail, token_id)
        if old.active:
            self.set_token(token_id, msgspec.structs.replace(old, active=False))

    def transferred(self, event: NodeAccessTransferred) -> None:
        token_id, to = event.token_id, event.to_address.lower()
        old = self.state.tokens.get(token_id)
        if old is None:
            self.anomaly("unknown-token", f"transfer of unseen token to {excerpt(to)}", token_id)
            return
        self.transfer = True
        if old.owner != to:
            self.set_token(token_id, msgspec.structs.replace(old, owner=to))

    def key_updated(self, owner: str, key: str, token_id: int | None = None) -> None:
        state = self.state
        if key and key_problem(key):
            self.anomaly("invalid-key", f"key of {excerpt(owner)}: {excerpt(key)}", token_id)
        if state.keys.get(owner, "") == key:
            return
        if key:
            state.keys[owner] = key
        else:
            state.keys.pop(owner, None)
        state.dirty_owners.add(owner)
        for t in state.owner_tokens.get(owner, ()):
            self.affected.add(state.tokens[t].node_id)

    def publish(self) -> list[RegistryChange]:
        """The changes of every affected node's published status, leaves before joins."""
        state = self.state
        nodes = sorted(self.affected)
        nodes_set = set(nodes) | _update_candidates(state, nodes)
        left: list[RegistryChange] = []
        changed: list[RegistryChange] = []
        joined: list[RegistryChange] = []
        for node in sorted(nodes_set):
            old = state.status.get(node)
            new = _status(state, node)
            if new is None:
                state.status.pop(node, None)
            else:
                state.status[node] = new
            was_live = old is not None and old.live
            if new is not None and new.live:
                if not was_live:
                    joined.append(NodeJoined(node, *new[1:4], self.cause, self.block))
                elif old is not None and old[1:4] != new[1:4]:
                    changed.append(NodeChanged(node, *new[1:4], self.cause, self.block))
            elif was_live:
                left.append(NodeLeft(node, self._reason(new), self.cause, self.block))
            newly_lost = old is None or old.reason != "key-conflict"
            if new is not None and new.reason == "key-conflict" and newly_lost:
                winner = state.winners[new.public_key][0]
                conflict = Conflict(
                    "duplicate-key", node, new.token_id, winner, self.cause, self.block
                )
                self.notes.append(conflict)
        issues.track(state, nodes_set, self.source, self.block)
        return self.notes + left + changed + joined

    def _reason(self, status: Status | None) -> str:
        """Why a node that was live is not live any more."""
        if status is None:
            return "revoked"
        if self.transfer and status.reason == "no-key":
            return "transferred"
        return status.reason


def _index(state: RegistryState, token_id: int, record: TokenRecord) -> None:
    state.owner_tokens.setdefault(record.owner, set()).add(token_id)
    state.node_tokens.setdefault(record.node_id, set()).add(token_id)


def _unindex(state: RegistryState, token_id: int, record: TokenRecord) -> None:
    for index, name in ((state.owner_tokens, record.owner), (state.node_tokens, record.node_id)):
        tokens = index[name]
        tokens.discard(token_id)
        if not tokens:
            del index[name]


def _candidate(state: RegistryState, node: str) -> tuple[str, int] | None:
    """(key, member token) when ``node`` could be live, else None."""
    tokens = state.node_tokens.get(node)
    if not tokens or not is_valid_node_id(node):
        return None
    member = min(tokens)
    key = state.keys.get(state.tokens[member].owner, "")
    if key_problem(key):
        return None
    return key, member


def _update_candidates(state: RegistryState, nodes: Iterable[str]) -> set[str]:
    """Refresh the candidacy of ``nodes``; returns the nodes whose key winner changed."""
    before: dict[str, tuple[int, str] | None] = {}
    for node in nodes:
        new = _candidate(state, node)
        old_key = state.candidate_key.get(node)
        old = None if old_key is None else (old_key, state.candidates[old_key][node])
        if old == new:
            continue
        if old_key is not None:
            before.setdefault(old_key, state.winners.get(old_key))
            group = state.candidates[old_key]
            del group[node]
            del state.candidate_key[node]
            if not group:
                del state.candidates[old_key]
                del state.winners[old_key]
            elif state.winners[old_key][1] == node:
                state.winners[old_key] = min((t, n) for n, t in group.items())
        if new is not None:
            key, token = new
            before.setdefault(key, state.winners.get(key))
            state.candidates.setdefault(key, {})[node] = token
            state.candidate_key[node] = key
            current = state.winners.get(key)
            if current is None or token < current[0]:
                state.winners[key] = (token, node)
    touched: set[str] = set()
    for key, prev in before.items():
        now = state.winners.get(key)
        if prev != now:
            touched.update(w[1] for w in (prev, now) if w is not None)
    return touched


def _status(state: RegistryState, node: str) -> Status | None:
    """The published view of ``node`` (None when no active token names it)."""
    tokens = state.node_tokens.get(node)
    if not tokens:
        return None
    member = min(tokens)
    owner = state.tokens[member].owner
    key = state.keys.get(owner, "")
    if not is_valid_node_id(node):
        return Status(False, member, owner, key, "invalid-node-id")
    problem = key_problem(key)
    if problem:
        return Status(False, member, owner, key, problem)
    if state.winners[key][1] != node:
        return Status(False, member, owner, key, "key-conflict")
    return Status(True, member, owner, key)


#: The registry fold, for ``Stage`` and the audit replay.
FOLD: Final = RegistryFold()


def apply(
    state: RegistryState, entry_id: str, entry: LogEntry
) -> tuple[RegistryState, list[RegistryChange]]:
    """Apply one ``events`` entry (see :class:`RegistryFold`)."""
    return FOLD.apply(state, entry_id, entry)


def fold(
    entries: Iterable[tuple[str, LogEntry]], state: RegistryState | None = None
) -> tuple[RegistryState, list[RegistryChange]]:
    """Fold ``(entry id, LogEntry)`` pairs from ``state`` (default: empty); all outputs in order."""
    state = RegistryState() if state is None else state
    outputs: list[RegistryChange] = []
    for entry_id, entry in entries:
        state, out = FOLD.apply(state, entry_id, entry)
        outputs.extend(out)
    return state, outputs
