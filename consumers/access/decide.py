"""Access decisions from the registry projection. Pure.

A :class:`View` is a :class:`RegistryState` (the registry fold's state) plus an
index of every token that ever named a node, so that "revoked" can be told from
"never a member". :func:`decide_key` answers "may this WireGuard key reach this
node", :func:`decide_address` "does this address hold an active pass for this
node"; both name the reason of a denial.

Expiring passes: the registry keeps each token's expiration as a fact; a decision
judges it at ``now`` (the caller's clock, or a past block's timestamp), so a pass
expired at ``now`` plus the grace is denied ``expired`` (``now`` None: not judged).
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from typing import Final

import msgspec

from consumers.registry.state import RegistryState, Status
from shared import reasons, settings
from shared.validate import excerpt

# The reasons are the project's one vocabulary (``shared/reasons.py``, README table).
GRANTED: Final = reasons.GRANTED
NOT_MEMBER: Final = reasons.NOT_A_MEMBER
REVOKED: Final = reasons.REVOKED
KEY_MISMATCH: Final = reasons.KEY_MISMATCH
NO_KEY: Final = reasons.NO_KEY
INVALID_KEY: Final = reasons.INVALID_KEY
KEY_CONFLICT: Final = reasons.KEY_CONFLICT
DUPLICATE_NODE: Final = reasons.DUPLICATE_NODE
NOT_OWNER: Final = reasons.NOT_OWNER
EXPIRED: Final = reasons.EXPIRED
#: Default seconds past an expiration before a pass counts as expired (``WGCHAIN_EXPIRY_GRACE``).
DEFAULT_GRACE: Final = settings.DEFAULT_EXPIRY_GRACE
#: Every reason a decision may give.
REASONS: Final = reasons.DECISION_REASONS


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    """The answer to an access check."""

    #: True only when the key (or address) opens the node.
    granted: bool
    #: One of :data:`REASONS`.
    reason: str
    node: str
    #: One human sentence (chain strings in it are escaped excerpts).
    detail: str = ""
    #: The token the answer is about (the node's member token, or the address's token).
    token_id: int | None = None
    #: The owner of that token (lowercase 0x address).
    owner: str | None = None
    #: True when the node is a live member (it has a WireGuard peer).
    live: bool = False
    #: The registry stage position (``events`` entry id) the answer reflects.
    position: str = ""
    #: Set when the answer is for a past block (folded from the log).
    at_block: int | None = None
    #: Unix time the token's pass expires (None: never, or not known).
    expires: int | None = None


def is_expired(expires: int | None, now: float | None, grace: float = DEFAULT_GRACE) -> bool:
    """Whether a pass expiring at ``expires`` has expired at ``now`` (None: not judged)."""
    return expires is not None and now is not None and now >= expires + grace


def _when(expires: int) -> str:
    """``expires`` for a sentence (any integer: a hostile one is shown as a number)."""
    if 0 < expires < 253402300800:  # before year 10000
        stamp = datetime.datetime.fromtimestamp(expires, datetime.UTC)
        return stamp.strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"unix time {expires}" if expires else "cancelled"


class View:
    """A registry state and, for each node id, every token that ever named it."""

    def __init__(self, state: RegistryState) -> None:
        self.state = state
        self.named: dict[str, set[int]] = {}
        self._token_node: dict[int, str] = {}
        self.touch(state.tokens)

    def touch(self, token_ids: Iterable[int]) -> None:
        """Re-index ``token_ids`` after the fold changed them."""
        for token_id in token_ids:
            record = self.state.tokens.get(token_id)
            old = self._token_node.get(token_id)
            if old is not None and (record is None or record.node_id != old):
                holders = self.named[old]
                holders.discard(token_id)
                if not holders:
                    del self.named[old]
            if record is not None:
                self.named.setdefault(record.node_id, set()).add(token_id)
                self._token_node[token_id] = record.node_id

    def status(self, node: str) -> Status | None:
        """The registry's published view of ``node`` (None: no active token names it)."""
        return self.state.status.get(node)

    def known(self, node: str) -> bool:
        """True when a token (active or revoked) has ever named ``node``."""
        return node in self.named

    def nodes(self) -> list[str]:
        """Every node id a token has ever named, sorted."""
        return sorted(self.named)


