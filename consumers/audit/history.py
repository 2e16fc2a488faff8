"""``audit history``: the timeline of a node, a key or an owner, folded from the log. Pure.

The log is folded in stream order with the registry fold
(``consumers.registry.fold``), skipping the entries that a ``Retracted`` entry
voids, which is exactly folding ``effective(log)``. A row is shown for every entry
that names the subject or changes what the subject looks like (its view); a voided
entry that names the subject is shown marked ``retracted`` (not applied), and so is
the retraction that voided it.

Time-limited passes (docs/design.md §5): a ``SubscriptionUpdate`` row says what it
changed (``subscribed``, ``renewed``, ``shortened``, ``unchanged`` or ``cancelled``),
the views show the expiration of the subject's tokens, and an ``Expired`` row marks a
pass whose expiration a later entry's block timestamp has passed (an expiry is no log
entry: the log's own clock, the block timestamps, dates it; a pass that expires after
the last entry shows only its ``expires``). Pure: no clock is read.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

import msgspec

from consumers.audit.entries import Decoded, Undecodable, utc, void_ids
from consumers.registry.fold import FOLD
from consumers.registry.state import RegistryState
from shared.errors import SettingsError
from shared.events import (
    ChainEvent,
    LogEntry,
    NodeAccessGranted,
    Retracted,
    SubscriptionUpdate,
)
from shared.validate import excerpt, is_valid_address


class HistoryRow(msgspec.Struct, frozen=True):
    """One entry of the log that concerns a node (``wgchain audit history --json``)."""

    #: The ``events`` entry id.
    entry_id: str
    #: -1 when the entry does not decode.
    block: int
    #: Block time, UTC (ISO 8601); "" when unknown.
    time: str
    tx: str
    #: -1 when unknown.
    log_index: int
    #: ``NodeAccessGranted``, ``NodeAccessRevoked``, ..., ``Retracted``, ``Undecodable``.
    event: str
    #: The event's fields (chain strings as they are on chain: escape before display).
    fields: dict[str, Any]
    #: The node after the entry: live, reason, token, owner, key, its tokens.
    state: dict[str, Any]
    #: Voided by a deep-reorg retraction: shown, not applied.
    retracted: bool = False

    def as_json(self) -> dict[str, Any]:
        """The row as a JSON object."""
        return msgspec.structs.asdict(self)


class Subject(Protocol):
    """What a timeline follows: a node, a key or an owner."""

    def names(self, event: ChainEvent) -> bool:
        """Whether ``event`` mentions the subject (shown even when it changes nothing)."""

    def observe(self, state: RegistryState, event: ChainEvent) -> None:
        """Update the subject's own indexes after ``event`` was applied."""

    def view(self, state: RegistryState) -> dict[str, Any]:
        """The subject's resulting state (a row is shown when it changes)."""

    def subscribed(self) -> set[int]:
        """The tokens whose expirations concern the subject (``Expired`` rows)."""


def _token(event: ChainEvent) -> int | None:
    return getattr(event, "token_id", None)


def expiry_text(expiration: int) -> str:
    """An ERC-5643 expiration in a view: its UTC time, or ``cancelled`` for 0."""
    return "cancelled" if expiration == 0 else utc(expiration)


def change_of(previous: int | None, expiration: int) -> str:
    """What a ``SubscriptionUpdate`` did to a token's expiration (``previous``: None if none)."""
    if expiration == 0:
        return "cancelled"
    if previous is None:
        return "subscribed"
    if previous == 0 or expiration > previous:
        return "renewed"
    return "shortened" if expiration < previous else "unchanged"


class Expirations:
    """The latest ``SubscriptionUpdate`` of every token, in chain order (pure)."""

    def __init__(self) -> None:
        self.of: dict[int, int] = {}

    def observe(self, event: ChainEvent) -> None:
        if isinstance(event, SubscriptionUpdate):
            self.of[event.token_id] = event.expiration


