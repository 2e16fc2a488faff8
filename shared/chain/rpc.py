"""A small JSON-RPC client over HTTP: bounded calls, retries, failover between URLs, batches.

Every answer falls in one of four classes:

* **transient** (a timeout, a refused or dropped connection, HTTP 429 or 5xx, a
  rate-limit error, a block the node does not have yet, a JSON-RPC error of an
  overloaded provider such as "no backends available"): retried by the named
  policy :data:`rpc_retry` with jittered exponential backoff, on the next URL each
  time, until ``retry_seconds`` have passed; then :class:`ServiceUnavailable`;
* **unusable** (another HTTP 4xx, a reply that is not JSON or not JSON-RPC): a
  fault of that URL (an expired API key, a captive portal), so the other URLs are
  tried once each, at once; when every URL answered so, :class:`ChainError`;
* **refused range**: an ``eth_getLogs`` range the provider will not serve raises
  :class:`LogRangeError` (with the range the provider suggested, when its message
  names one), which :meth:`RpcClient.get_logs` answers by asking a smaller range
  (:class:`~shared.chain.ranges.RangeSizer`);
* **any other JSON-RPC error** (``execution reverted``, invalid params): the
  answer to the question, the same on every node: :class:`ChainError` at once.

Each HTTP request is bounded: no wait for the connection or for the next bytes
longer than ``timeout``, and the reply is abandoned once ``timeout`` has passed
since the request started (so a call takes at most about twice ``timeout``).

URLs often carry an API key in their path: only ``scheme://host:port`` is ever
logged, and error texts from providers are shown through :func:`excerpt`.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final, TypeVar

import msgspec
import requests
import urllib3
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_before_delay,
    wait_random_exponential,
)

from shared import health, shutdown
from shared.chain.answers import Transient, Unusable, endpoint, result
from shared.chain.decode import BlockHeader, header, quantity
from shared.chain.ranges import RangeSizer
from shared.errors import ChainError, DecodeError, LogRangeError, ServiceUnavailable
from shared.logs import brief, log

#: Seconds one HTTP request may wait (to connect, for the next bytes, for the whole reply).
RPC_TIMEOUT: Final = 10.0
#: Seconds a call is retried (over all URLs) before :class:`ServiceUnavailable`.
RPC_RETRY_SECONDS: Final = 120.0
#: Seconds of the first backoff (it doubles on each retry, with full jitter) ...
RPC_BACKOFF: Final = 0.2
#: ... up to this many seconds.
RPC_MAX_BACKOFF: Final = 10.0
#: Calls per JSON-RPC batch request (providers cap batches, often at 100 or 1000).
BATCH_LIMIT: Final = 100
#: Most bytes taken from one socket read (the deadline is checked between reads).
_CHUNK: Final = 1 << 16

_DECODER: Final = msgspec.json.Decoder()

T = TypeVar("T")


def _reason(state: RetryCallState) -> str:
    """Why an attempt failed, in the words made for people (``http://host:port: HTTP 503``)."""
    exc = state.outcome.exception() if state.outcome else None
    return brief(exc, typed=False) if exc is not None else "no result"


def _log_retry(state: RetryCallState) -> None:
    """One failed attempt, for :data:`health.RPC` (it logs when failures start, once a
    minute while they last, and when the RPC answers again; not every attempt)."""
    health.RPC.failed(_reason(state))


def _backoff(first: float, longest: float) -> Callable[[RetryCallState], float]:
    """Jittered exponential backoff after a transient failure; none before trying another URL."""
    jittered = wait_random_exponential(multiplier=first, max=longest)

    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        return 0.0 if isinstance(exc, Unusable) else float(jittered(state))

    return wait


#: Retry policy of RPC calls: jittered exponential backoff, transient failures only, and
#: no attempt started when its backoff would end after :data:`RPC_RETRY_SECONDS`.
rpc_retry: Final = Retrying(
    retry=retry_if_exception_type((Transient, Unusable)),
    wait=_backoff(RPC_BACKOFF, RPC_MAX_BACKOFF),
    stop=stop_before_delay(RPC_RETRY_SECONDS) | shutdown.requested,
    sleep=shutdown.sleep,
    before_sleep=_log_retry,
    reraise=True,
)


class RpcClient:
    """JSON-RPC over HTTP(S) to one of ``urls`` (the first that answers; failover on errors).

    ``timeout`` bounds each HTTP request, ``retry_seconds`` each call (all its
    retries), and ``backoff``/``max_backoff`` are the first and the longest wait
    between two attempts. Failures and recoveries are told to ``outage`` (the
    process's :data:`health.RPC` unless given, e.g. a quiet one for one-shot commands).
    """

    def __init__(
        self,
        urls: Sequence[str],
        *,
        timeout: float = RPC_TIMEOUT,
        retry_seconds: float = RPC_RETRY_SECONDS,
        backoff: float = RPC_BACKOFF,
        max_backoff: float = RPC_MAX_BACKOFF,
        session: requests.Session | None = None,
        outage: health.Outage = health.RPC,
    ) -> None:
        if not urls:
            raise ChainError("no RPC URL given")
        self.urls = list(urls)
        self.timeout = timeout
        self.session = session or requests.Session()
        self.session.headers["Content-Type"] = "application/json"
        self.outage = outage
        self._retry = rpc_retry.copy(
            wait=_backoff(backoff, max_backoff),
            stop=stop_before_delay(retry_seconds) | shutdown.requested,
            before_sleep=lambda state: outage.failed(_reason(state)),
        )
        self._index = 0
        self._ids = itertools.count(1)
        self._batch_ok = True

    @property
    def endpoint(self) -> str:
        """The URL in use, safe to log."""
        return endpoint(self.urls[self._index])

    def close(self) -> None:
        """Close the HTTP connections."""
        self.session.close()

    # --- transport ------------------------------------------------------------------------

    def _next_url(self) -> None:
        self._index = (self._index + 1) % len(self.urls)

    def _attempts(self, what: str, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` under the retry policy; each failure moves to the next URL."""
        unusable: list[str] = []

        def attempt() -> T:
            try:
                return fn(*args)
            except Unusable as exc:
                unusable.append(str(exc))
                if len(unusable) >= len(self.urls):
                    raise ChainError("; ".join(dict.fromkeys(unusable))) from None
                self._next_url()
                raise
            except Transient:
                self._next_url()
                raise

        try:
            result = self._retry(attempt)
        except (Transient, Unusable) as exc:
            self.outage.failed(brief(exc, typed=False))
            raise ServiceUnavailable(f"no RPC endpoint answered {what}: {exc}") from None
        self.outage.ok()
        return result

    def _post(self, payload: Any) -> tuple[int, Any]:
        """One bounded HTTP POST of ``payload`` to the current URL: (status, decoded JSON).

        Raises :class:`Transient` for what is worth retrying and :class:`Unusable`
        for an answer that is not JSON-RPC; a 4xx with a JSON body is returned so
        that the caller can read the error it holds.
        """
        url = self.urls[self._index]
        where = endpoint(url)
        deadline = time.monotonic() + self.timeout
        data = msgspec.json.encode(payload)
        try:
            with self.session.post(url, data=data, timeout=self.timeout, stream=True) as resp:
                status = resp.status_code
                if status == 429 or status >= 500:
                    raise Transient(f"{where}: HTTP {status}")
                body = bytearray()
                while chunk := resp.raw.read1(_CHUNK, decode_content=True):
                    body += chunk  # one socket read at a time: a trickle meets the deadline
                    if time.monotonic() > deadline:
                        raise Transient(f"{where}: reply took over {self.timeout:g}s")
        except (requests.Timeout, requests.ConnectionError, urllib3.exceptions.HTTPError) as exc:
            raise Transient(f"{where}: {type(exc).__name__}") from None
        except requests.RequestException as exc:  # an invalid URL: no use retrying
            raise ChainError(f"{where}: {type(exc).__name__}") from None
        try:
            reply = _DECODER.decode(body)
        except msgspec.DecodeError:
            reply = None
        if 200 <= status < 300:
            if reply is None:
                raise Unusable(f"{where}: reply is not JSON")
            return status, reply
        if isinstance(reply, dict | list):
            return status, reply
        raise Unusable(f"{where} answered HTTP {status}")

    def _request(self, method: str, params: list[Any]) -> dict[str, Any]:
        return {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": params}

    def _call_once(self, method: str, params: list[Any]) -> Any:
        status, reply = self._post(self._request(method, params))
        try:
            return result(reply, method)
        except LogRangeError:
            raise  # QuickNode and Alchemy refuse ranges with HTTP 413 and 400
        except ChainError as exc:
            if 200 <= status < 300:
                raise
            why = "" if isinstance(exc, Unusable) else f": {exc}"
            raise Unusable(f"{self.endpoint} answered HTTP {status}{why}") from None

    def call(self, method: str, params: list[Any] | None = None) -> Any:
        """One call; its ``result``, or :class:`ChainError` for a JSON-RPC error."""
        return self._attempts(method, self._call_once, method, params or [])

    def batch(self, calls: Sequence[tuple[str, list[Any]]]) -> list[Any]:
        """The results of ``calls``, in order, sent as JSON-RPC batches of :data:`BATCH_LIMIT`."""
        results: list[Any] = []
        for start in range(0, len(calls), BATCH_LIMIT):
            chunk = calls[start : start + BATCH_LIMIT]
            got = None
            if self._batch_ok:
                got = self._attempts(f"batch of {len(chunk)}", self._batch_once, chunk)
            results += got if got is not None else [self.call(m, p) for m, p in chunk]
        return results

    def _batch_once(self, chunk: Sequence[tuple[str, list[Any]]]) -> list[Any] | None:
        """One batch request; None when the provider does not answer batches."""
        requests_ = [self._request(m, p) for m, p in chunk]
        status, reply = self._post(requests_)
        if not isinstance(reply, list):
            # A rate limit is retried like any other; any other error ("batch requests
            # are not supported", in any words) means single calls from now on.
            with contextlib.suppress(ChainError):
                result(reply, "batch")
            log.bind(stage="rpc").warning(
                "{} does not answer batches (HTTP {}); single calls from now on",
                self.endpoint,
                status,
            )
            self._batch_ok = False
            return None
        by_id = {r.get("id"): r for r in reply if isinstance(r, dict)}
        out = []
        for req in requests_:
            item = by_id.get(req["id"])
            if item is None:
                raise Transient(f"{self.endpoint}: batch reply misses id {req['id']}")
            out.append(result(item, req["method"]))
        return out

    # --- eth_* ----------------------------------------------------------------------------

    def chain_id(self) -> int:
        """``eth_chainId``."""
        return _quantity(self.call("eth_chainId"), "eth_chainId")

    def block_number(self) -> int:
        """``eth_blockNumber``: the head of the node that answers."""
        return _quantity(self.call("eth_blockNumber"), "eth_blockNumber")

    def get_block(self, number_or_tag: int | str) -> BlockHeader:
        """The header of a block by number or tag (``latest``, ``safe``, ``finalized``)."""
        return self._attempts("eth_getBlockByNumber", self._get_block_once, number_or_tag)

    def _get_block_once(self, number_or_tag: int | str) -> BlockHeader:
        number = number_or_tag if isinstance(number_or_tag, int) else None
        ref = hex(number) if number is not None else str(number_or_tag)
        raw = self._call_once("eth_getBlockByNumber", [ref, False])
        return _header(raw, number, self)

    def get_blocks(self, numbers: Iterable[int]) -> dict[int, BlockHeader]:
        """Headers of ``numbers`` (batched), keyed by number."""
        wanted = sorted(set(numbers))
        raws = self.batch([("eth_getBlockByNumber", [hex(n), False]) for n in wanted])
        out: dict[int, BlockHeader] = {}
        for number, raw in zip(wanted, raws, strict=True):
            if raw is None:  # this node lags behind the one that gave us the head: retry
                out[number] = self.get_block(number)
            else:
                out[number] = _header(raw, number, self)
        return out

    def get_logs_once(
        self, address: str, topics0: Sequence[str], from_block: int, to_block: int
    ) -> list[dict[str, Any]]:
        """One ``eth_getLogs`` call; :class:`LogRangeError` when the provider refuses the range."""
        params = [
            {
                "address": address,
                "topics": [list(topics0)],
                "fromBlock": hex(from_block),
                "toBlock": hex(to_block),
            }
        ]
        logs = self._attempts("eth_getLogs", self._logs_once, params, to_block)
        if not isinstance(logs, list):
            raise ChainError(f"eth_getLogs answered a {type(logs).__name__}, not a list")
        return logs

    def _logs_once(self, params: list[Any], to_block: int) -> Any:
        """``eth_getLogs`` batched with the header of ``to_block``, from the same node.

        Behind a load balancer a lagging node answers ``[]`` for blocks it does not
        have yet (missed events near the tip). When the node that answered the logs
        has no ``to_block`` either, its answer is not trusted: retried elsewhere.
        Providers that refuse batches get the single call.
        """
        if not self._batch_ok:
            return self._call_once("eth_getLogs", params)
        got = self._batch_once(
            [("eth_getLogs", params), ("eth_getBlockByNumber", [hex(to_block), False])]
        )
        if got is None:  # batches just turned out to be refused
            return self._call_once("eth_getLogs", params)
        logs, header = got
        if header is None:
            raise Transient(f"{self.endpoint} has no block {to_block} yet; its logs may lag")
        return logs

    def get_logs(
        self,
        address: str,
        topics0: Sequence[str],
        from_block: int,
        to_block: int,
        sizer: RangeSizer | None = None,
    ) -> list[dict[str, Any]]:
        """Every log of ``address`` with one of ``topics0`` in ``[from_block, to_block]``.

        Read in consecutive ranges sized by ``sizer`` (default: one that starts with
        the whole range): a refused range is asked again smaller, a single block
        that is still refused raises :class:`LogRangeError`.
        """
        whole = max(1, to_block - from_block + 1)
        sizer = sizer or RangeSizer(whole, initial=whole)
        out: list[dict[str, Any]] = []
        lo = from_block
        while lo <= to_block:
            hi = sizer.span(lo, to_block)
            try:
                out += self.get_logs_once(address, topics0, lo, hi)
            except LogRangeError as exc:
                refused(sizer, lo, hi, exc)
                continue
            sizer.on_success(lo, hi)
            lo = hi + 1
        return out


def refused(sizer: RangeSizer, lo: int, hi: int, exc: LogRangeError) -> None:
    """Tell ``sizer`` that ``[lo, hi]`` was refused with ``exc``, and log it."""
    sizer.on_refused(lo, hi, exc.suggestion)
    log.bind(stage="rpc").info(
        "eth_getLogs {}-{} refused ({}); next range {} blocks", lo, hi, exc, sizer.size
    )


def _quantity(value: Any, what: str) -> int:
    try:
        return quantity(value, what)
    except DecodeError as exc:
        raise ChainError(f"{what}: {exc}") from None


def _header(raw: Any, number: int | None, client: RpcClient) -> BlockHeader:
    if raw is None:
        raise Transient(f"{client.endpoint}: block {number} not available yet")
    try:
        head = header(raw)
    except DecodeError as exc:
        raise ChainError(f"block {number}: {exc}") from None
    if number is not None and head.number != number:
        raise ChainError(f"asked for block {number}, got block {head.number}")
    return head


__all__ = [
    "RPC_BACKOFF",
    "RPC_MAX_BACKOFF",
    "RPC_RETRY_SECONDS",
    "RPC_TIMEOUT",
    "RpcClient",
    "refused",
    "rpc_retry",
]
