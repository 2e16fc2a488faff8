"""One vocabulary of decisions and reasons, shared by every command, the API and the agent. Pure.

A state has one name wherever it shows: ``wgchain check`` and ``/v1/access`` (the
decision's ``reason``), ``/v1/nodes`` and ``wgchain nodes`` (why a member is not
live), ``wgchain status`` and the agent's status hash and logs (why a host fails
closed), ``wgchain diagnose`` and the README's table (README, "Operating the fleet").
:data:`MEANINGS` holds the one-line meaning of each; a test keeps the README's table
equal to it.
"""

from __future__ import annotations

from typing import Final

# --- decisions and why a node is not live (the registry's view) ---------------------------

#: The key (or address) opens the node.
GRANTED: Final = "granted"
#: No token, active or revoked, has ever named the node.
NOT_A_MEMBER: Final = "not-a-member"
#: Tokens named the node, but every one of them is revoked (or this address's one is).
REVOKED: Final = "revoked"
#: The node left because its token moved to an owner with no key (a ``NodeLeft`` reason).
TRANSFERRED: Final = "transferred"
#: The owner of the node's token has no WireGuard key on chain.
NO_KEY: Final = "no-key"
#: The owner's key on chain is not a WireGuard public key.
INVALID_KEY: Final = "invalid-key"
#: The node id on chain is not ``[A-Za-z0-9._-]{1,64}``.
INVALID_NODE_ID: Final = "invalid-node-id"
#: The node lost a ``duplicate-key`` conflict: a live member with a lower token has its key.
KEY_CONFLICT: Final = "key-conflict"
#: Another active token names the node; the lowest token id keeps it.
DUPLICATE_NODE: Final = "duplicate-node"
#: The node's key on chain is another key (than the one asked about, or the host's own).
KEY_MISMATCH: Final = "key-mismatch"
#: Address checks: an active pass names the node, but another address holds it.
NOT_OWNER: Final = "not-owner"
#: The node's pass (ERC-5643 subscription) has expired: its expiration plus
#: ``WGCHAIN_EXPIRY_GRACE`` is past (a host whose own pass expired fails closed with it).
EXPIRED: Final = "expired"

# --- why a host fails closed (no peers at all; the agent's status ``fail_closed``) ---------

#: The ``peers`` stream has no entry for the host's node: it is not a live member
#: (``wgchain diagnose NODE`` says why: ``no-key``, ``revoked``...).
NOT_LIVE: Final = "not-live"
#: The host has no usable private key.
NO_OWN_KEY: Final = "no-own-key"
#: The host's address from the ``peers`` stream is outside its pool (``WGCHAIN_POOL`` differs).
OWN_ADDRESS_OUTSIDE_POOL: Final = "own-address-outside-pool"
#: The host's own ``--node`` is not a valid node id.
INVALID_OWN_NODE_ID: Final = "invalid-own-node-id"

# --- current issues (``wgchain status``, ``wgchain nodes``, ``/v1/issues``) -----------------

#: Two live members share a key: the lowest token keeps the peer, the other is ``key-conflict``.
DUPLICATE_KEY: Final = "duplicate-key"
#: A live member waits for an address: the pool is exhausted.
POOL_EXHAUSTED: Final = "pool-exhausted"

# --- a host, as its status hash says (stale after 3 reconcile intervals of silence) -------

#: Its agent reported within the last 3 reconcile intervals.
ONLINE: Final = "online"
#: Its agent reported, but not within the last 3 reconcile intervals.
STALE: Final = "stale"
#: Its agent announced an endpoint but never reported.
SILENT: Final = "silent"
#: No agent reported or announced itself for this node.
ABSENT: Final = "absent"

