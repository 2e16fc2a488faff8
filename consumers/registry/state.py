"""The registry fold's state (docs/design.md §4.1): token records, owners' keys, and the
indexes kept beside them so an event touches only what it can affect. Pure.

:mod:`consumers.registry.fold` changes it event by event; :mod:`consumers.registry.issues`
reads it to find the current conflicts and anomalies.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Final

import msgspec

from consumers.status.model import Issue

#: Field-name prefix of a token record in the state hash (``t:<tokenId>``).
TOKEN_FIELD: Final = "t:"  # noqa: S105 (a field prefix, not a secret)
#: Field-name prefix of an owner's key in the state hash (``k:<owner>``).
KEY_FIELD: Final = "k:"


class TokenRecord(msgspec.Struct, frozen=True, gc=False, omit_defaults=True):
    """One token as the log has seen it (strings only: never part of a cycle, so untracked;
    a token that never expires is stored as before expirations were kept: defaults are left
    out)."""

    node_id: str
    owner: str
    active: bool
    #: Unix time its pass expires (ERC-5643 ``SubscriptionUpdate``; None: none seen, never).
    expires: int | None = None


class Status(msgspec.Struct, frozen=True, gc=False):
    """The published view of a node that has at least one active token (strings and
    numbers only: untracked, 64 bytes)."""

    live: bool
    token_id: int
    owner: str
    public_key: str
    #: Why the node is not live ("" when live).
    reason: str = ""
    #: Unix time the member token's pass expires (None: never). A fact: whether it is past
    #: is judged where a decision is made (docs/design.md §5), never here.
    expires: int | None = None


#: The active tokens of an owner or a node: one token (the common case) or a set of two or
#: more (never a set of one: the representation is canonical, so a reload equals a fold).
Tokens = int | set[int]


def _lowest(tokens: Tokens) -> int:
    return tokens if isinstance(tokens, int) else min(tokens)


def _as_set(tokens: Tokens | None) -> set[int]:
    if tokens is None:
        return set()
    return {tokens} if isinstance(tokens, int) else set(tokens)


def _add(index: dict[str, Tokens], name: str, token: int) -> None:
    held = index.get(name)
    if held is None:
        index[name] = token
    elif isinstance(held, int):
        if held != token:
            index[name] = {held, token}
    else:
        held.add(token)


def _remove(index: dict[str, Tokens], name: str, token: int) -> None:
    held = index[name]
    if isinstance(held, int):
        if held == token:
            del index[name]
        return
    held.discard(token)
    if len(held) == 1:
        index[name] = next(iter(held))


class _TokenSets(Mapping[str, set[int]]):
    """Read-only view of a :data:`Tokens` index as sets (what readers of the state use)."""

    def __init__(self, index: dict[str, Tokens]) -> None:
        self._index = index

    def __getitem__(self, name: str) -> set[int]:
        return _as_set(self._index[name])

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)


class _Candidates(Mapping[str, dict[str, int]]):
    """Read-only view: key -> {node: member token} of every candidate under that key."""

    def __init__(self, state: RegistryState) -> None:
        self._state = state

    def __getitem__(self, key: str) -> dict[str, int]:
        group = self._state.rivals.get(key)
        if group is not None:
            return dict(group)
        token = self._state.winner[key]
        return {self._state.tokens[token].node_id: token}

    def __iter__(self) -> Iterator[str]:
        return iter(self._state.winner)

    def __len__(self) -> int:
        return len(self._state.winner)


class _Winners(Mapping[str, tuple[int, str]]):
    """Read-only view: key -> (token, node) of the candidate that keeps the peer."""

    def __init__(self, state: RegistryState) -> None:
        self._state = state

    def __getitem__(self, key: str) -> tuple[int, str]:
        token = self._state.winner[key]
        return token, self._state.tokens[token].node_id

    def __contains__(self, key: object) -> bool:
        return key in self._state.winner

    def __iter__(self) -> Iterator[str]:
        return iter(self._state.winner)

    def __len__(self) -> int:
        return len(self._state.winner)


@dataclass(eq=False)
class RegistryState:
    """Mutable fold state; ``apply`` updates it in place and returns it.

    Compact (docs/design.md §4.1): an index entry is one token unless there are several,
    a key with a single candidate is only its winning token, a node's candidacy is read
    from its status, token records and statuses are untracked structs, and strings are
    shared when loaded (one copy per owner, node and key).
    """

    tokens: dict[int, TokenRecord] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)
    #: owner -> its active tokens (:data:`Tokens`).
    owner_tokens: dict[str, Tokens] = field(default_factory=dict)
    #: node -> the active tokens naming it (:data:`Tokens`; read it through ``node_tokens``).
    node_index: dict[str, Tokens] = field(default_factory=dict)
    #: key -> the member token of the candidate that keeps the peer (every key with a
    #: candidate; its node is the token's: read both through ``winners``).
    winner: dict[str, int] = field(default_factory=dict)
    #: key -> {node: member token}, only for keys with two or more candidates.
    rivals: dict[str, dict[str, int]] = field(default_factory=dict)
    status: dict[str, Status] = field(default_factory=dict)
    dirty_tokens: set[int] = field(default_factory=set)
    dirty_owners: set[str] = field(default_factory=set)
    #: node -> its current conflicts and anomalies (``registry/issues.py``).
    issues: dict[str, tuple[Issue, ...]] = field(default_factory=dict)
    issues_dirty: bool = False

    @property
    def node_tokens(self) -> Mapping[str, set[int]]:
        """node -> the set of active tokens naming it (a read-only view)."""
        return _TokenSets(self.node_index)

    @property
    def winners(self) -> Mapping[str, tuple[int, str]]:
        """key -> (token, node) of the candidate that keeps the peer (a read-only view)."""
        return _Winners(self)

    @property
    def candidates(self) -> Mapping[str, dict[str, int]]:
        """key -> {node: member token} of every node that could be live with that key."""
        return _Candidates(self)

    @property
    def candidate_key(self) -> dict[str, str]:
        """node -> the key it is a candidate under (derived from ``status``: a node is a
        candidate exactly while its status is live or a key conflict)."""
        return {n: s.public_key for n, s in self.status.items() if s.reason in ("", "key-conflict")}

    def live(self) -> dict[str, Status]:
        """Every live member, by node id."""
        return {n: s for n, s in self.status.items() if s.live}


__all__ = ["KEY_FIELD", "TOKEN_FIELD", "RegistryState", "Status", "TokenRecord", "Tokens"]
