"""Access checks: ``AccessChecker(client, keys).check_key(node, key)`` and ``check_address``.

Live answers come from a :class:`RegistryCache`, in one of two consistencies
(README "Reads"):

* ``strict`` (the default here and in ``wgchain check``): never behind the registry
  stage's last commit when the check began; one position read per check, shared by
  concurrent callers;
* ``bounded`` (the default of ``/v1/access``): no round trip; the answer reflects
  every registry commit made ``max_age`` seconds (default :data:`MAX_AGE`, 50 ms) or
  more before it. Give ``follow=True`` so that a background thread keeps the copy
  fresh; without it a bounded check refreshes whenever the copy is older than that.

Answers of ``check_key`` are kept per (node, key) while the view stays the same (any
fold or reload changes its generation), so a repeated check is a dictionary lookup after
its freshness check. ``at_block=B`` answers for a past block instead: the ``events`` log (its effective
entries, retractions applied) is folded with the pure registry fold up to block ``B``.

A pass's expiration is judged at the moment of the answer: now (this host's clock) for
a live answer, and for ``at_block=B`` the timestamp of the newest logged block at or
before ``B`` (the log holds the blocks that have events), so past answers stay a pure
function of the log (docs/design.md §5). A kept answer that grants a pass which expires
is kept only until then.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Final

import msgspec
import redis

from consumers.access.cache import MAX_AGE, RegistryCache
from consumers.access.decide import DEFAULT_GRACE, Decision, View, decide_address, decide_key
from consumers.registry.fold import FOLD
from consumers.registry.state import RegistryState
from shared import streams, validate
from shared.errors import WgchainError
from shared.events import LogEntry, effective
from shared.keys import Keys
from shared.logs import log
from shared.redis_log import as_str

#: Never behind the stage's last commit when the check began (a shared position read).
STRICT: Final = "strict"
#: Answered from the copy, which reflects every commit made ``max_age`` seconds before.
BOUNDED: Final = "bounded"
#: The consistencies of a live check.
CONSISTENCIES: Final = (STRICT, BOUNDED)

#: Live answers of ``check_key`` kept for reuse while the view does not change (cleared when
#: full): a repeated check is a dictionary lookup.
ANSWERS_KEPT: Final = 65_536


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


def valid_consistency(consistency: str) -> str:
    """``consistency`` if it is ``strict`` or ``bounded``, else :class:`InvalidArgument`."""
    if consistency not in CONSISTENCIES:
        shown = validate.excerpt(consistency)
        raise InvalidArgument("consistency", f"{shown} is not one of {', '.join(CONSISTENCIES)}")
    return consistency


class AccessChecker:
    """Answers access checks for one network (see the module docstring).

    ``follow=True`` starts the background follower of the ``registry`` stream
    (long-running processes). ``consistency`` is the default of every check
    (:data:`STRICT` or :data:`BOUNDED`, each check may pick the other); ``max_age``
    is the bound of bounded checks, in seconds.
    """

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        *,
        follow: bool = False,
        consistency: str = STRICT,
        max_age: float = MAX_AGE,
        expiry_grace: float = DEFAULT_GRACE,
    ) -> None:
        self.client = client
        self.keys = keys
        self.consistency = valid_consistency(consistency)
        self.max_age = max_age
        #: Seconds past an expiration before a pass counts as expired (``WGCHAIN_EXPIRY_GRACE``).
        self.expiry_grace = expiry_grace
        self.cache = RegistryCache(client, keys)
        #: (node, key) -> (view generation, decision, unix time it holds until or None) of
        #: live checks (a grant of a pass that expires holds until its expiration).
        self._answers: dict[tuple[str, str], tuple[int, Decision, float | None]] = {}
        if follow:
            self.cache.start()

    def close(self) -> None:
        self.cache.close()

    def __enter__(self) -> AccessChecker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def check_key(
        self,
        node: str,
        key: str,
        *,
        at_block: int | None = None,
        consistency: str | None = None,
    ) -> Decision:
        """May WireGuard public key ``key`` reach ``node``?"""
        known = self._answers.get((node, key))
        if known is None:  # a pair seen before was valid then
            valid_node(node)
            valid_key(key)
        if at_block is None:  # the hot path: no closure, no extra call
            cache = self.cache
            self._fresh(consistency)
            if (
                known is not None
                and known[0] == cache.generation
                and (known[2] is None or time.time() < known[2])
            ):
                return known[1]  # the view has not changed since this answer was made
            grace = self.expiry_grace
            with cache.lock:
                decision = decide_key(cache.view, node, key, now=time.time(), grace=grace)
                made = (
                    cache.generation,
                    msgspec.structs.replace(decision, position=cache.position),
                    decision.expires + grace
                    if decision.granted and decision.expires is not None
                    else None,
                )
            if len(self._answers) >= ANSWERS_KEPT:
                self._answers.clear()
            self._answers[node, key] = made
            return made[1]
        grace = self.expiry_grace
        return self._decide(
            lambda view, now: decide_key(view, node, key, now=now, grace=grace),
            at_block,
            consistency,
        )

    def check_address(
        self,
        node: str,
        address: str,
        *,
        at_block: int | None = None,
        consistency: str | None = None,
    ) -> Decision:
        """Does ``address`` hold an active pass for ``node``?"""
        valid_node(node)
        owner = valid_address(address)
        grace = self.expiry_grace
        return self._decide(
            lambda view, now: decide_address(view, node, owner, now=now, grace=grace),
            at_block,
            consistency,
        )

    def _fresh(self, consistency: str | None) -> None:
        """Make the cache as fresh as ``consistency`` (or this checker's default) asks."""
        mode = self.consistency if consistency is None else consistency
        if mode == BOUNDED:
            cache = self.cache
            if cache.news or time.monotonic() - cache.verified_at > self.max_age:
                cache.refresh()
        elif mode == STRICT:
            self.cache.refresh()
        else:
            valid_consistency(mode)

    def _decide(
        self,
        rule: Callable[[View, float | None], Decision],
        at_block: int | None,
        consistency: str | None,
    ) -> Decision:
        if at_block is not None:
            moment: list[int] = []
            view = View(state_at_block(self.client, self.keys, at_block, moment))
            when = float(moment[0]) if moment else None
            return msgspec.structs.replace(rule(view, when), at_block=at_block)
        cache = self.cache
        self._fresh(consistency)
        with cache.lock:
            position = cache.position
            decision = rule(cache.view, time.time())
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
    # Undecodable entries are skipped: the stage dead-letters them too.
    items = streams.decoded(streams.read(client, keys.events, retry=False))
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
