"""A web3 client of DstackAccessNFT: deploy, mint, revoke, transfer, set keys, renew and
cancel passes (ERC-5643), read views.

Transactions are signed locally with the private key (it never leaves the process and
is never logged), sent raw, and awaited to their receipt. A revert becomes a
:class:`ChainError` naming the decoded reason, e.g. ``mintNodeAccess reverted:
OwnableUnauthorizedAccount(account=0x7099...)``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from functools import cached_property
from importlib import resources
from typing import Any, TypeVar

import msgspec
import requests
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress
from eth_utils.crypto import keccak
from web3 import Web3
from web3.contract import Contract
from web3.exceptions import ContractLogicError, TimeExhausted, Web3Exception, Web3RPCError

from shared import validate
from shared.errors import ChainError, ServiceUnavailable, SettingsError
from shared.logs import log

#: Seconds to wait for a transaction's receipt.
RECEIPT_TIMEOUT = 120.0
#: Seconds one JSON-RPC request may take.
REQUEST_TIMEOUT = 30.0
#: Name of the committed artifact inside this package.
ARTIFACT_NAME = "DstackAccessNFT.json"
#: ``supportsInterface`` id of ERC-5643 (subscription NFTs: expiring passes).
ERC5643_INTERFACE_ID = bytes.fromhex("8c65f84d")
#: ``expiresAt`` of a pass that never expires (the contract's ``PERPETUAL``: type(uint64).max).
PERPETUAL = 2**64 - 1
#: Largest duration the contract takes (a ``uint64`` of seconds).
MAX_DURATION = 2**64 - 1
#: Gas limit of the subscription transactions, as a multiple of the estimate: their cost
#: depends on ``block.timestamp`` (renewing from now or from a later expiration), which the
#: estimate sees one block earlier than the transaction.
GAS_HEADROOM = 1.25

T = TypeVar("T")


class TxResult(msgspec.Struct, frozen=True):
    """A mined transaction: its hash, block, minted token id (mint only) and event names."""

    tx_hash: str
    block_number: int
    token_id: int | None = None
    #: Names of the contract's events in the receipt, in log order.
    events: tuple[str, ...] = ()
    #: Arguments of those events by name, merged in log order (``nodeId``, ``owner``,
    #: ``wireguardPublicKey``, ``from``, ``to``...; strings as the chain has them: hostile).
    args: dict[str, Any] = msgspec.field(default_factory=dict)


class NodeAccess(msgspec.Struct, frozen=True):
    """``getNodeAccess``: the key is the CURRENT key of the token's owner."""

    node_id: str
    public_key: str
    created_at: int
    is_active: bool


def load_artifact() -> dict[str, Any]:
    """The committed ``{"abi": [...], "bytecode": "0x..."}`` of DstackAccessNFT."""
    text = resources.files(__package__).joinpath(ARTIFACT_NAME).read_text(encoding="utf-8")
    artifact: dict[str, Any] = json.loads(text)
    return artifact


def checksum(value: str, what: str = "address") -> ChecksumAddress:
    """``value`` as a checksummed address; :class:`SettingsError` naming ``what`` if it is not one."""
    if not Web3.is_address(value):
        raise SettingsError(what, f"{validate.excerpt(value)} is not a 0x-prefixed 20-byte address")
    return Web3.to_checksum_address(value)


def signer_account(private_key: str) -> LocalAccount:
    """The local account of a hex private key (the key itself is never echoed in errors)."""
    try:
        account: LocalAccount = Account.from_key(private_key.strip())
    except (ValueError, TypeError):
        raise SettingsError("WGCHAIN_PRIVATE_KEY", "not a 32-byte hex private key") from None
    return account


def connect(rpc_url: str) -> Web3:
    """A Web3 over HTTP(S) (lazy: the first request finds out whether anything answers)."""
    return Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": REQUEST_TIMEOUT}))


