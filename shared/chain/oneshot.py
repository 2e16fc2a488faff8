"""RPC for one-shot commands (``listen --verify-range``, ``audit verify``): bounded waits.

A long-running process rides out an RPC outage (its calls retry for minutes); a
command an operator typed should instead give up after ``--timeout`` seconds, in one
line, with nothing logged meanwhile.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Final

from shared import health
from shared.chain.rpc import RPC_TIMEOUT, RpcClient
from shared.errors import ServiceUnavailable

#: Seconds one-shot commands (``--verify-range``, ``audit verify``) wait for an RPC call.
DEFAULT_TIMEOUT: Final = 30.0


def bounded_rpc(urls: Sequence[str], timeout: float) -> RpcClient:
    """An RPC client for a one-shot command: each call gives up after about ``timeout``
    seconds (retries included), and logs nothing meanwhile (the command says it in one line)."""
    return RpcClient(
        urls,
        timeout=min(RPC_TIMEOUT, timeout),
        retry_seconds=timeout,
        outage=health.Outage("RPC", quiet=True),
    )


@contextmanager
def within(timeout: float) -> Iterator[None]:
    """One line when an RPC call of the block gets no answer within ``timeout`` seconds."""
    try:
        yield
    except ServiceUnavailable as exc:
        raise ServiceUnavailable(
            f"the RPC node did not answer within {timeout:g}s (--timeout): {exc}"
        ) from None


__all__ = ["DEFAULT_TIMEOUT", "bounded_rpc", "within"]
