// SPDX-License-Identifier: MIT
pragma solidity ^0.8.20;

import {ERC721} from "@openzeppelin/contracts/token/ERC721/ERC721.sol";
import {ERC721URIStorage} from "@openzeppelin/contracts/token/ERC721/extensions/ERC721URIStorage.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";

/// @title ERC-5643: subscription NFTs (https://eips.ethereum.org/EIPS/eip-5643), interface id 0x8c65f84d.
interface IERC5643 {
    event SubscriptionUpdate(uint256 indexed tokenId, uint64 expiration);

    function renewSubscription(uint256 tokenId, uint64 duration) external payable;
    function cancelSubscription(uint256 tokenId) external payable;
    function expiresAt(uint256 tokenId) external view returns (uint64);
    function isRenewable(uint256 tokenId) external view returns (bool);
}

/// @title DstackAccessNFT: one token per node of a private WireGuard network.
/// @notice wgchain's implementation of the IDstackAccessNFT interface (DESIGN.md section 1),
///         for local networks and tests. WireGuard keys belong to token OWNERS, not tokens:
///         every active token of an owner uses that owner's current key.
/// @dev Strings (node ids, keys) are stored as given and never validated here: the chain is
///      an untrusted source and wgchain's listener and registry validate what they read.
///
///      Time-limited passes (ERC-5643; docs/design.md §3.3 and §5): a token minted without a
///      duration is perpetual (`expiresAt` answers PERPETUAL, and no SubscriptionUpdate is ever
///      emitted for it until it is cancelled). A token minted with a duration expires at
///      mint time + duration. Only the contract owner renews (it sells the passes); the contract
///      owner or the token's holder cancels (expiration 0: expired at once). A renewal extends
///      from the current expiration, or from now when that is past (a cancelled pass comes back
///      for `duration` from now). A perpetual pass cannot be renewed (cancel it first to put it on
///      a subscription). Sums saturate at type(uint64).max. A revoked token is neither renewed nor
///      cancelled. Transfers keep the expiration with the token.
contract DstackAccessNFT is ERC721URIStorage, Ownable, IERC5643 {
    struct NodeAccess {
        string nodeId;
        uint256 createdAt;
        bool isActive;
    }

    event NodeAccessGranted(
        uint256 indexed tokenId, string nodeId, address indexed owner, string wireguardPublicKey
    );
    event NodeAccessRevoked(uint256 indexed tokenId, string nodeId);
    event NodeAccessTransferred(uint256 indexed tokenId, address indexed from, address indexed to);
    event PublicKeyUpdated(address indexed owner, string wireguardPublicKey);

    /// The node already has an active token (`tokenId`); revoke it first.
    error NodeAlreadyActive(uint256 tokenId);
    /// Only the token's holder or the contract owner may revoke it.
    error NotHolderOrOwner(uint256 tokenId, address caller);
    /// The token was already revoked.
    error TokenNotActive(uint256 tokenId);
    /// A renewal needs a duration of at least one second.
    error ZeroDuration();
    /// A perpetual pass has nothing to renew (cancel it first to put it on a subscription).
    error NotRenewable(uint256 tokenId);
    /// Passes are not sold on chain: a renewal or cancellation carrying ether is refused.
    error PaymentNotAccepted(uint256 value);

    /// `expiresAt` of a perpetual pass (never expires).
    uint64 public constant PERPETUAL = type(uint64).max;

    /// A token's subscription: `limited` once minted with a duration, renewed or cancelled.
    struct Subscription {
        uint64 expiration;
        bool limited;
    }

    uint256 private _nextTokenId = 1;
    mapping(uint256 => NodeAccess) private _access;
    mapping(string => uint256) private _activeTokenOfNode;
    mapping(address => string) private _keys;
    mapping(uint256 => Subscription) private _subscriptions;

    constructor(address initialOwner) ERC721("Dstack Node Access", "DNA") Ownable(initialOwner) {}

    /// Mint an access token for `nodeId` to `to`; a non-empty key becomes `to`'s key. Perpetual.
    function mintNodeAccess(
        address to,
        string calldata nodeId,
        string calldata wireguardPublicKey,
        string calldata uri
    ) external onlyOwner returns (uint256) {
        return _mintAccess(to, nodeId, wireguardPublicKey, uri, 0);
    }

    /// `mintNodeAccess` with a pass of `duration` seconds from now (0: perpetual, as
    /// `mintNodeAccess`); a duration emits SubscriptionUpdate after NodeAccessGranted.
    function mintNodeAccessWithDuration(
        address to,
        string calldata nodeId,
        string calldata wireguardPublicKey,
        string calldata uri,
        uint64 duration
    ) external onlyOwner returns (uint256) {
        return _mintAccess(to, nodeId, wireguardPublicKey, uri, duration);
    }

    function _mintAccess(
        address to,
        string calldata nodeId,
        string calldata wireguardPublicKey,
        string calldata uri,
        uint64 duration
    ) private returns (uint256) {
        uint256 existing = _activeTokenOfNode[nodeId];
        if (existing != 0) revert NodeAlreadyActive(existing);
        uint256 tokenId = _nextTokenId++;
        _access[tokenId] = NodeAccess({nodeId: nodeId, createdAt: block.timestamp, isActive: true});
        _activeTokenOfNode[nodeId] = tokenId;
        if (bytes(wireguardPublicKey).length != 0) _keys[to] = wireguardPublicKey;
        _safeMint(to, tokenId);
        if (bytes(uri).length != 0) _setTokenURI(tokenId, uri);
        emit NodeAccessGranted(tokenId, nodeId, to, wireguardPublicKey);
        if (duration != 0) _setExpiration(tokenId, _saturatingAdd(_now(), duration));
        return tokenId;
    }

    // -- ERC-5643 ----------------------------------------------------------------------------

    /// Extend a pass by `duration` seconds (contract owner only; see the contract's notes).
    function renewSubscription(uint256 tokenId, uint64 duration) external payable onlyOwner {
        if (msg.value != 0) revert PaymentNotAccepted(msg.value);
        if (duration == 0) revert ZeroDuration();
        _requireOwned(tokenId);
        if (!_access[tokenId].isActive) revert TokenNotActive(tokenId);
        Subscription storage sub = _subscriptions[tokenId];
        if (!sub.limited) revert NotRenewable(tokenId);
        uint64 base = sub.expiration > _now() ? sub.expiration : _now();
        _setExpiration(tokenId, _saturatingAdd(base, duration));
    }

    /// End a pass at once (the contract owner or the token's holder): expiration 0.
    function cancelSubscription(uint256 tokenId) external payable {
        if (msg.value != 0) revert PaymentNotAccepted(msg.value);
        address holder = _requireOwned(tokenId);
        if (msg.sender != holder && msg.sender != owner()) {
            revert NotHolderOrOwner(tokenId, msg.sender);
        }
        if (!_access[tokenId].isActive) revert TokenNotActive(tokenId);
        _setExpiration(tokenId, 0);
    }

    /// Unix time (seconds) the pass expires at; PERPETUAL when it never does; 0 once cancelled.
    function expiresAt(uint256 tokenId) external view returns (uint64) {
        _requireOwned(tokenId);
        Subscription storage sub = _subscriptions[tokenId];
        return sub.limited ? sub.expiration : PERPETUAL;
    }

    /// Whether `renewSubscription` can extend the pass: an active, time-limited token.
    function isRenewable(uint256 tokenId) external view returns (bool) {
        _requireOwned(tokenId);
        return _access[tokenId].isActive && _subscriptions[tokenId].limited;
    }

    function supportsInterface(bytes4 interfaceId)
        public
        view
        override(ERC721URIStorage)
        returns (bool)
    {
        return interfaceId == type(IERC5643).interfaceId || super.supportsInterface(interfaceId);
    }

    function _setExpiration(uint256 tokenId, uint64 expiration) private {
        _subscriptions[tokenId] = Subscription({expiration: expiration, limited: true});
        emit SubscriptionUpdate(tokenId, expiration);
    }

    function _now() private view returns (uint64) {
        return uint64(block.timestamp);
    }

    function _saturatingAdd(uint64 a, uint64 b) private pure returns (uint64) {
        unchecked {
            uint64 sum = a + b;
            return sum < a ? type(uint64).max : sum;
        }
    }

    /// Revoke a token (its holder or the contract owner): it stays owned but opens nothing.
    function revokeNodeAccess(uint256 tokenId) external {
        address holder = _requireOwned(tokenId);
        if (msg.sender != holder && msg.sender != owner()) {
            revert NotHolderOrOwner(tokenId, msg.sender);
        }
        NodeAccess storage access = _access[tokenId];
        if (!access.isActive) revert TokenNotActive(tokenId);
        access.isActive = false;
        delete _activeTokenOfNode[access.nodeId];
        emit NodeAccessRevoked(tokenId, access.nodeId);
    }

    /// Set the caller's WireGuard key (used by every active token the caller holds).
    function updatePublicKey(string calldata wireguardPublicKey) external {
        _keys[msg.sender] = wireguardPublicKey;
        emit PublicKeyUpdated(msg.sender, wireguardPublicKey);
    }

    function getNodeAccess(uint256 tokenId)
        external
        view
        returns (string memory nodeId, string memory wireguardPublicKey, uint256 createdAt, bool isActive)
    {
        address holder = _requireOwned(tokenId);
        NodeAccess storage access = _access[tokenId];
        return (access.nodeId, _keys[holder], access.createdAt, access.isActive);
    }

    function hasNodeAccess(address account, string calldata nodeId) public view returns (bool) {
        uint256 tokenId = _activeTokenOfNode[nodeId];
        return tokenId != 0 && _ownerOf(tokenId) == account;
    }

    function verifyAccess(address account, string calldata nodeId) external view returns (bool) {
        return hasNodeAccess(account, nodeId);
    }

    function getTokenIdByNodeId(string calldata nodeId) external view returns (uint256) {
        return _activeTokenOfNode[nodeId];
    }

    function getPublicKeyByOwner(address account) external view returns (string memory) {
        return _keys[account];
    }

    function getPublicKeyByTokenId(uint256 tokenId) external view returns (string memory) {
        return _keys[_requireOwned(tokenId)];
    }

    /// Hand the contract (minting, revoking any token) to `newOwner` (not the zero address).
    function transferContractOwnership(address newOwner) external onlyOwner {
        transferOwnership(newOwner);
    }

    /// Every transfer between two non-zero addresses also emits NodeAccessTransferred.
    function _update(address to, uint256 tokenId, address auth)
        internal
        override
        returns (address)
    {
        address from = super._update(to, tokenId, auth);
        if (from != address(0) && to != address(0)) {
            emit NodeAccessTransferred(tokenId, from, to);
        }
        return from;
    }
}