class NodeSubject:
    """A node id: its published status and every token that ever named it."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.tokens: set[int] = set()
        #: Tokens whose grant named the node, applied or not (a retracted grant's token).
        self.named: set[int] = set()
        self.expirations = Expirations()

    def names(self, event: ChainEvent) -> bool:
        token = _token(event)
        named = getattr(event, "node_id", None) == self.node
        if named and isinstance(event, NodeAccessGranted):
            self.named.add(event.token_id)
        return named or token in self.tokens or token in self.named

    def observe(self, state: RegistryState, event: ChainEvent) -> None:
        self.expirations.observe(event)
        token = _token(event)
        record = state.tokens.get(token) if token is not None else None
        if token is not None and record is not None and record.node_id == self.node:
            self.tokens.add(token)

    def subscribed(self) -> set[int]:
        return self.tokens

    def view(self, state: RegistryState) -> dict[str, Any]:
        status = state.status.get(self.node)
        tokens = {
            str(t): "active" if state.tokens[t].active else "revoked" for t in sorted(self.tokens)
        }
        if status is None:
            return {"live": False, "reason": "no active token", "tokens": tokens}
        view = {
            "live": status.live,
            "reason": status.reason,
            "token": status.token_id,
            "owner": status.owner,
            "key": status.public_key,
            "tokens": tokens,
        }
        expiration = self.expirations.of.get(status.token_id)
        if expiration is not None:  # a token never named by a SubscriptionUpdate never expires
            view["expires"] = expiry_text(expiration)
        return view


class KeySubject:
    """A WireGuard key: the owners that set it and the nodes that would use it."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.owners: set[str] = set()

    def names(self, event: ChainEvent) -> bool:
        return getattr(event, "public_key", None) == self.key

    def observe(self, state: RegistryState, event: ChainEvent) -> None:
        owner = getattr(event, "owner", None)
        if isinstance(owner, str):
            owner = owner.lower()
            if state.keys.get(owner) == self.key:
                self.owners.add(owner)
            else:
                self.owners.discard(owner)

    def subscribed(self) -> set[int]:
        return set()

    def view(self, state: RegistryState) -> dict[str, Any]:
        winner = state.winners.get(self.key)
        nodes = {
            node: "live" if winner is not None and winner[1] == node else "key-conflict"
            for node in sorted(state.candidates.get(self.key, {}))
        }
        return {"owners": sorted(self.owners), "nodes": nodes}


class OwnerSubject:
    """An address: its key and the tokens it holds, with their nodes' status."""

    def __init__(self, owner: str) -> None:
        self.owner = owner.lower()
        self.tokens: set[int] = set()
        self.expirations = Expirations()

    def names(self, event: ChainEvent) -> bool:
        addresses = (getattr(event, name, "") for name in ("owner", "from_address", "to_address"))
        return any(a.lower() == self.owner for a in addresses if isinstance(a, str))

    def observe(self, state: RegistryState, event: ChainEvent) -> None:
        self.expirations.observe(event)
        token = _token(event)
        record = state.tokens.get(token) if token is not None else None
        if token is None or record is None:
            return
        if record.owner == self.owner:
            self.tokens.add(token)
        else:
            self.tokens.discard(token)

    def view(self, state: RegistryState) -> dict[str, Any]:
        tokens: dict[str, Any] = {}
        for t in sorted(self.tokens):
            record = state.tokens[t]
            status = state.status.get(record.node_id)
            live = status is not None and status.live and status.token_id == t
            shown = "live" if live else ("active" if record.active else "revoked")
            tokens[str(t)] = {"node": record.node_id, "status": shown}
            expiration = self.expirations.of.get(t)
            if expiration is not None:
                tokens[str(t)]["expires"] = expiry_text(expiration)
        return {"key": state.keys.get(self.owner, ""), "tokens": tokens}

    def subscribed(self) -> set[int]:
        return self.tokens


def subject(node: str | None, key: str | None, owner: str | None) -> Subject:
    """The subject of ``--node``, ``--key`` or ``--owner`` (exactly one must be given)."""
    given = [v for v in (node, key, owner) if v is not None]
    if len(given) != 1:
        raise SettingsError("--node/--key/--owner", "give exactly one of them")
    if node is not None:
        return NodeSubject(node)
    if key is not None:
        return KeySubject(key)
    assert owner is not None
    if not is_valid_address(owner):
        raise SettingsError("--owner", f"{excerpt(owner)} is not a 0x-prefixed 20-byte address")
    return OwnerSubject(owner)


