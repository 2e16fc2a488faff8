"""``wgchain contract``: deploy DstackAccessNFT and send its transactions from the shell.

The signing key comes from ``WGCHAIN_PRIVATE_KEY`` (preferred) or ``--private-key``;
a key on the command line is visible to every user of the machine (``ps``), so use the
flag only on a throw-away devnet. ``--json`` prints one JSON object on stdout with the
transaction hash, its block, and the token, node, owner and key it concerns.

Node ids and keys are checked with the pipeline's own rules (``shared.validate``)
before anything is sent: a value the pipeline would reject (an anomaly, a node cut
off) exits 2 and sends nothing, unless ``--force`` (for testing hostile input).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import click

from shared.cmdline import with_settings
from shared.contract.client import MAX_DURATION, PERPETUAL, AccessNFT, TxResult
from shared.durations import parse_duration
from shared.errors import ChainError, SettingsError
from shared.settings import Settings
from shared.validate import excerpt, node_id_problem, wg_key_problem

F = TypeVar("F", bound=Callable[..., Any])

_FORCE = click.option(
    "--force",
    is_flag=True,
    help="Send even a node id or key the pipeline will reject (to test hostile input).",
)

#: The receiver of a token (``mint``, ``transfer``).
_TO = click.option(
    "--to", "to", required=True, metavar="ADDRESS", help="Address that receives the token."
)


def _token_id(help_text: str) -> Callable[[F], F]:
    """The TOKEN_ID argument of the commands that act on one token (ids start at 1)."""
    return click.argument("token_id", type=click.IntRange(min=1), help=help_text)


def _chain_options(func: F) -> F:
    """``--rpc-url``, ``--contract``, ``--private-key`` and ``--json`` for every subcommand."""
    func = click.option(
        "--json", "as_json", is_flag=True, help="Print one JSON object (tx, block, token...)."
    )(func)
    func = click.option(
        "--private-key",
        envvar="WGCHAIN_PRIVATE_KEY",
        default=None,
        metavar="HEX",
        help="Hex private key of the signer [env WGCHAIN_PRIVATE_KEY, preferred: "
        "a flag is visible to other users in the process list].",
    )(func)
    return with_settings("rpc_url", "contract", stage="contract")(func)


class Duration(click.ParamType[int]):
    """A duration typed as ``30d``, ``12h``, ``90m``, ``45s``, ``2w``, ``1d12h`` or seconds."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_duration(str(value), MAX_DURATION)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


_DURATION_HELP = "e.g. 30d, 12h, 90m, 45s, 2w, 1d12h, or a number of seconds"


