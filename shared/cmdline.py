"""Click helpers shared by every subcommand: settings flags, the chain id, process signals."""

from __future__ import annotations

import functools
import inspect
import os
import signal
import threading
from collections.abc import Callable, Sequence
from typing import Any, Final, TypeVar

import click
import msgspec

from shared import logs, settings, shutdown
from shared.errors import ChainError, ServiceUnavailable
from shared.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])

# Option groups: the settings that always travel together, declared once for every command
# that takes them (``@with_settings(*STREAM, *CHAIN, ...)``); the order is the order of --help.
#: Which network's streams, in which Redis.
STREAM: Final = ("redis_url", "chain_id", "contract")
#: How the chain is read: the node, where to start, what counts as final, range size.
CHAIN: Final = ("rpc_url", "start_block", "confirmations", "finality", "max_block_range")
#: A listener process: poll interval, lease and its name.
LISTENER: Final = ("poll_interval", "lease_ttl", "listener_id")
#: How addresses are handed out (the ipam stage).
ADDRESSES: Final = ("pool", "pool6", "quarantine_blocks")
#: Where /metrics and /healthz are served.
METRICS: Final = ("metrics_port", "metrics_listen")
#: How far behind a read may be before it says so.
FRESHNESS: Final = ("max_lag", "max_listener_lag", "max_lag_seconds")
#: What a read of the whole fleet takes (``status``, ``diagnose``): the streams, the chain head,
#: how far behind is too far, and the agents' reconcile interval (a host silent for over three
#: is stale).
FLEET: Final = (*STREAM, "rpc_url", *FRESHNESS, "reconcile_interval")

#: Seconds one ``eth_chainId`` request may take when the chain id is asked from the RPC node.
CHAIN_ID_TIMEOUT: Final = 10.0
#: Placeholders shown for settings whose value is a name, an address or a URL.
_METAVARS: Final = {
    "redis_url": "URL",
    "rpc_url": "URL[,URL...]",
    "contract": "ADDRESS",
    "chain_id": "ID",
    "pool": "CIDR",
    "pool6": "CIDR",
    "endpoint_template": "TEMPLATE",
    "topology": "mesh|hub",
    "hubs": "NODE[,NODE...]",
    "listener_id": "NAME",
    "api_listen": "HOST:PORT",
    "api_token": "TOKEN",
    "finality": "N|safe|finalized",
    "log_level": "LEVEL",
    "metrics_port": "PORT",
}
#: What an empty default means, for settings whose default is empty.
_EMPTY_DEFAULTS: Final = {
    "redis_url": "embedded for run and demo, else required",
    "contract": "required",
    "listener_id": "host name and pid",
    "finality": "uses --confirmations",
}


@functools.cache
def field_docs() -> dict[str, str]:
    """Each setting's meaning: the ``#:`` comment above its field in :class:`Settings`."""
    docs: dict[str, str] = {}
    pending: list[str] = []
    for line in inspect.getsource(Settings).splitlines():
        text = line.strip()
        if text.startswith("#:"):
            pending.append(text[2:].strip())
            continue
        name = text.split(":", 1)[0]
        if pending and name in settings.FIELDS:
            docs[name] = " ".join(pending).replace("``", "")
        pending = []
    return docs


def setting_help(name: str, docs: dict[str, str] | None = None) -> str:
    """The help of ``--<name>``: its meaning, its variable and its default."""
    meaning = (docs if docs is not None else field_docs()).get(name, "")
    default = getattr(settings.DEFAULTS, name)
    shown = _EMPTY_DEFAULTS.get(name, "none") if default == "" else str(default)
    if isinstance(default, bool):
        shown = str(default).lower()
    return f"{meaning} [env {settings.env_name(name)}; default: {shown}]".strip()


def _option(name: str, docs: dict[str, str]) -> Callable[[F], F]:
    default = getattr(settings.DEFAULTS, name)
    kind: click.ParamType[Any] = click.STRING
    if isinstance(default, bool):
        kind = click.BOOL
    elif isinstance(default, int):
        kind = click.INT
    elif isinstance(default, float):
        kind = click.FLOAT
    metavar = _METAVARS.get(name) or (
        "SECONDS" if kind is click.FLOAT else "N" if kind is click.INT else "TEXT"
    )
    return click.option(  # type: ignore[no-any-return]
        settings.flag_name(name),
        name,
        type=kind,
        default=None,
        metavar=metavar,
        help=setting_help(name, docs),
    )