def decide_key(
    view: View, node: str, key: str, *, now: float | None = None, grace: float = DEFAULT_GRACE
) -> Decision:
    """May WireGuard public key ``key`` reach ``node``? (both already validated) At ``now``
    (unix time): a pass expired by then is denied ``expired``."""
    state = view.state
    status = view.status(node)
    if status is None:
        return _absent(view, node)
    expires = _expires(state, status.token_id)
    if status.live and status.public_key == key:
        if not is_expired(expires, now, grace):
            return _member(node, status, status.owner, GRANTED, "live member", expires=expires)
        assert expires is not None
        reason, detail = EXPIRED, f"the pass expired ({_when(expires)})"
    else:
        for token_id in sorted(state.node_tokens.get(node, set()) - {status.token_id}):
            owner = state.tokens[token_id].owner
            if state.keys.get(owner) == key:
                detail = (
                    f"token {token_id} also names this node; "
                    f"the lower token {status.token_id} keeps it"
                )
                return _member(node, status, owner, DUPLICATE_NODE, detail, token_id=token_id)
        reason, detail = _not_this_key(state, status, key)
    return _member(node, status, status.owner, reason, detail, expires=expires)


def _not_this_key(state: RegistryState, status: Status, key: str) -> tuple[str, str]:
    """Why ``key`` is not the node's live key: the reason and its sentence."""
    if status.reason == KEY_CONFLICT and status.public_key == key:
        winner_token, winner_node = state.winners[key]
        return (
            KEY_CONFLICT,
            f"the key is also {winner_node}'s (token {winner_token}), which keeps it",
        )
    if status.reason == NO_KEY:
        return NO_KEY, "the owner has no WireGuard key on chain"
    if status.reason == INVALID_KEY:
        shown = excerpt(status.public_key)
        return INVALID_KEY, f"the owner's key on chain is not a WireGuard key: {shown}"
    return KEY_MISMATCH, "the node's key on chain is another key"


def decide_address(
    view: View,
    node: str,
    address: str,
    *,
    now: float | None = None,
    grace: float = DEFAULT_GRACE,
) -> Decision:
    """Does ``address`` (0x + 40 hex, any case) hold an active pass for ``node``, not
    expired at ``now`` (unix time)?"""
    state = view.state
    owner = address.lower()
    status = view.status(node)
    live = status is not None and status.live
    active = sorted(t for t in state.node_tokens.get(node, ()) if state.tokens[t].owner == owner)
    if active and status is not None:
        if status.token_id in active:
            expires = _expires(state, status.token_id)
            if is_expired(expires, now, grace):
                assert expires is not None
                reason, detail = EXPIRED, f"the pass expired ({_when(expires)})"
            else:
                reason = GRANTED
                detail = "active pass" + ("" if live else f" (not live: {status.reason})")
            return _member(node, status, owner, reason, detail, expires=expires)
        detail = (
            f"token {active[0]} is active, but the lower token {status.token_id} keeps the node"
        )
        return _member(node, status, owner, DUPLICATE_NODE, detail, token_id=active[0])
    if not view.known(node):
        return Decision(
            granted=False, reason=NOT_MEMBER, node=node, detail="no token has named this node"
        )
    held = sorted(t for t in view.named[node] if state.tokens[t].owner == owner)
    if held:
        detail = f"token {held[-1]} of this address was revoked"
        return Decision(
            granted=False, reason=REVOKED, node=node, detail=detail, token_id=held[-1], owner=owner
        )
    if status is None:
        detail = "no active pass names this node"
    else:
        detail = f"the pass is held by {status.owner or 'nobody'}"
    return Decision(granted=False, reason=NOT_OWNER, node=node, detail=detail, live=live)


def _member(
    node: str,
    status: Status,
    owner: str,
    reason: str,
    detail: str,
    *,
    expires: int | None = None,
    token_id: int | None = None,
) -> Decision:
    """A decision about a token that names ``node`` (``status``: the node's), granted when
    ``reason`` is :data:`GRANTED`: its member token, or ``token_id``, another of its tokens."""
    return Decision(
        granted=reason == GRANTED,
        reason=reason,
        node=node,
        detail=detail,
        token_id=status.token_id if token_id is None else token_id,
        owner=owner,
        live=status.live,
        expires=expires,
    )


def _expires(state: RegistryState, token_id: int) -> int | None:
    record = state.tokens.get(token_id)
    return record.expires if record is not None else None


def _absent(view: View, node: str) -> Decision:
    """The decision for a node that no active token names."""
    if not view.known(node):
        return Decision(
            granted=False, reason=NOT_MEMBER, node=node, detail="no token has named this node"
        )
    tokens = sorted(view.named[node])
    last = tokens[-1]
    detail = f"token{'s' if len(tokens) > 1 else ''} {', '.join(map(str, tokens))} revoked"
    owner = view.state.tokens[last].owner or None
    return Decision(
        granted=False, reason=REVOKED, node=node, detail=detail, token_id=last, owner=owner
    )
