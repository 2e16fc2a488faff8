"""Settings: defaults < TOML file < ``WGCHAIN_*`` environment < command-line flags.

Validated once at start-up with msgspec; a bad value raises :class:`SettingsError`
naming the setting, which the CLI prints as one line with exit code 2.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qsl, urlsplit

import msgspec

from shared import validate
from shared.errors import SettingsError
from shared.keys import Keys

#: Prefix of the environment variables that configure wgchain.
ENV_PREFIX = "WGCHAIN_"
#: Block tags the listener may follow instead of counting confirmations.
FINALITY_TAGS = frozenset({"safe", "finalized"})
_CONFIRMATIONS_RE = re.compile(r"[0-9]{1,9}")
#: Schemes of ``redis_url`` (``+cluster``: a Redis Cluster reached through one of its nodes).
REDIS_SCHEMES = frozenset({"redis", "rediss", "unix", "redis+cluster", "rediss+cluster"})
#: A host to bind to: an IPv4 or IPv6 address, or a host name (no port).
_BIND_RE = re.compile(r"[0-9A-Za-z.:_-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\]")


#: Defaults that other layers also start from (a fold or a policy built without settings in
#: a test): each written once, here.
DEFAULT_POOL: Final = "10.88.0.0/16"
DEFAULT_QUARANTINE_BLOCKS: Final = 100
DEFAULT_KEEPALIVE: Final = 25
DEFAULT_EXPIRY_GRACE: Final = 2.0
DEFAULT_EXPIRY_WARNING: Final = 86400.0
#: Topologies: everyone with everyone, or spokes with hubs only.
TOPOLOGIES: Final = ("mesh", "hub")
#: Widest IPv4 pool (ipam keeps one byte per address: a /8 is 16 MiB).
MIN_POOL_PREFIX: Final = 8


class Settings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Every setting, with its default. Field ``x`` is ``WGCHAIN_X`` and ``--x``."""

    #: Redis URL (redis://, rediss://, unix://, redis+cluster://); empty starts an embedded one.
    redis_url: str = ""
    #: JSON-RPC URL(s) of the chain, comma-separated.
    rpc_url: str = "http://127.0.0.1:8545"
    #: Address of the DstackAccessNFT contract.
    contract: str = ""
    #: Chain id of the network (0: ask the RPC node).
    chain_id: int = 0
    #: First block the listener reads.
    start_block: int = 0
    #: Blocks behind ``latest`` that the listener treats as final.
    confirmations: int = 2
    #: What the listener treats as final: a number of confirmations, "safe" or "finalized"
    #: (the block tags); when set it wins over ``confirmations`` ("" uses ``confirmations``).
    finality: str | int = ""
    #: Largest ``eth_getLogs`` block range (blocks).
    max_block_range: int = 2000
    #: Seconds between polls of the chain head.
    poll_interval: float = 1.0
    #: IPv4 address pool of the network.
    pool: str = DEFAULT_POOL
    #: Optional IPv6 ULA /64 pool ("" for none).
    pool6: str = ""
    #: Blocks a released address stays quarantined before another node may take it.
    quarantine_blocks: int = DEFAULT_QUARANTINE_BLOCKS
    #: Endpoint template for peers that have not announced one, e.g. "{node}.vpn.example:51820".
    endpoint_template: str = ""
    #: PersistentKeepalive of every peer (seconds, 0 for off).
    keepalive: int = DEFAULT_KEEPALIVE
    #: Seconds between an agent's full re-reconciliations (drift repair).
    reconcile_interval: float = 30.0
    #: Who peers with whom: "mesh" (everyone) or "hub" (spokes peer only with ``hubs``).
    topology: str = "mesh"
    #: Hub node ids for ``topology = "hub"``, comma-separated.
    hubs: str = ""
    #: Seconds a listener's lease lives without renewal (takeover time after a crash).
    lease_ttl: float = 10.0
    #: Name of this listener process in leases and status ("" = host name and pid).
    listener_id: str = ""
    #: Peers-stream entries kept when trimming (0 = never trim); snapshots make up for the rest.
    peers_retention: int = 0
    #: Address the HTTP API listens on (host:port).
    api_listen: str = "127.0.0.1:8080"
    #: Bearer token the HTTP API requires for everything but /healthz and /readyz ("" = open).
    api_token: str = ""
    #: Entries a stage may lag behind its input before /readyz reports it not ready.
    max_lag: int = 1000
    #: Final blocks the listener may have left to append before it counts as behind.
    max_listener_lag: int = 50
    #: Seconds an entry may wait for a stage or a host (and the listener between two looks
    #: at the chain) before it counts as stalled.
    max_lag_seconds: float = 60.0
    #: Port of this process's Prometheus /metrics and /healthz (0 = none; the API serves its own).
    metrics_port: int = 0
    #: Address /metrics and /healthz bind to (loopback by default; "0.0.0.0" for every interface).
    metrics_listen: str = "127.0.0.1"
    #: Seconds of clock skew tolerated between hosts and the chain: a pass counts as expired
    #: this long after its expiration (ERC-5643), so no host cuts a pass another still keeps.
    expiry_grace: float = DEFAULT_EXPIRY_GRACE
    #: Seconds before its expiration that a pass is listed as expiring soon (0: never).
    expiry_warning: float = DEFAULT_EXPIRY_WARNING
    #: Log level.
    log_level: str = "INFO"
    #: Log as JSON lines instead of the human format.
    log_json: bool = False

    def keys(self) -> Keys:
        """The Redis keys of this network (needs ``chain_id`` and ``contract``)."""
        if not self.contract:
            raise SettingsError("WGCHAIN_CONTRACT", "required (the contract address)")
        if self.chain_id <= 0:
            raise SettingsError(
                "WGCHAIN_CHAIN_ID", "required (a positive chain id; this command has no RPC URL)"
            )
        return Keys(self.chain_id, self.contract.lower())

    def finality_rule(self) -> int | str:
        """Confirmations (an int) or a block tag (``"safe"``, ``"finalized"``).

        ``finality`` wins over ``confirmations`` when set; a bad value raises
        :class:`SettingsError` naming ``WGCHAIN_FINALITY``.
        """
        value = self.finality
        if isinstance(value, bool):
            raise SettingsError(env_name("finality"), f"{value!r} is not a finality")
        if isinstance(value, int):
            number = value
        else:
            text = value.strip().lower()
            if not text:
                return self.confirmations
            if text in FINALITY_TAGS:
                return text
            if not _CONFIRMATIONS_RE.fullmatch(text):
                raise SettingsError(
                    env_name("finality"),
                    f"{value[:40]!r} is neither a number of confirmations nor one of "
                    + ", ".join(sorted(FINALITY_TAGS)),
                )
            number = int(text)
        if number < 0:
            raise SettingsError(env_name("finality"), "confirmations must not be negative")
        return number

    @property
    def hub_list(self) -> list[str]:
        """``hubs`` as a list of node ids."""
        return [h.strip() for h in self.hubs.split(",") if h.strip()]

    @property
    def rpc_urls(self) -> list[str]:
        return [u.strip() for u in self.rpc_url.split(",") if u.strip()]


