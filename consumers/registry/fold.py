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

import sys
from collections.abc import Iterable, Mapping
from typing import Any, Final

import msgspec

from consumers.registry import issues
from consumers.registry.candidates import (
    _Facts,
    _facts,
    _index,
    _status,
    _status_of,
    _unindex,
    _update_candidates,
    _update_one,
)
from consumers.registry.issues import PROBLEMS
from consumers.registry.quick import QUICK
from consumers.registry.state import (
    KEY_FIELD,
    TOKEN_FIELD,
    RegistryState,
    Status,
    TokenRecord,
)
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
    SubscriptionUpdate,
)
from shared.validate import excerpt

#: Validation (pattern matches, no decoding: ``shared/validate.py``) is cheaper than a
#: cache of its results, which would cost ~100 bytes per key and node held.
key_problem: Final = validate.key_problem
is_valid_node_id: Final = validate.is_valid_node_id


_TOKEN_DECODER: Final = msgspec.json.Decoder(TokenRecord)
_STR_DECODER: Final = msgspec.json.Decoder(str)
_ENCODE: Final = msgspec.json.Encoder().encode


class RegistryFold:
    """The registry stage's rules (the ``Fold`` protocol of ``consumers.stage``)."""

    name = "registry"
    accepts: tuple[type, ...] = (LogEntry,)

    def dump(self, state: RegistryState) -> dict[str, bytes]:
        """Every persisted field of ``state``."""
        return dump(state)

    def load(self, fields: Mapping[str, bytes] | Iterable[tuple[str, bytes]]) -> RegistryState:
        """The state of persisted ``fields`` (a mapping, or (name, value) pairs in any order,
        e.g. chunks of an ``HSCAN``)."""
        state = RegistryState()
        pairs = fields.items() if isinstance(fields, Mapping) else fields
        # one copy of each string: node ids and keys interned (the ipam stage's state
        # interns them too, and shares them), owners in a table of this load only (an
        # interned string has an entry in the interpreter's table for good)
        intern = sys.intern
        seen: dict[str, str] = {}
        owners = seen.setdefault
        raw_issues: bytes | None = None
        for name, raw in pairs:
            if name.startswith(TOKEN_FIELD):
                token_id = int(name[len(TOKEN_FIELD) :])
                record = _TOKEN_DECODER.decode(raw)
                record = TokenRecord(
                    intern(record.node_id),
                    owners(record.owner, record.owner),
                    record.active,
                    record.expires,
                )
                state.tokens[token_id] = record
                if record.active:
                    _index(state, token_id, record)
            elif name.startswith(KEY_FIELD):
                owner = name[len(KEY_FIELD) :]
                key = _STR_DECODER.decode(raw)
                state.keys[owners(owner, owner)] = intern(key)
            elif name == issues.ISSUES_FIELD:
                raw_issues = raw
        nodes = sorted(state.node_index)
        _update_candidates(state, nodes)
        for node in nodes:
            status = _status(state, node)
            if status is not None:
                state.status[node] = status
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
        event = entry.event
        quick = QUICK.get(type(event))
        if quick is not None:
            out = quick(state, event, entry_id, entry.block_number)
            if out is not None:
                return state, out
        step = _Step(state, entry_id, entry.block_number)
        handler = _HANDLERS.get(type(event))
        if handler is not None:
            handler(step, event)
        return state, step.publish((entry.tx_hash, entry.log_index))

    def take_changes(self, state: RegistryState) -> tuple[dict[str, bytes], set[str]]:
        to_set: dict[str, bytes] = {}
        to_del: set[str] = set()
        tokens = state.tokens
        for token_id in sorted(state.dirty_tokens):
            to_set[f"{TOKEN_FIELD}{token_id}"] = _ENCODE(tokens[token_id])
        for owner in sorted(state.dirty_owners):
            key = state.keys.get(owner, "")
            if key:
                to_set[f"{KEY_FIELD}{owner}"] = _ENCODE(key)
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
    fields = {f"{TOKEN_FIELD}{t}": _ENCODE(r) for t, r in sorted(state.tokens.items())}
    for owner, key in sorted(state.keys.items()):
        if key:
            fields[f"{KEY_FIELD}{owner}"] = _ENCODE(key)
    raw_issues = issues.encode(state)
    if raw_issues is not None:
        fields[issues.ISSUES_FIELD] = raw_issues
    return fields


