"""``wgchain listen`` and the listener stage of ``wgchain run``: wiring only."""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Sequence
from typing import Final

import click
import msgspec

from producers.listener import verify
from producers.listener.heads import HeadWatcher
from producers.listener.lease import LeasedListeners, listener_id
from producers.listener.listener import Listener, open_listener
from shared import metrics
from shared.chain.answers import split_urls
from shared.chain.oneshot import DEFAULT_TIMEOUT
from shared.chain.rpc import RpcClient
from shared.cmdline import CHAIN, LISTENER, METRICS, STREAM, stop_event, with_settings
from shared.errors import SettingsError
from shared.redis_log import connect, keep_going
from shared.settings import Settings
from shared.validate import excerpt

#: ``--network`` values: ``CHAIN_ID:CONTRACT``.
_NETWORK_RE: Final = re.compile(r"([1-9][0-9]{0,11}):(0x[0-9a-fA-F]{40})")
#: Seconds a stopping process waits for the newHeads thread.
HEADS_STOP_TIMEOUT: Final = 5.0


def parse_network(text: str) -> tuple[int, str]:
    """``(chain id, lower-case contract)`` of a ``CHAIN_ID:CONTRACT`` value."""
    match = _NETWORK_RE.fullmatch(text.strip())
    if match is None:
        raise SettingsError(
            "--network", f"{excerpt(text)} is not CHAIN_ID:CONTRACT (e.g. 8453:0x…40 hex digits)"
        )
    return int(match.group(1)), match.group(2).lower()


def stage(cfg: Settings, stop: threading.Event, networks: Sequence[tuple[int, str]] = ()) -> None:
    """Listen to ``networks`` (default: the settings' one) under leases until ``stop`` is set.

    One listener thread per network whose lease this process holds; all networks use
    the RPC URLs of ``cfg`` (http(s) for calls, ws(s) for newHeads).
    """
    if not networks and not cfg.contract:
        raise SettingsError("WGCHAIN_CONTRACT", "required (the contract address)")
    call_urls, head_urls = split_urls(cfg.rpc_urls)
    wanted = list(dict.fromkeys(networks)) or [(cfg.chain_id, cfg.contract)]
    client = connect(cfg.redis_url, wait=stop)
    rpcs: list[RpcClient] = []
    try:
        listeners: list[Listener] = []
        for chain_id, contract in wanted:
            rpcs.append(RpcClient(call_urls))
            one = msgspec.structs.replace(cfg, chain_id=chain_id, contract=contract)
            opened = keep_going(functools.partial(open_listener, one, client, rpcs[-1]), stop)
            if opened is None:  # stopped while Redis or the RPC node was unreachable
                return
            listeners.append(opened)
        leased = LeasedListeners(client, listeners, listener_id(cfg.listener_id), cfg.lease_ttl)
        heads = HeadWatcher(head_urls, leased.wakes).start(stop) if head_urls else None
        try:
            leased.run(stop)
        finally:
            stop.set()  # also ends the newHeads thread when a listener failed
            if heads is not None:
                heads.join(HEADS_STOP_TIMEOUT)
    finally:
        for rpc in rpcs:
            rpc.close()
        client.close()


@click.command("listen")
@click.option(
    "--network",
    "networks",
    multiple=True,
    metavar="CHAIN_ID:CONTRACT",
    help="A network to listen to (repeatable; default: --chain-id and --contract).",
)
@click.option(
    "--verify-range",
    nargs=2,
    type=click.IntRange(min=0),
    metavar="B1 B2",
    default=None,
    help="Do not listen: compare the events stream of blocks B1..B2 of --contract with "
    "an eth_getLogs scan, print the differences (exit 0 when identical, 1 otherwise).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=DEFAULT_TIMEOUT,
    show_default=True,
    metavar="SECONDS",
    help="With --verify-range: give up (one line, exit 1) when an RPC call gets no answer "
    "within SECONDS, retries included.",
)
@click.option("--json", "as_json", is_flag=True, help="With --verify-range: one JSON document.")
@with_settings(
    *STREAM,
    *CHAIN,
    *LISTENER,
    *METRICS,
    stage="listener",
    ask_chain_id=False,  # asked through the listener's RPC client (retries, failover)
)
def listen(
    cfg: Settings,
    networks: tuple[str, ...],
    verify_range: tuple[int, int] | None,
    timeout: float,
    as_json: bool,
) -> None:
    """Append the contract's logs (final-enough blocks) to the events stream.

    Any number of processes may run: per network one holds the lease and appends,
    the others stand by (and spread the leases of several networks among them).
    """
    if verify_range:
        code = verify.check(cfg, *verify_range, timeout=timeout, as_json=as_json)
        click.get_current_context().exit(code)
    stop = stop_event()
    metrics.serve(cfg.metrics_port, cfg.metrics_listen)
    stage(cfg, stop, [parse_network(n) for n in networks])


__all__ = ["listen", "parse_network", "stage"]
