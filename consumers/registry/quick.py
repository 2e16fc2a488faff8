"""The registry fold's common events in a few dictionary operations (docs/design.md §4). Pure.

Most of a long log is owners rotating the key of their one node, transfers and
revocations of a node's one token, and grants of new tokens for new nodes. Each
function here folds such an event when nothing but that one node can be affected
and no issue can start or end (the node has one active token, held by an owner who
holds no other, the node has no issue, keys are valid and no other candidate's). Its
result is exactly the general step's (``consumers/registry/fold.py``); anything else
returns None *before* changing anything, and the caller takes the general step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from consumers.registry.state import RegistryState, Status, TokenRecord
from shared import validate
from shared.events import (
    NodeAccessGranted,
    NodeAccessRevoked,
    NodeAccessTransferred,
    NodeChanged,
    NodeJoined,
    NodeLeft,
    PublicKeyUpdated,
    RegistryChange,
)

is_valid_wg_key: Final = validate.is_valid_wg_key
is_valid_node_id: Final = validate.is_valid_node_id
#: The outputs of an event (None: not folded here, the general step folds it).
Outputs = list[RegistryChange] | None


def key_event(state: RegistryState, event: PublicKeyUpdated, cause: str, block: int) -> Outputs:
    """A ``PublicKeyUpdated``: its owner rotates the key of the one node it holds."""
    owner, key = event.owner.lower(), event.public_key
    if not key or not is_valid_wg_key(key):
        return None  # a removal or an anomaly
    keys = state.keys
    old_key = keys.get(owner)
    if old_key == key:
        return []
    held = state.owner_tokens.get(owner)
    if held is None:  # no active token: only the key is kept
        keys[owner] = key
        state.dirty_owners.add(owner)
        return []
    if type(held) is not int or key in state.winner:
        return None  # several nodes, or a candidate already has the key
    record = state.tokens[held]
    node = record.node_id
    old = state.status.get(node)
    if old is None or old.token_id != held or node in state.issues:
        return None
    if old.reason == "":  # the live winner of the old key: its sole candidate?
        if old_key != old.public_key or old_key in state.rivals:
            return None
    elif old.reason != "no-key":
        return None  # an invalid node id or key, or a key conflict: issues to track
    if state.node_index.get(node) != held:
        return None  # other tokens name the node
    keys[owner] = key
    state.dirty_owners.add(owner)
    winner = state.winner
    if old.reason == "":
        del winner[old.public_key]
    winner[key] = held
    owner, expires = record.owner, record.expires
    state.status[node] = Status(True, held, owner, key, "", expires)
    if old.reason == "":
        return [NodeChanged(node, held, owner, key, cause, block, expires)]
    return [NodeJoined(node, held, owner, key, cause, block, expires)]


def _sole(state: RegistryState, token: int, record: TokenRecord) -> Status | None:
    """The status of ``record``'s node when ``token`` is the one active token naming it and
    the one its owner holds, the node has no issue, and the node is live as the sole
    candidate of its key or waits for a key (else None: the general step)."""
    node = record.node_id
    old = state.status.get(node)
    if (
        old is None
        or old.token_id != token
        or node in state.issues
        or state.owner_tokens.get(record.owner) != token
        or state.node_index.get(node) != token
    ):
        return None
    if old.reason == "":
        return None if old.public_key in state.rivals else old
    return old if old.reason == "no-key" else None


def transferred(
    state: RegistryState, event: NodeAccessTransferred, cause: str, block: int
) -> Outputs:
    """A ``NodeAccessTransferred`` of a node's one token to an owner who holds none."""
    token, to = event.token_id, event.to_address.lower()
    record = state.tokens.get(token)
    if record is None or not record.active:
        return None
    if record.owner == to:
        return []
    old = _sole(state, token, record)
    if old is None or to in state.owner_tokens:
        return None
    key = state.keys.get(to, "")
    if key and (not is_valid_wg_key(key) or key in state.winner):
        return None
    node, expires = record.node_id, record.expires
    owner_tokens = state.owner_tokens
    del owner_tokens[record.owner]
    owner_tokens[to] = token
    state.tokens[token] = TokenRecord(node, to, True, expires)
    state.dirty_tokens.add(token)
    winner = state.winner
    if old.reason == "":
        del winner[old.public_key]
    if not key:
        state.status[node] = Status(False, token, to, "", "no-key", expires)
        return [NodeLeft(node, "transferred", cause, block)] if old.reason == "" else []
    winner[key] = token
    state.status[node] = Status(True, token, to, key, "", expires)
    if old.reason == "":
        return [NodeChanged(node, token, to, key, cause, block, expires)]
    return [NodeJoined(node, token, to, key, cause, block, expires)]


def revoked(state: RegistryState, event: NodeAccessRevoked, cause: str, block: int) -> Outputs:
    """A ``NodeAccessRevoked`` of a node's one token."""
    token = event.token_id
    record = state.tokens.get(token)
    if record is None or record.node_id != event.node_id:
        return None  # anomalies
    if not record.active:
        return []
    old = _sole(state, token, record)
    if old is None:
        return None
    node = record.node_id
    del state.owner_tokens[record.owner]
    del state.node_index[node]
    state.tokens[token] = TokenRecord(node, record.owner, False, record.expires)
    state.dirty_tokens.add(token)
    del state.status[node]
    if old.reason == "":
        del state.winner[old.public_key]
        return [NodeLeft(node, "revoked", cause, block)]
    return []


def granted(state: RegistryState, event: NodeAccessGranted, cause: str, block: int) -> Outputs:
    """A ``NodeAccessGranted`` of a new token, for a node no active token names, to an owner
    who holds none."""
    token, node, owner, new_key = (
        event.token_id,
        event.node_id,
        event.owner.lower(),
        event.public_key,
    )
    if (
        token in state.tokens
        or node in state.node_index
        or owner in state.owner_tokens
        or node in state.issues
        or not is_valid_node_id(node)
    ):
        return None
    keys = state.keys
    key = new_key or keys.get(owner, "")
    if key and (not is_valid_wg_key(key) or key in state.winner):
        return None
    state.tokens[token] = TokenRecord(node, owner, True)
    state.dirty_tokens.add(token)
    state.owner_tokens[owner] = token
    state.node_index[node] = token
    if new_key and keys.get(owner) != new_key:
        keys[owner] = new_key
        state.dirty_owners.add(owner)
    if not key:
        state.status[node] = Status(False, token, owner, "", "no-key", None)
        return []
    state.winner[key] = token
    state.status[node] = Status(True, token, owner, key, "", None)
    return [NodeJoined(node, token, owner, key, cause, block, None)]


#: The quick fold of each chain event type (None from it: take the general step).
QUICK: Final[dict[type, Callable[[RegistryState, Any, str, int], Outputs]]] = {
    PublicKeyUpdated: key_event,
    NodeAccessGranted: granted,
    NodeAccessTransferred: transferred,
    NodeAccessRevoked: revoked,
}

__all__ = ["QUICK", "granted", "key_event", "revoked", "transferred"]
