"""Access checks: ``AccessChecker(client, keys).check_key(node, key)`` and ``check_address``.

Live answers come from a :class:`RegistryCache` (never behind the registry
stage's committed position). ``at_block=B`` answers for a past block instead: the
``events`` log (its effective entries, retractions applied) is folded with the
pure registry fold up to block ``B``.

A pass's expiration is judged at the moment of the answer: now (this host's clock) for
a live answer, and for ``at_block=B`` the timestamp of the newest logged block at or
before ``B`` (the log holds the blocks that have events), so past answers stay a pure
function of the log.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import msgspec
import redis

from consumers.access.cache import PAGE, RegistryCache
from consumers.access.decide import DEFAULT_GRACE, Decision, View, decide_address, decide_key
from consumers.registry.fold import FOLD, RegistryState
from shared import validate
from shared.errors import DecodeError, WgchainError
from shared.events import LogEntry, effective, from_fields
from shared.keys import Keys
from shared.logs import log
from shared.redis_log import as_str

#: An Ethereum address as accepted by ``check_address``.


class InvalidArgument(WgchainError):
    """Raised when a node id, key, address or block given to a check is malformed."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param
        self.message = message


def valid_node(node: str) -> str:
    """``node`` if it is a valid node id, else :class:`InvalidArgument`."""
    if not validate.is_valid_node_id(node):
        raise InvalidArgument("node", f"{validate.excerpt(node)} is not a node id")
    return node


def valid_key(key: str) -> str:
    """``key`` if it is a WireGuard public key, else :class:`InvalidArgument`."""
    if not validate.is_valid_wg_key(key):
        raise InvalidArgument("key", f"{validate.excerpt(key)} is not a WireGuard public key")
    return key


def valid_address(address: str) -> str:
    """``address`` in lowercase if it is 0x + 40 hex digits, else :class:`InvalidArgument`."""
    if not validate.is_valid_address(address):
        raise InvalidArgument("address", f"{validate.excerpt(address)} is not a 0x address")
    return address.lower()


class AccessChecker:
    """Answers access checks for one network (see the module docstring).

    ``follow=True`` starts the background follower of the ``registry`` stream
    (long-running processes); without it every check still catches up first.
    """

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        *,
        follow: bool = False,
        expiry_grace: float = DEFAULT_GRACE,
    ) -> None:
        self.client = client
        self.keys = keys
        #: Seconds past an expiration before a pass counts as expired (``WGCHAIN_EXPIRY_GRACE``).
        self.expiry_grace = expiry_grace
        self.cache = RegistryCache(client, keys)
        if follow:
            self.cache.start()

    def close(self) -> None:
        self.cache.close()

    def __enter__(self) -> AccessChecker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def check_key(self, node: str, key: str, *, at_block: int | None = None) -> Decision:
        """May WireGuard public key ``key`` reach ``node``?"""
        valid_node(node)
        valid_key(key)
        grace = self.expiry_grace
        return self._decide(
            lambda view, now: decide_key(view, node, key, now=now, grace=grace), at_block
        )

    def check_address(self, node: str, address: str, *, at_block: int | None = None) -> Decision:
        """Does ``address`` hold an active pass for ``node``?"""
        valid_node(node)
        owner = valid_address(address)
        grace = self.expiry_grace
        return self._decide(
            lambda view, now: decide_address(view, node, owner, now=now, grace=grace), at_block
        )

    def _decide(
        self, rule: Callable[[View, float | None], Decision], at_block: int | None
    ) -> Decision:
        if at_block is not None:
            moment: list[int] = []
            view = View(state_at_block(self.client, self.keys, at_block, moment))
            when = float(moment[0]) if moment else None
            return msgspec.structs.replace(rule(view, when), at_block=at_block)
        with self.cache.fresh() as view:
            position = self.cache.position
            decision = rule(view, time.time())
        return msgspec.structs.replace(decision, position=position)


def state_at_block(
    client: redis.Redis, keys: Keys, block: int, moment: list[int] | None = None
) -> RegistryState:
    """The registry state after every effective ``events`` entry up to block ``block``;
    ``moment``, if given, receives the timestamp of the newest of those entries' blocks.

    Raises :class:`InvalidArgument` for a negative block or one the listener has not
    appended yet (beyond its cursor).
    """
    if block < 0:
        raise InvalidArgument("at_block", "must not be negative")
    raw_cursor: Any = client.hget(keys.cursor, "block")
    if raw_cursor is None:
        raise InvalidArgument("at_block", "the log is empty (the listener has appended nothing)")
    cursor = int(raw_cursor)
    if block > cursor:
        raise InvalidArgument("at_block", f"block {block} is beyond the log (it reaches {cursor})")
    items: list[tuple[str, Any]] = []
    low = "-"
    while True:
        page: Any = client.xrange(keys.events, min=low, count=PAGE)
        for raw_id, fields in page:
            try:
                items.append((as_str(raw_id), from_fields(fields)))
            except DecodeError:
                continue
        if len(page) < PAGE:
            break
        low = f"({as_str(page[-1][0])}"
    dead: Any = client.xrange(keys.dead("registry"))
    skip = {as_str(f[b"id"]) for _, f in dead if b"id" in f}
    state = RegistryState()
    for entry_id, entry in effective(items):
        if entry_id in skip or not isinstance(entry, LogEntry) or entry.block_number > block:
            continue
        if moment is not None:
            moment[:] = [entry.block_timestamp]
        try:
            FOLD.apply(state, entry_id, entry)
        except Exception:  # the stage dead-letters such an entry and goes on
            log.exception("at block {}: cannot apply {}; skipped", block, entry_id)
    return state