#: Every setting at its default (what nothing set gives): the one home of each default.
DEFAULTS: Final = Settings()
FIELDS: tuple[str, ...] = Settings.__struct_fields__
#: ``WGCHAIN_*`` variables that are read directly, not settings (never warned about).
OTHER_VARIABLES: Final = frozenset(
    {
        "WGCHAIN_CONFIG",  # the TOML settings file (--config)
        "WGCHAIN_PRIVATE_KEY",  # the signer of `wgchain contract` (never a setting: a secret)
        "WGCHAIN_ANVIL",  # the anvil binary of the devnet
        "WGCHAIN_TOOLS_DIR",  # the pinned node tools (solc) of `make contract`
    }
)


def keepalive_problem(keepalive: int) -> str:
    """Why ``keepalive`` is no PersistentKeepalive ("" when it is one)."""
    if keepalive < 0:
        return "must not be negative (0: off)"
    if keepalive > MAX_PORT:
        return f"{keepalive} is over WireGuard's {MAX_PORT} seconds (0: off)"
    return ""


def pool_problems(pool: str, pool6: str) -> list[tuple[str, str]]:
    """(setting, why) for each rule the address pools break (none when they are usable).

    The one place these rules live: the settings check them, and so does a fold or a
    policy built from bare values (tests, tools).
    """
    try:
        net = ipaddress.IPv4Network(pool, strict=True)
    except ValueError as exc:
        return [("pool", f"{pool!r} is not an IPv4 network ({exc})")]
    if not MIN_POOL_PREFIX <= net.prefixlen <= 30:
        return [("pool", f"{pool} must be between /{MIN_POOL_PREFIX} and /30")]
    if not pool6:
        return []
    try:
        net6 = ipaddress.IPv6Network(pool6, strict=True)
    except ValueError as exc:
        return [("pool6", f"{pool6!r} is not an IPv6 network ({exc})")]
    if net6.prefixlen > 64 or not net6.subnet_of(ipaddress.IPv6Network("fc00::/7")):
        return [("pool6", "must be a private (ULA) network of /64 or larger")]
    if net6.num_addresses < net.num_addresses:
        return [("pool6", f"{pool6} is smaller than {pool}")]
    return []