def with_settings(
    *fields: str, stage: str = "wgchain", ask_chain_id: bool = True
) -> Callable[[F], F]:
    """Add ``--<field>`` options for ``fields`` and pass the merged ``Settings`` as ``cfg``.

    Precedence: flag > ``WGCHAIN_*`` > TOML (``--config``) > default. Also sets up
    logging and warns about ``WGCHAIN_*`` variables that are no setting. A command with
    both ``chain_id`` and ``rpc_url`` gets the chain id from the RPC node when none is set
    (see :func:`with_chain_id`); ``ask_chain_id=False`` for commands that ask through
    their own RPC client, with its retries and failover.
    """
    for name in fields:
        if name not in settings.FIELDS:
            raise ValueError(f"unknown setting {name}")
    asks = ask_chain_id and {"chain_id", "rpc_url"} <= set(fields)

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            ctx = click.get_current_context()
            root = ctx.find_root().obj or {}
            overrides = dict(root.get("overrides", {}))
            for name in fields:
                overrides[name] = kwargs.pop(name, None)
            cfg = settings.load(overrides, config_file=root.get("config_file"))
            logs.setup(cfg.log_level, cfg.log_json, stage=stage)
            warn_unknown_variables()
            if asks and cfg.contract and not cfg.chain_id:
                cfg = with_chain_id(cfg)
            return func(*args, cfg=cfg, **kwargs)

        docs = field_docs()
        for name in reversed(fields):
            wrapper = _option(name, docs)(wrapper)
        return wrapper  # type: ignore[return-value]

    return decorate


def warn_unknown_variables() -> None:
    """Log a warning for each ``WGCHAIN_*`` variable that is no setting (a typo, probably)."""
    for warning in settings.unknown_variables(os.environ):
        logs.log.warning(warning)


def ask_chain_id(urls: Sequence[str], timeout: float = CHAIN_ID_TIMEOUT) -> int:
    """The chain id the RPC node serves (``eth_chainId``), from the first http(s) URL that answers."""
    import requests

    calls = [u for u in urls if u.startswith("http")]  # ws(s) URLs serve newHeads only
    if not calls:
        raise ChainError("cannot ask the chain id: WGCHAIN_RPC_URL has no http(s) URL")
    body = {"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}
    failures = []
    for url in calls:
        where = _endpoint(url)
        try:
            reply = requests.post(url, json=body, timeout=timeout)
            return int(msgspec.json.decode(reply.content)["result"], 16)
        except requests.RequestException as exc:
            failures.append(f"{where}: {logs.brief(exc).partition(': ')[2] or 'no answer'}")
        except (KeyError, TypeError, ValueError, msgspec.DecodeError):
            failures.append(f"{where}: not a JSON-RPC eth_chainId answer")
    raise ServiceUnavailable(
        "cannot ask the RPC node for its chain id (eth_chainId) — "
        + "; ".join(failures)
        + " — set WGCHAIN_CHAIN_ID or a reachable WGCHAIN_RPC_URL"
    )


def _endpoint(url: str) -> str:
    """``scheme://host:port`` of ``url`` (safe to show: no credentials, path or query)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return f"{parts.scheme}://{parts.hostname or '?'}{port}"


def with_chain_id(cfg: Settings, served: Callable[[], int] | None = None) -> Settings:
    """``cfg`` with the chain id of its network: the one place the chain id is decided.

    ``served`` asks the RPC node (a command's own RPC client, with its retries); without
    it the node is asked only when no chain id is set (:func:`ask_chain_id`). A set
    chain id that differs from the one the node serves is a :class:`ChainError`.
    """
    if served is None:
        if cfg.chain_id:
            return cfg
        return msgspec.structs.replace(cfg, chain_id=ask_chain_id(cfg.rpc_urls))
    actual = served()
    if cfg.chain_id and cfg.chain_id != actual:
        raise ChainError(f"the RPC serves chain {actual}, but the settings say {cfg.chain_id}")
    return msgspec.structs.replace(cfg, chain_id=actual)


def stop_event() -> threading.Event:
    """An event set by SIGTERM or SIGINT, for loops that finish their batch and exit."""
    stop = shutdown.SHUTDOWN

    def handler(signum: int, frame: Any) -> None:
        logs.log.info("signal {} received, finishing the current batch", signum)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


__all__ = [
    "Settings",
    "ask_chain_id",
    "field_docs",
    "setting_help",
    "stop_event",
    "warn_unknown_variables",
    "with_chain_id",
    "with_settings",
]