def _error_selectors(abi: list[dict[str, Any]]) -> dict[bytes, dict[str, Any]]:
    selectors = {}
    for item in abi:
        if item.get("type") == "error":
            signature = f"{item['name']}({','.join(i['type'] for i in item['inputs'])})"
            selectors[keccak(text=signature)[:4]] = item
    return selectors


def _event_topics(abi: list[dict[str, Any]]) -> dict[bytes, str]:
    topics = {}
    for item in abi:
        if item.get("type") == "event":
            signature = f"{item['name']}({','.join(i['type'] for i in item['inputs'])})"
            topics[keccak(text=signature)] = str(item["name"])
    return topics


class AccessNFT:
    """A deployed DstackAccessNFT; transactions are signed by ``private_key`` (None: read only)."""

    def __init__(
        self,
        rpc_url: str,
        address: str,
        private_key: str | None = None,
        *,
        w3: Web3 | None = None,
    ) -> None:
        self.w3 = w3 or connect(rpc_url)
        self._rpc_url = rpc_url
        self.abi: list[dict[str, Any]] = load_artifact()["abi"]
        self.contract: Contract = self.w3.eth.contract(
            address=checksum(address, "WGCHAIN_CONTRACT"),
            abi=self.abi,
        )
        self.account = signer_account(private_key) if private_key else None
        #: The deployment transaction, when this client deployed the contract.
        self.deployment: TxResult | None = None
        self._errors = _error_selectors(self.abi)
        self._topics = _event_topics(self.abi)

    # -- construction ----------------------------------------------------------------

    @classmethod
    def deploy(cls, rpc_url: str, private_key: str) -> AccessNFT:
        """Deploy a new contract owned by the signer; returns a client bound to it."""
        w3 = connect(rpc_url)
        account = signer_account(private_key)
        artifact = load_artifact()
        factory = w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
        receipt = guard(
            "deploy",
            lambda: _send(w3, account, "deploy", lambda: factory.constructor(account.address)),
        )
        address = receipt["contractAddress"]
        log.bind(contract=address).info(
            "deployed DstackAccessNFT in block {}", receipt["blockNumber"]
        )
        nft = cls(rpc_url, address, private_key, w3=w3)
        nft.deployment = TxResult(
            tx_hash="0x" + bytes(receipt["transactionHash"]).hex(),
            block_number=int(receipt["blockNumber"]),
        )
        return nft

    def with_signer(self, private_key: str) -> AccessNFT:
        """The same contract, with transactions signed by another account."""
        return AccessNFT(self._rpc_url, self.address, private_key, w3=self.w3)

    @property
    def address(self) -> str:
        return str(self.contract.address)

    @cached_property
    def chain_id(self) -> int:
        return self._guard("eth_chainId", lambda: int(self.w3.eth.chain_id))

    @property
    def signer(self) -> str:
        """Address of the signing account."""
        return str(self._account().address)

    # -- transactions ----------------------------------------------------------------

    def mint(
        self, to: str, node_id: str, public_key: str, token_uri: str = "", duration: int = 0
    ) -> TxResult:
        """``mintNodeAccess`` (contract owner only); ``token_id`` of the result is the new token.

        With ``duration`` (seconds, > 0), ``mintNodeAccessWithDuration``: the pass expires
        ``duration`` seconds after the mint's block (ERC-5643); 0 mints a perpetual pass
        with ``mintNodeAccess``, which every deployed contract has.
        """
        if duration:
            _check_duration(duration)
            return self._transact(
                "mintNodeAccessWithDuration",
                checksum(to, "--to"),
                node_id,
                public_key,
                token_uri,
                duration,
                headroom=GAS_HEADROOM,
            )
        return self._transact(
            "mintNodeAccess", checksum(to, "--to"), node_id, public_key, token_uri
        )

    def renew(self, token_id: int, duration: int) -> TxResult:
        """``renewSubscription`` (contract owner only): ``duration`` more seconds, from the
        current expiration or from now when that is past."""
        _check_duration(duration)
        return self._transact("renewSubscription", token_id, duration, headroom=GAS_HEADROOM)

    def cancel(self, token_id: int) -> TxResult:
        """``cancelSubscription`` (the token's holder or the contract owner): expired at once."""
        return self._transact("cancelSubscription", token_id, headroom=GAS_HEADROOM)

    def revoke(self, token_id: int) -> TxResult:
        """``revokeNodeAccess`` (the token's holder or the contract owner)."""
        return self._transact("revokeNodeAccess", token_id)

    def transfer(self, token_id: int, to: str) -> TxResult:
        """``safeTransferFrom(signer, to, token_id)``: the signer must hold the token."""
        fn = self.contract.get_function_by_signature("safeTransferFrom(address,address,uint256)")
        return self._transact_fn(
            "safeTransferFrom", lambda: fn(self.signer, checksum(to, "--to"), token_id)
        )

    def set_key(self, public_key: str) -> TxResult:
        """``updatePublicKey``: the signer's WireGuard key (every token it holds uses it)."""
        return self._transact("updatePublicKey", public_key)

    def transfer_contract_ownership(self, new_owner: str) -> TxResult:
        return self._transact("transferContractOwnership", checksum(new_owner, "--to"))

    # -- views -----------------------------------------------------------------------

    def get_node_access(self, token_id: int) -> NodeAccess:
        node_id, key, created_at, active = self._call("getNodeAccess", token_id)
        return NodeAccess(node_id, key, int(created_at), bool(active))

    def owner_of(self, token_id: int) -> str:
        return str(self._call("ownerOf", token_id))

    def contract_owner(self) -> str:
        return str(self._call("owner"))

    def public_key_of(self, owner: str) -> str:
        return str(self._call("getPublicKeyByOwner", checksum(owner)))

    def public_key_of_token(self, token_id: int) -> str:
        return str(self._call("getPublicKeyByTokenId", token_id))

    def token_id_of(self, node_id: str) -> int:
        """The active token naming ``node_id``, 0 when none."""
        return int(self._call("getTokenIdByNodeId", node_id))

    def has_node_access(self, address: str, node_id: str) -> bool:
        return bool(self._call("hasNodeAccess", checksum(address), node_id))

    def verify_access(self, address: str, node_id: str) -> bool:
        return bool(self._call("verifyAccess", checksum(address), node_id))

    def token_uri(self, token_id: int) -> str:
        return str(self._call("tokenURI", token_id))

    def expires_at(self, token_id: int, block: int | str = "latest") -> int:
        """``expiresAt`` as of ``block``: unix seconds, :data:`PERPETUAL`, or 0 (cancelled)."""
        return int(self._call_at(block, "expiresAt", token_id))

    def is_renewable(self, token_id: int) -> bool:
        return bool(self._call("isRenewable", token_id))

    def supports_interface(self, interface_id: bytes) -> bool:
        return bool(self._call("supportsInterface", interface_id))

    def supports_expiry(self) -> bool:
        """Whether the contract answers ``supportsInterface`` for ERC-5643 (False when it
        has no ``supportsInterface`` at all)."""
        try:
            return self.supports_interface(ERC5643_INTERFACE_ID)
        except ChainError:
            return False

    # -- plumbing --------------------------------------------------------------------

    def _account(self) -> LocalAccount:
        if self.account is None:
            raise SettingsError("WGCHAIN_PRIVATE_KEY", "required to send transactions")
        return self.account

    def _call(self, name: str, *args: Any) -> Any:
        fn = self.contract.get_function_by_name(name)
        return self._guard(name, lambda: fn(*args).call())

    def _call_at(self, block: int | str, name: str, *args: Any) -> Any:
        fn = self.contract.get_function_by_name(name)
        return self._guard(name, lambda: fn(*args).call(block_identifier=block))

    def _transact(self, name: str, *args: Any, headroom: float = 1.0) -> TxResult:
        fn = self.contract.get_function_by_name(name)
        return self._transact_fn(name, lambda: fn(*args), headroom)

    def _transact_fn(self, name: str, build: Callable[[], Any], headroom: float = 1.0) -> TxResult:
        receipt = self._guard(name, lambda: _send(self.w3, self._account(), name, build, headroom))
        events: list[str] = []
        args: dict[str, Any] = {}
        token_id: int | None = None
        for entry in receipt["logs"]:
            if entry["address"].lower() != self.address.lower() or not entry["topics"]:
                continue
            event = self._topics.get(bytes(entry["topics"][0]), "?")
            events.append(event)
            if event == "NodeAccessGranted":
                token_id = int.from_bytes(bytes(entry["topics"][1]), "big")
            if event != "?":
                with contextlib.suppress(Web3Exception, ValueError):  # undecodable: names only
                    decoded = self.contract.events[event]().process_log(entry)
                    args.update({k: v for k, v in decoded["args"].items() if k != "tokenId"})
                    if "tokenId" in decoded["args"]:
                        args["tokenId"] = int(decoded["args"]["tokenId"])
        return TxResult(
            tx_hash="0x" + bytes(receipt["transactionHash"]).hex(),
            block_number=int(receipt["blockNumber"]),
            token_id=token_id,
            events=tuple(events),
            args=args,
        )

    def _guard(self, name: str, action: Callable[[], T]) -> T:
        """Run ``action``; a revert becomes ChainError with the decoded reason."""
        return guard(name, action, self._reason)

    def _reason(self, exc: ContractLogicError) -> str:
        data = exc.data if isinstance(exc.data, str) else None
        if data and data.startswith("0x") and len(data) >= 10:
            item = self._errors.get(bytes.fromhex(data[2:10]))
            if item is not None:
                types = [i["type"] for i in item["inputs"]]
                try:
                    values = self.w3.codec.decode(types, bytes.fromhex(data[10:]))
                except Exception:  # a malformed payload still names the error
                    return str(item["name"])
                shown = ", ".join(
                    f"{i['name']}={validate.excerpt(str(v))}"
                    for i, v in zip(item["inputs"], values, strict=True)
                )
                return f"{item['name']}({shown})"
        return validate.excerpt(exc.message or "execution reverted")