def topology_problems(topology: str, hubs: Sequence[str]) -> list[tuple[str, str]]:
    """(setting, why) for each rule the topology and its hubs break."""
    if topology not in TOPOLOGIES:
        return [("topology", f"{topology[:40]!r} is neither 'mesh' nor 'hub'")]
    if topology == "hub" and not hubs:
        return [("hubs", "topology 'hub' needs at least one hub node id")]
    for hub in hubs:
        if not validate.is_valid_node_id(hub):
            return [("hubs", f"{validate.excerpt(hub)} is not a valid node id")]
    return []


def expiry_grace_problem(grace: float) -> str:
    """Why ``grace`` is no clock-skew allowance ("" when it is one)."""
    if not 0 <= grace <= MAX_EXPIRY_GRACE:  # NaN fails both comparisons
        return f"must be between 0 and {MAX_EXPIRY_GRACE:.0f} seconds"
    return ""


def check(problems: Sequence[tuple[str, str]]) -> None:
    """Raise the :class:`SettingsError` of the first problem, if any."""
    for field, why in problems:
        if why:
            raise SettingsError(env_name(field), why)


#: Highest TCP/UDP port, and so the highest PersistentKeepalive WireGuard accepts (seconds).
MAX_PORT: Final = 65535
#: Largest ``expiry_grace``: a skew beyond an hour is a broken clock, not one to tolerate.
MAX_EXPIRY_GRACE: Final = 3600.0
#: Largest ``expiry_warning`` (a year).
MAX_EXPIRY_WARNING: Final = 365 * 86400.0
#: How a value that does not convert is described, by the type of its field.
_EXPECTED: Final = {
    int: "a whole number",
    float: "a number",
    bool: "true or false",
    str: "text",
}
#: The same, for fields whose default does not tell their type.
_EXPECTED_OF: Final = {"finality": "a number of confirmations, 'safe' or 'finalized'"}


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def flag_name(field: str) -> str:
    """The command-line flag of ``field`` (``chain_id`` -> ``--chain-id``)."""
    return "--" + field.replace("_", "-")


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """One warning per ``WGCHAIN_*`` variable that is no setting, naming the closest one."""
    known = {env_name(f) for f in FIELDS} | OTHER_VARIABLES
    suffixes = sorted(k.removeprefix(ENV_PREFIX) for k in known)
    warnings = []
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or name in known:
            continue
        close = difflib.get_close_matches(name.removeprefix(ENV_PREFIX), suffixes, n=1)
        hint = f" (did you mean {ENV_PREFIX}{close[0]}?)" if close else ""
        warnings.append(f"{validate.excerpt(name)} is not a wgchain setting{hint}; ignored")
    return warnings


