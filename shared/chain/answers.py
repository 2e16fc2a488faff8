"""What a JSON-RPC provider's answer means: a result, a failure worth retrying, a
refused log range, or an error that retrying will not fix (the classes of
:mod:`shared.chain.rpc`), and the URLs: which carry calls, and what of them is safe to log.

Providers word the same refusal in many ways; the patterns below are the ones seen from
Alchemy, Infura, QuickNode, Ankr, Chainstack, Tenderly, dRPC, public Base nodes and
geth/erigon/reth. Everything a provider says is shown through :func:`excerpt`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Final
from urllib.parse import urlsplit

from shared.errors import ChainError, LogRangeError, SettingsError
from shared.validate import excerpt

#: Error texts with which providers refuse an eth_getLogs range (Alchemy, Infura,
#: QuickNode, Ankr, Chainstack, Tenderly, dRPC, public Base nodes, geth/erigon/reth).
_RANGE_ERROR: Final = re.compile(
    r"block range|range (is )?too|too (large|wide|many)|returned more than|more than [\d,]+ "
    r"(results|logs|blocks)|max(imum)? (block )?range|response size|range limit|exceeds? (the )?"
    r"(max|limit|range)|range exceeds|query time(d )?out|limited to|limit exceeded|(results|logs) "
    r"limit|too many (results|logs)|ranges over \d",
    re.IGNORECASE,
)
#: JSON-RPC codes that, on eth_getLogs, mean "range refused" even without a known text
#: (Infura's "limit exceeded"); -32602 (invalid params) counts only with a range text.
_RANGE_CODES: Final = frozenset({-32005})
#: Error texts of a node that lags behind (a load-balanced pool): retried on the next URL.
_BEHIND_ERROR: Final = re.compile(
    r"beyond (the )?current head|after last accepted block|header not found|unknown block",
    re.IGNORECASE,
)
_NUMBER: Final = r"(0x[0-9a-f]{1,16}|\d{1,19})"
#: The range a provider suggests: ``[0x1, 0x2]``, ``[1, 2]`` or reth's ``range 1-2``.
_SUGGESTION: Final = re.compile(
    rf"[\[(]\s*{_NUMBER}\s*,\s*{_NUMBER}\s*[\])]|\brange {_NUMBER}\s*-\s*{_NUMBER}\b",
    re.IGNORECASE,
)
#: Error texts of rate limiting (retried like HTTP 429).
_RATE_ERROR: Final = re.compile(
    r"rate.?limit|rate exceeded|too many requests|capacity|throttl", re.IGNORECASE
)
#: JSON-RPC error codes of rate limiting.
_RATE_CODES: Final = frozenset({429, -32029})
#: Error texts of an overloaded or half-down provider (HTTP 200 with a JSON-RPC error):
#: retried, after the range check (an eth_getLogs "query timeout" asks for a smaller range).
_BUSY_ERROR: Final = re.compile(
    r"time(d)? ?out|no backends? available|temporarily unavailable|service unavailable|"
    r"bad gateway|upstream|overloaded|try again later",
    re.IGNORECASE,
)


class Transient(Exception):
    """A failure worth retrying after a backoff, on the next URL (never leaves the RPC client)."""


class Unusable(ChainError):
    """This URL answered something unusable: try the other URLs (then a :class:`ChainError`)."""


def endpoint(url: str) -> str:
    """``scheme://host:port`` of ``url``: safe to log (no credentials, no path, no query)."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


def split_urls(urls: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(http(s) URLs for calls, ws(s) URLs for newHeads)``; at least one of the first kind."""
    calls = [u for u in urls if urlsplit(u).scheme in {"http", "https"}]
    heads = [u for u in urls if urlsplit(u).scheme in {"ws", "wss"}]
    if not calls:
        raise SettingsError(
            "WGCHAIN_RPC_URL",
            "needs at least one http(s):// URL for JSON-RPC calls "
            "(ws(s):// URLs serve only the newHeads subscription)",
        )
    return calls, heads


def suggested_range(message: str) -> tuple[int, int] | None:
    """The ``(from, to)`` block range a provider's refusal suggests, if it names one."""
    match = _SUGGESTION.search(message)
    if match is None:
        return None
    groups = [g for g in match.groups() if g is not None]
    lo, hi = (int(g, 0) if g[:2].lower() == "0x" else int(g) for g in groups)
    return (lo, hi) if lo <= hi else None


def is_range_refusal(code: Any, message: str) -> bool:
    """Whether a JSON-RPC error of ``eth_getLogs`` refuses the block range (too wide/full)."""
    return code in _RANGE_CODES or bool(_RANGE_ERROR.search(message))


def result(reply: Any, method: str) -> Any:
    """The ``result`` of a JSON-RPC reply object, or the right error for its ``error``.

    The error's ``data`` is read too: some providers (Tenderly) say "invalid params"
    and explain the refusal there.
    """
    if not isinstance(reply, dict):
        raise Unusable(f"{method}: reply is not a JSON-RPC object")
    error = reply.get("error")
    if error is None:
        if "result" not in reply:
            raise Unusable(f"{method}: reply has neither result nor error")
        return reply["result"]
    code = error.get("code") if isinstance(error, dict) else None
    message = str(error.get("message", "")) if isinstance(error, dict) else str(error)
    data = error.get("data") if isinstance(error, dict) else None
    detail = (
        "" if data is None else str(data.get("payload", data) if isinstance(data, dict) else data)
    )
    text = f"{method}: {excerpt(message)}"
    text += f" ({excerpt(detail)})" if detail else ""
    text += f" (code {code})"
    both = f"{message} {detail}"
    if code in _RATE_CODES or _RATE_ERROR.search(both) or _BEHIND_ERROR.search(both):
        raise Transient(text)
    if method == "eth_getLogs" and is_range_refusal(code, both):
        raise LogRangeError(text, suggested_range(message) or suggested_range(detail))
    if _BUSY_ERROR.search(both):
        raise Transient(text)
    raise ChainError(text)


__all__ = [
    "Transient",
    "Unusable",
    "endpoint",
    "is_range_refusal",
    "result",
    "split_urls",
    "suggested_range",
]