def _check_duration(duration: int) -> None:
    if not 0 < duration <= MAX_DURATION:
        raise SettingsError("--duration", f"{duration} is not between 1 and {MAX_DURATION} seconds")


def _send(
    w3: Web3, account: LocalAccount, name: str, build: Callable[[], Any], headroom: float = 1.0
) -> Any:
    """Build (estimating gas: a revert raises here), sign locally, send, await the receipt.

    ``headroom`` multiplies the estimated gas limit (1.0: the estimate as it is).
    """
    nonce = w3.eth.get_transaction_count(account.address, "pending")
    tx = build().build_transaction({"from": account.address, "nonce": nonce})
    if headroom != 1.0:
        tx["gas"] = int(tx["gas"] * headroom)
    signed = account.sign_transaction(tx)
    tx_hash = w3.eth.send_raw_transaction(signed.raw_transaction)
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=RECEIPT_TIMEOUT)
    if receipt["status"] != 1:
        raise ChainError(f"{name} reverted in block {receipt['blockNumber']}")
    return receipt


def guard(
    name: str, action: Callable[[], T], reason: Callable[[ContractLogicError], str] | None = None
) -> T:
    """Run ``action``, turning web3 failures into :class:`ChainError` / :class:`ServiceUnavailable`."""
    try:
        return action()
    except ContractLogicError as exc:
        shown = reason(exc) if reason else validate.excerpt(exc.message or "execution reverted")
        raise ChainError(f"{name} reverted: {shown}") from None
    except requests.ConnectionError:
        raise ServiceUnavailable(f"{name}: the RPC node does not answer") from None
    except TimeExhausted:
        raise ChainError(f"{name}: no receipt within {RECEIPT_TIMEOUT}s") from None
    except Web3RPCError as exc:
        raise ChainError(f"{name}: {validate.excerpt(str(exc.message or exc))}") from None
    except Web3Exception as exc:
        raise ChainError(f"{name}: {validate.excerpt(str(exc))}") from None
