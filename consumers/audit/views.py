"""The third check of ``audit verify`` (:mod:`consumers.audit.verify`): the registry state
against the contract's views (``getNodeAccess``, ``ownerOf``, ``getPublicKeyByOwner``,
``expiresAt``), called with ``eth_call`` at one block."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from eth_abi.abi import decode as abi_decode
from eth_abi.abi import encode as abi_encode
from eth_utils.crypto import keccak

from consumers.audit.checks import Problem
from consumers.registry.state import RegistryState
from shared.chain.rpc import BATCH_LIMIT, RpcClient
from shared.errors import ChainError
from shared.validate import excerpt

_GET_NODE_ACCESS: Final = keccak(text="getNodeAccess(uint256)")[:4]
_OWNER_OF: Final = keccak(text="ownerOf(uint256)")[:4]
_KEY_OF: Final = keccak(text="getPublicKeyByOwner(address)")[:4]
_EXPIRES_AT: Final = keccak(text="expiresAt(uint256)")[:4]


def expirations(state: RegistryState) -> dict[int, int]:
    """token -> the expiration the registry holds (tokens a ``SubscriptionUpdate`` named)."""
    return {t: r.expires for t, r in state.tokens.items() if r.expires is not None}


def _calldata(selector: bytes, types: list[str], args: list[Any]) -> str:
    return "0x" + (selector + abi_encode(types, args)).hex()


def eth_calls(
    rpc: RpcClient, contract: str, block: int, calls: Sequence[str]
) -> list[bytes | ChainError]:
    """``eth_call`` of each calldata at ``block`` (batched); a revert is its ChainError."""
    out: list[bytes | ChainError] = []
    for start in range(0, len(calls), BATCH_LIMIT):
        chunk = [
            ("eth_call", [{"to": contract, "data": c}, hex(block)])
            for c in calls[start : start + BATCH_LIMIT]
        ]
        try:
            results: list[Any] = rpc.batch(chunk)
        except ChainError:  # one call reverted: ask them one by one to tell which
            results = []
            for method, params in chunk:
                try:
                    results.append(rpc.call(method, params))
                except ChainError as exc:
                    results.append(exc)
        for result in results:
            if isinstance(result, ChainError):
                out.append(result)
            elif isinstance(result, str) and result.startswith("0x"):
                out.append(bytes.fromhex(result[2:]))
            else:
                out.append(ChainError(f"eth_call answered {str(result)[:40]!r}"))
    return out


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


def check_views(
    rpc: RpcClient,
    contract: str,
    block: int,
    state: RegistryState,
    expires: dict[int, int] | None = None,
) -> tuple[list[Problem], int, int]:
    """Problems between the registry state and the contract's views at ``block``.

    ``expires`` (token -> expiration) are the expirations the registry holds: each is
    compared with ``expiresAt`` at ``block``. Returns the problems and the numbers of
    tokens and owners checked.
    """
    tokens = sorted(state.tokens.items())
    owners = sorted({r.owner for _, r in tokens if r.owner} | set(state.keys))
    limited = sorted((expires or {}).items())
    calls = [_calldata(_GET_NODE_ACCESS, ["uint256"], [t]) for t, _ in tokens]
    calls += [_calldata(_OWNER_OF, ["uint256"], [t]) for t, _ in tokens]
    calls += [_calldata(_KEY_OF, ["address"], [o]) for o in owners]
    calls += [_calldata(_EXPIRES_AT, ["uint256"], [t]) for t, _ in limited]
    results = eth_calls(rpc, contract, block, calls)
    n_tokens, n_owners = len(tokens), len(owners)
    access, holders, keys, expiring = (
        results[:n_tokens],
        results[n_tokens : 2 * n_tokens],
        results[2 * n_tokens : 2 * n_tokens + n_owners],
        results[2 * n_tokens + n_owners :],
    )
    problems: list[Problem] = []

    def bad(what: str) -> None:
        problems.append(Problem("", block, -1, what))

    for (token, record), got, holder in zip(tokens, access, holders, strict=True):
        name = f"registry token {token}"
        if isinstance(got, ChainError):
            bad(f"{name}: the contract does not know it ({got})")
            continue
        if isinstance(holder, ChainError):
            bad(f"{name}: the contract does not know it ({holder})")
            continue
        node, key, _, active = abi_decode(["bytes", "bytes", "uint256", "bool"], got)
        (owner,) = abi_decode(["address"], holder)
        owner = str(owner).lower()
        if _text(node) != record.node_id:
            bad(f"{name}: node {excerpt(record.node_id)}, the contract says {excerpt(_text(node))}")
        if bool(active) != record.active:
            bad(f"{name}: active {record.active}, the contract says {bool(active)}")
        if owner != record.owner:
            bad(f"{name}: owner {excerpt(record.owner)}, the contract says {owner}")
        want = state.keys.get(record.owner, "")
        if _text(key) != want:
            bad(f"{name}: key {excerpt(want)}, the contract says {excerpt(_text(key))}")
    for owner, got in zip(owners, keys, strict=True):
        if isinstance(got, ChainError):
            bad(f"key of {excerpt(owner)}: {got}")
            continue
        (key,) = abi_decode(["bytes"], got)
        want = state.keys.get(owner, "")
        if _text(key) != want:
            bad(
                f"key of {excerpt(owner)}: {excerpt(want)} in the registry, "
                f"the contract says {excerpt(_text(key))}"
            )
    for (token, want_expiry), got in zip(limited, expiring, strict=True):
        name = f"registry token {token}"
        if isinstance(got, ChainError):
            bad(f"{name}: expires {want_expiry}, the contract has no expiresAt for it ({got})")
            continue
        try:
            (expiry,) = abi_decode(["uint64"], got)
        except Exception:  # an answer that is not a uint64 word: hostile or not ERC-5643
            bad(f"{name}: expiresAt answered {excerpt(got.hex())}, not a uint64")
            continue
        if int(expiry) != want_expiry:
            bad(f"{name}: expires {want_expiry} in the registry, the contract says {int(expiry)}")
    return problems, len(tokens), len(owners)


__all__ = ["check_views", "eth_calls", "expirations"]