#: Every reason a decision (``check``, ``/v1/access``) may give.
DECISION_REASONS: Final = (
    GRANTED,
    NOT_A_MEMBER,
    REVOKED,
    NO_KEY,
    INVALID_KEY,
    KEY_CONFLICT,
    DUPLICATE_NODE,
    KEY_MISMATCH,
    NOT_OWNER,
    EXPIRED,
)
#: Why a node is not live (``/v1/nodes``' ``reason``, ``wgchain nodes``).
NOT_LIVE_REASONS: Final = (REVOKED, NO_KEY, INVALID_KEY, INVALID_NODE_ID, KEY_CONFLICT, EXPIRED)
#: Why a member stopped being live (``NodeLeft`` entries of the ``registry`` stream).
LEFT_REASONS: Final = (*NOT_LIVE_REASONS, TRANSFERRED)
#: Why a host fails closed.
FAIL_CLOSED_REASONS: Final = (
    NOT_LIVE,
    KEY_MISMATCH,
    NO_OWN_KEY,
    OWN_ADDRESS_OUTSIDE_POOL,
    INVALID_OWN_NODE_ID,
    EXPIRED,
)
#: The reasons of current issues (conflicts, anomalies, pending allocations).
ISSUE_REASONS: Final = (DUPLICATE_NODE, DUPLICATE_KEY, INVALID_NODE_ID, INVALID_KEY, POOL_EXHAUSTED)
#: The states of a host.
HOST_STATES: Final = (ONLINE, STALE, SILENT, ABSENT)

#: The one-line meaning of every code (the README's table).
MEANINGS: Final = {
    GRANTED: "the key (or address) opens the node",
    NOT_A_MEMBER: "no token, active or revoked, has ever named the node",
    REVOKED: "every token that named the node is revoked (or, for an address, its token is)",
    TRANSFERRED: "the node left because its token moved to an owner with no key on chain",
    NO_KEY: "the owner of the node's token has no WireGuard key on chain",
    INVALID_KEY: "the owner's key on chain is not a WireGuard public key",
    INVALID_NODE_ID: "the node id on chain is not [A-Za-z0-9._-]{1,64}",
    KEY_CONFLICT: "a live member with a lower token has the same key and keeps the peer",
    DUPLICATE_NODE: "another active token names the node; the lowest token id keeps it",
    KEY_MISMATCH: "the node's key on chain is another key (than the one checked, or the host's own)",
    NOT_OWNER: "an active pass names the node, but another address holds it",
    EXPIRED: "the node's pass has expired (its expiration plus WGCHAIN_EXPIRY_GRACE is past)",
    NOT_LIVE: "a host fails closed: the peers stream has no entry for its node (not a live member)",
    NO_OWN_KEY: "a host fails closed: it has no usable private key",
    OWN_ADDRESS_OUTSIDE_POOL: "a host fails closed: its address is outside its WGCHAIN_POOL",
    INVALID_OWN_NODE_ID: "a host fails closed: its own --node is not a valid node id",
    DUPLICATE_KEY: "issue: two live members share a key (the higher token is key-conflict)",
    POOL_EXHAUSTED: "issue: a live member waits for an address (the pool is exhausted)",
    ONLINE: "host: its agent reported within the last 3 reconcile intervals",
    STALE: "host: its agent has not reported for more than 3 reconcile intervals",
    SILENT: "host: its agent announced an endpoint but never reported",
    ABSENT: "host: no agent has reported for this node",
}


def meaning(code: str) -> str:
    """The meaning of ``code`` ("" for a code this version does not know)."""
    return MEANINGS.get(code, "")


__all__ = [
    "ABSENT",
    "DECISION_REASONS",
    "DUPLICATE_KEY",
    "DUPLICATE_NODE",
    "EXPIRED",
    "FAIL_CLOSED_REASONS",
    "GRANTED",
    "HOST_STATES",
    "INVALID_KEY",
    "INVALID_NODE_ID",
    "INVALID_OWN_NODE_ID",
    "ISSUE_REASONS",
    "KEY_CONFLICT",
    "KEY_MISMATCH",
    "LEFT_REASONS",
    "MEANINGS",
    "NOT_A_MEMBER",
    "NOT_LIVE",
    "NOT_LIVE_REASONS",
    "NOT_OWNER",
    "NO_KEY",
    "NO_OWN_KEY",
    "ONLINE",
    "OWN_ADDRESS_OUTSIDE_POOL",
    "POOL_EXHAUSTED",
    "REVOKED",
    "SILENT",
    "STALE",
    "TRANSFERRED",
    "meaning",
]
