"""``wgchain contract``: deploy DstackAccessNFT and send its transactions from the shell.

The signing key comes from ``WGCHAIN_PRIVATE_KEY`` (preferred) or ``--private-key``;
a key on the command line is visible to every user of the machine (``ps``), so use the
flag only on a throw-away devnet. ``--json`` prints one JSON object on stdout.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

import click

from shared.cmdline import with_settings
from shared.contract.client import AccessNFT, TxResult
from shared.errors import SettingsError
from shared.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])


def _chain_options(func: F) -> F:
    """``--rpc-url``, ``--contract``, ``--private-key`` and ``--json`` for every subcommand."""
    func = click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")(func)
    func = click.option(
        "--private-key",
        envvar="WGCHAIN_PRIVATE_KEY",
        default=None,
        help="Hex private key of the signer [env WGCHAIN_PRIVATE_KEY, preferred: "
        "a flag is visible to other users in the process list].",
    )(func)
    return with_settings("rpc_url", "contract", stage="contract")(func)


def _signer_key(private_key: str | None) -> str:
    if not private_key:
        raise SettingsError("WGCHAIN_PRIVATE_KEY", "required (the signer's hex private key)")
    return private_key


def _nft(cfg: Settings, private_key: str | None) -> AccessNFT:
    if not cfg.contract:
        raise SettingsError("WGCHAIN_CONTRACT", "required (the contract address)")
    return AccessNFT(cfg.rpc_urls[0], cfg.contract, _signer_key(private_key))


def _report(as_json: bool, what: str, result: TxResult, **extra: Any) -> None:
    if as_json:
        payload = {
            "tx_hash": result.tx_hash,
            "block": result.block_number,
            "token_id": result.token_id,
            **extra,
        }
        click.echo(json.dumps(payload, sort_keys=True))
    else:
        click.echo(f"{what} in block {result.block_number} (tx {result.tx_hash})")


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
        as_json,
        f"deployed DstackAccessNFT at {nft.address} (chain {nft.chain_id})",
        nft.deployment,
        address=nft.address,
        chain_id=nft.chain_id,
    )


@contract.command()
@click.option("--to", "to", required=True, help="Address that receives the token.")
@click.option("--node", "node_id", required=True, help="Node id the token grants.")
@click.option("--key", "public_key", default="", help="WireGuard public key of the receiver.")
@click.option("--uri", "token_uri", default="", help="Token URI (metadata).")
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
) -> None:
    """Mint an access token for a node (contract owner only)."""
    nft = _nft(cfg, private_key)
    result = nft.mint(to, node_id, public_key, token_uri)
    _report(as_json, f"minted token {result.token_id}", result, address=nft.address)


@contract.command()
@click.argument("token_id", type=click.IntRange(min=1))
@_chain_options
def revoke(*, cfg: Settings, private_key: str | None, as_json: bool, token_id: int) -> None:
    """Revoke a token (its holder or the contract owner)."""
    nft = _nft(cfg, private_key)
    result = nft.revoke(token_id)
    _report(as_json, f"revoked token {token_id}", result, address=nft.address)


@contract.command()
@click.argument("token_id", type=click.IntRange(min=1))
@click.option("--to", "to", required=True, help="Address that receives the token.")
@_chain_options
def transfer(
    *, cfg: Settings, private_key: str | None, as_json: bool, token_id: int, to: str
) -> None:
    """Transfer a token the signer holds to another address."""
    nft = _nft(cfg, private_key)
    result = nft.transfer(token_id, to)
    _report(as_json, f"transferred token {token_id}", result, address=nft.address)


@contract.command("set-key")
@click.argument("key")
@_chain_options
def set_key(*, cfg: Settings, private_key: str | None, as_json: bool, key: str) -> None:
    """Set the signer's WireGuard public key (all its tokens use it)."""
    nft = _nft(cfg, private_key)
    result = nft.set_key(key)
    _report(as_json, f"set the key of {nft.signer}", result, address=nft.address)