def _redis_url_problem(url: str) -> str | None:
    """Why ``url`` is not a usable Redis URL (scheme, port, database number), or None."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as exc:  # the message never holds the password
        return str(exc)
    if parts.scheme not in REDIS_SCHEMES:
        return "must start with redis://, rediss://, unix:// or redis+cluster://"
    db = ""
    if parts.scheme != "unix":
        db = parts.path.strip("/")
    for name, value in parse_qsl(parts.query):
        if name == "db":
            db = value
    if db and not db.isdigit():
        return f"database {db[:20]!r} is not a number (e.g. redis://host:6379/0)"
    if db and "cluster" in parts.scheme and int(db) != 0:
        return "a Redis Cluster has only database 0"
    return None


def _check(s: Settings, name: Callable[[str], str] = env_name) -> None:
    """Raise :class:`SettingsError` for the first bad value; ``name`` says where it came from."""

    def bad(field: str, message: str) -> SettingsError:
        return SettingsError(name(field), message)

    if s.contract and not validate.is_valid_address(s.contract):
        raise bad("contract", f"{s.contract[:60]!r} is not a 0x-prefixed 20-byte address")
    if s.redis_url:
        problem = _redis_url_problem(s.redis_url)
        if problem:
            raise bad("redis_url", problem)
    for url in s.rpc_urls or [""]:
        if urlsplit(url).scheme not in {"http", "https", "ws", "wss"}:
            raise bad("rpc_url", f"{url[:60]!r} is not an http(s):// or ws(s):// URL")
    for field in (
        "chain_id",
        "start_block",
        "confirmations",
        "quarantine_blocks",
        "keepalive",
        "peers_retention",
        "max_lag",
        "max_listener_lag",
    ):
        if getattr(s, field) < 0:
            raise bad(field, "must not be negative")
    try:
        s.finality_rule()
    except SettingsError as exc:
        raise bad("finality", str(exc).partition(": ")[2]) from None
    if s.max_block_range < 1:
        raise bad("max_block_range", "must be at least 1")
    for field in ("poll_interval", "reconcile_interval"):
        if getattr(s, field) <= 0:
            raise bad(field, "must be a positive number of seconds")
    for field, problem in (
        ("keepalive", keepalive_problem(s.keepalive)),
        *pool_problems(s.pool, s.pool6),
        *topology_problems(s.topology, s.hub_list),
    ):
        if problem:
            raise bad(field, problem)
    if s.lease_ttl < 1:
        raise bad("lease_ttl", "must be at least 1 second")
    if not 0 <= s.metrics_port <= MAX_PORT:
        raise bad("metrics_port", "must be a TCP port (0 for none)")
    if s.max_lag_seconds <= 0:
        raise bad("max_lag_seconds", "must be positive")
    if problem := expiry_grace_problem(s.expiry_grace):
        raise bad("expiry_grace", problem)
    if not 0 <= s.expiry_warning <= MAX_EXPIRY_WARNING:
        raise bad(
            "expiry_warning", f"must be between 0 and {MAX_EXPIRY_WARNING:.0f} seconds (a year)"
        )
    if not _BIND_RE.fullmatch(s.metrics_listen):
        raise bad("metrics_listen", f"{s.metrics_listen[:60]!r} is not an address to bind to")
    host, sep, port = s.api_listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= MAX_PORT:
        raise bad("api_listen", f"{s.api_listen[:60]!r} is not host:port")
    if s.log_level.upper() not in {"TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR"}:
        raise bad("log_level", f"unknown level {s.log_level!r}")


def _convert(field: str, value: Any, where: str) -> None:
    """Check that ``value`` converts to ``field``'s type; a human message naming ``where``."""
    try:
        msgspec.convert({field: value}, Settings, strict=False)
    except msgspec.ValidationError:
        expected = _EXPECTED_OF.get(field) or _EXPECTED.get(
            type(getattr(DEFAULTS, field)), "a valid value"
        )
        shown = validate.excerpt(value) if isinstance(value, str) else repr(value)[:40]
        raise SettingsError(where, f"{shown!r} is not {expected}") from None


def load(
    overrides: Mapping[str, Any] | None = None,
    *,
    config_file: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Merge defaults, the TOML file, the environment and ``overrides`` (None values skipped).

    A bad value raises :class:`SettingsError` naming it where it came from: the flag
    (``--pool``), the variable (``WGCHAIN_POOL``) or the key in the TOML file.
    """
    environ = os.environ if environ is None else environ
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}
    config_file = config_file or environ.get(ENV_PREFIX + "CONFIG") or None
    if config_file:
        try:
            with open(config_file, "rb") as fh:
                table = tomllib.load(fh)
        except OSError as exc:
            shown = validate.printable(str(config_file))
            raise SettingsError("--config", f"cannot read {shown}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            shown = validate.printable(str(config_file))
            raise SettingsError("--config", f"{shown} is not valid TOML: {exc}") from None
        table = table.get("wgchain", table)
        for key, value in table.items():
            name = key.replace("-", "_")
            if name not in FIELDS:
                close = difflib.get_close_matches(name, FIELDS, n=1, cutoff=0.6)
                hint = f" (did you mean {close[0]}?)" if close else ""
                where = validate.printable(f"{key} in {config_file}")
                raise SettingsError(where, f"unknown setting{hint}")
            merged[name] = value
            origin[name] = validate.printable(f"{key} in {config_file}")
    for field in FIELDS:
        if env_name(field) in environ:
            merged[field] = environ[env_name(field)]
            origin[field] = env_name(field)
    for field, value in (overrides or {}).items():
        if value is not None:
            merged[field] = value
            origin[field] = flag_name(field)
    for field, value in merged.items():
        _convert(field, value, origin[field])
    settings = msgspec.convert(merged, Settings, strict=False)
    _check(settings, lambda field: origin.get(field, env_name(field)))
    return settings