def expiration_text(expiration: int) -> str:
    """An ERC-5643 expiration as people read it: a UTC time, ``never`` or ``cancelled``."""
    if expiration == 0:
        return "cancelled (expired)"
    if expiration == PERPETUAL:
        return "never"
    try:
        when = datetime.fromtimestamp(expiration, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return f"at {expiration} (after the year 9999)"
    return when.strftime("%Y-%m-%d %H:%M:%S UTC")


def _signer_key(private_key: str | None) -> str:
    if not private_key:
        raise SettingsError("WGCHAIN_PRIVATE_KEY", "required (the signer's hex private key)")
    return private_key


def _nft(cfg: Settings, private_key: str | None) -> AccessNFT:
    if not cfg.contract:
        raise SettingsError("WGCHAIN_CONTRACT", "required (the contract address)")
    return AccessNFT(cfg.rpc_urls[0], cfg.contract, _signer_key(private_key))


def _require_expiry(nft: AccessNFT) -> None:
    """Stop (exit 1, nothing sent) when the contract has no time-limited passes."""
    if not nft.supports_expiry():
        raise ChainError(
            f"the contract at {nft.address} does not implement ERC-5643 "
            "(supportsInterface(0x8c65f84d) is not true): its passes never expire; nothing was sent"
        )


def _refuse(problem: str | None, option: str, force: bool) -> None:
    """Stop (exit 2, nothing sent) when ``problem`` is set, unless ``force``."""
    if problem and not force:
        raise click.BadParameter(
            f"{problem}; nothing was sent (--force sends it anyway)", param_hint=option
        )


def _report(nft: AccessNFT, as_json: bool, line: str, result: TxResult, **facts: Any) -> None:
    """One JSON object (the transaction, the contract's ``address`` and ``facts``), or
    ``line`` with block and tx."""
    if as_json:
        payload = {
            "tx_hash": result.tx_hash,
            "block": result.block_number,
            "events": list(result.events),
            "address": nft.address,
            **facts,
        }
        click.echo(json.dumps(payload, sort_keys=True))
    else:
        click.echo(f"{line} in block {result.block_number} (tx {result.tx_hash})")


@click.group()
def contract() -> None:
    """Deploy the DstackAccessNFT contract and send its transactions."""


@contract.command()
@_chain_options
def deploy(*, cfg: Settings, private_key: str | None, as_json: bool) -> None:
    """Deploy a new DstackAccessNFT owned by the signer; prints its address."""
    nft = AccessNFT.deploy(cfg.rpc_urls[0], _signer_key(private_key))
    assert nft.deployment is not None
    _report(
        nft,
        as_json,
        f"deployed DstackAccessNFT at {nft.address} (chain {nft.chain_id})",
        nft.deployment,
        chain_id=nft.chain_id,
        owner=nft.signer,
    )


@contract.command()
@_TO
@click.option("--node", "node_id", required=True, help="Node id the token grants.")
@click.option(
    "--key",
    "public_key",
    default="",
    help="WireGuard public key of the receiver [default: none: the owner's key stays].",
)
@click.option("--uri", "token_uri", default="", help="Token URI (metadata).")
@click.option(
    "--duration",
    type=Duration(),
    default=None,
    help="A time-limited pass (ERC-5643) that expires this long after the mint's block "
    f"({_DURATION_HELP}) [default: none: a perpetual pass].",
)
@_FORCE
@_chain_options
def mint(
    *,
    cfg: Settings,
    private_key: str | None,
    as_json: bool,
    to: str,
    node_id: str,
    public_key: str,
    token_uri: str,
    duration: int | None,
    force: bool,
) -> None:
    """Mint an access token for a node (contract owner only)."""
    _refuse(node_id_problem(node_id), "--node", force)
    _refuse(wg_key_problem(public_key) if public_key else None, "--key", force)
    nft = _nft(cfg, private_key)
    if duration:
        _require_expiry(nft)
    result = nft.mint(to, node_id, public_key, token_uri, duration or 0)
    owner = str(result.args.get("owner", to))
    expiration = int(result.args.get("expiration", PERPETUAL))
    line = f"minted token {result.token_id} for node {excerpt(node_id)} to {owner}"
    if duration:
        line += f", expires {expiration_text(expiration)}"
    _report(
        nft,
        as_json,
        line,
        result,
        token_id=result.token_id,
        node=result.args.get("nodeId", node_id),
        owner=owner,
        key=result.args.get("wireguardPublicKey", public_key),
        expiration=expiration if duration else None,
    )


@contract.command()
@_token_id("The token to revoke.")
@_chain_options
def revoke(*, cfg: Settings, private_key: str | None, as_json: bool, token_id: int) -> None:
    """Revoke a token (its holder or the contract owner)."""
    nft = _nft(cfg, private_key)
    result = nft.revoke(token_id)
    node = str(result.args.get("nodeId", ""))
    owner = nft.owner_of(token_id)  # a revoked token keeps its holder
    _report(
        nft,
        as_json,
        f"revoked token {token_id} (node {excerpt(node)}, held by {owner})",
        result,
        token_id=token_id,
        node=node,
        owner=owner,
    )


@contract.command()
@_token_id("The token to transfer.")
@_TO
@_chain_options
def transfer(
    *, cfg: Settings, private_key: str | None, as_json: bool, token_id: int, to: str
) -> None:
    """Transfer a token the signer holds to another address."""
    nft = _nft(cfg, private_key)
    result = nft.transfer(token_id, to)
    owner = str(result.args.get("to", to))
    access = nft.get_node_access(token_id)
    _report(
        nft,
        as_json,
        f"transferred token {token_id} (node {excerpt(access.node_id)}) to {owner}",
        result,
        token_id=token_id,
        node=access.node_id,
        previous_owner=str(result.args.get("from", nft.signer)),
        owner=owner,
        key=access.public_key,  # the new owner's key now opens the node
    )


@contract.command("set-key")
@click.argument("key", help="The new WireGuard public key (as `wg pubkey` prints it).")
@_FORCE
@_chain_options
def set_key(
    *, cfg: Settings, private_key: str | None, as_json: bool, key: str, force: bool
) -> None:
    """Set the signer's WireGuard public key (all its tokens use it).

    A key the pipeline rejects would cut off every node of the signer: it is refused
    (exit 2, nothing sent) unless --force.
    """
    _refuse(wg_key_problem(key), "KEY", force)
    nft = _nft(cfg, private_key)
    result = nft.set_key(key)
    owner = str(result.args.get("owner", nft.signer))
    _report(
        nft,
        as_json,
        f"set the key of {owner}",
        result,
        owner=owner,
        key=result.args.get("wireguardPublicKey", key),
    )


@contract.command()
@_token_id("The token to renew.")
@click.option(
    "--duration",
    type=Duration(),
    required=True,
    help=f"How much longer the pass lasts ({_DURATION_HELP}).",
)
@_chain_options
def renew(
    *, cfg: Settings, private_key: str | None, as_json: bool, token_id: int, duration: int
) -> None:
    """Renew a time-limited pass (ERC-5643; contract owner only).

    The duration counts from the pass's expiration, or from now when that is past (a
    cancelled or expired pass comes back). A perpetual pass is not renewable.
    """
    nft = _nft(cfg, private_key)
    _require_expiry(nft)
    result = nft.renew(token_id, duration)
    expiration = int(result.args.get("expiration", nft.expires_at(token_id)))
    _report(
        nft,
        as_json,
        f"renewed token {token_id}: expires {expiration_text(expiration)}",
        result,
        token_id=token_id,
        duration=duration,
        expiration=expiration,
    )


@contract.command()
@_token_id("The token whose pass ends.")
@_chain_options
def cancel(*, cfg: Settings, private_key: str | None, as_json: bool, token_id: int) -> None:
    """Cancel a pass at once (ERC-5643; its holder or the contract owner).

    The token stays owned and active; a renewal by the contract owner brings the pass back.
    """
    nft = _nft(cfg, private_key)
    _require_expiry(nft)
    result = nft.cancel(token_id)
    _report(
        nft,
        as_json,
        f"cancelled the pass of token {token_id} (expired now)",
        result,
        token_id=token_id,
        expiration=int(result.args.get("expiration", 0)),
    )
