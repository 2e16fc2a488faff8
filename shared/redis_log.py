"""Redis Streams I/O: connecting, reading entries, and the atomic stage commit.

A stage commits its input position, its state changes and its output entries in
one transaction (``WATCH`` of the position, ``MULTI`` ... ``EXEC``; one Lua call on a
Redis Cluster) that only lands if the stored position is the one the stage started
from; a stage killed at any instant either committed all of a batch or none of it
(docs/design.md §7.1).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar, cast

import hiredis
import msgspec
import redis
from redis._parsers.hiredis import NOT_ENOUGH_DATA
from redis.cluster import RedisCluster
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    ClusterDownError,
    RedisClusterException,
    TryAgainError,
)
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_delay,
    wait_random_exponential,
)
from tenacity.stop import stop_base

from shared import health, lua, shutdown
from shared.errors import CommitConflict, ServiceUnavailable, SettingsError, WgchainError
from shared.events import SCHEMA_VERSION, encode
from shared.ids import START, id_key
from shared.logs import log

#: Seconds one Redis operation is retried on connection errors before it raises (long-running
#: loops then start over with :func:`keep_going`, so an outage of any length is waited out).
REDIS_RETRY_SECONDS: Final = 60.0
#: Longest wait between two attempts while Redis is unreachable (seconds): the processes
#: resume within about this long of Redis answering again.
REDIS_MAX_BACKOFF: Final = 2.0
#: Seconds a socket connect or read may take.
REDIS_SOCKET_TIMEOUT: Final = 10.0
#: URL schemes of a Redis Cluster, and the scheme of one of its nodes.
CLUSTER_SCHEMES: Final = {"redis+cluster": "redis", "rediss+cluster": "rediss"}

T = TypeVar("T")
#: Fields per ``HSCAN`` call when a stage loads its state hash.
SCAN_CHUNK: Final = 2000
Fields = dict[str, bytes | str | int]
Entry = tuple[str, dict[bytes, bytes]]

#: Errors that mean "Redis cannot answer right now" (down, restarting, loading its AOF, a
#: cluster failing over): retried, never a reason for a long-running process to exit.
OUTAGE_ERRORS: Final = (
    redis.ConnectionError,  # includes BusyLoadingError (Redis loading its data)
    redis.TimeoutError,
    ClusterDownError,
    TryAgainError,
    RedisClusterException,
)


def connect(url: str, *, wait: threading.Event | None = None) -> redis.Redis:
    """A client for ``url`` (redis://, rediss://, unix://); fails fast with a clear error.

    With ``wait`` (long-running processes), an unreachable Redis is waited for instead,
    with the backoff of :data:`outage_retry` (one log line when the wait starts, one a
    minute, one when Redis answers), until it answers or ``wait`` is set; then the
    client is returned as it is, for the caller's loop to see ``wait`` and stop.

    ``redis+cluster://host:port`` (or ``rediss+cluster://``) connects to a Redis Cluster
    through any of its nodes: every multi-key command and script of wgchain uses the keys
    of one network, which share a hash tag and so one slot. User, password and query
    options (``?ssl_ca_certs=/path/ca.pem``) work as in redis-py's ``from_url``.

    An empty ``url`` is a :class:`SettingsError` naming WGCHAIN_REDIS_URL (only ``run``
    and ``demo`` start an embedded Redis; separate processes must share one).
    """
    if not url:
        raise SettingsError("WGCHAIN_REDIS_URL", "required (a redis://, rediss:// or unix:// URL)")
    if wait is not None:
        return keep_going(lambda: _ping(client_for(url), refused=url), wait) or client_for(url)
    try:
        return _ping(client_for(url))
    except (redis.RedisError, RedisClusterException) as exc:
        raise ServiceUnavailable(f"cannot reach Redis at {redacted(url)}: {exc}") from exc


def _ping(client: redis.Redis, refused: str = "") -> redis.Redis:
    """``client`` once it answered PING.

    With ``refused`` (the URL), refused credentials raise a :class:`WgchainError` that no
    outage policy retries: a wrong password or ACL is a setting to fix, not an outage.
    """
    try:
        client.ping()
    except (AuthenticationError, AuthorizationError) as exc:
        if not refused:
            raise
        raise WgchainError(f"cannot reach Redis at {redacted(refused)}: {exc}") from None
    health.REDIS.ok()
    return client


def client_for(url: str) -> redis.Redis:
    """A client for ``url``, not connected yet (a cluster client asks a node for the slots).

    For a server that must start while Redis is down (the API): its requests fail, and
    answer 503, until Redis is back. Everything else uses :func:`connect`.
    """
    scheme, _, rest = url.partition("://")
    options: dict[str, Any] = {
        "socket_timeout": REDIS_SOCKET_TIMEOUT + 30,
        "socket_connect_timeout": REDIS_SOCKET_TIMEOUT,
        "health_check_interval": 30,
    }
    try:
        if scheme in CLUSTER_SCHEMES:
            base = f"{CLUSTER_SCHEMES[scheme]}://{rest}"
            return cast(redis.Redis, RedisCluster.from_url(base, **options))
        return redis.Redis.from_url(url, **options)
    except ValueError as exc:
        raise SettingsError("WGCHAIN_REDIS_URL", f"{redacted(url)}: {exc}") from None


def redacted(url: str) -> str:
    """``url`` with any password replaced by ``***`` (safe for logs)."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    creds, _, host = rest.rpartition("@")
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"


class _RedisRetrying(Retrying):
    """Tenacity's ``Retrying`` that tells :data:`health.REDIS` when Redis answers again."""

    def __call__(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        enclosing = dict(self.statistics)  # of the call this one runs in, if nested
        try:
            result = super().__call__(fn, *args, **kwargs)
        finally:  # per-thread statistics: give the enclosing call its own back
            self.statistics.clear()
            self.statistics.update(enclosing)
        if not enclosing:  # the outermost call tells whether the outage is over
            health.REDIS.ok()
        return result


def _redis_failed(state: RetryCallState) -> None:
    """Before a back-off sleep: one more failed attempt (logged per :class:`health.Outage`)."""
    exc = state.outcome.exception() if state.outcome else None
    if isinstance(exc, OUTAGE_ERRORS):
        health.REDIS.failed(exc)


#: Retry policy for Redis calls that are safe to repeat (reads, idempotent commits).
redis_retry: Final = _RedisRetrying(
    retry=retry_if_exception_type(OUTAGE_ERRORS),
    wait=wait_random_exponential(multiplier=0.2, max=REDIS_MAX_BACKOFF),
    stop=stop_after_delay(REDIS_RETRY_SECONDS) | shutdown.requested,
    sleep=shutdown.sleep,
    before_sleep=_redis_failed,
    reraise=True,
)


class _StopWhenSet(stop_base):
    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self.event.is_set()


#: Policy of long-running loops (stages, listeners, the API's reads, workers): a whole
#: loop that failed for an outage (Redis, or the RPC beyond its own retries) starts
#: over after a capped, jittered backoff, however long the outage lasts. Its stop
#: condition (the loop's stop event) is set per call by :func:`keep_going`.
outage_retry: Final = Retrying(
    retry=retry_if_exception_type((*OUTAGE_ERRORS, ServiceUnavailable)),
    wait=wait_random_exponential(multiplier=0.5, max=REDIS_MAX_BACKOFF),
    stop=shutdown.requested,
    sleep=shutdown.sleep,
    before_sleep=_redis_failed,
    reraise=True,
)


def keep_going(fn: Callable[[], T], stop: threading.Event) -> T | None:
    """``fn()`` under :data:`outage_retry` until it returns; None once ``stop`` is set.

    ``fn`` must start from what Redis holds (reload its state), since the attempt
    before it may have stopped anywhere. Errors other than outages propagate.
    """
    policy = outage_retry.copy(stop=_StopWhenSet(stop) | shutdown.requested, sleep=stop.wait)
    try:
        return policy(fn)
    except (*OUTAGE_ERRORS, ServiceUnavailable):
        if stop.is_set() or shutdown.SHUTDOWN.is_set():
            return None
        raise


def read_after(
    client: redis.Redis, stream: str, after: str, count: int, block_ms: int | None = None
) -> list[Entry]:
    """Up to ``count`` entries of ``stream`` after id ``after`` (blocking up to ``block_ms``)."""
    raw: Any
    if block_ms is None:
        low = START if after == START else f"({after}"
        raw = client.xrange(stream, min=low, count=count)
    else:
        res: Any = client.xread({stream: after}, count=count, block=block_ms)
        raw = res[0][1] if res else []
    return [(as_str(i), f) for i, f in raw]


def as_str(value: bytes | str) -> str:
    """A Redis reply (bytes or str) as str."""
    return value.decode() if isinstance(value, bytes) else value


_COMMIT_LUA: Final = lua.source("stage_commit")
_SNAPSHOT_ID_LUA: Final = lua.source("stage_snapshot_id")
_MSGPACK: Final = msgspec.msgpack.Encoder().encode
#: RESP of one command, packed in C (redis-py's own packer loops in Python over every argument).
_PACK: Final = cast(Callable[[tuple[Any, ...]], bytes], hiredis.pack_command)
#: Fields per ``HSET`` / ``HDEL`` of a commit transaction (bounds one command's arguments).
FIELDS_PER_COMMAND: Final = 1000
_MULTI: Final = _PACK(("MULTI",))
_EXEC: Final = _PACK(("EXEC",))
_UNWATCH: Final = _PACK(("UNWATCH",))


def pack_entries(items: Sequence[Any]) -> list[Any]:
    """Lua arguments for appending envelopes: count, then (v, type, data) per item."""
    args: list[Any] = [len(items)]
    for item in items:  # the fields of ``to_fields``, without a dict per item
        args += (SCHEMA_VERSION, type(item).__name__, encode(item))
    return args


def pack_dead(letters: Sequence[tuple[str, str, bytes]]) -> list[Any]:
    """Lua arguments for dead letters: count, then (id, reason, raw) per letter."""
    args: list[Any] = [len(letters)]
    for ident, reason, raw in letters:
        args += [ident, reason, raw]
    return args


@dataclass
class Batch:
    """What one stage commit writes: state changes, output entries, dead letters."""

    position: str
    state_set: dict[str, bytes] = field(default_factory=dict)
    state_del: set[str] = field(default_factory=set)
    outputs: list[Any] = field(default_factory=list)
    dead: list[tuple[str, str, bytes]] = field(default_factory=list)
    #: True when ``state_set`` is the whole state (after a rebuild): the hash is replaced.
    replace: bool = False
    #: A snapshot of the output as of this commit (written with the last output id).
    snapshot: bytes | None = None
    #: How many entries ``snapshot`` holds (the stage's snapshot cadence counts them).
    snapshot_entries: int = 0
    #: The commit packed ahead of it (``StageStore.pack``, e.g. on the thread that made the
    #: batch): a :class:`Transaction`, or the commit script's arguments after the expected
    #: position (Redis Cluster).
    packed: Transaction | list[Any] | None = None


@dataclass(frozen=True, slots=True)
class Transaction:
    """A commit's writes as the body of one ``MULTI`` ... ``EXEC`` (the position's ``SET`` is
    added at the commit, which knows the expected position)."""

    #: The commands, RESP-encoded back to back.
    body: bytes
    #: How many commands ``body`` holds (each answers ``QUEUED``).
    commands: int
    #: Output entries appended (the commit's return value).
    outputs: int


class StageStore:
    """A stage's position, state hash, output stream and dead-letter stream in Redis."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        position: str,
        state: str,
        output: str,
        dead: str,
        snapshot: str | None = None,
        script: bool | None = None,
    ) -> None:
        self.client = client
        self.position = position
        self.state = state
        self.output = output
        self.dead = dead
        self.snapshot = snapshot
        # The commit script's KEYS, in its order (shared/lua/stage_commit.lua).
        self.keys = [position, state, output, dead] + ([snapshot] if snapshot is not None else [])
        self._commit = client.register_script(_COMMIT_LUA)
        #: True: commit with the Lua script (the default on a Redis Cluster, whose client has
        #: no single connection to hold a ``WATCH`` on); else with a transaction.
        self.script = isinstance(client, RedisCluster) if script is None else script
        #: ``XADD <output> * v <version> type %b data <%d bytes: %b>`` as a RESP template: the
        #: envelope of ``shared.events.to_fields``, the type name's bulk string and data to fill.
        self._xadd = (
            b"*9\r\n$4\r\nXADD\r\n%b$1\r\n*\r\n$1\r\nv\r\n%b$4\r\ntype\r\n"
            % (_bulk(output), _bulk(SCHEMA_VERSION))
        ) + b"%b$4\r\ndata\r\n$%d\r\n%b\r\n"
        #: ``HSET <snapshot> data`` up to the data's bulk string, and the script that sets
        #: the snapshot's id, both RESP (constants of this store).
        self._snapshot_commands = (
            None
            if snapshot is None
            else (
                b"*4\r\n$4\r\nHSET\r\n%b$4\r\ndata\r\n" % _bulk(snapshot),
                _PACK(("EVAL", _SNAPSHOT_ID_LUA, 2, output, snapshot)),
            )
        )

    def load(self) -> tuple[str, dict[str, bytes]]:
        """The committed position (``START`` if none) and the whole state hash."""
        pos, state = redis_retry(self._load)
        return pos, state

    def _load(self) -> tuple[str, dict[str, bytes]]:
        pipe = self.client.pipeline(transaction=True)
        pipe.get(self.position)
        pipe.hgetall(self.state)
        raw_pos, raw_state = pipe.execute()
        pos = as_str(raw_pos) if raw_pos else START
        return pos, {as_str(k): v for k, v in raw_state.items()}

    def load_with(self, build: Callable[[Iterator[tuple[str, bytes]]], T]) -> tuple[str, T]:
        """The committed position and ``build`` applied to the state hash's (field, value) pairs.

        The hash is read in ``HSCAN`` chunks of :data:`SCAN_CHUNK` fields that ``build``
        consumes as they arrive (a large state is never held twice, raw and built), under
        ``WATCH``: if anything commits meanwhile, the position read fails and the load
        starts again, so the pairs and the position are one consistent snapshot. A pair
        may come twice (``HSCAN`` may repeat fields); a build must not mind.
        """
        return redis_retry(self._load_with, build)

    def _load_with(self, build: Callable[[Iterator[tuple[str, bytes]]], T]) -> tuple[str, T]:
        if isinstance(self.client, RedisCluster):  # one atomic read (no WATCH across a cluster)
            pos, state = self._load()
            return pos, build(iter(state.items()))
        while True:
            with self.client.pipeline(transaction=True) as pipe:
                try:
                    pipe.watch(self.position, self.state)  # type: ignore[no-untyped-call]
                    built = build(_scan_pairs(pipe, self.state))
                    pipe.multi()
                    pipe.get(self.position)
                    (raw_pos,) = pipe.execute()
                except redis.WatchError:
                    continue
            return (as_str(raw_pos) if raw_pos else START), built

    def pack(self, batch: Batch) -> Transaction | list[Any]:
        """``batch`` packed for :meth:`commit` (a :class:`Transaction`, or the script's
        arguments after the expected position when :attr:`script`)."""
        if self.script:
            return self.pack_script(batch)
        commands = []
        state = self.state
        if batch.replace:
            commands.append(_PACK(("DEL", state)))
        if batch.state_set:
            pairs = list(batch.state_set.items())
            for i in range(0, len(pairs), FIELDS_PER_COMMAND):
                commands.append(_hset(state, pairs[i : i + FIELDS_PER_COMMAND]))
        if batch.state_del:
            gone = sorted(batch.state_del)
            step = FIELDS_PER_COMMAND
            commands += [
                _PACK(("HDEL", state, *gone[i : i + step])) for i in range(0, len(gone), step)
            ]
        # One XADD per output, packed here from :attr:`_xadd` (a few times faster than a
        # generic packer; the same bytes, see tests/integration/test_stage_commit.py).
        xadd = self._xadd
        names = _TYPE_NAMES
        for item in batch.outputs:
            data = encode(item)
            name = names.get(type(item)) or _type_name(type(item))
            commands.append(xadd % (name, len(data), data))
        dead = self.dead
        commands += [
            _PACK(("XADD", dead, "*", "id", ident, "reason", reason, "raw", raw))
            for ident, reason, raw in batch.dead
        ]
        count = len(commands)
        if batch.snapshot is not None and self._snapshot_commands is not None:
            # The HSET of the data by hand: the header, the data as it is, CRLF (hiredis's
            # packer copies a 20 MB snapshot several times: 38 ms, against 4 ms for the join).
            hset, eval_id = self._snapshot_commands
            snapshot = batch.snapshot
            commands += (hset, b"$%d\r\n" % len(snapshot), snapshot, b"\r\n", eval_id)
            count += 2
        return Transaction(b"".join(commands), count, len(batch.outputs))

    @staticmethod
    def pack_script(batch: Batch) -> list[Any]:
        """The commit script's arguments for ``batch``, after the expected position."""
        state: list[str] = []
        for k, v in batch.state_set.items():  # values are JSON: UTF-8 (cmsgpack has no bin)
            state += (k, v.decode())
        out: list[str] = []
        for item in batch.outputs:
            out += (type(item).__name__, encode(item).decode())
        args: list[Any] = [
            batch.position,
            "1" if batch.replace else "0",
            SCHEMA_VERSION,
            _MSGPACK(state),
            _MSGPACK(sorted(batch.state_del)),
            _MSGPACK(out),
        ]
        args += pack_dead(batch.dead)
        args += [0] if batch.snapshot is None else [1, batch.snapshot]
        return args

    def commit(self, expected: str, batch: Batch) -> int:
        """Atomically move from position ``expected`` to ``batch.position``; returns the number
        of output entries appended.

        Raises :class:`CommitConflict` when the stored position is not ``expected``
        (another instance committed, or the store was reset), or changes before the
        commit lands: then nothing of ``batch`` was written.
        """
        packed = batch.packed if batch.packed is not None else self.pack(batch)
        if isinstance(packed, Transaction):
            return self._commit_transaction(expected, batch.position, packed)
        args = ["" if expected == START else expected, *packed]
        try:
            appended = self._commit(keys=self.keys, args=args)
        except redis.ResponseError as exc:
            if "CONFLICT" in str(exc):
                raise CommitConflict(str(exc)) from exc
            raise
        return int(appended)

    def _commit_transaction(self, expected: str, position: str, packed: Transaction) -> int:
        """:meth:`commit` as ``WATCH position``, ``GET position`` (one round trip), then, if
        it is ``expected``, ``MULTI``, the writes, ``SET position``, ``EXEC`` (a second one):
        ``EXEC`` runs nothing if the position was written meanwhile (docs/design.md §7.1)."""
        pool = self.client.connection_pool
        conn: Any = pool.get_connection()
        try:
            conn.send_packed_command(
                [_PACK(("WATCH", self.position)), _PACK(("GET", self.position))]
            )
            stored = read_replies(conn, 2)[1]
            cur = as_str(stored) if stored else ""
            want = "" if expected == START else expected
            if cur != want:
                conn.send_packed_command([_UNWATCH])
                read_replies(conn, 1)
                raise CommitConflict(f"CONFLICT position is {cur}, expected {want}")
            tail = [_PACK(("SET", self.position, position))] if position != expected else []
            conn.send_packed_command([_MULTI, packed.body, *tail, _EXEC])
            replies = read_replies(conn, 2 + packed.commands + len(tail))
        except CommitConflict:
            pool.release(conn)
            raise
        except BaseException:
            conn.disconnect()  # in an unknown state (a WATCH, a transaction half sent)
            pool.release(conn)
            raise
        pool.release(conn)
        done = replies[-1]
        if done is None:
            raise CommitConflict(f"CONFLICT position written during the commit, expected {want}")
        for reply in (*replies[:-1], *(done if isinstance(done, list) else [done])):
            if isinstance(reply, Exception):  # EXECABORT (nothing ran), or a command's error
                raise reply
        return packed.outputs


#: The RESP bulk string of each output type's name (``type`` field of the envelope).
_TYPE_NAMES: dict[type, bytes] = {}


def _type_name(kind: type) -> bytes:
    """The RESP bulk string of ``kind``'s name (kept in :data:`_TYPE_NAMES`)."""
    bulk = _TYPE_NAMES[kind] = _bulk(kind.__name__)
    return bulk


def _bulk(value: str | int) -> bytes:
    """``value`` as a RESP bulk string."""
    raw = str(value).encode()
    return b"$%d\r\n%b\r\n" % (len(raw), raw)


def _hset(key: str, pairs: Sequence[tuple[str, bytes]]) -> bytes:
    """RESP of ``HSET key field value ...`` for ``pairs`` (the same bytes as ``_PACK``)."""
    parts = [b"*%d\r\n$4\r\nHSET\r\n%b" % (2 + 2 * len(pairs), _bulk(key))]
    for name, value in pairs:
        field = name.encode()
        parts.append(b"$%d\r\n%b\r\n$%d\r\n%b\r\n" % (len(field), field, len(value), value))
    return b"".join(parts)


def read_replies(conn: Any, count: int) -> list[Any]:
    """The next ``count`` raw replies on ``conn``, an error reply as its exception object.

    On a connection parsed by hiredis, straight from its reader: one socket read for all
    of them (redis-py's ``read_response`` costs some microseconds of Python per reply; a
    commit answers ``QUEUED`` once per command, and a process of a hundred agents reads
    three replies per agent per change). Otherwise through ``read_response``."""
    parser = getattr(conn, "_parser", None)
    reader = getattr(parser, "_reader", None)
    replies: list[Any] = []
    if reader is None:
        for _ in range(count):
            try:
                replies.append(conn.read_response())
            except redis.ResponseError as exc:
                replies.append(exc)
        return replies
    gets, append = reader.gets, replies.append
    while len(replies) < count:
        reply = gets()
        kind = type(reply)  # the common replies first (a commit reads one QUEUED per command)
        if kind is bytes or kind is str or kind is list or kind is int or reply is None:
            append(reply)
        elif reply is NOT_ENOUGH_DATA:
            try:
                parser.read_from_socket()  # type: ignore[union-attr]
            except OSError as exc:  # as read_response says it
                raise redis.ConnectionError(f"Error while reading from Redis: {exc}") from exc
        elif isinstance(reply, redis.ConnectionError):
            raise reply
        elif isinstance(reply, hiredis.PushNotification):  # RESP3: not a reply
            parser.handle_push_response(reply)  # type: ignore[union-attr]
        else:
            append(reply)
    return replies


def _scan_pairs(client: Any, key: str) -> Iterator[tuple[str, bytes]]:
    """Every (field, value) of hash ``key``, one ``HSCAN`` chunk at a time."""
    cursor = 0
    while True:
        cursor, chunk = client.hscan(key, cursor, count=SCAN_CHUNK)
        for name, value in chunk.items():
            yield as_str(name), value
        if not cursor:
            return


def xadd_many(client: redis.Redis, stream: str, items: Iterable[Fields]) -> Sequence[Any]:
    """Append entries in one pipeline (tests and tools; stages use ``StageStore.commit``)."""
    pipe = client.pipeline(transaction=True)
    for item in items:
        pipe.xadd(stream, item)  # type: ignore[arg-type]
    return pipe.execute()


__all__ = [
    "OUTAGE_ERRORS",
    "START",
    "Batch",
    "Entry",
    "StageStore",
    "Transaction",
    "client_for",
    "connect",
    "id_key",
    "keep_going",
    "log",
    "outage_retry",
    "read_after",
    "read_replies",
    "redacted",
]