class _Step:
    """The work of one event: mutate the state, then publish the affected nodes."""

    __slots__ = ("affected", "block", "cause", "notes", "state", "transfer")

    def __init__(self, state: RegistryState, cause: str, block_number: int) -> None:
        self.state = state
        self.cause = cause
        self.block = block_number
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
        old = self.state.tokens.get(token_id)  # an expiration seen before the grant stays
        self.set_token(token_id, TokenRecord(node, owner, True, old.expires if old else None))
        if event.public_key:
            self.key_updated(owner, event.public_key, token_id)
        holders = self.state.node_index[node]
        if not isinstance(holders, int) and is_valid_node_id(node):
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
            self.set_token(token_id, TokenRecord(old.node_id, old.owner, False, old.expires))

    def subscription(self, event: SubscriptionUpdate) -> None:
        """The token's pass now expires at ``expiration`` (0: expired; docs/design.md §5)."""
        token_id, expires = event.token_id, event.expiration
        old = self.state.tokens.get(token_id)
        if old is None:  # kept, so that a grant after it (another contract's order) has it
            self.anomaly(
                "unknown-token", f"subscription update of unseen token ({expires})", token_id
            )
            self.set_token(token_id, TokenRecord("", "", False, expires))
            return
        if old.expires != expires:
            self.set_token(token_id, msgspec.structs.replace(old, expires=expires))

    def transferred(self, event: NodeAccessTransferred) -> None:
        token_id, to = event.token_id, event.to_address.lower()
        old = self.state.tokens.get(token_id)
        if old is None:
            self.anomaly("unknown-token", f"transfer of unseen token to {excerpt(to)}", token_id)
            return
        self.transfer = True
        if old.owner != to:
            self.set_token(token_id, TokenRecord(old.node_id, to, old.active, old.expires))

    def key_event(self, event: PublicKeyUpdated) -> None:
        self.key_updated(event.owner.lower(), event.public_key)

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
        held = state.owner_tokens.get(owner)
        if held is None:
            return
        if isinstance(held, int):
            self.affected.add(state.tokens[held].node_id)
        else:
            for t in held:
                self.affected.add(state.tokens[t].node_id)

    def publish(self, source: tuple[str, int | None]) -> list[RegistryChange]:
        """The changes of every affected node's published status, leaves before joins.

        ``source`` is (tx hash, log index) of the event: the chain's name for it, the
        same in any replay, recorded as the cause of the issues it starts.
        """
        state = self.state
        affected = self.affected
        if not affected:
            return self.notes
        if len(affected) == 1:
            (node,) = affected
            found, touched = _update_one(state, node)
            if not touched or touched <= affected:
                return self._publish_one(node, found, source)
            nodes = [node]
            facts: dict[str, _Facts | None] = {node: found}
        else:
            nodes = sorted(affected)
            facts = {}
            touched = _update_candidates(state, nodes, facts)
        if touched and not touched <= affected:
            nodes = sorted(affected | touched)
        left: list[RegistryChange] = []
        changed: list[RegistryChange] = []
        joined: list[RegistryChange] = []
        statuses = state.status
        cause, block = self.cause, self.block
        for node in nodes:
            old = statuses.get(node)
            new = _status_of(state, node, facts[node] if node in facts else _facts(state, node))
            if new is None:
                if old is not None:
                    del statuses[node]
            elif new != old:
                statuses[node] = new
            was_live = old is not None and old.live
            if new is not None and new.live:
                if not was_live:
                    joined.append(
                        NodeJoined(
                            node, new.token_id, new.owner, new.public_key, cause, block, new.expires
                        )
                    )
                elif old is not None and (
                    old.token_id != new.token_id
                    or old.owner != new.owner
                    or old.public_key != new.public_key
                    or old.expires != new.expires
                ):
                    changed.append(
                        NodeChanged(
                            node, new.token_id, new.owner, new.public_key, cause, block, new.expires
                        )
                    )
            elif was_live:
                left.append(NodeLeft(node, self._reason(new), cause, block))
            if (
                new is not None
                and new.reason == "key-conflict"
                and (old is None or old.reason != "key-conflict")
            ):
                winner = state.winner[new.public_key]
                conflict = Conflict(
                    "duplicate-key", node, new.token_id, winner, self.cause, self.block
                )
                self.notes.append(conflict)
        issues.track(state, nodes, source, self.block)
        if not left and not changed:
            return self.notes + joined if self.notes else joined
        return self.notes + left + changed + joined

    def _publish_one(
        self, node: str, facts: _Facts | None, source: tuple[str, int | None]
    ) -> list[RegistryChange]:
        """:meth:`publish` when the event affected one node and no other (the common case)."""
        state = self.state
        statuses = state.status
        old = statuses.get(node)
        new = _status_of(state, node, facts)
        if new is None:
            if old is not None:
                del statuses[node]
        elif new != old:
            statuses[node] = new
        out: list[RegistryChange] = self.notes
        was_live = old is not None and old.live
        change: RegistryChange | None = None
        if new is not None and new.live:
            kind: type[NodeJoined] | type[NodeChanged] | None = None
            if not was_live:
                kind = NodeJoined
            elif old is not None and (
                old.token_id != new.token_id
                or old.owner != new.owner
                or old.public_key != new.public_key
                or old.expires != new.expires
            ):
                kind = NodeChanged
            if kind is not None:
                change = kind(
                    node,
                    new.token_id,
                    new.owner,
                    new.public_key,
                    self.cause,
                    self.block,
                    new.expires,
                )
        elif was_live:
            change = NodeLeft(node, self._reason(new), self.cause, self.block)
        if (
            new is not None
            and new.reason == "key-conflict"
            and (old is None or old.reason != new.reason)
        ):
            winner = state.winner[new.public_key]
            out.append(
                Conflict("duplicate-key", node, new.token_id, winner, self.cause, self.block)
            )
        held = state.node_index.get(node)
        if node in state.issues or not (
            held is None or new is None or (isinstance(held, int) and new.reason not in PROBLEMS)
        ):
            issues.track(state, (node,), source, self.block)
        if change is not None:
            out.append(change)
        return out

    def _reason(self, status: Status | None) -> str:
        """Why a node that was live is not live any more."""
        if status is None:
            return "revoked"
        if self.transfer and status.reason == "no-key":
            return "transferred"
        return status.reason


#: The step of each chain event type (exact types: the events are final structs).
_HANDLERS: Final[dict[type, Any]] = {
    PublicKeyUpdated: _Step.key_event,
    NodeAccessGranted: _Step.granted,
    NodeAccessTransferred: _Step.transferred,
    NodeAccessRevoked: _Step.revoked,
    SubscriptionUpdate: _Step.subscription,
}

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