def _fields(event: ChainEvent) -> dict[str, Any]:
    fields: dict[str, Any] = msgspec.to_builtins(event)
    fields.pop("type", None)
    return fields


def _row(
    entry_id: str,
    entry: LogEntry,
    state: dict[str, Any],
    retracted: bool,
    extra: dict[str, Any] | None = None,
) -> HistoryRow:
    return HistoryRow(
        entry_id=entry_id,
        block=entry.block_number,
        time=utc(entry.block_timestamp),
        tx=entry.tx_hash,
        log_index=entry.log_index,
        event=type(entry.event).__name__,
        fields={**_fields(entry.event), **(extra or {})},
        state=state,
        retracted=retracted,
    )


def _expired_rows(
    entry_id: str,
    timestamp: int,
    who: Subject,
    *,
    seen: Expirations,
    due: dict[int, int],
    view: Any,
) -> list[HistoryRow]:
    """``Expired`` rows of the subject's passes whose expiration ``timestamp`` reached."""
    rows = []
    for token in sorted(who.subscribed()):
        expiration = seen.of.get(token, 0)
        if 0 < expiration <= timestamp and due.get(token) != expiration:
            due[token] = expiration
            fields = {"token_id": token, "expiration": expiration}
            row_id = f"{entry_id}/expired/{token}"  # unique: at most one per token per entry
            rows.append(HistoryRow(row_id, -1, utc(expiration), "", -1, "Expired", fields, view))
    return rows


def timeline(events: Iterable[Decoded], who: Subject) -> list[HistoryRow]:
    """The rows of ``who``'s timeline over the events log ``events`` (stream order)."""
    events = list(events)
    void = void_ids(events)
    state = RegistryState()
    shown: set[str] = set()
    rows: list[HistoryRow] = []
    view = who.view(state)
    seen = Expirations()  # every token's, for what each SubscriptionUpdate changed
    due: dict[int, int] = {}  # token -> the expiration an Expired row was shown for
    for entry_id, entry in events:
        if isinstance(entry, Undecodable):
            rows.append(
                HistoryRow(entry_id, -1, "", "", -1, "Undecodable", {"reason": entry.reason}, view)
            )
            continue
        if isinstance(entry, Retracted):
            if entry.entry_id in shown:
                fields = {"entry_id": entry.entry_id, "block_hash": entry.block_hash}
                rows.append(
                    HistoryRow(entry_id, entry.block_number, "", "", -1, "Retracted", fields, view)
                )
            continue
        if not isinstance(entry, LogEntry):
            continue
        if entry_id in void:
            if who.names(entry.event):
                rows.append(_row(entry_id, entry, view, retracted=True))
                shown.add(entry_id)
            continue
        rows += _expired_rows(entry_id, entry.block_timestamp, who, seen=seen, due=due, view=view)
        named = who.names(entry.event)
        extra: dict[str, Any] = {}
        event = entry.event
        if isinstance(event, SubscriptionUpdate):
            extra["change"] = change_of(seen.of.get(event.token_id), event.expiration)
            extra["expires"] = expiry_text(event.expiration)
            seen.observe(event)
        state, _ = FOLD.apply(state, entry_id, entry)
        who.observe(state, entry.event)
        after = who.view(state)
        if named or after != view:
            rows.append(_row(entry_id, entry, after, retracted=False, extra=extra))
        view = after
    return rows


def _text(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{excerpt(str(k))}: {_text(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_text(v) for v in value) + "]"
    return excerpt(value) if isinstance(value, str) else str(value)


def render(row: HistoryRow) -> str:
    """One row as a text line; every chain string is escaped."""
    event = " ".join(f"{k}={_text(v)}" for k, v in row.fields.items())
    state = " ".join(f"{k}={_text(v)}" for k, v in row.state.items())
    mark = "  RETRACTED (not applied)" if row.retracted else ""
    where = f"block {row.block}" if row.block >= 0 else "block ?"
    tx = f"tx {row.tx} log {row.log_index}" if row.tx else ""
    return f"{row.entry_id}  {where}  {row.time}  {tx}  {row.event} {event}{mark}\n    -> {state}"


__all__ = [
    "Expirations",
    "HistoryRow",
    "KeySubject",
    "NodeSubject",
    "OwnerSubject",
    "Subject",
    "render",
    "subject",
    "timeline",
]
